"""Import contracts: serving code is torch-free, training never imports the web/queue stack, the
layers below ``service`` never reach up into it, and the queue worker runs without FastAPI."""

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
    return _loaded_after_importing(modules, bad)


def _loaded_after_importing(modules: list[str], bad: str) -> str:
    """Import ``modules`` in a fresh interpreter; the loaded modules ``m`` for which the
    expression ``bad`` holds, comma-separated."""
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


# Layers inside ``service``, lowest first: a module may import its own layer and those below it,
# never one above (TYPE_CHECKING and function-level imports count: an upward type is a sign the
# module sits in the wrong layer). ``service.pacs`` (networking) builds on ``service.dicom``
# (objects), which the job layer uses to build a job's SEG and SR.
SERVICE_LAYERS = (
    ("service.inference",),
    ("service.dicom",),
    ("service.jobs",),
    ("service.pacs",),
    ("service.routes", "service.app", "service.web", "service.worker", "service.cli"),
)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(
        module == p or module.startswith(f"{p}.") or module.startswith(f"{p}_") for p in prefixes
    )


@pytest.mark.parametrize("layer", range(len(SERVICE_LAYERS) - 1))
def test_service_layers_import_only_downwards(layer: int) -> None:
    above = tuple(p for higher in SERVICE_LAYERS[layer + 1 :] for p in higher)
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in _imported_modules(path) if _in(m, above)
        )
        for prefix in SERVICE_LAYERS[layer]
        for path in _py_files(prefix.replace(".", "/"))
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_dicom_objects_and_networking_are_apart() -> None:
    """The split of issue 14: objects in ``service/dicom``, networking in ``service/pacs``."""
    objects = {p.stem for p in _py_files("service/dicom")}
    networking = {p.stem for p in _py_files("service/pacs")}
    assert {"seg", "sr", "sc", "identity", "outputs"} <= objects
    assert {"listener", "delivery", "processing", "state", "dicomweb"} <= networking
    assert not (objects & networking) - {"__init__"}


def test_evaluation_takes_only_the_data_readers_from_training() -> None:
    """``breastdx evaluate`` runs in the serving environment: importing every evaluation module
    loads no torch, no imagehash (``training.data.splits`` imports duplicates lazily) and, of
    training, only the torch-free readers of ``training.data``."""
    bad = (
        "m.split('.')[0] in ('torch', 'imagehash') "
        "or (m.startswith('training.') and not m.startswith('training.data'))"
    )
    assert _loaded_after_import(("evaluation",), bad) == ""


# Below ``service``: packages the service builds on, which must not reach up into it (a setting
# they need is their own: ``models_registry.settings``, ``breastdx.settings``).
BELOW_SERVICE = ("breastdx", "imaging", "models_registry")


def _imports_of(packages: tuple[str, ...], wanted: tuple[str, ...]) -> dict[str, list[str]]:
    """Per file of ``packages``, the imported modules in ``wanted`` (function-level imports
    and ``TYPE_CHECKING`` blocks count)."""
    found = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in _imported_modules(path) if _in(m, wanted)
        )
        for package in packages
        for path in _py_files(package)
    }
    return {path: modules for path, modules in found.items() if modules}


def test_packages_below_service_never_import_it() -> None:
    assert _imports_of(BELOW_SERVICE, ("service",)) == {}


def test_no_package_outside_service_reads_its_settings() -> None:
    """The registry, the trainer and the evaluator read their own settings."""
    outside = (*BELOW_SERVICE, "evaluation", "training")
    assert _imports_of(outside, ("service.config",)) == {}


def test_evaluation_takes_only_the_inference_pipeline_from_service() -> None:
    """``breastdx evaluate`` scores the service's own pipeline (``service.inference``), and
    nothing of the API, the jobs or their settings."""
    imported = {
        m for modules in _imports_of(("evaluation",), ("service",)).values() for m in modules
    }
    assert imported and all(_in(m, ("service.inference",)) for m in imported), sorted(imported)


def test_the_queue_worker_never_loads_the_web_framework() -> None:
    """``breastdx worker``: the worker, its job function, the job layer and the default hooks
    load in a fresh interpreter without FastAPI or Starlette (logs and metrics come from
    ``service.logs`` and ``service.metrics``, not the HTTP middleware)."""
    from service.config import Settings

    jobs = [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in _py_files("service/jobs")
    ]
    modules = ["service.cli_worker", "service.worker", *jobs, *Settings().hook_modules]
    bad = "m.split('.')[0] in ('fastapi', 'starlette')"
    assert _loaded_after_importing(modules, bad) == ""
