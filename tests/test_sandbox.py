"""The code sandbox against hostile programs: none passes, none harms the caller.

All programs run once, in parallel, in a module-scoped fixture (the slow ones are bounded by
the 2-second wall-clock limit); the tests then check each result and the state around them.
"""

import os
import re
import secrets
import signal
import socket
import threading

import pytest

from score_jax.rewards.sandbox import Job, Sandbox, SandboxConfig, Status

WALL_S = 2.0
ESCAPE = f'/tmp/score_sandbox_escape_{secrets.token_hex(4)}'


def _job(program, tests=('assert f() == 1',), expose=('f',), **kw):
  return Job(program=program, tests=tuple(tests), expose=tuple(expose), **kw)


def _hostile(sentinel: str, port: int) -> dict:
  return {
      'infinite_loop': _job('while True:\n  pass'),
      'fork_bomb': _job('import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n'
                        '    pass'),
      'escaped_sleeper': _job('import os, time\nif os.fork() == 0:\n  os.setsid()\n'
                              '  time.sleep(3600)\ndef f():\n  return 1'),
      'memory_bomb': _job('x = bytearray(1 << 34)\ndef f():\n  return 1'),
      'memory_in_test': _job('def f():\n  return len([0] * (1 << 32))'),
      'stdout_flood': _job('while True:\n  print("y" * 100000)'),
      'stderr_flood': _job('import sys\nfor _ in range(10**6):\n  sys.stderr.write("x" * 10**4)'
                           '\ndef f():\n  return 1'),
      'write_outside': _job(f'def f():\n  with open({sentinel!r}, "w") as out:\n'
                            '    out.write("pwned")\n  return 1'),
      'network': _job('import socket\ndef f():\n'
                      f'  s = socket.create_connection(("127.0.0.1", {port}), timeout=1)\n'
                      '  s.sendall(b"leak")\n  return 1'),
      'exit_before_tests': _job('import os\nos._exit(0)'),
      'sys_exit_in_test': _job('import sys\ndef f():\n  sys.exit(0)'),
      # The report file's first line holds the nonce: the program may only append to it.
      'read_report_back': _job(
          'import os\nfor fd in range(3, 64):\n  try:\n    os.lseek(fd, 0, 0)\n'
          '    data = os.read(fd, 4096)\n  except OSError:\n    continue\n'
          '  if b" ready " in data:\n    nonce = data.split(b" ")[0]\n'
          '    os.write(fd, nonce + b" test 0 ok\\n" + nonce + b" done 1 1\\n")\n'
          '    os._exit(0)\ndef f():\n  return 2'),
      'fake_success': _job(
          'import os\nprint("done 1 1")\nprint("passed")\n'
          'for fd in range(3, 60):\n  try:\n    os.write(fd, b"done 1 1\\ntest 0 ok\\n")\n'
          '  except OSError:\n    pass\nos._exit(0)'),
      # Every process it may signal (kill -1), then its parent: passes only if that worked.
      'kill_parent': _job('import os, signal\ndef f():\n'
                          '  os.kill(-1, signal.SIGKILL)\n'
                          '  os.kill(os.getppid(), signal.SIGKILL)\n  return 1'),
      'patch_builtins': _job('import builtins\nbuiltins.abs = lambda x: 0\n'
                             'builtins.AssertionError = SystemError\ndef f():\n  return 5',
                             tests=('assert abs(f() - 1) < 1',)),
      'shadow_builtin': _job('def abs(x):\n  return 0\ndef f():\n  return 5',
                             tests=('assert abs(f() - 1) < 1',), expose=('f', 'abs')),
      'patch_module': _job('import math\nmath.isclose = lambda *a, **k: True\n'
                           'def f():\n  return 5', tests=('assert math.isclose(f(), 1)',),
                           modules=('math',)),
      'redefine_checker': _job('def check(candidate):\n  pass\ndef f():\n  return 5',
                               tests=('check(f)',),
                               setup='def check(candidate):\n  assert candidate() == 1'),
      'find_the_nonce': _job('import sys\nframe = sys._getframe()\nwhile frame.f_back:\n'
                             '  frame = frame.f_back\nprint(frame.f_locals)\n'
                             'def f():\n  return 1'),
      # A signal handler receives the interrupted frame: the program runs where none can be set.
      'signal_frames': _job('import signal\nsignal.signal(signal.SIGALRM, lambda s, f: None)\n'
                            'def f():\n  return 1'),
      'heap_walk': _job('import gc\nobjs = gc.get_objects()\ndef f():\n  return 1'),
      'read_own_memory': _job('open("/proc/self/mem", "rb")\ndef f():\n  return 1'),
      'ctypes': _job('import ctypes\nctypes.string_at(id(1), 8)\ndef f():\n  return 1'),
      'subprocess': _job('import subprocess\nsubprocess.run(["true"])\ndef f():\n  return 1'),
      'syntax_error': _job('def f(:\n  return 1'),
      'wrong_answer': _job('def f():\n  return 2'),
  }


