"""Fixtures of the DICOM object tests: tiny models, DICOM images, the standard's validators.

``dciodvfy`` (dicom3tools) and ``dsrdump`` (dcmtk) are the third-party checks every SEG, SR and
SC breastdx writes must pass; both are installed by ``scripts/system-deps.sh``.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import set_pixel_data

from models_registry.registry import Registry
from tests.conftest import shared_data_root
from tests.imaging import dicom_factory as dcm

DCIODVFY = Path("/usr/bin/dciodvfy")
DSRDUMP = Path("/usr/bin/dsrdump")  # dcmtk's, by absolute path: pynetdicom has same-named tools


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Every stage's tiny model, trained, exported and registered once per session."""
    pytest.importorskip("torch")
    from service.inference import clear_runners
    from tests.training import tiny_runs

    clear_runners()
    return tiny_runs.registry(tmp_path_factory)


def ultrasound(seed: int = 0, rows: int = 120, columns: int = 160) -> Dataset:
    """A single-frame greyscale breast US image (native Explicit VR Little Endian)."""
    from training.data.synthetic_draw import ultrasound_background

    grey = ultrasound_background(np.random.default_rng(seed), (rows, columns))  # (H, W) [0, 1]
    ds = dcm.base_dataset(uid.UltrasoundImageStorage, "US")
    pixels = np.rint(grey * 255).astype(np.uint8)
    set_pixel_data(ds, pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.BodyPartExamined = "BREAST"
    return ds


def mammogram(rows: int = 256, columns: int = 200) -> Dataset:
    """An MG For Presentation image of the left breast, MLO."""
    ds, _ = dcm.mammogram(rows=rows, columns=columns)
    ds.BodyPartExamined = "BREAST"
    return ds


def real_or(name: str, made: Dataset) -> bytes:
    """``../shared/data/dicom/<name>`` when the real data are there, else ``made``."""
    path = shared_data_root() / "dicom" / name
    return path.read_bytes() if path.is_file() else dcm.to_bytes(made)


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def referenced_uids(ds: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in ``ds``."""
    found: set[str] = set()
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


def _tool(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path} is not installed (scripts/system-deps.sh installs it)")
    return str(path)


def dciodvfy(data: bytes, folder: Path, name: str) -> tuple[list[str], list[str]]:
    """``dciodvfy -new`` on ``data``: its (errors, warnings) lines."""
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run(
        [_tool(DCIODVFY), "-new", str(path)], capture_output=True, text=True, timeout=120
    )
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def dsrdump(data: bytes, folder: Path, name: str) -> tuple[int, str, str]:
    """dcmtk's ``dsrdump`` on an SR: (exit status, stdout, stderr)."""
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run([_tool(DSRDUMP), str(path)], capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout, run.stderr
