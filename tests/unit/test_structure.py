"""The package's shape: modules small enough to read whole, and no two modules that import each other.

Imports are read with `ast`, not by importing: every import statement counts, those inside functions
too (a deferred import hides a cycle, it does not remove it). `from mlops_kpi_exporter.x import y`
is an edge to module x.y when that is a module, else to x; a package's `__init__` is the package's
module, so its re-exports are edges of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "mlops_kpi_exporter"
ROOT = Path(__file__).parents[2] / "exporter" / PACKAGE
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".")


def imported_base(node: ast.ImportFrom, importer: str) -> str:
    """The module a `from ... import` names, relative imports resolved against the importer."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def edges_of(importer: str) -> dict[str, int]:
    """Module -> the first line that imports it, for every package module `importer` imports."""
    tree = ast.parse(MODULES[importer].read_text(encoding="utf-8"))
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = imported_base(node, importer)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name below a module
                target = target.rpartition(".")[0]
            if target and target != importer:
                out[target] = min(out.get(target, node.lineno), node.lineno)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    return {name: edges_of(name) for name in MODULES}


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, as short as any: breadth first, inside it."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle in {component}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = " -> ".join(short(m) for m in cycle)
    lines = [f"{MODULES[a].relative_to(ROOT.parent)}:{graph[a][b]} imports {short(b)}" for a, b in zip(cycle, cycle[1:])]
    return steps + "\n    " + "\n    ".join(lines)


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    over = sorted(((n, name) for name, n in sizes.items() if n > MAX_LINES), reverse=True)
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams):\n" + "\n".join(
        f"  {short(name)}: {n} lines" for n, name in over)


def test_no_import_cycle_between_the_package_modules():
    graph = import_graph()
    found = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        more = "" if len(cycle) - 1 == len(component) else f" (one of the cycles among {', '.join(map(short, component))})"
        found.append("  " + describe(graph, cycle).replace("\n", more + "\n", 1))
    assert not found, "import cycles (every import counts, those inside functions too):\n" + "\n".join(found)


def test_the_graph_sees_deferred_relative_and_package_imports():
    """The reader itself: the edges it must see for the checks above to mean anything."""
    graph = import_graph()
    assert "mlops_kpi_exporter.config.common" in graph["mlops_kpi_exporter.config"]  # a package re-export
    # cli.build_sources imports the MLflow source inside the function
    assert "mlops_kpi_exporter.sources.mlflow_runs" in graph["mlops_kpi_exporter.cli"]
    # `from mlops_kpi_exporter.metrics import serving` is an edge to the module, not to the package
    assert "mlops_kpi_exporter.metrics.serving" in graph["mlops_kpi_exporter.sources.endpoints"]
    assert "mlops_kpi_exporter.metrics" not in graph["mlops_kpi_exporter.sources.endpoints"]
    toy = {"a": {"b": 1}, "b": {"c": 1, "d": 1}, "c": {"a": 1}, "d": {}}
    assert strongly_connected(toy) == [["a", "b", "c"]]
    assert shortest_cycle(toy, ["a", "b", "c"]) == ["a", "b", "c", "a"]
