"""Import contracts: serving code is torch-free, training never imports the web/queue stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TORCH_FREE = ("breastdx", "imaging", "models_registry", "service", "evaluation")
TORCH_MODULES = {"torch", "torchvision", "albumentations", "timm"}
WEB_QUEUE_MODULES = {"fastapi", "starlette", "uvicorn", "rq"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _py_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", TORCH_FREE)
def test_serving_packages_never_import_torch(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_roots(path) & TORCH_MODULES)
        for path in _py_files(package)
        if _imported_roots(path) & TORCH_MODULES
    }
    assert offenders == {}


def test_training_never_imports_web_or_queue_stack() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_roots(path) & WEB_QUEUE_MODULES)
        for path in _py_files("training")
        if _imported_roots(path) & WEB_QUEUE_MODULES
    }
    assert offenders == {}


def _loaded_after_import(packages: tuple[str, ...], bad: str) -> str:
    """Import every module of ``packages`` in a fresh interpreter; the loaded modules ``m``
    for which the expression ``bad`` holds, comma-separated."""
    modules = [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in packages
        for path in _py_files(package)
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in sys.modules if {bad})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_every_serving_module_loads_no_torch() -> None:
    """Dynamic check: transitive imports too (a static scan misses them)."""
    assert _loaded_after_import(TORCH_FREE, f"m.split('.')[0] in {sorted(TORCH_MODULES)!r}") == ""


def test_evaluation_takes_only_the_data_readers_from_training() -> None:
    """``breastdx evaluate`` runs in the serving environment: importing every evaluation module
    loads no torch, no imagehash (``training.data.splits`` imports duplicates lazily) and, of
    training, only the torch-free readers of ``training.data``."""
    bad = (
        "m.split('.')[0] in ('torch', 'imagehash') "
        "or (m.startswith('training.') and not m.startswith('training.data'))"
    )
    assert _loaded_after_import(("evaluation",), bad) == ""
