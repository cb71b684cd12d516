"""The import graph of kbguard/: layers that only build on the ones below, and no cycle.

The layers, lowest first, are the package map the README draws. A module may import modules of
its own layer or of a lower one, never of a higher one. What counts as an import is stricter
than what Python runs at start-up: a lazy import inside a function and an import only for type
checkers are dependencies too, and importing ``kbguard.providers.settings`` also imports the
package ``kbguard.providers`` (its ``__init__`` runs first).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kbguard"

# (layer, module prefixes): the one place the layering is written down. README.md's package map
# shows the same table, and test_the_readme_map_matches_the_layers keeps them together.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("kbguard.errors",)),
    ("core", ("kbguard.core",)),
    ("config", ("kbguard.config",)),
    ("records", ("kbguard.store", "kbguard.providers", "kbguard.manifest",
                 "kbguard.snapshot_format")),
    ("kb", ("kbguard.kb",)),
    ("ingest", ("kbguard.ingest",)),
    ("integrity", ("kbguard.integrity",)),
    ("recovery", ("kbguard.recovery",)),
    ("operations", ("kbguard.operations",)),
    ("cli", ("kbguard.cli", "kbguard.__main__")),
    ("api", ("kbguard",)),
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(module: str) -> set[str]:
    """``a.b.c`` -> {``a.b``} (the root package ``kbguard`` re-exports the public API and sits
    on top; importing a submodule does not make a module depend on it)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def _imports(tree: ast.AST, modules: set[str], importer: str = "") -> set[str]:
    """kbguard modules a module imports anywhere in its text, TYPE_CHECKING blocks included,
    with the packages whose ``__init__`` those imports run (but not the importer's own
    packages: Python has run those before the importer)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found = {n for n in names if n in modules}
            if node.module in modules:
                found.add(node.module)
            out |= found
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    own = _parents(importer) | {importer}
    for module in list(out):
        out |= (_parents(module) & modules) - own
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(ast.parse(p.read_text()), set(files), m) - {m}
             for m, p in files.items()}
    for deps in graph.values():
        deps.discard("kbguard")
    return graph


def layer_of(module: str) -> int:
    """The index of the layer a module belongs to: the longest matching prefix decides."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the README's map")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, as 'a (layer) -> b (layer)'."""
    out = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(module):
                out.append(f"{module} ({LAYERS[layer_of(module)][0]}) -> {dep} "
                           f"({LAYERS[layer_of(dep)][0]})")
    return out


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


def test_no_layer_imports_a_higher_one() -> None:
    assert upward_imports(_graph()) == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    graph.pop("kbguard", None)   # the package re-exports the public API: everything is below it
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_layer_check_finds_a_wrong_import(tmp_path: Path) -> None:
    """A store module importing the rebuild, a TYPE_CHECKING import of the CLI, and a
    submodule import that runs a higher package's __init__: each is caught."""
    modules = {"kbguard.store.edge", "kbguard.ingest.rebuild", "kbguard.cli.common",
               "kbguard.config", "kbguard.operations", "kbguard.operations.search",
               "kbguard.core.lock"}
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "from kbguard.config import Config\n"
              "if TYPE_CHECKING:\n    from kbguard.cli.common import stderr\n"
              "def f():\n    from kbguard.ingest.rebuild import rebuild\n"
              "    import kbguard.operations.search\n")
    deps = _imports(ast.parse(source), modules)
    assert deps == {"kbguard.config", "kbguard.cli.common", "kbguard.ingest.rebuild",
                    "kbguard.operations.search", "kbguard.operations"}
    found = upward_imports({"kbguard.store.edge": deps})
    assert [line.split(" -> ")[1] for line in found] == [
        "kbguard.cli.common (cli)", "kbguard.ingest.rebuild (ingest)",
        "kbguard.operations (operations)", "kbguard.operations.search (operations)"]
    assert upward_imports({"kbguard.core.lock": {"kbguard.errors"}}) == []


def test_the_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_in_a_layer() -> None:
    for module in _graph():
        layer_of(module)


def test_only_the_store_package_knows_its_adapters() -> None:
    """Callers ask the store interface what a store can do (``native_files``, ...), never
    which adapter it is."""
    adapters = {"kbguard.store.edge", "kbguard.store.qdrant"}
    outside = {m: sorted(deps & adapters) for m, deps in _graph().items()
               if not m.startswith("kbguard.store") and deps & adapters}
    assert outside == {}


def test_verify_leaves_the_metrics_to_its_caller() -> None:
    assert "kbguard.integrity.prom" not in _graph()["kbguard.integrity.verify"]


def test_the_readme_map_matches_the_layers() -> None:
    """The README's package map names every folder and top-level module of kbguard/, in the
    layers' order."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- package map -->")
    end = readme.index("<!-- /package map -->")
    rows = re.findall(r"^\| `kbguard/([\w_.]+)/?` \|", readme[start:end], re.M)
    on_disk = sorted(p.name if p.is_dir() else p.name for p in PACKAGE.iterdir()
                     if (p.is_dir() and (p / "__init__.py").exists())
                     or (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py")))
    assert sorted(rows) == on_disk, "the README's package map and kbguard/ differ"
    order = [layer_of("kbguard." + r.removesuffix(".py")) for r in rows]
    assert order == sorted(order), "the README's package map is not in layer order"


@pytest.mark.parametrize("module", ["kbguard.ingest.rebuild", "kbguard.integrity.verify"])
def test_layers_are_known_for_real_modules(module: str) -> None:
    assert layer_of(module) > layer_of("kbguard.manifest")
