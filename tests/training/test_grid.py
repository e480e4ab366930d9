"""The whole experiment grid at smoke scale: every modality, both protocols, synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.grid.cli import main
from training.grid.spec import Modality, Scale, build_cells

# ~150 small runs: minutes on two cores, more where the machine is shared.
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("grid")
    argv = ["--modality", "all", "--scale", "smoke", "--synthetic", "--protocol", "both"]
    assert main([*argv, "--out", str(out), "--report-dir", str(out / "reports")]) == 0
    yield out
    shutil.rmtree(out, ignore_errors=True)  # ~150 runs' checkpoints: gigabytes


def test_cell_counts_follow_the_papers_tables() -> None:
    # Tables 4/6 (3 models x 3 losses) + Tables 5/7 (3 models x 2 losses x 4 policies), shared
    # vanilla cells counted once; Table 8: 4 models x 5 policies.
    assert len(build_cells(Modality.ULTRASOUND, ["leakage_safe"])) == 27
    assert len(build_cells(Modality.HISTOPATHOLOGY, ["leakage_safe", "paper"])) == 40


@pytest.mark.slow
@pytest.mark.parametrize("modality", list(Modality))
def test_every_cell_of_every_modality_trains(grid: Path, modality: Modality) -> None:
    cells = build_cells(modality, ["leakage_safe", "paper"])
    for cell in cells:
        run = grid / modality.value / cell.protocol / cell.id
        status = json.loads((run / "cell.json").read_text())
        assert status["status"] == "done", status
        test = json.loads((run / "metrics.json").read_text())["test"]
        key = "accuracy" if modality is Modality.HISTOPATHOLOGY else "dice"
        assert 0.0 <= test[key]["value"] <= 1.0
        assert test[key]["ci_low"] <= test[key]["value"] <= test[key]["ci_high"]


@pytest.mark.slow
@pytest.mark.parametrize("modality", list(Modality))
def test_reports_have_the_papers_shapes(grid: Path, modality: Modality) -> None:
    stem = grid / "reports" / f"{modality.value}-{Scale.SMOKE.value}"
    text = stem.with_suffix(".md").read_text()
    assert "Regenerate: `breastdx grid --modality all --scale smoke" in text
    assert "leakage-safe protocol" in text and "paper protocol" in text
    expected = {
        Modality.MAMMOGRAPHY: ["Table 4 shape", "Table 5 shape"],
        Modality.ULTRASOUND: ["Table 6 shape", "Table 7 shape"],
        Modality.HISTOPATHOLOGY: ["Table 8 shape"],
    }[modality]
    assert all(title in text for title in expected)
    assert "not run" not in text and "failed" not in text
    with stem.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(build_cells(modality, ["leakage_safe", "paper"]))
    assert all(row["paper_iou_or_accuracy"] for row in rows)


@pytest.mark.slow
def test_a_finished_grid_resumes_without_training(grid: Path) -> None:
    before = {p: p.stat().st_mtime for p in grid.rglob("best.pt")}
    argv = ["--modality", "ultrasound", "--scale", "smoke", "--synthetic", "--protocol", "both"]
    assert main([*argv, "--out", str(grid)]) == 0
    assert {p: p.stat().st_mtime for p in grid.rglob("best.pt")} == before


def test_grid_without_data_source_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--modality", "ultrasound", "--scale", "smoke"]) == 1
    assert "--data-root" in capsys.readouterr().err


@pytest.mark.slow
def test_report_carries_over_cells_whose_run_folder_was_lost(grid: Path, tmp_path: Path) -> None:
    """A fresh checkout without a cell's run folder keeps that cell's figures from the earlier
    report's CSV, marked; without --carry-over the cell reads "not run"."""
    out, reports = tmp_path / "runs", tmp_path / "reports"
    shutil.copytree(
        grid / "mammography", out / "mammography", ignore=shutil.ignore_patterns("*.pt")
    )
    stem = "mammography-smoke"
    reports.mkdir()
    for suffix in (".csv", ".md"):
        shutil.copy(grid / "reports" / f"{stem}{suffix}", reports / f"{stem}{suffix}")
    with (reports / f"{stem}.csv").open() as handle:
        before = {
            (r["protocol"], r["model"], r["loss"], r["policy"]): r for r in csv.DictReader(handle)
        }
    lost = ("paper", "unet", "dice", "filter")
    shutil.rmtree(out / "mammography" / "paper" / "unet-dice-filter")
    argv = ["--modality", "mammography", "--scale", "smoke", "--protocol", "both"]
    argv += ["--out", str(out), "--report-dir", str(reports), "--report-only"]
    assert main([*argv, "--carry-over"]) == 0
    text = (reports / f"{stem}.md").read_text()
    assert "† 1 cells carried over from an earlier report (report of commit" in text
    assert "--carry-over" not in text and "--report-only" not in text
    with (reports / f"{stem}.csv").open() as handle:
        after = {
            (r["protocol"], r["model"], r["loss"], r["policy"]): r for r in csv.DictReader(handle)
        }
    assert after[lost]["source"].startswith("report of commit")
    assert after[lost]["dice"] == before[lost]["dice"] and after[lost]["status"] == "done"
    assert {r["source"] for key, r in after.items() if key != lost} == {"run"}
    assert main(argv) == 0  # no carry-over: the lost cell is missing
    assert "not run" in (reports / f"{stem}.md").read_text()


def test_unreadable_earlier_report_and_bad_threads_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ultrasound-smoke.csv").write_text(
        "protocol,model,loss,policy,status,epochs\nleakage_safe,unet,bce,vanilla,done,many\n"
    )
    argv = ["--modality", "ultrasound", "--scale", "smoke", "--protocol", "leakage_safe"]
    argv += ["--out", str(tmp_path / "runs"), "--report-dir", str(reports), "--report-only"]
    assert main([*argv, "--carry-over"]) == 1
    err = capsys.readouterr().err
    assert "is not a grid report CSV" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--threads", "-2"])
    assert exited.value.code == 2
    assert "expected a whole number >= 0, got '-2'" in capsys.readouterr().err
