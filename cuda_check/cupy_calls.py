"""Which CuPy functions, generator methods and array methods minivae calls on the CuPy backend, and
whether the installed CuPy has each with the arguments passed (a helper module of the cuda-check
tests, not a test file). Nothing here touches a device: it reads attributes and signatures.

Two collectors, because neither alone sees everything:
- ``collect_static`` reads the source of the package (an AST walk): every use of ``xp.<name>``
  (``xp``, ``self.xp``, ``backend.xp``, ...), ``special.<name>`` and ``<...>.rng.<name>``, with the
  number of positional arguments and the keyword names of the call; and in the modules that use
  ``xp``, every call of a method that NumPy arrays have (``.sum(...)``, ``.astype(...)``), which
  may be called on something else, so only its name is checked.
- ``recorded_calls`` turns the calls the device guard (tests/device_guard.py) served while the
  device path ran into the same records: array methods with the arguments really passed, and the
  fused kernels with their number of arguments.

A ``Call`` is checked by ``problems``: the name must resolve in CuPy (``xp`` -> ``cupy``,
``special`` -> ``cupyx.scipy.special``, ``rng`` -> ``cupy.random.Generator``, ``array`` ->
``cupy.ndarray``); then, when CuPy exposes a signature, the call's arguments must bind to it.
CuPy exposes one as Python functions' ``inspect.signature``, as the first docstring line of its
Cython methods, and for a ufunc as its numbers of inputs and outputs plus the keywords
``ufunc.__call__`` documents. Where none is exposed, only the name is checked (``unchecked``).
"""

import ast
import inspect
import pathlib
import re
from collections import namedtuple

import cupy
import cupy.cuda.nccl  # noqa: F401  (CuPy loads it only when asked; minivae/distributed.py calls xp.cuda.nccl.*)
import cupyx.scipy.special
import numpy

Call = namedtuple("Call", ["namespace", "name", "n_positional", "keywords", "where"])
Call.__doc__ = """One call (or attribute use) of CuPy: namespace "xp", "special", "rng", "array" or
"kernels"; name, dotted below the namespace ("random.default_rng"); the number of positional
arguments and the sorted keyword names, None where unknown (``*args``, ``**kwargs``, no call);
where: "file:line", or "recorded at file:line"."""

NAMESPACES = {"xp": cupy, "special": cupyx.scipy.special, "rng": cupy.random.Generator, "array": cupy.ndarray}
# Names a bare variable may have for each namespace; "rng" only as an attribute (``backend.rng``):
# a bare ``rng`` in host code is a NumPy generator.
BARE_NAMES = {"xp", "special"}
ARRAY_METHODS = frozenset(name for name in dir(numpy.ndarray)
                          if not name.startswith("_") and callable(getattr(numpy.ndarray, name)))


