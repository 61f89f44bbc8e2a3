"""Reward hacks against the code sandbox: each is scored as not passing, with the reason.

Every program here would pass its test if the sandbox believed what the program's objects say
about themselves, or let the program change what the tests rely on. They all run once, in one
batch (module fixture), next to legitimate programs that must still pass.
"""

import re

import pytest

from score_jax.rewards.sandbox import Job, Sandbox, SandboxConfig, Status

# An object that claims to equal, and be close to, anything.
MAGIC = '''
class Magic:
  def __eq__(self, other): return True
  def __ne__(self, other): return False
  __lt__ = __le__ = __gt__ = __ge__ = __eq__
  def __bool__(self): return True
  def __abs__(self): return 0
  def __sub__(self, other): return self
  __rsub__ = __add__ = __radd__ = __sub__
  def __hash__(self): return 0
class MagicStr(str):
  def __eq__(self, other): return True
  __hash__ = str.__hash__
'''
COUNTER_TEST = ('assert collections.Counter(f("abca")) == '
                'collections.Counter({"a": 2, "b": 1, "c": 1})')
REFUSED_RESULT = 'ResultRefused f returned {}, not a value built from builtin types'


def _job(program, tests=('assert f() == 1',), expose=('f',), **kw):
  return Job(program=program, tests=tuple(tests), expose=tuple(expose), **kw)


def _median_job(patch):
  """A job whose ``f`` is honest ([1, 5, 9], median 5) and whose program first runs
  ``patch``, which tries to make the test's ``statistics.median`` say 2."""
  return _job(patch + 'def f():\n  return [1, 5, 9]',
              tests=('assert statistics.median(f()) == 2',), modules=('statistics',))


