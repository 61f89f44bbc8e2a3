"""Isolation for the code sandbox's harness: namespaces, hidden paths, limits, the audit hook.

Loaded by ``sandbox_harness.py`` (the trusted half of the sandbox) before any untrusted code
runs; see that module for the order of the steps. Standard library only.
"""

import os


def enter_namespaces(job, facts, libc):
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
    ms_nosuid, ms_nodev, ms_rec, ms_private = 2, 4, 1 << 14, 1 << 18
    if libc.mount(b'none', b'/', None, ms_rec | ms_private, None) == 0:
      options = ('size=%d,nr_inodes=%d,mode=1777' % (job['tmpfs_bytes'], 4096)).encode()
      ok = libc.mount(b'tmpfs', b'/tmp', b'tmpfs', ms_nosuid | ms_nodev, options) == 0
      for path in ('/var/tmp', '/dev/shm'):
        if os.path.isdir(path):
          ok = ok and libc.mount(b'tmpfs', path.encode(), b'tmpfs', ms_nosuid | ms_nodev,
                                 options) == 0
      if ok:
        _hide(job['hide_paths'], libc)
      if ok:
        workdir = '/tmp/work'
        os.mkdir(workdir, 0o700)
        facts['private_tmp'] = True
  uid = job['uid']
  if uid is not None and is_root:
    os.chown(workdir, uid, uid)
  return workdir


def _hide(paths, libc):
  """Covers each directory with an empty read-only tmpfs and each file with ``/dev/null``.

  Paths that do not exist (or no longer do, inside a directory hidden before) are skipped; a
  path that cannot be hidden stops the run (the parent reports a sandbox error).
  """
  import ctypes
  ms_rdonly, ms_nosuid, ms_bind = 1, 2, 1 << 12
  for path in paths:
    if os.path.isdir(path):
      done = libc.mount(b'tmpfs', path.encode(), b'tmpfs', ms_rdonly | ms_nosuid,
                        b'size=4k,mode=0555') == 0
    elif os.path.lexists(path):
      done = libc.mount(b'/dev/null', path.encode(), None, ms_bind, None) == 0
    else:
      continue
    if not done:
      errno = ctypes.get_errno()
      raise OSError(errno, 'could not hide %s: %s' % (path, os.strerror(errno)))


def limit_and_drop(job, facts, libc, workdir):
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
    become(uid)
    facts['uid_dropped'] = True
  libc.prctl(pr_set_dumpable, 0, 0, 0, 0)


def become(uid):
  os.setgroups([])
  os.setgid(uid)
  os.setuid(uid)
  if os.getuid() != uid or os.geteuid() != uid:
    raise RuntimeError('could not drop privileges to uid %d' % uid)


def _owner(pid):
  try:
    return os.stat('/proc/' + pid).st_uid
  except OSError:
    return -1


def forbidden_class():
  class SandboxForbidden(PermissionError, ValueError):
    """What the audit hook raises when it refuses an operation."""
  return SandboxForbidden


def make_audit_hook(block_sockets, block_kill, violations, forbidden, on_setattr=None):
  """An audit hook that refuses the routes to the harness's memory and to other programs.

  It raises ``SandboxForbidden`` (a PermissionError and a ValueError, so the standard library's
  own ``sys._getframe`` fallbacks in namedtuple, enum and typing still work). The interpreter's
  attribute-assignment events (a function's ``__code__``, ``__defaults__``, ``__kwdefaults__``,
  a class's ``__bases__``) go to ``on_setattr`` (see ``sandbox_guard.make_guard``). Only
  closure variables are used: the program may rebind every global and builtin.
  """

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
    elif on_setattr is not None and (event == 'object.__setattr__'
                                     or event == 'object.__delattr__'):
      on_setattr(args)
    if refuse:
      append(event)
      raise forbidden('forbidden in the sandbox: ' + event)

  return hook