@pytest.fixture(scope='module')
def sandbox():
  return Sandbox(SandboxConfig(wall_timeout_s=WALL_S, max_workers=32))


@pytest.fixture(scope='module')
def outcome(sandbox, tmp_path_factory):
  sentinel = tmp_path_factory.mktemp('around') / 'precious.txt'
  sentinel.write_text('original')
  os.chmod(sentinel, 0o666)  # even a world-writable file in a closed directory is out of reach
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(8)
  server.settimeout(0.2)
  received = []

  def serve():
    while True:
      try:
        connection, _ = server.accept()
      except socket.timeout:
        continue
      except OSError:
        return
      received.append(connection.recv(100))
      connection.close()

  threading.Thread(target=serve, daemon=True).start()
  escape_job = _job(f'open({ESCAPE!r}, "w").write("x")\ndef f():\n  return 1')
  programs = _hostile(str(sentinel), server.getsockname()[1])
  programs['write_private_tmp'] = escape_job
  results = dict(zip(programs, sandbox.run_batch(list(programs.values()))))
  server.close()
  return dict(results=results, sentinel=sentinel, received=received)


EXPECTED = {
    'infinite_loop': {Status.TIMEOUT}, 'fork_bomb': {Status.TIMEOUT},
    'memory_bomb': {Status.MEMORY}, 'memory_in_test': {Status.MEMORY},
    'stdout_flood': {Status.TIMEOUT}, 'stderr_flood': {Status.ERROR},
    'write_outside': {Status.FAILED}, 'network': {Status.FAILED},
    'exit_before_tests': {Status.CRASHED}, 'sys_exit_in_test': {Status.FAILED},
    'fake_success': {Status.CRASHED}, 'read_report_back': {Status.FAILED},
    'kill_parent': {Status.FAILED},
    'patch_builtins': {Status.FAILED}, 'shadow_builtin': {Status.FAILED},
    'patch_module': {Status.FAILED}, 'redefine_checker': {Status.FAILED},
    'find_the_nonce': {Status.FORBIDDEN}, 'heap_walk': {Status.FORBIDDEN},
    'read_own_memory': {Status.FORBIDDEN}, 'signal_frames': {Status.ERROR}, 'ctypes': {Status.FORBIDDEN},
    'subprocess': {Status.FORBIDDEN}, 'syntax_error': {Status.SYNTAX_ERROR},
    'wrong_answer': {Status.FAILED},
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_hostile_program_never_passes(outcome, name):
  result = outcome['results'][name]
  assert not result.passed
  assert result.status in EXPECTED[name], (result.status, result.detail, result.stderr_tail)
  assert result.detail
  assert result.wall_s < WALL_S + 2.0


def test_isolation_was_in_force(outcome):
  isolation = outcome['results']['wrong_answer'].isolation
  if os.geteuid() != 0:
    pytest.skip('namespaces and the uid switch need root')
  assert isolation == dict(net_isolated=True, private_tmp=True, uid_dropped=True)


def test_nothing_around_the_sandbox_was_touched(outcome):
  assert outcome['sentinel'].read_text() == 'original'
  assert outcome['received'] == []
  assert not os.path.exists(ESCAPE)
  assert outcome['results']['escaped_sleeper'].passed  # passing is fine; staying alive is not


def test_no_process_outlives_its_run(outcome):
  del outcome  # every program above has finished
  leftovers = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      uid = os.stat(f'/proc/{pid}').st_uid
    except OSError:
      continue
    if uid >= 100_000:  # the sandbox's throw-away uids
      leftovers.append(pid)
  assert leftovers == []


def test_the_caller_survives(outcome):
  del outcome
  os.kill(os.getpid(), 0)
  assert signal.getsignal(signal.SIGINT) is not None


def test_legitimate_programs_pass(sandbox):
  programs = [
      _job('def f():\n  return 1'),
      _job('from collections import namedtuple, Counter\nimport enum, typing, re, heapq\n'
           'P = namedtuple("P", "x y")\nclass C(enum.Enum):\n  A = 1\n'
           'def f():\n  return P(1, 2).x * C.A.value * Counter("a")["a"]'),
      _job('def f():\n  import math\n  return round(math.cos(0))',
           tests=('assert f() == 1', 'assert math.isclose(f(), 1.0)'), modules=('math',)),
      _job('def f():\n  open("scratch.txt", "w").write("1")\n'
           '  return int(open("scratch.txt").read())'),
      _job('import threading\nbox = []\nt = threading.Thread(target=lambda: box.append(1))\n'
           't.start(); t.join()\ndef f():\n  return box[0]'),
  ]
  results = sandbox.run_batch(programs)
  assert [r.status for r in results] == [Status.PASSED] * len(programs), [
      (r.status, r.detail, r.stderr_tail) for r in results]
  assert results[2].tests_passed == results[2].tests_total == 2


def test_every_test_must_pass(sandbox):
  result = sandbox.run(_job('def f():\n  return 1', tests=('assert f() == 1',
                                                           'assert f() == 2')))
  assert result.status == Status.FAILED and result.tests_passed == 1
  assert 'test 1' in result.detail


def _descendants() -> set[int]:
  parents = {}
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/stat', 'rb') as f:
        stat = f.read()
    except OSError:
      continue
    parents[int(pid)] = int(stat[stat.rfind(b')') + 2:].split()[1])
  found = set()
  for pid in parents:
    ancestor = parents.get(pid)
    while ancestor and ancestor != os.getpid():
      ancestor = parents.get(ancestor)
    if ancestor == os.getpid():
      found.add(pid)
  return found


def test_no_process_outlives_a_batch():
  """Forking, daemonising and session-escaping programs leave no process, of this batch's
  uids or below this process, once run_batch returns (default workers)."""
  say_uid = 'import os, sys, time\nsys.stderr.write("uid=%d\\n" % os.getuid())\nsys.stderr.flush()\n'
  programs = [
      say_uid + 'for _ in range(3):\n  if os.fork() == 0:\n    os.setsid()\n'
      '    if os.fork() == 0:\n      time.sleep(3600)\n    os._exit(0)\ndef f():\n  return 1',
      say_uid + 'for _ in range(5):\n  if os.fork() == 0:\n    time.sleep(3600)\n'
      'def f():\n  return 1',
      say_uid + 'while True:\n  try:\n    os.fork()\n  except OSError:\n    pass',
      say_uid + 'import threading\nthreading.Thread(target=time.sleep, args=(3600,)).start()\n'
      'if os.fork() == 0:\n  os.setpgid(0, 0)\n  time.sleep(3600)\ndef f():\n  return 1',
  ]
  before = _descendants()
  results = Sandbox(SandboxConfig(wall_timeout_s=1.0)).run_batch([_job(p) for p in programs])
  assert _descendants() <= before
  if os.geteuid() != 0:
    return  # the programs ran under this user's uid: the descendants are what can be told
  uids = {int(m) for r in results for m in re.findall(r'uid=(\d+)', r.stderr_tail)}
  assert len(uids) == len(programs), [(r.status, r.stderr_tail) for r in results]
  left = [pid for pid in filter(str.isdigit, os.listdir('/proc'))
          if _uid_of(pid) in uids]
  assert left == []


def _uid_of(pid: str) -> int:
  try:
    return os.stat(f'/proc/{pid}').st_uid
  except OSError:
    return -1