# name: (job, status, the reason the sandbox gives, as a regular expression)
HACKS = {
    # The results a program returns cannot decide a comparison.
    'always_equal': (_job(MAGIC + 'def f():\n  return Magic()', tests=('assert f() == [1]',)),
                     Status.FAILED, REFUSED_RESULT.format('an object of type Magic')),
    'list_subclass': (_job('class L(list):\n  def __eq__(s, o): return True\n'
                           'def f():\n  return L()', tests=('assert f() == [1, 2]',)),
                      Status.FAILED, REFUSED_RESULT.format('an object of type L')),
    'int_subclass': (_job('class I(int):\n  def __eq__(s, o): return True\n'
                          '  __hash__ = int.__hash__\ndef f():\n  return I(0)'),
                     Status.FAILED, REFUSED_RESULT.format('an object of type I')),
    'float_subclass': (_job('class F(float):\n  def __sub__(s, o): return F(0)\n'
                            'def f():\n  return F(9.0)', tests=('assert abs(f() - 2.5) < 1e-6',)),
                       Status.FAILED, REFUSED_RESULT.format('an object of type F')),
    'str_subclass': (_job(MAGIC + 'def f():\n  return MagicStr("no")',
                          tests=('assert f() == "yes"',)),
                     Status.FAILED, REFUSED_RESULT.format('an object of type MagicStr')),
    'dict_subclass': (_job('class D(dict):\n  def __eq__(s, o): return True\n'
                           'def f():\n  return D()', tests=('assert f() == {"a": 1}',)),
                      Status.FAILED, REFUSED_RESULT.format('an object of type D')),
    'magic_inside_a_list': (
        _job(MAGIC + 'def f():\n  return [1, Magic()]', tests=('assert f() == [1, 2]',)),
        Status.FAILED, REFUSED_RESULT.format('a container holding an object of type Magic')),
    'bool_override': (_job(MAGIC + 'def f():\n  return Magic()', tests=('assert f()',)),
                      Status.FAILED, REFUSED_RESULT.format('an object of type Magic')),
    'nan_like': (_job(MAGIC + 'def f():\n  return Magic()',
                      tests=('assert abs(f() - 2.5) < 1e-6',)),
                 Status.FAILED, REFUSED_RESULT.format('an object of type Magic')),
    'entry_point_is_a_class': (
        _job('class f:\n  def __init__(self, *a): pass\n  def __eq__(self, o): return True'),
        Status.FAILED, REFUSED_RESULT.format('an object of type f')),
    'exposed_object': (_job(MAGIC + 'f = Magic()', tests=('assert f == 1',)),
                       Status.FAILED, 'ResultRefused f is an object of type Magic'),
    # StopIteration inside map() ends the iteration: all() of nothing is True.
    'stop_iteration_in_map': (
        _job('def f(x):\n  raise StopIteration', tests=('assert all(map(f, [1, 2, 3]))',)),
        Status.FAILED, 'ResultRefused f raised StopIteration, not a builtin exception'),
    'custom_exception': (
        _job(MAGIC + 'class Bad(ValueError):\n  def __str__(self): return MagicStr("x")\n'
             'def f(x):\n  raise Bad()',
             tests=('try:\n  f(-1)\n  raise AssertionError("no error")\n'
                    'except ValueError as e:\n  assert str(e) == "negative"',)),
        Status.FAILED, 'ResultRefused f raised Bad, not a builtin exception'),
    'exception_with_magic_arguments': (
        _job(MAGIC + 'def f(x):\n  raise ValueError(Magic())',
             tests=('try:\n  f(-1)\n  raise AssertionError("no error")\n'
                    'except ValueError as e:\n  assert e.args[0] == "negative"',)),
        Status.FAILED, 'ResultRefused f raised ValueError with arguments not built from'),
    'sys_exit_in_a_call': (
        _job('import sys\ndef f():\n  sys.exit(0)',
             tests=('try:\n  f()\nexcept BaseException:\n  pass',)),
        Status.FAILED, 'ResultRefused f raised SystemExit, not a builtin exception'),
    'argument_filled_with_magic': (
        _job(MAGIC + 'def f(xs):\n  xs[:] = [Magic() for _ in xs]',
             tests=('xs = [3, 1, 2]\nf(xs)\nassert xs == [1, 2, 3]',)),
        Status.FAILED, 'ResultRefused f left an argument holding an object not built from'),
    'thread_left_running': (
        _job('import threading, time\ndef spin():\n  while True:\n    time.sleep(0.001)\n'
             'threading.Thread(target=spin, daemon=True).start()\ndef f():\n  return 1'),
        Status.FAILED, r'ThreadRunning the program left 1 thread\(s\) running'),
    # Shared classes, functions and modules the tests use cannot be changed.
    'counter_returned_after_patching': (
        _job('import collections\ncollections.Counter.__eq__ = lambda s, o: True\n'
             'def f():\n  return collections.Counter()', tests=('assert f() == {"a": 1}',)),
        Status.FAILED, 'Tampered collections.Counter.__eq__ was changed by the program'),
    'defaultdict_with_program_factory': (
        _job(MAGIC + 'import collections\ndef f():\n  return collections.defaultdict(Magic)',
             tests=('assert f()["anything"] == 5',)),
        Status.FAILED, 'test 0: KeyError'),
    'counter_eq_patched': (
        _job('import collections\ncollections.Counter.__eq__ = lambda s, o: True\n'
             'def f(s):\n  return ""', tests=(COUNTER_TEST,), modules=('collections',)),
        Status.FAILED, 'Tampered collections.Counter.__eq__ was changed by the program'),
    'counter_eq_code_swapped': (
        _job('import collections\ncollections.Counter.__eq__.__code__ = '
             '(lambda self, other: True).__code__\ndef f(s):\n  return ""',
             tests=(COUNTER_TEST,), modules=('collections',)),
        Status.FAILED, 'Tampered collections.Counter.__eq__ was changed by the program'),
    'patched_in_a_call_and_restored': (
        _job('import collections\nkeep = collections.Counter.__eq__\n'
             'def f(s):\n  if s:\n    collections.Counter.__eq__ = lambda a, b: True\n'
             '  else:\n    collections.Counter.__eq__ = keep\n  return ""',
             tests=(COUNTER_TEST + '\nf("")',), modules=('collections',)),
        Status.FAILED, 'Tampered collections.Counter.__eq__ was changed by the program'),
    'finalizer_patches_later': (
        _job('import collections\nclass Bomb:\n  def __del__(self):\n'
             '    collections.Counter.__eq__ = lambda s, o: True\n'
             'b = Bomb()\nb.cycle = b\ndel b\ndef f(s):\n  return ""',
             tests=(COUNTER_TEST,), modules=('collections',)),
        Status.FAILED, 'Tampered collections.Counter.__eq__ was changed by the program'),
    'builtin_used_by_the_stdlib': (  # statistics.median calls the real builtins' sorted
        _median_job('import builtins\nbuiltins.sorted = lambda d, **k: [2, 2, 2]\n'),
        Status.FAILED, 'Tampered builtins.sorted was changed by the program'),
    'stdlib_global_shadowed': (
        _median_job('import statistics\nstatistics.sorted = lambda d, **k: [2, 2, 2]\n'),
        Status.FAILED, 'Tampered statistics.sorted was changed by the program'),
    'stdlib_code_swapped': (
        _median_job('import statistics\nstatistics.median.__code__ = (lambda data: 2).__code__\n'),
        Status.FAILED, 'Tampered statistics.median was changed by the program'),
    'isinstance_and_type_patched': (
        _job('import builtins\nbuiltins.isinstance = lambda *a: True\n'
             'builtins.type = lambda *a: int\ndef f():\n  return "x"',
             tests=('assert isinstance(f(), int) and type(f()) is int',)),
        Status.FAILED, 'Tampered builtins.isinstance was changed by the program'),
    'assertion_error_patched': (
        _job('import builtins\nclass Quiet(Exception):\n  pass\nbuiltins.AssertionError = Quiet\n'
             'def f():\n  return 2'),
        Status.FAILED, 'Tampered builtins.AssertionError was changed by the program'),
    'module_replaced_in_sys_modules': (
        _job('import sys, types\nfake = types.ModuleType("collections")\n'
             'fake.Counter = lambda *a: 1\nsys.modules["collections"] = fake\n'
             'def f(s):\n  return ""', tests=(COUNTER_TEST,), modules=('collections',)),
        Status.FAILED, r"Tampered sys.modules\['collections'\] was replaced by the program"),
    'random_generator_patched': (  # HumanEval/38-style random inputs made constant
        _job('import random\nrandom._inst._randbelow = lambda n: 0\n'
             'def f(s):\n  return s',
             tests=('from random import randint, choice\nfor _ in range(20):\n'
                    '  s = "".join(choice("abc") for _ in range(randint(2, 9)))\n'
                    '  assert f(s[::-1]) == s',), modules=('random',)),
        Status.FAILED, 'Tampered random._inst was given the attribute _randbelow'),
    # The report cannot be forged or cut short.
    'report_file_read_back': (  # the first report line holds the nonce
        _job('import os\nfor fd in range(3, 64):\n  try:\n    os.lseek(fd, 0, 0)\n'
             '    data = os.read(fd, 4096)\n  except OSError:\n    continue\n'
             '  if b" ready " in data:\n    nonce = data.split(b" ")[0]\n'
             '    os.write(fd, nonce + b" test 0 ok\\n" + nonce + b" done 1 1\\n")\n'
             '    os._exit(0)\ndef f():\n  return 2'),
        Status.FAILED, 'test 0: AssertionError'),
    'os_exit_in_a_call': (_job('import os\ndef f():\n  os._exit(0)'),
                          Status.CRASHED, 'exited with status 0 after 0/1 tests'),
    'exit_before_the_tests': (_job('import os\ndef f():\n  return 1\nos._exit(0)'),
                              Status.CRASHED, 'exited with status 0 after 0/1 tests'),
}

