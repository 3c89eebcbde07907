"""The package layering: no module imports from a package above its own, and no modules import each other.

Every ``import`` of a ``speechprune`` module is read from the source (module level and inside functions alike; a
lazy import is still a dependency), except those under ``if TYPE_CHECKING:``.

The order, bottom to top, and why each layer sits where it does:

* ``errors``, ``utils`` (and the package's face, ``speechprune/__init__``) — exceptions and helpers with no
  domain knowledge; everything may use them;
* ``data`` — audio, datasets, splits: knows nothing of models;
* ``models`` — the adapters and the family files (module maps, surgery hooks, pruned-model loading);
* ``importers``, ``asr``, ``features``, ``profile`` — each uses only data and models: foreign formats become
  models, models become features, transcripts or cost profiles;
* ``train`` — fine-tuning and evaluation; it records a model's cost, so it sits above ``profile``;
* ``analysis`` — layer analysis of cached features;
* ``compress`` — every compression: truncation follows the analysis, and every method fine-tunes with ``train``
  and measures with ``profile``, so it sits above all three (the stages' *run order*, analysis → compress →
  train → profile, is not their *dependency* order);
* ``report`` — renders results of analysis and profiling;
* ``pipeline`` — ``speechprune run`` wires all of the above;
* ``api`` — one public function per command (``speechprune.api``), over everything below;
* ``cli`` — the commands, on top: each a thin wrapper over ``api`` or the packages below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "speechprune"

LAYERS: list[set[str]] = [
    {"portable"},  # standalone modeling files copied into model folders: torch and transformers only
    {"", "errors", "utils"},
    {"data"},
    {"models"},
    {"importers", "asr", "features", "profile"},
    {"train"},
    {"analysis"},
    {"compress"},
    {"deploy"},  # ONNX export of any model speechprune writes (students included)
    {"report"},
    {"pipeline"},
    {"api"},
    {"cli"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """``speechprune`` modules imported by ``path`` (resolved to modules where a name is a module)."""
    tree = ast.parse(path.read_text())
    hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
              for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "speechprune"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "speechprune":
            for a in node.names:  # ``from speechprune.x import y`` imports module x.y when y is a module
                sub = f"{node.module}.{a.name}"
                out.add(sub if _exists(sub) else node.module)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _graph()}
    assert packages <= set(RANK), f"place these packages in LAYERS: {sorted(packages - set(RANK))}"


def test_no_module_imports_from_a_package_above_it() -> None:
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
              if RANK[_package(t)] > RANK[_package(m)]]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_packages_of_one_layer_do_not_import_each_other() -> None:
    sideways = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                if _package(t) != _package(m) and RANK[_package(t)] == RANK[_package(m)] and _package(t) != ""
                and _package(m) != "" and {_package(t), _package(m)} != {"errors", "utils"}]
    assert not sideways, "imports between packages of one layer:\n" + "\n".join(sideways)


def test_no_import_cycles() -> None:
    """No strongly connected set of modules (a package importing its own submodules is not a cycle: the
    package's ``__init__`` only hands names on)."""
    graph = {m: {t for t in ts if t != m and not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, ts in _graph().items()}
    graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other: {cycles}"
