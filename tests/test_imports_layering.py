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
