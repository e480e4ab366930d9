"""``breastdx predict`` writes the SEG, SR (and with ``--sc`` the SC) of DICOM inputs, built by
the same code as the API and the listener, and they pass ``dciodvfy``."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.cli_predict import main
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import dciodvfy, mammogram, ultrasound


def store_of(registry: Registry) -> str:
    store = registry.stores[0]
    assert isinstance(store, DirectoryStore)
    return str(store.root)


def test_predict_writes_dicom_outputs_for_dicom_inputs(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = inputs / "mg.dcm"
    source.write_bytes(dcm.to_bytes(mammogram()))
    out = tmp_path / "out"
    argv = ["--stage", "mammography", str(source), "--out", str(out), "--sc"]
    assert main([*argv, "--store", store_of(registry)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    sc = np.asarray(pydicom.dcmread(out / "mg.sc.dcm").pixel_array)
    assert sc.shape == (256, 200, 3)
    sr = hd.sr.srread(out / "mg.sr.dcm")
    header = pydicom.dcmread(source, stop_before_pixels=True)
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    found = line["lesions"] > 0
    assert (out / "mg.seg.dcm").exists() is found  # no lesion: no SEG, the SR says so
    assert set(line["files"]) >= {"sr", "sc"} | ({"seg"} if found else set())
    for kind in ("seg", "sr", "sc"):
        path = out / f"mg.{kind}.dcm"
        if path.exists():
            errors, _ = dciodvfy(path.read_bytes(), tmp_path, f"check-{kind}")
            assert errors == [], kind


def test_predict_without_sc_writes_no_sc(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "us.dcm"
    source.write_bytes(dcm.to_bytes(ultrasound()))
    out = tmp_path / "out"
    argv = ["--stage", "ultrasound", str(source), "--out", str(out)]
    assert main([*argv, "--store", store_of(registry)]) == 0
    assert (out / "us.sr.dcm").is_file() and not (out / "us.sc.dcm").exists()


def test_a_source_without_uids_keeps_its_analysis_and_fails(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "us.dcm"
    source.write_bytes(dcm.to_bytes(dcm.with_attributes(ultrasound(), SeriesInstanceUID=None)))
    out = tmp_path / "out"
    argv = ["--stage", "ultrasound", str(source), "--out", str(out)]
    assert main([*argv, "--store", store_of(registry)]) == 1
    err = capsys.readouterr().err
    assert "us.dcm: dicom_source_unusable:" in err and "SeriesInstanceUID" in err
    assert "Traceback" not in err
    assert (out / "us.json").is_file() and not (out / "us.sr.dcm").exists()
