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


def _forbidden_class():
  class SandboxForbidden(PermissionError, ValueError):
    """What the audit hook raises when it refuses an operation."""
  return SandboxForbidden


def _make_audit_hook(block_sockets, block_kill, violations, forbidden, on_setattr=None):
  """An audit hook that refuses the routes to the harness's memory and to other programs.

  It raises ``SandboxForbidden`` (a PermissionError and a ValueError, so the standard library's
  own ``sys._getframe`` fallbacks in namedtuple, enum and typing still work). The interpreter's
  attribute-assignment events (a function's ``__code__``, ``__defaults__``, ``__kwdefaults__``,
  a class's ``__bases__``) go to ``on_setattr`` (see ``_make_guard``). Only closure variables
  are used: the program may rebind every global and builtin.
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


class _Refused(BaseException):
  """Ends a test whose program did something the harness does not accept (see ``_run_tests``).

  A BaseException, so that a test's own ``except Exception`` does not catch it; the reason is
  also recorded where the program cannot reach it, so a test that catches it anyway fails.
  """


# Modules whose namespace changes in ordinary use, left out of the guard (``_make_guard``).
_VOLATILE_MODULES = frozenset(('sys', '__main__'))
_MAX_DEPTH = 100  # how deeply a result may nest containers


def _make_guard(roots, classes):
  """A check that the shared objects the tests rely on are as they were before the program.

  Run before any untrusted code. From ``roots`` (``builtins`` and the standard modules the tests
  use) it follows every standard module they hold and every module whose globals their
  functions use, and records: each module's namespace (names and values, in order), each
  mutable class's namespace, bases and metaclass, each Python function's code, defaults and
  closure, and, for other objects held by a module (e.g. ``random``'s generator), their class,
  their attribute names and their callable attributes. Classes the interpreter refuses to change
  (``int``, ``list``, every built-in type) need no record.

  Returns ``(check, on_setattr)``. ``check()`` gives '' while nothing recorded has changed,
  else a phrase naming the first change (e.g. ``collections.Counter.__eq__ was changed``).
  Replacing a function's code or defaults raises an audit event, which the audit hook passes to
  ``on_setattr``: those are noted as they happen (reading ``__code__`` back on every check would
  cost an audit event per function). Both use only their closure (the program may have rebound
  any global or builtin) and run no code the program wrote.
  """
  import types
  stdlib = frozenset(sys.stdlib_module_names)
  function_type, module_type, cell_type = types.FunctionType, types.ModuleType, types.CellType
  class_dict = type.__dict__['__dict__'].__get__
  flags_of = type.__dict__['__flags__'].__get__
  bases_of = type.__dict__['__bases__'].__get__
  module_dict = module_type.__dict__['__dict__'].__get__
  kwdefaults_of = function_type.__dict__['__kwdefaults__'].__get__
  closure_of = function_type.__dict__['__closure__'].__get__
  contents_of = cell_type.__dict__['cell_contents'].__get__
  get_attribute = object.__getattribute__
  type_, len_, str_ = type, len, str
  value_error, base_exception = ValueError, BaseException
  is_word = str.isidentifier
  immutable_type = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: attribute assignment is refused
  empty = object()
  table = sys.modules
  seen = set()
  modules, registered, kinds, functions, objects = [], {}, [], [], []
  function_names = {}

  def contents(closure):
    out = []
    for cell in closure or ():
      try:
        out.append(contents_of(cell))
      except ValueError:
        out.append(empty)
    return tuple(out)

  def add_module(module):
    name = getattr(module, '__name__', None)
    if (id(module) in seen or type(name) is not str or name in _VOLATILE_MODULES
        or name.partition('.')[0] not in stdlib):
      return
    seen.add(id(module))
    namespace = module_dict(module)
    modules.append((name, namespace, tuple(namespace), tuple(namespace.values())))
    if table.get(name) is module:
      registered[name] = module
    for key, value in list(namespace.items()):
      visit(value, '%s.%s' % (name, key))

  def add_function(function, where):
    seen.add(id(function))
    function_names[id(function)] = where
    closure, kwdefaults = closure_of(function), kwdefaults_of(function)
    if closure or kwdefaults:  # what no audit event reports: cells and keyword defaults
      functions.append((where, closure or (), contents(closure), kwdefaults or {},
                        tuple(kwdefaults or ()), tuple((kwdefaults or {}).values())))
    name = function.__globals__.get('__name__')
    module = table.get(name) if type(name) is str else None
    if module is not None and module_dict(module) is function.__globals__:
      add_module(module)
    for value in contents(closure):
      if type(value) is function_type or isinstance(value, type):
        visit(value, where + '.<closure>')

  def add_class(cls):
    seen.add(id(cls))
    visit(type(cls), '')
    for base in bases_of(cls):
      visit(base, '')
    if flags_of(cls) & immutable_type:
      return
    namespace = class_dict(cls)
    name = '%s.%s' % (namespace.get('__module__', '?'), cls.__qualname__)
    kinds.append((name, cls, type(cls), bases_of(cls), namespace, tuple(namespace),
                  tuple(namespace.values())))
    for key, value in list(namespace.items()):
      visit(value, '%s.%s' % (name, key))

  def visit(value, where):
    if id(value) in seen:
      return
    kind = type(value)
    if kind is function_type:
      add_function(value, where)
    elif isinstance(value, type):
      add_class(value)
    elif isinstance(value, module_type):
      add_module(value)
    elif kind is staticmethod or kind is classmethod:
      visit(value.__func__, where)
    elif kind is types.MethodType or kind is types.BuiltinMethodType:
      owner = value.__self__
      if not isinstance(owner, module_type):
        visit(owner, where + '.__self__')
      if kind is types.MethodType:
        visit(value.__func__, where)
    elif kind is property:
      for part in (value.fget, value.fset, value.fdel):
        if part is not None:
          visit(part, where)
    else:
      try:
        namespace = get_attribute(value, '__dict__')
      except Exception:
        return
      if type(namespace) is dict:
        seen.add(id(value))
        visit(kind, '')
        objects.append((where, value, kind, namespace, tuple(namespace),
                        tuple(v if callable(v) else empty for v in namespace.values())))

  for value in roots:
    visit(value, '')
  for value in classes:
    visit(value, '')
  n_registered = len(registered)
  noted = []
  id_ = id
  registry_name = '__warningregistry__'

  def on_setattr(args):
    name = function_names.get(id_(args[0])) if args else None
    if name is not None and not noted:
      noted.append('%s was changed' % name)

  def first_change(namespace, keys, values, package=None):
    """The first name whose entry differs ('' if none), for module and class namespaces.

    Not changes: a module's ``__warningregistry__`` (added by ``warnings`` when code there
    warns) and, in a package, a submodule imported since (the import system binds it there).
    """
    index, count = 0, len_(keys)
    for key, value in namespace.items():
      if index >= count or key is not keys[index] or value is not values[index]:
        if type_(key) is not str_ or not is_word(key):
          return '?'
        if key == registry_name or (index >= count and package is not None
                                    and type_(value) is module_type
                                    and table.get(package + '.' + key) is value):
          continue
        return key
      index += 1
    return keys[index] if index < count else ''

  def check():
    if noted:
      return noted[0]
    for name, namespace, keys, values in modules:
      key = first_change(namespace, keys, values, name)
      if key:
        return '%s.%s was changed' % (name, key)
    found = 0
    for key, value in table.items():
      if type_(key) is str_:
        module = registered.get(key, empty)
        if module is not empty:
          if value is not module:
            return "sys.modules['%s'] was replaced" % key
          found += 1
    if found != n_registered:
      return 'a module was removed from sys.modules'
    for name, cls, meta, bases, namespace, keys, values in kinds:
      if type_(cls) is not meta or bases_of(cls) is not bases:
        return "%s's class or bases were changed" % name
      key = first_change(namespace, keys, values)
      if key:
        return '%s.%s was changed' % (name, key)
    for name, closure, cells, kwdefaults, kwkeys, kwvalues in functions:
      index = 0
      for cell in closure:
        try:
          value = contents_of(cell)
        except value_error:
          value = empty
        if value is not cells[index]:
          return '%s was changed' % name
        index += 1
      if first_change(kwdefaults, kwkeys, kwvalues):
        return "%s's defaults were changed" % name
    for name, value, kind, namespace, keys, callables in objects:
      if type_(value) is not kind:
        return "%s's class was changed" % name
      try:
        if get_attribute(value, '__dict__') is not namespace:
          return '%s was changed' % name
      except base_exception:
        return '%s was changed' % name
      index, count = 0, len_(keys)
      for key, item in namespace.items():
        if index >= count or key is not keys[index]:
          if type_(key) is str_ and is_word(key):
            return '%s was given the attribute %s' % (name, key)
          return '%s was given an attribute' % name
        if callables[index] is not empty and item is not callables[index]:
          return '%s.%s was changed' % (name, keys[index])
        index += 1
      if index != count:
        return '%s lost an attribute' % name
    return ''

  return check, on_setattr


def _make_plain_copy(collections):
  """``plain_copy(value)``: (a deep copy, '') when ``value`` is built only from exact builtin
  types (int, float, complex, bool, str, bytes, None, list, tuple, dict, set, frozenset) and
  the standard containers ``collections.Counter``, ``OrderedDict``, ``defaultdict`` and
  ``deque`` (a copied ``defaultdict`` keeps its default factory only when that is a builtin
  type), else (None, a phrase naming the first other type found). Only closure variables are
  used, and no method a subclass could override is called.
  """
  type_, list_, tuple_, dict_, set_, frozenset_ = type, list, tuple, dict, set, frozenset
  int_, float_, complex_, bool_, str_, bytes_, none = int, float, complex, bool, str, bytes, \
      type(None)
  counter, ordered, default, deque = (collections.Counter, collections.OrderedDict,
                                      collections.defaultdict, collections.deque)
  items, set_item = dict.items, dict.__setitem__
  ordered_items, ordered_set_item = ordered.items, ordered.__setitem__
  factory_of = default.__dict__['default_factory'].__get__
  maxlen_of = deque.__dict__['maxlen'].__get__
  factories = (int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset)
  name_of = type.__dict__['__name__'].__get__
  str_copy, is_word = str.__str__, str.isidentifier
  base_exception = BaseException
  bad = object()
  culprit = [None]
  max_depth = _MAX_DEPTH

  def copy_items(pairs, out, depth, store=set_item):
    for key, item in pairs:
      key, item = copy(key, depth + 1), copy(item, depth + 1)
      if key is bad or item is bad:
        return bad
      store(out, key, item)
    return out

  def copy(value, depth):
    kind = type_(value)
    if (kind is int_ or kind is str_ or kind is float_ or kind is bool_ or kind is none
        or kind is bytes_ or kind is complex_):
      return value
    if depth >= max_depth:
      culprit[0] = 'containers nested more than %d deep' % max_depth
      return bad
    if (kind is list_ or kind is tuple_ or kind is set_ or kind is frozenset_
        or kind is deque):
      out = []
      for item in value:
        item = copy(item, depth + 1)
        if item is bad:
          return bad
        out.append(item)
      if kind is deque:
        return deque(out, maxlen_of(value))
      return out if kind is list_ else kind(out)
    if kind is dict_:
      return copy_items(items(value), {}, depth)
    if kind is counter:
      return copy_items(items(value), counter(), depth)
    if kind is ordered:
      return copy_items(ordered_items(value), ordered(), depth, ordered_set_item)
    if kind is default:
      factory = factory_of(value)
      for allowed in factories:
        if factory is allowed:
          break
      else:
        factory = None
      return copy_items(items(value), default(factory), depth)
    try:
      name = str_copy(name_of(kind))
      name = name[:60] if is_word(name) else '?'
    except base_exception:
      name = '?'
    culprit[0] = ('a container holding an object of type %s' if depth
                  else 'an object of type %s') % name
    return bad

  def plain_copy(value):
    culprit[0] = None
    result = copy(value, 0)
    if result is bad:
      return None, culprit[0]
    return result, ''

  return plain_copy


def _run_tests(job, facts, report, exit_now):
  """Runs the program, then the setup and the tests against what the program exposes.

  The tests see the exposed names through wrappers (unless the job turns ``check_results``
  off, or lists a name in ``unchecked``): a call's result reaches the test only as a deep copy
  built from exact builtin types, and an exception only as a fresh exception of the same
  builtin type with such arguments; anything else (an object with its own ``__eq__``, a
  ``list`` subclass, ``StopIteration``, a custom exception), and an argument the call filled
  with other objects, fails the test. Before each test and after each call, ``_make_guard``'s
  check must find the shared modules and classes unchanged and no thread of the program may
  still run; automatic garbage collection is off during the tests, so finalisers of the
  program's objects run only in the collection made before the first check.
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
  forbidden = _forbidden_class()
  # collections too: results may be its containers, whose comparisons are its code.
  guard, on_setattr = _make_guard([builtins, collections] + real_modules, [_Refused, forbidden])
  hook = _make_audit_hook(not facts['net_isolated'], not facts['uid_dropped'], violations,
                          forbidden, on_setattr)
  plain_copy = _make_plain_copy(collections)
  re_module = sys.modules.get('re')
  purge = re_module.purge if 're' in job['modules'] and re_module is not None else None
  threads, collect, disable_gc = _thread._count, gc.collect, gc.disable
  # Exceptions a call may pass to the tests (as fresh copies): the builtin ones, less those
  # that steer control flow (StopIteration ends a ``map``) and groups (they nest others).
  control = tuple(getattr(builtins, name) for name in (
      'StopIteration', 'StopAsyncIteration', 'GeneratorExit', 'KeyboardInterrupt', 'SystemExit',
      'BaseExceptionGroup') if hasattr(builtins, name))
  passable = {}
  for value in builtins.__dict__.values():
    if (isinstance(value, type) and issubclass(value, BaseException)
        and not issubclass(value, control)):
      passable[id(value)] = value
  args_of = BaseException.__dict__['args'].__get__
  report('ready ' + json.dumps(facts))
  compile_, exec_, type_, id_, callable_ = compile, exec, type, id, callable
  list_, dict_, set_, tuple_ = list, dict, set, tuple
  base_exception, refused_error = BaseException, _Refused
  name_of = type.__dict__['__name__'].__get__
  str_copy = str.__str__
  is_word = str.isidentifier
  program, setup, tests = job['program'], job['setup'], list(job['tests'])
  expose, modules = list(job['expose']), list(trusted_modules.items())
  check_results, unchecked = job.get('check_results', True), list(job.get('unchecked', ()))
  n_tests = len(tests)
  refusals, watched = [], []
  sys.addaudithook(hook)
  del job, hook

  def kind_of(exc):
    return name_for(type_(exc))

  def name_for(kind):
    try:
      name = str_copy(name_of(kind))
    except base_exception:
      return 'Unknown'
    return name[:60] if is_word(name) else 'Unknown'

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

  def refuse(reason):
    if not refusals:
      refusals.append(reason)
    raise refused_error(reason)

  def wrap(name, function):
    def call(*args, **kwargs):
      try:
        watch(args, kwargs)
      except base_exception:
        refuse('ResultRefused the arguments of %s could not be checked' % name)
      try:
        result = function(*args, **kwargs)
      except base_exception as exc:
        try:
          fresh, problem = settle_error(name, exc)
        except base_exception:
          fresh, problem = None, 'ResultRefused what %s raised could not be checked' % name
        if problem:
          refuse(problem)
        raise fresh from None
      try:
        copy, problem = settle_result(name, result)
      except base_exception:
        copy, problem = None, 'ResultRefused what %s returned could not be checked' % name
      if problem:
        refuse(problem)
      return copy

    call.__name__ = call.__qualname__ = name
    return call

  def watch(args, kwargs):
    """Keeps the containers built from builtin types among the arguments, to check them
    again after each call of this test (the program may keep them and fill them later)."""
    for value in args:
      kind = type_(value)
      if (kind is list_ or kind is dict_ or kind is set_ or kind is tuple_) and not plain_copy(
          value)[1]:
        watched.append(value)
    for value in kwargs.values():
      kind = type_(value)
      if (kind is list_ or kind is dict_ or kind is set_ or kind is tuple_) and not plain_copy(
          value)[1]:
        watched.append(value)

  def settle_result(name, result):
    problem = after_call(name)
    if problem:
      return None, problem
    copy, culprit = plain_copy(result)
    if culprit:
      return None, ('ResultRefused %s returned %s, not a value built from builtin types'
                    % (name, culprit))
    return copy, ''

  def settle_error(name, exc):
    """A fresh copy of a builtin exception with plain arguments, or the reason there is none."""
    kind = type_(exc)
    problem = after_call(name)
    if problem:
      return None, problem
    if passable.get(id_(kind)) is not kind:
      return None, 'ResultRefused %s raised %s, not a builtin exception' % (name, name_for(kind))
    arguments, culprit = plain_copy(args_of(exc))
    if culprit:
      return None, ('ResultRefused %s raised %s with arguments not built from builtin types'
                    % (name, name_for(kind)))
    return kind(*arguments), ''

  def after_call(name):
    problem = shared_state()
    if problem:
      return problem
    for value in watched:
      culprit = plain_copy(value)[1]
      if culprit:
        return ('ResultRefused %s left an argument holding an object not built from builtin '
                'types' % name)
    return ''

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
    del refusals[:], watched[:]
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
