"""The trusted half of the code sandbox; it runs inside the child process.

``score_jax.rewards.sandbox`` starts this file as ``python -I -S sandbox_harness.py`` in a new
session. It reads one job (JSON) from stdin, then, while it is still trusted code:

1. isolates itself: a new network namespace and a new mount namespace with empty private
   ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (when it may), resource limits, and, when started as
   root, a throw-away uid/gid with no capabilities and ``no_new_privs``;
2. snapshots what the tests will rely on (the builtins, the standard modules they name) and
   installs an audit hook (it cannot be removed) that refuses frame and heap introspection,
   ctypes, reads of ``/proc`` and starting other programs;
3. runs the untrusted program, then the trusted setup and tests in a separate namespace.

Each step is reported as one line ``<nonce> <words>`` on a file descriptor. The nonce is a
per-run secret known only to the parent and to this process's memory, which the audit hook keeps
the program from reading; a pass needs a final ``done`` line with every test counted. Everything
that runs after the program starts uses only local variables captured before it, because the
program can rebind module globals and builtins. Standard library only: it may run under a
different interpreter than the trainer's (see ``sandbox._pick_interpreter``).
"""

import builtins
import json
import os
import sys


def _read_all(fd):
  chunks = []
  while True:
    chunk = os.read(fd, 1 << 16)
    if not chunk:
      return b''.join(chunks)
    chunks.append(chunk)


def _enter_namespaces(job, facts, libc):
  """A new network namespace and private temporary directories; returns the working directory.

  Done by the supervisor before it forks, so that the program's whole process tree inherits
  them. Mount and network namespaces need root (CAP_SYS_ADMIN); without it, a new user
  namespace gives a private network where the kernel allows unprivileged user namespaces.
  """
  clone_newns, clone_newnet, clone_newuser = 0x00020000, 0x40000000, 0x10000000
  is_root = os.geteuid() == 0
  facts['net_isolated'] = False
  facts['private_tmp'] = False
  if job['isolate_network']:
    flags = clone_newnet if is_root else clone_newnet | clone_newuser
    facts['net_isolated'] = libc.unshare(flags) == 0
  workdir = job['workdir']
  if is_root and libc.unshare(clone_newns) == 0:
    ms_rdonly, ms_nosuid, ms_nodev, ms_rec, ms_private = 1, 2, 4, 1 << 14, 1 << 18
    if libc.mount(b'none', b'/', None, ms_rec | ms_private, None) == 0:
      options = ('size=%d,nr_inodes=%d,mode=1777' % (job['tmpfs_bytes'], 4096)).encode()
      ok = libc.mount(b'tmpfs', b'/tmp', b'tmpfs', ms_nosuid | ms_nodev, options) == 0
      for path in ('/var/tmp', '/dev/shm'):
        if os.path.isdir(path):
          ok = ok and libc.mount(b'tmpfs', path.encode(), b'tmpfs', ms_nosuid | ms_nodev,
                                 options) == 0
      for path in job['hide_paths']:
        ok = ok and libc.mount(b'tmpfs', path.encode(), b'tmpfs', ms_rdonly | ms_nosuid,
                               b'size=4k,mode=0555') == 0
      if ok:
        workdir = '/tmp/work'
        os.mkdir(workdir, 0o700)
        facts['private_tmp'] = True
  uid = job['uid']
  if uid is not None and is_root:
    os.chown(workdir, uid, uid)
  return workdir


