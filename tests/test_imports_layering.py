"""Module layering of src/multibox, read with ``ast`` (nothing is imported): no module imports a ``_private``
name from another multibox module, and the exporters never import the Detector facade."""

import ast
from pathlib import Path

import multibox

PACKAGE = Path(multibox.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """``(line, imported module, [names])`` of every import in ``path`` (relative imports resolved)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def test_resolves_relative_imports():
    lines = list(_imports(PACKAGE / "export" / "onnx.py"))
    assert any(t == "multibox.fileio" and "atomic_write_bytes" in names for _, t, names in lines)


def test_no_private_names_imported_across_multibox_modules():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        for line, target, names in _imports(path):
            if not (target == "multibox" or target.startswith("multibox.")) or target == me:
                continue
            bad += [f"{path.relative_to(PACKAGE.parent)}:{line}: {n} from {target}"
                    for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_export_does_not_import_the_detector():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}"
           for path in sorted((PACKAGE / "export").rglob("*.py"))
           for line, target, names in _imports(path)
           if target == "multibox.detector" or (target == "multibox" and "detector" in names)
           or (target == "multibox" and "Detector" in names)]
    assert not bad, "\n".join(bad)


# docs/design.md, "Module map": the layers, bottom up. A module imports from its own layer or below.
LAYERS = {
    0: {"fileio", "limits", "classes", "_lazy", "wheels"},
    1: {"anchors", "box_coder", "matching", "loss", "detections", "postprocess", "tiling", "tta", "data",
        "data.datasets", "viz"},
    2: {"models", "metrics", "anchor_fit"},
    3: {"weights_io", "interop", "export"},
    4: {"runtime"},
    5: {"detector", "sources"},
    6: {"config", "engine"},
    7: {"commands", "data.commands", "bench", "serve", "demo", "cli", "__main__", ""},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}


def _unit(module: str) -> str:
    """``multibox.data.datasets.voc`` -> ``data.datasets``; ``multibox.models.ssd7`` -> ``models``."""
    parts = module.split(".")[1:]
    if parts[:1] == ["data"] and len(parts) > 1 and parts[1] in ("datasets", "commands"):
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def test_every_module_is_in_a_layer_of_the_design_page():
    missing = sorted({_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - set(LAYER_OF))
    assert not missing, f"modules missing from docs/design.md's module map (and LAYERS here): {missing}"


def test_modules_import_only_from_their_layer_or_below():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _unit(_module_name(path))
        for line, target, names in _imports(path):
            if not target.startswith("multibox."):
                continue
            # `from multibox.data import commands` names a sub-package: judge by the imported module
            units = {_unit(f"{target}.{n}") for n in names} if target.count(".") == 1 and names else {_unit(target)}
            for unit in units:
                if unit in LAYER_OF and LAYER_OF[unit] > LAYER_OF.get(me, 99):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {me} (layer {LAYER_OF[me]}) imports "
                               f"{unit} (layer {LAYER_OF[unit]})")
    assert not bad, "imports that run up the layers of docs/design.md:\n" + "\n".join(bad)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the multibox modules it imports anywhere in its file (inside functions too), relative imports
    resolved; ``from pkg import mod`` counts as importing ``pkg.mod`` as well as ``pkg``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        for _, target, names in _imports(path):
            for t in (target, *(f"{target}.{n}" for n in names)):
                if t in modules and t != me:
                    graph[me].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds an import cycle), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_on_hand_cases():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d2"}, "d2": {"d"}}) == [["a", "b", "c"], ["d", "d2"]]


def test_import_graph_is_acyclic():
    """docs/design.md, "Import rules": no two multibox modules import each other, directly or through others, not
    even lazily inside a function (a lazy import hides a circle; it does not remove it)."""
    graph = _import_graph()
    assert "multibox.export.onnx" in graph["multibox.export.quantize"]  # the graph sees real imports
    cycles = _cycles(graph)
    assert not cycles, "import cycles between multibox modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)
