"""The import rules of docs/architecture.md that import-linter does not check: which names may cross a package
boundary. The layers themselves are the ``[tool.importlinter]`` contracts in pyproject.toml (``lint-imports``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kvmonai"

#: packages whose modules are their public API (nothing is imported at package import time: ``kvmonai export``
#: copies them into a bundle's ``scripts/``); a name imported from them must be in its module's ``__all__``
MODULE_API_PACKAGES = {"portable"}


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _package(path: Path) -> str:
    """The top-level package of ``kvmonai`` that ``path`` belongs to (``utils`` for ``kvmonai/utils.py``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else ""


def _module_file(dotted: str) -> Path | None:
    rel = Path(*dotted.split(".")[1:])
    for candidate in (ROOT / rel / "__init__.py", (ROOT / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _package_file(dotted: str) -> Path | None:
    """The ``__init__.py`` of ``dotted`` if it is a package, else of the package that holds it (a top-level module
    such as ``kvmonai.utils`` is its own API)."""
    found = _module_file(dotted)
    if found is None or found.name == "__init__.py" or found.parent == ROOT:
        return found
    return found.parent / "__init__.py"


def _all(path: Path) -> set[str]:
    """The names listed in the literal ``__all__`` of ``path``, or of the module it takes ``__all__`` from (a package
    that re-exports one module: ``from kvmonai.metrics.segmentation import __all__``)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "__all__" for a in node.names):
            source = _module_file(node.module or "")
            return _all(source) if source is not None else set()
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            return set(ast.literal_eval(node.value))
    return set()


def _cross_package_imports() -> list[tuple[str, int, str, str]]:
    """``(module, line, imported from, name)`` for every ``from kvmonai.<pkg>... import name`` whose ``<pkg>`` is
    another package than the importing module's, function-local imports included."""
    found = []
    for path in _modules():
        own = _package(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("kvmonai."):
                continue
            target = node.module.split(".")[1]
            if target != own:
                found += [(str(path.relative_to(ROOT.parent)), node.lineno, node.module, a.name) for a in node.names]
    return found


def test_the_walk_sees_function_local_imports():
    """``kvmonai export`` imports its application inside ``run`` (``kvmonai --help`` stays fast); the walk sees it."""
    assert ("kvmonai/cli/export.py", "kvmonai.export") in {(m, src) for m, _, src, _ in _cross_package_imports()}


def test_no_private_name_crosses_a_package():
    private = [f"{m}:{line}: from {src} import {name}" for m, line, src, name in _cross_package_imports()]
    private = [p for p in private if p.rsplit(" import ", 1)[1].startswith("_")]
    assert private == [], (
        "private names imported across packages; make them public (docstring, __all__):\n" + "\n".join(private)
    )


def test_cross_package_names_are_the_package_api():
    """A name imported from another package is listed in the ``__all__`` of the package (or subpackage) it comes
    from (``from kvmonai.bundle import X``), or, for :data:`MODULE_API_PACKAGES`, in its module's ``__all__``."""
    wrong = []
    for module, line, src, name in _cross_package_imports():
        package = src.split(".")[1]
        api_file = _module_file(src) if package in MODULE_API_PACKAGES else _package_file(src)
        if api_file is None or name not in _all(api_file):
            where = api_file.relative_to(ROOT.parent) if api_file else src
            wrong.append(f"{module}:{line}: from {src} import {name} ({name} is not in the __all__ of {where})")
    assert wrong == [], "import these names from the package's public API (or add them to it):\n" + "\n".join(wrong)
