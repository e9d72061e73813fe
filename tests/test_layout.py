"""The shape of the code (issue 21, item 4): imports between minivae's modules only go one way (no
circle), and no module of minivae/ or benchmarks/ is longer than 450 lines."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 450


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules):
    """The minivae modules that the file at ``path`` imports (relative or absolute), by name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == "minivae":
            target = node.module
        else:
            continue
        for alias in node.names:  # `from . import checks` imports the module minivae.checks
            found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {module for module in found if module in modules and module != name}


def circles(graph):
    """Every import circle found by a depth-first walk, as a list of module names."""
    state, found = {}, []

    def walk(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                found.append(path[path.index(other):] + [module, other])
            elif other not in state:
                walk(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    return found


def import_graph():
    paths = {module_name(path): path for path in (ROOT / "minivae").rglob("*.py")}
    return {name: imports_of(path, paths) for name, path in paths.items()}


def test_no_import_circle_in_minivae():
    graph = import_graph()
    assert "minivae.model" in graph["minivae"] and "minivae.version" in graph["minivae.checkpoint"]
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) != []
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_longer_than_450_lines():
    long = {str(path.relative_to(ROOT)): count for path in [*(ROOT / "minivae").rglob("*.py"),
                                                            *(ROOT / "benchmarks").rglob("*.py")]
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