LEGITIMATE = {
    'nested_builtin_result': _job(
        'def f():\n  return {"a": [1, (2, 3.5)], "b": {4, 5}, "c": frozenset(), "d": b"x",'
        ' "e": None, "g": 2j, "h": True}',
        tests=('assert f() == {"a": [1, (2, 3.5)], "b": {4, 5}, "c": frozenset(), '
               '"d": b"x", "e": None, "g": 2j, "h": True}',)),
    'expected_exception': _job(
        'def f(x):\n  if x < 0:\n    raise ValueError("negative")\n  return x',
        tests=('try:\n  f(-1)\n  raise AssertionError("no error")\n'
               'except ValueError as e:\n  assert str(e) == "negative"', 'assert f(2) == 2')),
    'sorts_in_place': _job('def f(xs):\n  xs.sort()',
                           tests=('xs = [3, 1, 2]\nf(xs)\nassert xs == [1, 2, 3]',)),
    'class_as_input': _job(
        'class Pair:\n  def __init__(self, a, b):\n    self.a, self.b = a, b\n'
        'def f(pairs):\n  return sum(p.b - p.a for p in pairs)',
        tests=('assert f([Pair(1, 2), Pair(3, 5)]) == 3',), expose=('f', 'Pair'),
        unchecked=('Pair',)),
    'standard_library_in_use': _job(
        'import collections, dataclasses, enum, functools, random, re, threading, typing, '
        'warnings, abc\nrandom.seed(1)\nrandom.gauss(0, 1)\n'
        'class Color(enum.Enum):\n  RED = 1\n@dataclasses.dataclass\nclass P:\n  x: int\n'
        'class N(typing.NamedTuple):\n  y: int\nclass S(collections.abc.Sized):\n'
        '  def __len__(self): return 1\ncollections.abc.Sequence.register(S)\n'
        'warnings.warn("careful")\nbox = []\nt = threading.Thread(target=box.append, args=(1,))\n'
        't.start(); t.join()\n@functools.lru_cache(None)\n'
        'def f(s):\n  return len(re.findall("a", s)) + Color.RED.value + P(0).x + N(0).y '
        '+ box[0] - 2',
        tests=('assert f("banana") == 3', 'assert re.match("b", "b") and random.random() < 1',
               'assert collections.Counter(str(f("a"))) == collections.Counter("1")'),
        modules=('collections', 're', 'random', 'typing', 'enum')),
    'standard_containers': _job(  # their comparisons are the (guarded) standard library's
        'import collections\ndef f():\n  return [collections.Counter("abca"), '
        'collections.OrderedDict([(2, "b"), (1, "a")]), collections.defaultdict(list, x=[1]), '
        'collections.deque([1, 2], maxlen=3)]',
        tests=('c, o, d, q = f()\nassert c == {"a": 2, "b": 1, "c": 1} and c["z"] == 0',
               'assert list(f()[1]) == [2, 1] and f()[1] == collections.OrderedDict('
               '[(2, "b"), (1, "a")])',
               'd = f()[2]\nassert d == {"x": [1]} and d["y"] == [] and f()[3].maxlen == 3'),
        modules=('collections',)),
    'results_unchecked_by_choice': _job('def f():\n  yield 1', tests=('assert list(f()) == [1]',),
                                        check_results=False),
}
# The limits of what a checked result may be: a generator or a namedtuple is refused.
LIMITS = {
    'generator_result': (_job('def f():\n  yield 1', tests=('assert list(f()) == [1]',)),
                         Status.FAILED, REFUSED_RESULT.format('an object of type generator')),
    'namedtuple_result': (
        _job('import collections\nP = collections.namedtuple("P", "x y")\n'
             'def f():\n  return P(1, 2)', tests=('assert f() == (1, 2)',)),
        Status.FAILED, REFUSED_RESULT.format('an object of type P')),
}


@pytest.fixture(scope='module')
def results():
  jobs = {name: spec[0] for name, spec in {**HACKS, **LIMITS}.items()}
  jobs.update(LEGITIMATE)
  sandbox = Sandbox(SandboxConfig(wall_timeout_s=5.0))
  return dict(zip(jobs, sandbox.run_batch(list(jobs.values()))))


@pytest.mark.parametrize('name', sorted(HACKS) + sorted(LIMITS))
def test_hack_is_not_a_pass(results, name):
  _, status, reason = {**HACKS, **LIMITS}[name]
  result = results[name]
  assert not result.passed
  assert result.status == status, (result.status, result.detail, result.stderr_tail)
  assert re.search(reason, result.detail), result.detail


@pytest.mark.parametrize('name', sorted(LEGITIMATE))
def test_legitimate_program_passes(results, name):
  result = results[name]
  assert result.passed, (result.status, result.detail, result.stderr_tail)