def _chain(node):
    """``a.b.c`` -> ["a", "b", "c"]; None when the chain does not start at a name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return names[::-1]


def _arguments(call):
    """(number of positional arguments, sorted keyword names) of an ast.Call; None for either
    where a ``*`` or ``**`` argument hides it."""
    n_positional = None if any(isinstance(a, ast.Starred) for a in call.args) else len(call.args)
    keywords = None if any(k.arg is None for k in call.keywords) else tuple(sorted(k.arg for k in call.keywords))
    return n_positional, keywords


def _namespace_use(chain, module_names):
    """(namespace, dotted name) for a chain like ``self.backend.xp.random.default_rng``, or None."""
    if chain is None or chain[0] in module_names:
        return None
    for index, name in enumerate(chain[:-1]):
        if name in NAMESPACES and name != "array" and (index > 0 or name in BARE_NAMES):
            return name, ".".join(chain[index + 1:])
    return None


def _may_be_an_array(receiver, module_names):
    """False for what is surely no array: a module (``np.sum``), or a Backend (``backend.to_device``,
    ``self.backend.zeros``: its methods share some names with NumPy arrays')."""
    chain = _chain(receiver)
    return chain is None or (chain[0] not in module_names and chain[-1] != "backend")


def collect_source(text, filename):
    """The Calls of one module's source text (see ``collect_static``)."""
    tree = ast.parse(text, filename)
    module_names = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found, method_calls = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        where = f"{filename}:{node.lineno}"
        call = calls.get(id(node))
        use = _namespace_use(_chain(node), module_names)
        if use is not None:
            arguments = _arguments(call) if call is not None else (None, None)
            found.append(Call(use[0], use[1], *arguments, where))
        elif call is not None and node.attr in ARRAY_METHODS and _may_be_an_array(node.value, module_names):
            method_calls.append(Call("array", node.attr, None, None, where))
    return found + method_calls if found else []


def collect_static(package_dir):
    """Every Call in the ``.py`` files under ``package_dir`` (array-method names only in the
    modules that use one of the namespaces)."""
    package_dir = pathlib.Path(package_dir)
    return [call for path in sorted(package_dir.rglob("*.py"))
            for call in collect_source(path.read_text(), str(path.relative_to(package_dir.parent)))]


def recorded_calls(records):
    """Calls from the device guard's ``CALLS`` records (namespace, name, n_positional, keywords, where)."""
    return [Call(namespace, name, n_positional, tuple(keywords), f"recorded at {where}")
            for namespace, name, n_positional, keywords, where in sorted(records)]


def resolve(call):
    """The CuPy object a Call names; raises AttributeError naming what is missing."""
    target = NAMESPACES[call.namespace]
    for name in call.name.split("."):
        if not hasattr(target, name):
            raise AttributeError(f"{getattr(target, '__name__', target)} has no attribute {name!r}")
        target = getattr(target, name)
    return target


def _documented_ufunc_keywords():
    """The keywords cupy.ufunc.__call__ documents in its "Args:" section (all but ``args``)."""
    section = cupy.ufunc.__call__.__doc__.split("Args:")[1].split("Returns:")[0]
    return frozenset(re.findall(r"^\s{4}(\w+)[\s(:]", section, re.MULTILINE)) - {"args"}


UFUNC_KEYWORDS = _documented_ufunc_keywords()


def _split_parameters(text):
    """Split a parameter list at its top-level commas."""
    pieces, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    return [piece.strip() for piece in pieces + [current] if piece.strip()]


def embedded_signature(obj):
    """The signature Cython writes as the first docstring line (``name(self, int axis=-1, ...)``),
    parameter types dropped, or None when there is none."""
    first_line = (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
    match = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", first_line[0]) if first_line else None
    if match is None:
        return None
    parameters, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for piece in _split_parameters(match.group(1)):
        name, has_default = piece.split("=")[0].split()[-1], "=" in piece
        if name == "/":
            parameters = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in parameters]
        elif name == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
        elif name.startswith("**"):
            parameters.append(inspect.Parameter(name[2:], inspect.Parameter.VAR_KEYWORD))
        elif name.startswith("*"):
            parameters.append(inspect.Parameter(name[1:], inspect.Parameter.VAR_POSITIONAL))
            kind = inspect.Parameter.KEYWORD_ONLY
        else:
            parameters.append(inspect.Parameter(name, kind, default=None if has_default else inspect.Parameter.empty))
    return inspect.Signature(parameters)


def signature(obj):
    """What CuPy exposes of ``obj``'s parameters: an inspect.Signature, or None."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return embedded_signature(obj)


def problems(call):
    """What is wrong with ``call`` against the installed CuPy: a list of one-line messages, empty
    when the name exists and the arguments bind (or CuPy exposes no signature to bind them to)."""
    label = f"{call.namespace}.{call.name} ({call.where})"
    try:
        target = resolve(call)
    except AttributeError as error:
        return [f"{label}: CuPy lacks it: {error}"]
    if call.n_positional is None or call.keywords is None or not callable(target):
        return []
    if isinstance(target, cupy.ufunc):
        wrong = [k for k in call.keywords if k not in UFUNC_KEYWORDS]
        if not target.nin <= call.n_positional <= target.nargs or wrong:
            return [f"{label}: a CuPy ufunc of {target.nin} inputs and {target.nout} outputs takes keywords "
                    f"{sorted(UFUNC_KEYWORDS)}, given {call.n_positional} positional and {list(call.keywords)}"]
        return []
    found = signature(target)
    if found is None:
        return []
    n_self = 1 if call.namespace in ("rng", "array") and next(iter(found.parameters), None) == "self" else 0
    try:
        found.bind(*[None] * (n_self + call.n_positional), **dict.fromkeys(call.keywords))
    except TypeError as error:
        return [f"{label}: does not fit CuPy's signature {found}: {error}"]
    return []


def unchecked(call):
    """True when CuPy exposes no signature for a call whose arguments are known (only the name is checked)."""
    if call.n_positional is None or call.keywords is None:
        return False
    target = resolve(call)
    return callable(target) and not isinstance(target, cupy.ufunc) and signature(target) is None
