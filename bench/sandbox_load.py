r"""Load on the code sandbox: a batch of programs through ``Sandbox.run_batch``, default workers.

  PYTHONPATH=. python bench/sandbox_load.py               # 512 programs, 2 s limit
  PYTHONPATH=. python bench/sandbox_load.py --programs=64

The batch mixes HumanEval jobs of four kinds, shuffled: correct (the canonical solutions),
wrong (``return None``), slow (a busy loop or a long sleep: each runs into the wall-clock
limit) and hostile (fork bombs, escaped daemons, memory, output and file floods, kills,
network, reward hacks). It reports programs/s, the outcome per kind, the machine's processes
before and after (none of the sandbox's may be left, and the caller has no children left), and
that the calling process is as it was (signal handlers, working directory, descriptors,
threads, environment). Exits with status 1 when an outcome or a check is not as expected.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

from score_jax import tasks
from score_jax.rewards.sandbox import Sandbox, SandboxConfig, Status
from score_jax.tasks.code import humaneval_package_paths

_PROGRAMS = flags.DEFINE_integer('programs', 512, 'Programs in the batch.')
_TIMEOUT = flags.DEFINE_float('timeout_s', 2.0, 'Wall-clock limit per program.')
_SEED = flags.DEFINE_integer('seed', 0, 'Shuffles the batch.')

# The batch's shares of each kind (the rest is correct).
SHARES = {'wrong': 0.15, 'slow': 0.05, 'hostile': 0.20}
SANDBOX_UIDS = 100_000  # the sandbox's throw-away uids are at least this

SLOW = ('\nwhile True:\n  pass\n', '\nimport time\ntime.sleep(3600)\n')
# Appended to a HumanEval prompt after a body that returns None (or, starting with an indented
# line, as the body itself): none of them may pass.
HOSTILE = {
    'fork_bomb': 'import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass\n',
    'escaped_daemons': ('import os, time\nfor _ in range(4):\n  if os.fork() == 0:\n'
                        '    os.setsid()\n    if os.fork() == 0:\n      time.sleep(3600)\n'
                        '    os._exit(0)\n'),
    'memory_bomb': 'x = bytearray(1 << 34)\n',
    'stdout_flood': 'while True:\n  print("y" * 100000)\n',
    'stderr_flood': 'import sys\nfor _ in range(10**6):\n  sys.stderr.write("x" * 10**4)\n',
    'file_flood': ('i = 0\nwhile True:\n  try:\n    open("f%d" % i, "w").write("x" * 10**6)\n'
                   '  except OSError:\n    break\n  i += 1\n'),
    'kill_everything': ('import os, signal\nfor target in (-1, os.getppid(), 1):\n  try:\n'
                        '    os.kill(target, signal.SIGKILL)\n  except Exception:\n    pass\n'),
    'network': ('import socket\ntry:\n  socket.create_connection(("1.1.1.1", 80), timeout=1)\n'
                'except Exception:\n  pass\n'),
    'thread_swarm': ('import threading, time\nfor _ in range(64):\n  try:\n'
                     '    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n'
                     '  except Exception:\n    break\n'),
    'exit_early': 'import os\nos._exit(0)\n',
    'patch_builtins': 'import builtins\nbuiltins.AssertionError = type("Quiet", (Exception,), {})\n',
    'always_equal': ('    return Same()\nclass Same:\n  def __eq__(self, other):\n'
                     '    return True\n'),
    'read_the_answers': '    import gzip\n    return gzip.open(ANSWERS).read()\n',
}


def census() -> dict:
  """The machine's processes: how many, how many run under a sandbox uid, and this process's
  live descendants."""
  me, total, sandboxed, parents = os.getpid(), 0, 0, {}
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/stat', 'rb') as f:
        stat = f.read()
      uid = os.stat(f'/proc/{pid}').st_uid
    except OSError:
      continue
    total += 1
    sandboxed += uid >= SANDBOX_UIDS
    parents[int(pid)] = int(stat[stat.rfind(b')') + 2:].split()[1])
  descendants = 0
  for pid in parents:
    ancestor = parents.get(pid)
    while ancestor and ancestor != me:
      ancestor = parents.get(ancestor)
    descendants += ancestor == me
  return dict(processes=total, sandbox_uid_processes=sandboxed, descendants=descendants)


def caller_state() -> dict:
  """What a batch must leave as it was in the calling process."""
  handlers = {s.name: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGCHLD, signal.SIGPIPE)}
  try:
    os.waitpid(-1, os.WNOHANG)
    children = 'some'
  except ChildProcessError:
    children = 'none'
  return dict(pid=os.getpid(), pgid=os.getpgid(0), cwd=os.getcwd(), handlers=handlers,
              fds=len(os.listdir('/proc/self/fd')), threads=threading.active_count(),
              environ=dict(os.environ), children=children)


def build_batch(task, n: int, seed: int) -> list[tuple[str, str, object]]:
  """(kind, name, job) for ``n`` programs of the four kinds, shuffled."""
  problems = list(task.load_split('test', ''))
  answers = os.path.join(humaneval_package_paths()[0], 'data', 'HumanEval.jsonl.gz')
  counts = {kind: round(n * share) for kind, share in SHARES.items()}
  counts['correct'] = n - sum(counts.values())
  batch = []
  for kind, count in counts.items():
    for i in range(count):
      example = problems[(i * 7 + len(batch)) % len(problems)]
      canonical = example.answer[len(example.problem):]
      if kind == 'correct':
        name, body = example.id, canonical
      elif kind == 'wrong':
        name, body = example.id, '    return None\n'
      elif kind == 'slow':
        name, body = ('busy_loop', 'sleep')[i % 2], '    return None\n' + SLOW[i % 2]
      else:
        name = sorted(HOSTILE)[i % len(HOSTILE)]
        body = HOSTILE[name].replace('ANSWERS', repr(answers))
        if not body.startswith('    '):
          body = '    return None\n' + body
      batch.append((kind, name, task.job(example, task.program(example, body))))
  random.Random(seed).shuffle(batch)
  return batch


def main(argv):
  del argv
  task = tasks.get_task('humaneval', timeout_s=_TIMEOUT.value)
  sandbox = Sandbox(SandboxConfig(wall_timeout_s=_TIMEOUT.value,
                                  hide_paths=task.default_hide_paths()))
  batch = build_batch(task, _PROGRAMS.value, _SEED.value)
  interpreter = sandbox.python  # probed here, outside the timed batch
  with open('/proc/cpuinfo', encoding='utf-8') as f:
    cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
               '?')
  print(f'{len(batch)} programs, {_TIMEOUT.value:g} s limit, {os.cpu_count()} CPUs ({cpu}), '
        f'default workers; interpreter {interpreter}')
  sentinel = tempfile.NamedTemporaryFile('w', prefix='sandbox-load-', delete=False)
  sentinel.write('original')
  sentinel.close()
  os.chmod(sentinel.name, 0o666)
  before_state, before = caller_state(), census()
  start = time.perf_counter()
  results = sandbox.run_batch([job for _, _, job in batch])
  wall_s = time.perf_counter() - start
  time.sleep(0.5)  # anything left would still be there
  after, after_state = census(), caller_state()
  problems = []
  print(f'wall {wall_s:.1f} s: {len(batch) / wall_s:.1f} programs/s')
  outcomes = collections.defaultdict(collections.Counter)
  hostile = collections.defaultdict(collections.Counter)
  for (kind, name, _), result in zip(batch, results):
    outcomes[kind][result.status.value] += 1
    if kind == 'hostile':
      hostile[name][result.status.value] += 1
  expected = {'correct': {Status.PASSED}, 'wrong': {Status.FAILED}, 'slow': {Status.TIMEOUT}}
  for kind in ('correct', 'wrong', 'slow', 'hostile'):
    print(f'  {kind:8s} {sum(outcomes[kind].values()):4d}: {dict(outcomes[kind])}')
    if kind in expected:
      unexpected = sum(n for status, n in outcomes[kind].items()
                       if Status(status) not in expected[kind])
    else:  # hostile: anything but a pass
      unexpected = outcomes[kind][Status.PASSED.value]
    if unexpected:
      problems.append(f'{unexpected} {kind} program(s) ended otherwise than expected')
  for name in sorted(hostile):
    print(f'    {name:18s} {dict(hostile[name])}')
  slowest = max(r.wall_s for r in results)
  print(f'slowest program {slowest:.1f} s; processes before {before}, after {after}')
  if after['sandbox_uid_processes'] or after['descendants']:
    problems.append('processes were left behind')
  with open(sentinel.name, encoding='utf-8') as f:
    if f.read() != 'original':
      problems.append('a world-writable file outside the sandbox was changed')
  os.unlink(sentinel.name)
  changed = [k for k in before_state if before_state[k] != after_state[k]]
  print('calling process: ' + ('unchanged (' + ', '.join(before_state) + ')' if not changed
                               else f'changed: {changed}'))
  if changed:
    problems.append(f'the calling process changed: {changed}')
  for problem in problems:
    print(f'PROBLEM: {problem}')
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  app.run(main)
