"""The layout of ``tas/`` (docs/architecture.md, "Layers"): read from the source with ``ast``, not imported.

* no module-level import cycle (an ``if TYPE_CHECKING:`` import counts: it is a cycle in the design);
* imports go down the layers, never up (:data:`LAYERS`);
* no function or method longer than :data:`MAX_LINES` lines;
* imports inside functions only for the slow, rarely needed third-party modules of :data:`LAZY_OK`.

Each exception is listed here with its reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tas"

#: the layers, lowest first; a module may import its own layer and the ones below, never above.
#: A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("tas.errors", "tas.cli", "tas.distributed", "tas.metrics", "tas.tb"),  # shared utilities
    ("tas.io",),                                                              # files: checkpoints, run dirs
    ("tas.models", "tas.data"),                                              # timm models, datasets
    ("tas.prune",),                                                          # graph, arch, slicing, materialise
    ("tas.train", "tas.deploy"),                                             # training, distillation; ONNX, latency
    ("tas.nas",),                                                            # supernet, search
    ("tas.baselines",),                                                      # baseline pruners (a search's rival)
    ("tas", "tas.api", "tas.pipeline", "tas.commands", "tas.__main__", "tas.export", "tas.latency"),  # API, commands
]

#: longest function or method, in lines (``def`` to its last line, docstring included)
MAX_LINES = 80

#: functions allowed to be longer than MAX_LINES: "module:qualname" -> why
LONG_OK: dict[str, str] = {}

#: modules that may be imported inside a function (so only when needed), each with its reason
LAZY_OK: dict[str, str] = {
    "onnx": "slow to import (~1 s) and needed only to export or time ONNX models",
    "onnxruntime": "slow to import and needed only to time or check ONNX models",
    "matplotlib": "slow to import and needed only for the TensorBoard figures",
    "tensorboard": "slow to import (protobuf) and needed only by runs that write events",
    "torch.utils.tensorboard": "imports tensorboard (see above)",
    "sklearn": "slow to import (scipy) and needed only by the digits dataset",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: set[str]) -> list[str]:
    """The modules an import statement names (absolute); ``from pkg import sub`` names ``pkg.sub``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
    return subs if len(subs) == len(node.names) else [source, *subs]


def _function_nodes(tree: ast.AST):
    """(qualname, node) of every function and method, nested ones included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _module_level_imports(tree: ast.AST):
    """Import statements outside any function (``if TYPE_CHECKING:`` and ``try:`` blocks included)."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child)
    yield from walk(tree)


def import_graph(modules=None) -> dict[str, set[str]]:
    """module -> the tas modules it imports at module level."""
    modules = modules if modules is not None else _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in _module_level_imports(tree):
            edges.update(t for t in _targets(node, name, is_pkg, known) if t in known and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_go_down_the_layers():
    up = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
          for m, targets in sorted(import_graph().items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not up, "imports up the layers:\n" + "\n".join(up)


def test_functions_are_short():
    long = {}
    for name, (_, tree) in _modules().items():
        for qualname, node in _function_nodes(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                long[f"{name}:{qualname}"] = lines
    unexpected = {k: v for k, v in long.items() if k not in LONG_OK}
    assert not unexpected, f"functions over {MAX_LINES} lines: {unexpected}"
    stale = sorted(set(LONG_OK) - set(long))
    assert not stale, f"LONG_OK lists functions that are short now (or gone): {stale}"


def test_imports_inside_functions_are_optional_dependencies():
    bad = []
    for name, (path, tree) in _modules().items():
        for qualname, fn in _function_nodes(tree):
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if isinstance(node, ast.ImportFrom) and node.level:
                    targets = ["tas"]  # a relative import is always one of tas's own modules
                else:
                    targets = _targets(node, name, path.name == "__init__.py", set())
                for t in targets:
                    if not any(t == ok or t.startswith(ok + ".") for ok in LAZY_OK):
                        bad.append(f"{name}:{qualname} line {node.lineno}: {ast.unparse(node)}")
    assert not bad, "imports inside functions (move them to the top, or list them in LAZY_OK):\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ({"tas.a": "from . import b\n", "tas.b": "from .c import x\n", "tas.c": "from .a import y\n"},
     [["tas.a", "tas.b", "tas.c"]]),
    ({"tas.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
      "tas.b": "import tas.a\n"}, [["tas.a", "tas.b"]]),
    ({"tas.a": "def f():\n    from .b import x\n", "tas.b": "from .a import f\n"}, []),
])
def test_cycle_finder_sees_cycles(source, expected):
    """The checker itself: relative, absolute and TYPE_CHECKING imports make edges, function bodies do not."""
    modules = {name: (PACKAGE / (name.split(".")[-1] + ".py"), ast.parse(text)) for name, text in source.items()}
    assert find_cycles(import_graph(modules)) == expected
