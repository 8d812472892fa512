"""`service/` stays one-way: no import cycle between its packages, and few loose modules.

`lint-imports` (pyproject.toml) checks the layer order; this test needs nothing but `ast`, so a
cycle fails the ordinary test run too. Every import counts, wherever it is written: at the top,
inside a function, or under `if TYPE_CHECKING:` (a cycle hidden there is still a cycle).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
# __init__, app, asgi, cli, job_registry, seed: the composition root. Anything else belongs in a
# package of its layer.
MAX_TOP_LEVEL_MODULES = 6

# (importing unit, imported unit) -> where, as "path:line"
Edges = dict[tuple[str, str], list[str]]


def _unit(module: str) -> str | None:
    """The top-level package or module of `service` that `module` belongs to, if any."""
    parts = module.split(".")
    if parts[0] != "service" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement reaches (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    # `from service import api` reaches `service.api`; `from service.api import x` is in api.
    return [f"{base}.{alias.name}" for alias in node.names] if base == "service" else [base]


def import_graph(root: Path = SERVICE) -> Edges:
    """Every import from one unit of `root` (a top-level package or module) into another."""
    edges: Edges = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        source = _unit(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                target = _unit(name)
                if source and target and target != source:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    edges[(source, target)].append(where)
    return edges


def find_cycle(edges: Edges) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None if it has none."""
    successors: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        successors[source].add(target)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for successor in sorted(successors[node]):
            cycle = visit(successor, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(successors):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_no_import_cycle_between_the_packages_of_service() -> None:
    edges = import_graph()
    assert ("api", "services") in edges  # the walk sees imports at all
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between packages of service/:\n" + "\n".join(
        f"{a} -> {b} ({', '.join(edges[(a, b)][:3])})" for a, b in pairwise(cycle)
    )


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({("a", "b"): [], ("b", "c"): []}) is None
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "b"): []}) == ["b", "c", "b"]


def test_service_has_few_top_level_modules() -> None:
    modules = sorted(path.name for path in SERVICE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"service/ has {len(modules)} top-level modules ({', '.join(modules)}): put new code "
        "in the package of its layer"
    )
