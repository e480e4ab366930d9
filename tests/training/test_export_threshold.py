"""The card of a classifier states the decision threshold chosen on validation.

``metrics.json`` carries ``decision_threshold`` (``training.calibration.decision_threshold`` on
the validation logits); the export puts its threshold into ``thresholds.malignancy``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.training import tiny_runs
from training.calibration import decision_threshold
from training.export import export_checkpoint, split_images


def _run_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    checkpoint = tiny_runs.trained("histopathology", tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    return run


def _export(run: Path, tmp_path: Path) -> float:
    images = split_images(run, "test", 4)
    result = export_checkpoint(run / "best.pt", tmp_path / "out" / "m.onnx", parity_images=images)
    return result.draft.thresholds.malignancy


def test_the_threshold_chosen_on_validation_reaches_the_card(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run = _run_copy(tmp_path_factory, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(int)
    logits = np.stack([np.zeros(200), rng.normal(0, 1, 200) + 1.5 * labels - 1.0], axis=1)
    choice = decision_threshold(logits, labels, 1.2)
    metrics["decision_threshold"] = choice.to_dict()
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert _export(run, tmp_path) == pytest.approx(choice.threshold)
    assert choice.threshold != pytest.approx(0.5, abs=1e-3)


def test_without_a_chosen_threshold_the_card_keeps_its_default(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run = _run_copy(tmp_path_factory, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("decision_threshold", None)
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert _export(run, tmp_path) == pytest.approx(0.5)
