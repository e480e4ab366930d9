"""``breastdx evaluate`` on every labelled set of ``../shared/data`` with the shipped models.

- each shipped model re-evaluated on its committed test split reproduces the figures its card
  states (within 0.005): a card cannot drift from what the model does;
- BUS-BRA and CBIS-DDSM (no committed split for the shipped models) on a fixed subset
  (``--limit``); a case's Dice equals the one computed here from ``breastdx predict``'s mask.

Skipped, with the reason, where ``../shared/data`` (or ``BREASTDX_DATA_ROOT``) is absent.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from evaluation.card import carded_draft
from evaluation.cli import main as evaluate
from models_registry.card import Stage
from models_registry.registry import PRODUCTION, Registry
from models_registry.store import SHIPPED_STORE
from service.cli_predict import main as predict
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.realdata
DATA = Path(os.environ.get("BREASTDX_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
FOLDERS = {  # card data-set name -> folder under the data root
    "BUSI": "busi",
    "BUS-BRA": "busbra",
    "mini-MIAS": "mammography/mini-mias",
    "IDC": "idc",
    "CBIS-DDSM": "cbis-ddsm-mass",
}
SHIPPED = {
    Stage.ULTRASOUND: "ultrasound-unet",
    Stage.MAMMOGRAPHY: "mammography-unet",
    Stage.HISTOPATHOLOGY: "histopathology-resnet18",
}
TOLERANCE = 0.005


def _data(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real-data tests need ../shared/data")
    return path


def _run(out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = evaluate([*args, "--out", str(out), "--store", str(SHIPPED_STORE), "--n-boot", "20"])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else {}


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_shipped_card_figures_are_reproduced(stage: Stage, tmp_path: Path) -> None:
    card = Registry([SHIPPED_STORE]).card(f"{SHIPPED[stage]}@{PRODUCTION}")
    stated = [m for m in card.metrics if m.resolution == "original"]
    assert stated, f"{card.ref} states no figure measured by breastdx evaluate"
    for evaluation in card.evaluation_sets:
        data = _data(FOLDERS[evaluation.dataset])
        split = SHIPPED_STORE / "splits" / str(evaluation.split_file)
        args = ["--stage", stage.value, str(data), "--model", card.ref, "--split", str(split)]
        code, report = _run(tmp_path / evaluation.dataset, *args, "--subset", evaluation.split)
        assert code == 0, report.get("datasets")
        again = {(m.name, m.dataset): m for m in carded_draft(card, report).metrics}
        for metric in (m for m in stated if m.dataset == evaluation.dataset):
            found = again[(metric.name, metric.dataset)]
            assert found.n == metric.n, metric.name
            assert abs(found.value - metric.value) <= TOLERANCE, (metric.name, found, metric)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


def test_busbra_subset_and_predict_agree(tmp_path: Path) -> None:
    data = _data("busbra")
    code, report = _run(tmp_path / "eval", "--stage", "ultrasound", str(data), "--limit", "24")
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["format"] == "busbra" and (ds["n_scored"], ds["n_skipped"]) == (24, 0)
    assert ds["bootstrap_unit"] == "patients" and ds["segmentation"]["n_lesion_images"] == 24
    record = json.loads(next((tmp_path / "eval" / "cache").glob("*.jsonl")).open().readline())
    image = data / "Images" / f"{record['id']}.png"
    assert predict(["--stage", "ultrasound", str(image), "--out", str(tmp_path / "p")]) == 0
    mask = cv2.imread(str(tmp_path / "p" / f"{record['id']}.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    truth_file = data / "Masks" / f"{record['id'].replace('bus_', 'mask_', 1)}.png"
    truth = cv2.imread(str(truth_file), cv2.IMREAD_GRAYSCALE) > 127
    assert record["dice"] == pytest.approx(_dice(mask, truth), abs=1e-5)


def test_cbis_ddsm_boxes_give_froc(tmp_path: Path) -> None:
    data = _data("cbis-ddsm-mass")
    code, report = _run(tmp_path / "eval", "--stage", "mammography", str(data), "--limit", "20")
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["format"] == "cbis_coco" and ds["n_scored"] == 20 and ds["segmentation"] is None
    coco = json.loads((data / "train" / "_annotations.coco.json").read_text())
    first = sorted(coco["images"], key=lambda i: i["file_name"])[:20]
    ids = {i["id"] for i in first}
    boxes = sum(1 for a in coco["annotations"] if a["image_id"] in ids)
    det = ds["detection"]
    assert det["n_images"] == 20 and det["n_lesions"] == boxes
    assert [p["fp_per_image"] for p in det["froc"]] == [0.125, 0.25, 0.5, 1, 2, 4]
    names = {i["file_name"] for i in first}
    with (data / "labels_image_level.csv").open() as handle:
        patients = {row["patient_id"] for row in csv.DictReader(handle) if row["file"] in names}
    assert ds["classification"]["n"] == 20 and ds["n_patients"] == len(patients)