def _limit_and_drop(job, facts, libc, workdir):
  """In the program's process: resource limits, then the switch to the throw-away uid."""
  import resource
  os.chdir(workdir)
  os.environ['HOME'] = os.environ['TMPDIR'] = workdir
  uid = job['uid'] if os.geteuid() == 0 else None
  nproc = job['max_processes']
  if uid is None:
    # Without a uid of its own, RLIMIT_NPROC counts every process of this user: leave headroom.
    me = os.getuid()
    nproc += sum(1 for p in os.listdir('/proc') if p.isdigit() and _owner(p) == me)
  cpu = job['cpu_time_s']
  for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_AS, (job['memory_bytes'],) * 2),
                       (resource.RLIMIT_NPROC, (nproc,) * 2),
                       (resource.RLIMIT_NOFILE, (job['max_open_files'],) * 2),
                       (resource.RLIMIT_FSIZE, (job['max_file_bytes'],) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(limit, value)
  pr_set_dumpable, pr_set_no_new_privs = 4, 38
  libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)
  facts['uid_dropped'] = False
  if uid is not None:
    _become(uid)
    facts['uid_dropped'] = True
  libc.prctl(pr_set_dumpable, 0, 0, 0, 0)


def _become(uid):
  os.setgroups([])
  os.setgid(uid)
  os.setuid(uid)
  if os.getuid() != uid or os.geteuid() != uid:
    raise RuntimeError('could not drop privileges to uid %d' % uid)


def _supervise(child, deadline, uid, report):
  """Waits for the program's process until the deadline, then removes its whole process tree.

  The supervisor is a child subreaper, so every orphan of the tree is re-parented to it and
  reaped here (the machine's init may not reap). As root it stays root, out of the program's
  reach; the sweep is one ``kill(-1, SIGKILL)`` from a helper running as the program's uid,
  which the kernel applies atomically with respect to fork.
  """
  import select
  import signal
  import time
  timed_out = False
  try:
    pidfd = os.pidfd_open(child)
  except (AttributeError, OSError):
    pidfd = None
  while True:
    pid, status = os.waitpid(child, os.WNOHANG)
    if pid:
      break
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      timed_out = True
      os.kill(child, signal.SIGKILL)
      pid, status = os.waitpid(child, 0)
      break
    if pidfd is not None:
      poller = select.poll()
      poller.register(pidfd, select.POLLIN)
      poller.poll(remaining * 1000)
    else:
      time.sleep(min(remaining, 0.005))
  if timed_out:
    report('exit timeout')
  elif os.WIFSIGNALED(status):
    report('exit signal %d' % os.WTERMSIG(status))
  else:
    report('exit status %d' % os.WEXITSTATUS(status))
  _remove_tree(child, uid)


def _remove_tree(child, uid):
  """Kills and reaps every process left in the program's tree (within about two seconds)."""
  import signal
  import time
  me = os.getpid()
  give_up = time.monotonic() + 2.0
  while time.monotonic() < give_up:
    try:  # the program's process group, at once (the kernel does not let it fork meanwhile)
      os.killpg(child, signal.SIGKILL)
    except OSError:
      pass
    if uid is not None:
      helper = os.fork()
      if helper == 0:
        try:
          _become(uid)
          os.kill(-1, signal.SIGKILL)
        finally:
          os._exit(0)
      os.waitpid(helper, 0)
    else:  # same uid as the trainer: kill only the processes re-parented to this supervisor
      for p in os.listdir('/proc'):
        if p.isdigit() and _parent_of(p) == me:
          try:
            os.kill(int(p), signal.SIGKILL)
          except OSError:
            pass
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      return
    time.sleep(0.001)


def _parent_of(pid):
  try:
    with open('/proc/%s/stat' % pid, 'rb') as f:
      stat = f.read()
    return int(stat[stat.rfind(b')') + 2:].split()[1])
  except (OSError, ValueError, IndexError):
    return -1


def _owner(pid):
  try:
    return os.stat('/proc/' + pid).st_uid
  except OSError:
    return -1


