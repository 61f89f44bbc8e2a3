"""The trusted half of the code sandbox; it runs inside the child process.

``score_jax.rewards.sandbox`` starts this file as ``python -I -S sandbox_harness.py`` in a new
session. It reads one job (JSON) from stdin, then, while it is still trusted code:

1. isolates itself: a new network namespace and a new mount namespace with empty private
   ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (when it may), resource limits, and, when started as
   root, a throw-away uid/gid with no capabilities and ``no_new_privs``;
2. snapshots what the tests will rely on (the builtins, the standard modules they name and
   what those reach) and installs an audit hook (it cannot be removed) that refuses frame and
   heap introspection, ctypes, reads of ``/proc`` and starting other programs;
3. runs the untrusted program, then the trusted setup and tests in a separate namespace, where
   the program's functions are seen through wrappers that pass on only values built from builtin
   types, and a guard (recorded in step 2) fails any test once the program has changed the
   shared modules or classes the tests rely on (``_run_tests``).

The isolation (step 1 and the audit hook) is in ``sandbox_isolation.py``, the guard in
``sandbox_guard.py`` and the result wrappers in ``sandbox_results.py``; this file loads them from
its own directory at start, before any untrusted code exists.

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_guard  # noqa: E402  (the harness's own modules, loaded from its directory)
import sandbox_isolation  # noqa: E402
import sandbox_results  # noqa: E402
del sys.path[0]


def _read_all(fd):
  chunks = []
  while True:
    chunk = os.read(fd, 1 << 16)
    if not chunk:
      return b''.join(chunks)
    chunks.append(chunk)


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
  workdir = sandbox_isolation.enter_namespaces(job, facts, libc)
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
    sandbox_isolation.limit_and_drop(handover[0], facts, libc, workdir)
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
          sandbox_isolation.become(uid)
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


def _reporter(report_fd, nonce):
  """The report function: one nonce-prefixed line per call (its closure holds the secret)."""
  write = os.write

  def report(line):
    write(report_fd, nonce + b' ' + line.encode('utf-8', 'replace') + b'\n')

  return report


def _run_tests(job, facts, report, exit_now):
  """Runs the program, then the setup and the tests against what the program exposes.

  The tests see the exposed names through ``sandbox_results.make_wrapper``'s wrappers (unless
  the job turns ``check_results`` off, or lists a name in ``unchecked``). Before each test and
  after each call, ``sandbox_guard.make_guard``'s check must find the shared modules and classes
  unchanged and no thread of the program may still run; automatic garbage collection is off
  during the tests, so finalisers of the program's objects run only in the collection made
  before the first check.
  """
  import _thread
  import collections
  import gc
  import importlib
  import types
  test_builtins = dict(builtins.__dict__)
  trusted_modules, real_modules = {}, []
  for name in job['modules']:
    try:
      module = importlib.import_module(name)
    except ImportError:
      continue
    real_modules.append(module)
    copy = types.ModuleType(name)
    copy.__dict__.update(module.__dict__)
    trusted_modules[name] = copy
  real_import = builtins.__import__

  def trusted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in trusted_modules:
      return trusted_modules[name]
    return real_import(name, globals, locals, fromlist, level)

  test_builtins['__import__'] = trusted_import
  violations = []
  forbidden = sandbox_isolation.forbidden_class()
  # collections too: results may be its containers, whose comparisons are its code.
  guard, on_setattr = sandbox_guard.make_guard([builtins, collections] + real_modules,
                                               [sandbox_results.Refused, forbidden])
  hook = sandbox_isolation.make_audit_hook(not facts['net_isolated'], not facts['uid_dropped'],
                                           violations, forbidden, on_setattr)
  plain_copy = sandbox_results.make_plain_copy(collections)
  name_for = sandbox_results.make_name_for()
  re_module = sys.modules.get('re')
  purge = re_module.purge if 're' in job['modules'] and re_module is not None else None
  threads, collect, disable_gc = _thread._count, gc.collect, gc.disable
  report('ready ' + json.dumps(facts))
  compile_, exec_, type_, callable_ = compile, exec, type, callable
  base_exception = BaseException
  program, setup, tests = job['program'], job['setup'], list(job['tests'])
  expose, modules = list(job['expose']), list(trusted_modules.items())
  check_results, unchecked = job.get('check_results', True), list(job.get('unchecked', ()))
  n_tests = len(tests)
  refusals = []
  sys.addaudithook(hook)
  del job, hook

  def kind_of(exc):
    return name_for(type_(exc))

  def refused():
    return ' ' + violations[0] if violations else ''

  def shared_state():
    """'' while the shared objects are intact and no thread of the program runs."""
    disable_gc()
    change = guard()
    if change:
      return 'Tampered ' + change + ' by the program'
    running = threads() - own_threads
    if running > 0:
      return 'ThreadRunning the program left %d thread(s) running during the tests' % running
    if purge is not None:
      purge()  # no regular expression compiled by the program is reused by the tests
    return ''

  wrap, forget_arguments = sandbox_results.make_wrapper(
      plain_copy, shared_state, sandbox_results.passable_exceptions(builtins), refusals)
  own_threads = threads()
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
  collect()  # finalisers of the program's garbage run now, before the first check
  try:
    exec_(compile_(setup, '<setup>', 'exec'), test_namespace)
  except base_exception as exc:
    report('setup error ' + kind_of(exc))
    exit_now(0)
  exposure = ''  # set when an exposed name is neither callable nor built from builtin types
  for name in expose:  # never a builtin's name: the tests' builtins stay the snapshot's
    if name in namespace and name not in test_builtins:
      value = namespace[name]
      if not check_results or name in unchecked:
        test_namespace[name] = value
      elif callable_(value):
        test_namespace[name] = wrap(name, value)
      else:
        copy, culprit = plain_copy(value)
        if culprit and not exposure:
          exposure = 'ResultRefused %s is %s, not a value built from builtin types' % (
              name, culprit)
        test_namespace[name] = copy
  passed = 0
  index = 0
  for test in tests:
    del refusals[:]
    forget_arguments()
    problem = exposure or shared_state()
    if problem:  # the program changed what the tests rely on: the test cannot pass
      report('test %d fail %s' % (index, problem))
      index += 1
      continue
    try:
      exec_(compile_(test, '<test>', 'exec'), test_namespace)
    except base_exception as exc:
      report('test %d fail %s' % (index, refusals[0] if refusals
                                  else kind_of(exc) + refused()))
    else:
      problem = refusals[0] if refusals else shared_state()
      if problem:
        report('test %d fail %s' % (index, problem))
      else:
        passed += 1
        report('test %d ok' % index)
    index += 1
  report('done %d %d' % (passed, n_tests))
  exit_now(0)


if __name__ == '__main__':
  _main()
