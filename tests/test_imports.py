"""The import graph of kbguard/ has no cycle: each module builds only on the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kbguard"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """kbguard modules a module imports, at its top or inside functions (a lazy import is a
    dependency too); imports only for type checkers are not."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in modules}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(ast.parse(p.read_text()), set(files)) - {m} for m, p in files.items()}
    graph.pop("kbguard")  # the package re-exports the public API: everything is below it
    for deps in graph.values():
        deps.discard("kbguard")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_verify_leaves_the_metrics_to_its_caller() -> None:
    assert "kbguard.integrity.prom" not in _graph()["kbguard.integrity.verify"]


def test_the_config_builds_on_nothing_above_it() -> None:
    """The providers and the parsers read the config's facts, never the other way round; an
    import only for type checkers counts, and so does one of a package's ``__init__``."""
    allowed = ("kbguard.config", "kbguard.errors", "kbguard.core")
    config = [p for p in PACKAGE.rglob("*.py")
              if _module(p).split(".")[:2] == ["kbguard", "config"]]
    assert config
    for path in config:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("kbguard"):
                    assert name.startswith(allowed), f"{_module(path)} imports {name}"


def test_only_the_store_package_knows_its_adapters() -> None:
    """Callers ask the store interface what a store can do (``native_files``, ...), never
    which adapter it is."""
    adapters = {"kbguard.store.edge", "kbguard.store.qdrant"}
    outside = {m: sorted(deps & adapters) for m, deps in _graph().items()
               if not m.startswith("kbguard.store") and deps & adapters}
    assert outside == {}


def test_the_snapshot_format_and_the_lost_manifest_guard_sit_below_ingest() -> None:
    """A rebuild asks whether a snapshot survives a lost manifest: the modules that answer
    import nothing above the manifest and store level (recovery/ builds on ingest/)."""
    graph = _graph()
    higher = ("kbguard.ingest", "kbguard.integrity", "kbguard.recovery", "kbguard.operations",
              "kbguard.cli")
    for module in ("kbguard.snapshot_format", "kbguard.kb.lost_manifest"):
        assert sorted(d for d in graph[module] if d.startswith(higher)) == [], module