def _make_audit_hook(block_sockets, block_kill, violations):
  """An audit hook that refuses the routes to the harness's memory and to other programs.

  It raises ``SandboxForbidden`` (a PermissionError and a ValueError, so the standard library's
  own ``sys._getframe`` fallbacks in namedtuple, enum and typing still work). Only closure
  variables are used: the program may rebind every global and builtin.
  """

  class SandboxForbidden(PermissionError, ValueError):
    pass

  always = frozenset((
      'sys._getframe', 'sys._current_frames', 'sys._current_exceptions', 'sys.settrace',
      'sys.setprofile', 'gc.get_objects', 'gc.get_referrers', 'gc.get_referents',
      'os.exec', 'os.posix_spawn', 'os.spawn', 'os.system', 'subprocess.Popen', 'pty.spawn',
      'os.chdir', 'os.chroot', 'os.symlink', 'os.link', 'sys._getframemodulename',
      'sys.settrace_all_threads', 'sys.setprofile_all_threads'))
  # CPython's test modules read and write raw memory; ctypes is loaded already (by the
  # harness), so an import event for it means a fresh copy is being loaded: refused.
  modules = frozenset(('_testcapi', '_testinternalcapi', '_testbuffer', '_testmultiphase',
                       '_testclinic', '_ctypes_test', '_xxtestfuzz', '_xxsubinterpreters',
                       'ctypes', '_ctypes'))
  frame_attrs = frozenset(('tb_frame', 'gi_frame', 'cr_frame', 'ag_frame', 'f_back'))
  kills = frozenset(('os.kill', 'os.killpg', 'signal.pthread_kill', 'signal.pidfd_send_signal'))
  path_events = frozenset(('open', 'os.listdir', 'os.scandir'))
  bad_parts = ('/proc', '/dev/fd', '/dev/std')
  str_type, bytes_type, int_type, type_of = str, bytes, int, type
  append = violations.append

  def hook(event, args):
    refuse = False
    if event in always or event[:7] == 'ctypes.':
      refuse = True
    elif event == 'object.__getattr__':
      name = args[1] if args[1:] else None
      refuse = type_of(name) is str_type and name in frame_attrs
    elif event == 'import':
      name = args[0] if args else None
      refuse = type_of(name) is str_type and name in modules
    elif event in path_events:
      path = args[0] if args else None
      kind = type_of(path)
      if kind is bytes_type:
        path = path.decode('latin-1')
      elif kind is not str_type:
        refuse = kind is not int_type and path is not None
        path = ''
      for part in bad_parts:
        if part in path:
          refuse = True
    elif block_sockets and event[:7] == 'socket.':
      refuse = True
    elif block_kill and event in kills:
      refuse = True
    if refuse:
      append(event)
      raise SandboxForbidden('forbidden in the sandbox: ' + event)

  return hook


def _reporter(report_fd, nonce):
  """The report function: one nonce-prefixed line per call (its closure holds the secret)."""
  write = os.write

  def report(line):
    write(report_fd, nonce + b' ' + line.encode('utf-8', 'replace') + b'\n')

  return report


def _main():
  """Supervisor: reads the job, enters the namespaces, forks the program's process, waits."""
  import ctypes
  import time
  started = time.monotonic()
  job = json.loads(_read_all(0).decode('utf-8'))
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  os.close(devnull)
  report = _reporter(job.pop('report_fd'), job.pop('nonce').encode('ascii'))
  libc = ctypes.CDLL(None, use_errno=True)
  facts = {}
  workdir = _enter_namespaces(job, facts, libc)
  pr_set_child_subreaper = 36
  libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
  deadline = started + job['wall_timeout_s']
  uid = job['uid'] if os.geteuid() == 0 else None
  handover = [job, report]  # the program's process takes these out; no frame keeps them
  del job, report
  child = os.fork()
  if child == 0:
    _program_process(handover, facts, libc, workdir)
  _supervise(child, deadline, uid, handover[1])
  os._exit(0)


