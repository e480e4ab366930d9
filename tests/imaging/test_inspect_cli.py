"""``breastdx inspect`` in process: JSON lines, error lines, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from breastdx.cli import main as breastdx_main
from imaging.cli import main
from tests.imaging import dicom_factory as factory

NOT_IMAGES = {"seg_", "sm_annotations"}


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture()
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    path.write_bytes(cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(6, 8))[1].tobytes())
    return path


def test_one_ok_line_per_file(png_file: Path, tmp_path: Path, capsys) -> None:
    dicom = tmp_path / "mammo"  # no extension: recognised by content
    dicom.write_bytes(factory.to_bytes(factory.mammogram()[0]))
    assert main([str(png_file), str(dicom)]) == 0
    first, second = _lines(capsys)
    assert first == {"path": str(png_file), "ok": True, "metadata": first["metadata"]}
    assert first["metadata"]["format"] == "png"
    assert (first["metadata"]["rows"], first["metadata"]["columns"]) == (6, 8)
    assert second["metadata"]["format"] == "dicom"
    assert second["metadata"]["photometric_interpretation"] == "MONOCHROME1"
    assert second["metadata"]["laterality"] == "L"
    assert second["metadata"]["identifiers"]["sop_class_uid"]
    text = json.dumps(second)
    assert not any(marker in text for marker in factory.PHI_MARKERS)


def test_error_lines_and_exit_status(png_file: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.dcm"
    status = main([str(png_file), str(bad), str(missing), str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["ok"] for line in lines] == [True, False, False, False]
    codes = [line["error"]["code"] for line in lines[1:]]
    assert codes == ["unrecognised_format", "file_not_found", "unreadable_file"]
    assert all(line["error"]["message"] for line in lines[1:])
    assert set(lines[1]) == {"path", "ok", "error"}


def test_max_pixels_option(png_file: Path, capsys) -> None:
    assert main(["--max-pixels", "47", str(png_file)]) == 1
    (line,) = _lines(capsys)
    assert line["error"]["code"] == "image_too_large"
    assert main([str(png_file), "--max-pixels", "48"]) == 0


@pytest.mark.parametrize(
    "argv",
    [[], ["--max-pixels", "0", "x.png"], ["--max-pixels", "many", "x.png"], ["--bogus", "x"]],
)
def test_bad_usage_exits_2(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_help_exits_0(capsys) -> None:
    assert main(["--help"]) == 0
    assert "--max-pixels" in capsys.readouterr().out


def test_dispatch_through_breastdx(png_file: Path, capsys) -> None:
    assert breastdx_main(["inspect", str(png_file)]) == 0
    (line,) = _lines(capsys)
    assert line["ok"] is True


@pytest.mark.realdata
def test_every_shared_dicom_file(shared_dicom_dir: Path, capsys) -> None:
    paths = sorted(shared_dicom_dir.glob("*.dcm"))
    assert main([str(p) for p in paths]) == 1  # the folder holds SEG and annotation objects
    lines = _lines(capsys)
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    for path, line in zip(paths, lines, strict=True):
        refused = any(path.name.startswith(prefix) for prefix in NOT_IMAGES)
        assert line["ok"] is not refused, line
        if refused:
            assert line["error"]["code"] == "not_an_image"
        else:
            assert line["metadata"]["format"] == "dicom" and line["metadata"]["rows"] > 0
    images = [str(p) for p in paths if not any(p.name.startswith(x) for x in NOT_IMAGES)]
    assert main(images) == 0
