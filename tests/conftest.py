"""Shared fixtures: where the real development data lives, and helpers to skip without it.

``BREASTDX_RUNTIME`` defaults to ``onnxruntime`` in the tests (and the servers and workers they
start) unless the environment sets it: under the product's default, ``auto``, every model a
test loads would pay the parity gate and the timing of each runtime (seconds per model on a
loaded machine). The runtime tests ask for ``auto`` and ``openvino`` by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BREASTDX_RUNTIME", "onnxruntime")


def shared_data_root() -> Path:
    """``$BREASTDX_DATA_ROOT`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("BREASTDX_DATA_ROOT")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests using it skip with a reason where it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set BREASTDX_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def shared_dicom_dir(shared_data: Path) -> Path:
    path = shared_data / "dicom"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