def _program_process(handover, facts, libc, workdir):
  """Limits this process, then runs the program in a second thread; never returns.

  Untrusted code never runs in the main thread: Python only lets the main thread install
  signal handlers, and a handler receives the interrupted frame — a way to the harness's
  locals that no audit event covers. The main thread holds no secret while it waits.
  """
  exit_now = os._exit
  try:
    os.setpgid(0, 0)  # a process group of its own, which the supervisor kills in one call
    _limit_and_drop(handover[0], facts, libc, workdir)
    finished = _start_program_thread(handover, facts, exit_now)
  except BaseException:  # the trusted set-up failed: say why on stderr
    import traceback
    traceback.print_exc()
    exit_now(70)
  finished.acquire()  # released only if the program's thread ends without exiting
  exit_now(70)


def _start_program_thread(handover, facts, exit_now):
  import _thread
  finished = _thread.allocate_lock()
  finished.acquire()
  # A bare _thread (not threading.Thread, whose object would expose its target's arguments).
  _thread.start_new_thread(_run_program, (handover.pop(0), facts, handover.pop(0), exit_now,
                                          finished))
  return finished


def _run_program(job, facts, report, exit_now, finished):
  """Runs the program and the tests, in the program's thread; ends the process."""
  try:
    _run_tests(job, facts, report, exit_now)
  finally:
    finished.release()


def _run_tests(job, facts, report, exit_now):
  # Snapshots the tests run against, taken before any untrusted code.
  import importlib
  import types
  test_builtins = dict(builtins.__dict__)
  trusted_modules = {}
  for name in job['modules']:
    try:
      module = importlib.import_module(name)
    except ImportError:
      continue
    copy = types.ModuleType(name)
    copy.__dict__.update(module.__dict__)
    trusted_modules[name] = copy
  real_import = builtins.__import__

  def trusted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in trusted_modules:
      return trusted_modules[name]
    return real_import(name, globals, locals, fromlist, level)

  test_builtins['__import__'] = trusted_import
  report('ready ' + json.dumps(facts))
  compile_, exec_, type_ = compile, exec, type
  base_exception = BaseException
  name_of = type.__dict__['__name__'].__get__
  str_copy = str.__str__
  is_word = str.isidentifier
  program, setup, tests = job['program'], job['setup'], list(job['tests'])
  expose, modules = list(job['expose']), list(trusted_modules.items())
  n_tests = len(tests)
  violations = []
  sys.addaudithook(_make_audit_hook(not facts['net_isolated'], not facts['uid_dropped'],
                                    violations))
  del job

  def kind_of(exc):
    try:
      name = str_copy(name_of(type_(exc)))
    except base_exception:
      return 'Unknown'
    return name[:60] if is_word(name) else 'Unknown'

  def refused():
    return ' ' + violations[0] if violations else ''

  # ---- From here on, untrusted code runs: only locals captured above are used. ----
  namespace = {'__name__': '__candidate__', '__builtins__': builtins}
  try:
    code = compile_(program, '<program>', 'exec')
  except base_exception as exc:
    report('load syntax_error ' + kind_of(exc))
    exit_now(0)
  try:
    exec_(code, namespace)
  except base_exception as exc:
    report('load error ' + kind_of(exc) + refused())
    exit_now(0)
  report('load ok')

  test_namespace = {'__name__': '__test__', '__builtins__': test_builtins}
  for name, module in modules:
    test_namespace[name] = module
  try:
    exec_(compile_(setup, '<setup>', 'exec'), test_namespace)
  except base_exception as exc:
    report('setup error ' + kind_of(exc))
    exit_now(0)
  for name in expose:  # never a builtin's name: the tests' builtins stay the snapshot's
    if name in namespace and name not in test_builtins:
      test_namespace[name] = namespace[name]
  passed = 0
  index = 0
  for test in tests:
    try:
      exec_(compile_(test, '<test>', 'exec'), test_namespace)
    except base_exception as exc:
      report('test %d fail %s%s' % (index, kind_of(exc), refused()))
    else:
      passed += 1
      report('test %d ok' % index)
    index += 1
  report('done %d %d' % (passed, n_tests))
  exit_now(0)


if __name__ == '__main__':
  _main()
