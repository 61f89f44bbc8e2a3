"""What the code sandbox's tests receive from the program: checked copies, never its objects.

Loaded by ``sandbox_harness.py`` before any untrusted code runs. ``make_plain_copy`` copies a
value built from exact builtin types (and refuses any other); ``make_wrapper`` gives the tests a
wrapper for each function the program exposes, through which a result (or an exception) reaches
a test only as such a copy. Every function made here uses only its closure: the program may
rebind any global or builtin before they run. Standard library only.
"""

MAX_DEPTH = 100  # how deeply a result may nest containers


class Refused(BaseException):
  """Ends a test whose program did something the harness does not accept (see ``make_wrapper``).

  A BaseException, so that a test's own ``except Exception`` does not catch it; the reason is
  also recorded where the program cannot reach it, so a test that catches it anyway fails.
  """


def passable_exceptions(builtins):
  """The exceptions a call may pass to the tests (as fresh copies), by id: the builtin ones, less
  those that steer control flow (StopIteration ends a ``map``) and groups (they nest others)."""
  control = tuple(getattr(builtins, name) for name in (
      'StopIteration', 'StopAsyncIteration', 'GeneratorExit', 'KeyboardInterrupt', 'SystemExit',
      'BaseExceptionGroup') if hasattr(builtins, name))
  passable = {}
  for value in builtins.__dict__.values():
    if (isinstance(value, type) and issubclass(value, BaseException)
        and not issubclass(value, control)):
      passable[id(value)] = value
  return passable


def make_name_for():
  """``name_for(kind)``: a class's name as a plain identifier of at most 60 characters, or
  'Unknown' (the program may have made the name anything)."""
  name_of = type.__dict__['__name__'].__get__
  str_copy, is_word = str.__str__, str.isidentifier
  base_exception = BaseException

  def name_for(kind):
    try:
      name = str_copy(name_of(kind))
    except base_exception:
      return 'Unknown'
    return name[:60] if is_word(name) else 'Unknown'

  return name_for


def make_plain_copy(collections):
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
  max_depth = MAX_DEPTH

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


def make_wrapper(plain_copy, shared_state, passable, refusals):
  """``(wrap, reset)``: ``wrap(name, function)`` is what the tests call instead of ``function``.

  A call's result reaches the test only as ``plain_copy``'s copy, and an exception only as a
  fresh exception of the same builtin type (one of ``passable``) with such arguments; anything
  else (an object with its own ``__eq__``, a ``list`` subclass, ``StopIteration``, a custom
  exception), an argument the call filled with other objects, or a change ``shared_state``
  reports after the call, raises ``Refused``, and the first reason of a test is appended to
  ``refusals``. ``reset()`` forgets the arguments watched during the previous test.
  """
  type_, id_ = type, id
  list_, dict_, set_, tuple_ = list, dict, set, tuple
  base_exception, refused_error = BaseException, Refused
  args_of = BaseException.__dict__['args'].__get__
  name_for = make_name_for()
  watched = []

  def refuse(reason):
    if not refusals:
      refusals.append(reason)
    raise refused_error(reason)

  def checked(settle, name, value, verb):
    try:
      return settle(name, value)
    except base_exception:
      return None, 'ResultRefused what %s %s could not be checked' % (name, verb)

  def wrap(name, function):
    def call(*args, **kwargs):
      try:
        watch(args)
        watch(kwargs.values())
      except base_exception:
        refuse('ResultRefused the arguments of %s could not be checked' % name)
      try:
        result = function(*args, **kwargs)
      except base_exception as exc:
        fresh, problem = checked(settle_error, name, exc, 'raised')
        if problem:
          refuse(problem)
        raise fresh from None
      copy, problem = checked(settle_result, name, result, 'returned')
      if problem:
        refuse(problem)
      return copy

    call.__name__ = call.__qualname__ = name
    return call

  def watch(values):
    """Keeps the containers built from builtin types among the arguments, to check them
    again after each call of this test (the program may keep them and fill them later)."""
    for value in values:
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

  def reset():
    del watched[:]

  return wrap, reset
