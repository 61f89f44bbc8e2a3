"""The guard of the code sandbox: a record of the shared modules and classes the tests rely on.

Loaded by ``sandbox_harness.py``; ``make_guard`` runs before any untrusted code, and the check it
returns runs before each test and after each call into the program. Standard library only.
"""

import sys

# Modules whose namespace changes in ordinary use, left out of the guard (``make_guard``).
_VOLATILE_MODULES = frozenset(('sys', '__main__'))


def make_guard(roots, classes):
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
