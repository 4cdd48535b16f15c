"""The layout of the code, kept by tests: no import cycle among the modules of ucrn/ and
search/ (imports inside functions included), and no module there over 700 lines.

Imports are read with ``ast``, not by importing anything, so a cycle that only closes when
some function runs (a lazy import) is found too.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ucrn", "search")
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages and their subpackages."""
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (an `if` whose body never runs)."""
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST):
    """Every node, at any depth, except the bodies of `if TYPE_CHECKING:` (imports there
    never run: they are the usual way to name a type without importing its module, and can
    close no cycle); their `else:` runs, and is walked."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _dynamic_import(node: ast.AST) -> str | None:
    """The module of `importlib.import_module("a.b")`, `import_module("a.b")` or
    `__import__("a.b")` when it is a literal string (an absolute name)."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
    arg = node.args[0]
    if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
            and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def _ancestors(name: str) -> list[str]:
    """a.b.c -> [a, a.b]"""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) for every import in the file, at any depth (inside functions
    too; not under `if TYPE_CHECKING:`), and for literal `importlib.import_module("a.b")`.

    ``import a.b`` and ``from a.b import x`` import the module a.b (and ``from a import b``
    the module a.b too, when b is a module); ``from a import x`` imports the package a,
    i.e. runs its ``__init__``. Importing a.b.c also runs the ``__init__`` of a and a.b
    first, so those count too, except the importer's own parent packages: they were
    initialised before it ran (a package's ``__init__`` re-exporting its submodules is not
    a cycle unless a submodule imports the package back).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    own = {name, *_ancestors(name)}
    out: list[tuple[str, int]] = []
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.append((source, node.lineno))
            out += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
        elif (dynamic := _dynamic_import(node)) is not None:
            out.append((dynamic, node.lineno))
    out += [(parent, line) for target, line in list(out) for parent in _ancestors(target)
            if parent not in own]
    return sorted({(t, ln) for t, ln in out if t in modules}, key=lambda x: (x[1], x[0]))


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported project module: line of the first such import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph, modules


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _shortest_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """The shortest cycle through the component's first module: a -> ... -> a."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in prev:
                prev[child] = node
                todo.append(child)
    return comp  # not reached: a component of several modules has a cycle through each


def _describe(graph: dict[str, dict[str, int]], modules: dict[str, Path],
              cycle: list[str]) -> str:
    steps = [f"{modules[a].relative_to(ROOT)}:{graph[a][b]} imports {b}"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + " (" + "; ".join(steps) + ")"


def test_no_import_cycle() -> None:
    graph, modules = _graph()
    cycles = [_describe(graph, modules, _shortest_cycle(graph, comp))
              for comp in _components(graph)]
    assert not cycles, "import cycle(s) among ucrn/ and search/:\n" + "\n".join(cycles)


def test_no_module_over_700_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for path in _modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, (f"modules over {MAX_LINES} lines (split them by what each part is "
                      f"about): " + ", ".join(f"{p} ({n})" for p, n in sorted(long.items())))


def test_the_walk_sees_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    """The import reader itself: imports inside functions, relative ones, `from pkg import
    module` and `from pkg import name` (the package's __init__)."""
    pkg = tmp_path / "ucrn" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ucrn.sub.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from .. import top\n")
    (pkg / "b.py").write_text("from ucrn.sub import f\nimport ucrn.top\n")
    (tmp_path / "ucrn" / "top.py").write_text("")
    modules = {"ucrn.sub": pkg / "__init__.py", "ucrn.sub.a": pkg / "a.py",
               "ucrn.sub.b": pkg / "b.py", "ucrn.top": tmp_path / "ucrn" / "top.py"}
    seen = {n: {t for t, _ in _imports(n, p, modules)} for n, p in modules.items()}
    assert seen["ucrn.sub"] == {"ucrn.sub.a"}
    assert seen["ucrn.sub.a"] == {"ucrn.sub", "ucrn.sub.b", "ucrn.top"}
    assert seen["ucrn.sub.b"] == {"ucrn.sub", "ucrn.top"}
    graph = {n: dict.fromkeys(s, 1) for n, s in seen.items()}
    assert _components(graph) == [["ucrn.sub", "ucrn.sub.a", "ucrn.sub.b"]]
    assert _shortest_cycle(graph, ["ucrn.sub", "ucrn.sub.a", "ucrn.sub.b"]) == [
        "ucrn.sub", "ucrn.sub.a", "ucrn.sub"]
