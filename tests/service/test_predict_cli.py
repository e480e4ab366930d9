"""``breastdx predict``: output files per input, errors per input, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from breastdx.cli import main as breastdx
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.cli_predict import main
from service.inference import clear_runners
from tests.imaging import dicom_factory as dcm
from tests.service.test_inference import check_result_json, he_tile, png_bytes, ultrasound_png
from tests.training import tiny_runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clear_runners()
    registry = tiny_runs.registry(tmp_path_factory)
    first = registry.stores[0]
    assert isinstance(first, DirectoryStore)
    return first.root


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def check_outputs(out: Path, stem: str, source: Path) -> dict[str, object]:
    """The three files exist, the mask has the original size, the JSON follows the schema."""
    mask = cv2.imread(str(out / f"{stem}.mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / f"{stem}.overlay.png"), cv2.IMREAD_UNCHANGED)
    data = check_result_json((out / f"{stem}.json").read_text(encoding="utf-8"))
    rows, columns = data["input"]["rows"], data["input"]["columns"]  # type: ignore[index]
    assert mask.shape == (rows, columns) and set(np.unique(mask)) <= {0, 255}, source.name
    assert overlay.shape == (rows, columns, 3)
    return data


def test_predict_writes_results_and_reports_failures(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    good = [write(inputs, f"scan{i}.png", ultrasound_png(i, (100 + 10 * i, 140))) for i in range(2)]
    mammogram = write(inputs, "mg.dcm", dcm.to_bytes(dcm.mammogram(rows=256, columns=200)[0]))
    report = write(inputs, "report.dcm", dcm.to_bytes(dcm.non_image("sr")))
    out = tmp_path / "out"
    argv = ["--stage", "ultrasound", *map(str, [*good, mammogram, report]), "--out", str(out)]
    assert main([*argv, "--store", str(store)]) == 1
    captured = capsys.readouterr()
    for path in good:
        data = check_outputs(out, path.stem, path)
        assert data["model"]["ref"] == "us-tiny@1"  # type: ignore[index]
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["input"] for line in lines] == ["scan0.png", "scan1.png"]
    for path, code in [(mammogram, "wrong_stage"), (report, "not_an_image")]:
        error = json.loads((out / f"{path.stem}.error.json").read_text(encoding="utf-8"))
        assert error["error"]["code"] == code and error["input"] == path.name
        assert f"{path.name}: {code}:" in captured.err
    assert "Traceback" not in captured.err
    assert not any(m in (out / "mg.error.json").read_text() for m in dcm.PHI_MARKERS)


def test_predict_all_good_exits_zero_and_keeps_stems_apart(store: Path, tmp_path: Path) -> None:
    first = write(tmp_path / "a", "patch.png", png_bytes(he_tile((50, 50), seed=1)))
    second = write(tmp_path / "b", "patch.png", png_bytes(he_tile((200, 300), seed=2)))
    out = tmp_path / "out"
    argv = ["--stage", "histopathology", str(first), str(second), "--out", str(out)]
    assert main([*argv, "--store", str(store), "--model", "idc-tiny@production"]) == 0
    check_outputs(out, "patch", first)
    data = check_outputs(out, "patch-2", second)
    assert data["histopathology"]["grid"]["windows"] == 24  # type: ignore[index]


def test_predict_runs_on_the_runtime_asked_for(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--runtime``, else the stage's ``BREASTDX_STAGE_RUNTIMES`` entry, else
    ``BREASTDX_RUNTIME``; the printed line and the result name it."""
    scan = write(tmp_path / "in", "scan.png", ultrasound_png(0, (100, 140)))
    argv = ["--stage", "ultrasound", str(scan), "--store", str(store)]

    def predict(name: str, *extra: str) -> dict[str, object]:
        assert main([*argv, "--out", str(tmp_path / name), *extra]) == 0
        line: dict[str, object] = json.loads(capsys.readouterr().out)
        model = json.loads((tmp_path / name / "scan.json").read_text())["model"]
        assert model["runtime"] == line["runtime"]
        return model  # type: ignore[no-any-return]

    monkeypatch.setenv("BREASTDX_RUNTIME", "onnxruntime")
    default = predict("default")
    assert default["runtime"] == "onnxruntime"
    openvino = predict("flag", "--runtime", "openvino")
    assert openvino == {**default, "runtime": "openvino", "device": "CPU"}
    monkeypatch.setenv("BREASTDX_RUNTIME", "openvino")
    assert predict("env")["runtime"] == "openvino"
    assert predict("both", "--runtime", "onnxruntime")["runtime"] == "onnxruntime"
    # the stage's own entry wins over BREASTDX_RUNTIME; another stage's entry does not apply
    monkeypatch.setenv("BREASTDX_STAGE_RUNTIMES", '{"ultrasound": "onnxruntime"}')
    assert predict("stage")["runtime"] == "onnxruntime"
    monkeypatch.setenv("BREASTDX_STAGE_RUNTIMES", '{"histopathology": "onnxruntime"}')
    assert predict("other-stage")["runtime"] == "openvino"
    monkeypatch.delenv("BREASTDX_STAGE_RUNTIMES")
    monkeypatch.setenv("BREASTDX_RUNTIME", "tensorrt")
    assert main([*argv, "--out", str(tmp_path / "bad")]) == 1
    assert "invalid_settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--out", str(tmp_path / "bad"), "--runtime", "tensorrt"])
    assert usage.value.code == 2


def test_predict_is_a_breastdx_command(store: Path, tmp_path: Path) -> None:
    source = write(tmp_path, "scan.png", ultrasound_png(5))
    argv = ["predict", "--stage", "ultrasound", str(source), "--out", str(tmp_path / "out")]
    assert breastdx([*argv, "--store", str(store)]) == 0
    assert (tmp_path / "out" / "scan.json").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["x.png", "--out", "o"],  # no --stage
        ["--stage", "radiology", "x.png", "--out", "o"],
        ["--stage", "ultrasound", "--out", "o"],  # no input
        ["--stage", "ultrasound", "x.png", "--out", "o", "--threads", "-1"],
    ],
)
def test_bad_usage_exits_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unknown_model_exits_one_without_traceback(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path, "scan.png", ultrasound_png(5))
    argv = ["--stage", "ultrasound", str(source), "--out", str(tmp_path / "out")]
    assert main([*argv, "--store", str(store), "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown_model" in err and "us-tiny" in err and "Traceback" not in err


def test_missing_input_is_a_per_input_error(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--stage", "ultrasound", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--store", str(store)]) == 1
    assert "absent.png: file_not_found:" in capsys.readouterr().err
    assert (tmp_path / "o" / "absent.error.json").is_file()


@pytest.mark.realdata
def test_predict_on_real_images(store: Path, shared_data: Path, tmp_path: Path) -> None:
    busi = shared_data / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    dicom_us = shared_data / "dicom" / "US1_UNCR.dcm"
    mias = shared_data / "mammography" / "mini-mias" / "mdb005.png"
    idc = sorted((shared_data / "idc" / "IDC_regular_ps50_idx5").glob("*/*/*.png"))[:3]
    runs = [("ultrasound", [busi, dicom_us]), ("mammography", [mias]), ("histopathology", idc)]
    for stage, paths in runs:
        out = tmp_path / stage
        argv = ["--stage", stage, *map(str, paths), "--out", str(out), "--store", str(store)]
        assert main(argv) == 0, stage
        for path in paths:
            check_outputs(out, path.stem, path)
    registry = Registry([store])
    assert registry.card("us-tiny").stage.value == "ultrasound"
