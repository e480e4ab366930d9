"""``breastdx evaluate`` on generated data sets in every format, with tiny ONNX models.

The tiny segmenters (``tests.service.jobs_support``) mark every pixel brighter than about 0.4
(mask logit = the pixel, card threshold 0.6) and score malignancy as sigmoid(2 * mean + 0.25).
Images are built from blocks aligned with the model's down-sampling, so the predicted mask at
the original geometry is exactly the bright blocks and every expected figure below is worked
out by hand (or, for Hausdorff-95 and per-patient figures, by an independent brute-force
computation in the test).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from breastdx.cli import main as breastdx
from evaluation import lesions
from evaluation.card import EVALUATED_NOTE
from evaluation.cli import SplitPart, restrict
from evaluation.formats import FORMATS, detect_format
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.inference import clear_runners
from tests.service.jobs_support import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clear_runners()
    return build_store(tmp_path_factory.mktemp("models"))


def _png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


def _block(shape: tuple[int, int], *blocks: tuple[int, int, int, int, int]) -> np.ndarray:
    """uint8 image, black but for blocks ``(row, col, height, width, value)``."""
    image = np.zeros(shape, np.uint8)
    for r, c, h, w, v in blocks:
        image[r : r + h, c : c + w] = v
    return image


def _evaluate(store: Path, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = breastdx(["evaluate", *args, "--out", str(out), "--store", str(store), "--n-boot", "50"])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else {}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- BUSI: segmentation and classification, worked out by hand ---------------------------------

SQUARE = (16, 16, 16, 16, 255)  # rows 16-31, cols 16-31: 256 of 4096 pixels


def make_busi(root: Path) -> Path:
    base = root / "Dataset_BUSI_with_GT"
    _png(base / "benign" / "benign (1).png", _block((64, 64), SQUARE))
    _png(base / "benign" / "benign (1)_mask.png", _block((64, 64), SQUARE))
    _png(base / "malignant" / "malignant (1).png", _block((64, 64), SQUARE))
    _png(base / "malignant" / "malignant (1)_mask.png", _block((64, 64), (16, 24, 16, 16, 255)))
    _png(base / "normal" / "normal (1).png", _block((64, 64)))
    _png(base / "normal" / "normal (1)_mask.png", _block((64, 64)))
    _png(base / "normal" / "normal (2).png", _block((64, 64), (40, 40, 8, 8, 255)))
    _png(base / "normal" / "normal (2)_mask.png", _block((64, 64)))
    return root


def _hd95_brute(a: np.ndarray, b: np.ndarray) -> float:
    """Independent Hausdorff-95: boundary = foreground with a background 4-neighbour."""

    def border(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, 1)
        inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        return np.argwhere(m & ~inner).astype(float)

    pa, pb = border(a), border(b)
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def test_busi_figures_match_a_hand_computation(store: Path, tmp_path: Path) -> None:
    data = make_busi(tmp_path / "busi")
    assert detect_format(data).name == "busi"
    code, report = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(data))
    assert code == 0
    (ds,) = report["datasets"]
    seg, cls = ds["segmentation"], ds["classification"]
    assert (seg["n_lesion_images"], seg["n_lesion_free_images"]) == (2, 2)
    assert seg["dice"]["value"] == pytest.approx((1.0 + 0.5) / 2)  # identical; 128 of 256+256
    assert seg["iou"]["value"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert seg["false_lesion_rate"]["value"] == pytest.approx(0.5)  # normal (2) has a block
    pred, truth = _block((64, 64), SQUARE) > 0, _block((64, 64), (16, 24, 16, 16, 255)) > 0
    assert seg["hd95_px"]["value"] == pytest.approx(_hd95_brute(pred, truth) / 2, abs=1e-5)
    assert seg["hd95_mm"] is None  # PNG: no pixel size
    # malignancy = sigmoid(2 * mean + 0.25); the malignant image ties with benign (1)
    probs = {"benign (1)": 1 / 16, "malignant (1)": 1 / 16, "normal (1)": 0, "normal (2)": 1 / 64}
    p = np.array([_sigmoid(2 * m + 0.25) for m in probs.values()])
    y = np.array([0, 1, 0, 0])
    assert cls["auc"]["value"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert cls["sensitivity"]["value"] == 1.0 and cls["specificity"]["value"] == 0.0
    assert cls["balanced_accuracy"]["value"] == 0.5
    assert cls["brier"]["value"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-5)
    assert cls["ece"]["value"] == pytest.approx(abs(np.mean(p) - 0.25), abs=1e-5)  # one bin
    for figure in (seg["dice"], cls["auc"]):
        assert figure["ci_low"] <= figure["value"] <= figure["ci_high"]
    assert report["model"]["ref"] == "us-tiny@1" and len(report["model"]["sha256"]) == 64
    assert report["command"].startswith("breastdx evaluate --stage ultrasound")
    assert ds["bootstrap_unit"] == "images" and len(ds["fingerprint"]) == 64
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "us-tiny@1" in html
    for kind in ("roc", "reliability", "dice_histogram", "gallery_worst"):
        assert (tmp_path / "out" / ds["plots"][kind]).stat().st_size > 1000
    assert ds["gallery"]["worst"][0] in ("normal (2)", "malignant (1)")


def test_the_dice_is_split_into_unmarked_lesions_and_outlines(store: Path, tmp_path: Path) -> None:
    """A third lesion image whose lesion the model cannot see (a black image): Dice 0 there, so
    the mean Dice (1 + 0.5 + 0) / 3 splits into 1 of 3 lesion images unmarked and Dice 0.75
    over the two marked."""
    data = make_busi(tmp_path / "busi")
    base = data / "Dataset_BUSI_with_GT" / "benign"
    _png(base / "benign (2).png", _block((64, 64)))
    _png(base / "benign (2)_mask.png", _block((64, 64), SQUARE))
    code, report = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(data))
    assert code == 0
    seg = report["datasets"][0]["segmentation"]
    assert seg["n_lesion_images"] == 3
    assert seg["dice"]["value"] == pytest.approx(0.5)
    assert seg["unmarked_lesion_rate"]["value"] == pytest.approx(1 / 3)
    assert seg["dice_marked"]["value"] == pytest.approx(0.75)
    assert seg["dice_marked"]["n"] == 2
    assert "Lesion images left unmarked" in (tmp_path / "out" / "report.html").read_text()


def test_hd95_of_the_module_equals_brute_force() -> None:
    rng = np.random.default_rng(3)
    a = cv2.circle(np.zeros((50, 60), np.uint8), (25, 20), 12, 1, -1) > 0
    b = (cv2.circle(np.zeros((50, 60), np.uint8), (30, 24), 10, 1, -1) > 0) | (
        rng.random((50, 60)) > 0.995
    )
    assert lesions.hd95(a, b) == pytest.approx(_hd95_brute(a, b))
    assert lesions.hd95(a, b, (0.5, 0.5)) == pytest.approx(_hd95_brute(a, b) * 0.5)
    assert math.isnan(lesions.hd95(a, np.zeros_like(a)))


def test_a_rerun_resumes_from_the_cache(store: Path, tmp_path: Path) -> None:
    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    first_code, first = _evaluate(store, out, "--stage", "ultrasound", str(data))
    image = data / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    image.write_bytes(b"not a png any more")  # a recomputation would now skip this case
    code, again = _evaluate(store, out, "--stage", "ultrasound", str(data))
    assert first_code == code == 0
    assert again["datasets"][0]["segmentation"] == first["datasets"][0]["segmentation"]
    cache = next((out / "cache").glob("*.jsonl"))
    assert (
        cache.name.startswith(first["model"]["sha256"]) and len(cache.read_text().splitlines()) == 4
    )


def test_the_runtime_is_named_and_keeps_its_own_cache(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--runtime`` (default onnxruntime, whatever ``BREASTDX_RUNTIME`` says): the report names
    it, and each runtime's scored cases are cached apart."""
    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    monkeypatch.setenv("BREASTDX_RUNTIME", "openvino")  # the service's setting: not read here
    code, reference = _evaluate(store, out, "--stage", "ultrasound", str(data))
    assert code == 0 and reference["model"]["runtime"]["runtime"] == "onnxruntime"
    code, other = _evaluate(store, out, "--stage", "ultrasound", str(data), "--runtime", "openvino")
    assert code == 0
    assert other["model"]["runtime"]["runtime"] == "openvino"
    assert other["model"]["runtime"]["device"] == "CPU"
    assert "openvino (CPU): parity passed" in other["model"]["runtime"]["trials"][0]
    dice = [r["datasets"][0]["segmentation"]["dice"]["value"] for r in (reference, other)]
    assert dice[0] == dice[1]  # float32 on both: the same masks on these block images
    sha = reference["model"]["sha256"]
    names = sorted(p.name for p in (out / "cache").glob("*.jsonl"))
    assert len(names) == 2 and all(name.startswith(f"{sha}-") for name in names)
    assert names[0].endswith(".jsonl") and names[1].endswith(".openvino.jsonl")
    assert names[0].removesuffix(".jsonl") == names[1].removesuffix(".openvino.jsonl")
    assert "run on openvino (CPU)" in (out / "report.html").read_text()


# --- CBIS-DDSM as COCO boxes: FROC by hand --------------------------------------------------------


def make_cbis(root: Path) -> Path:
    train = root / "train"
    # blocks (row, col, h, w, value): brighter blocks get higher lesion scores
    images = {
        "00001_LEFT_CC": [(16, 16, 32, 32, 255), (88, 88, 32, 32, 178)],  # hit, FP (0.7)
        "00002_LEFT_CC": [(88, 16, 32, 32, 230)],  # FP (0.9), its truth elsewhere
        "00003_LEFT_CC": [(0, 64, 32, 32, 204)],  # hit by IoU only (0.8)
    }
    truths = {
        "00001_LEFT_CC": [[20, 20, 30, 30]],  # the mark's centre (32, 32) lies inside
        "00002_LEFT_CC": [[60, 60, 20, 20]],  # missed
        "00003_LEFT_CC": [[82, 0, 30, 32]],  # centre (80, 16) outside, IoU 448/1536 = 0.29
    }
    coco: dict[str, Any] = {
        "categories": [{"id": 0, "name": "Mass"}],
        "images": [],
        "annotations": [],
    }
    for k, (name, blocks) in enumerate(images.items()):
        _png(train / f"{name}.jpg", _block((128, 128), *blocks))
        coco["images"].append({"id": k, "file_name": f"{name}.jpg", "height": 128, "width": 128})
        for box in truths[name]:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": k, "bbox": box})
    (train / "_annotations.coco.json").write_text(json.dumps(coco))
    rows = ["split,file,patient_id,side,view,image_label"]
    rows += [
        f"train,{n}.jpg,P_{n[:5]},LEFT,CC,{'malignant' if n < '00003' else 'benign'}"
        for n in images
    ]
    (root / "labels_image_level.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cbis_coco_froc_matches_a_hand_computation(store: Path, tmp_path: Path) -> None:
    data = make_cbis(tmp_path / "cbis")
    assert detect_format(data).name == "cbis_coco"
    code, report = _evaluate(store, tmp_path / "out", "--stage", "mammography", str(data))
    assert code == 0
    (ds,) = report["datasets"]
    det = ds["detection"]
    assert (det["n_images"], det["n_lesions"]) == (3, 3)
    # ranked marks: hit (TP 1/3, 0 FP), FP (1/3 FP/img), hit by IoU (2/3), FP (2/3 FP/img)
    expected = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 2 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3}
    assert {p["fp_per_image"]: p["value"] for p in det["froc"]} == pytest.approx(expected, abs=1e-5)
    assert det["mean_sensitivity"]["value"] == pytest.approx(5 / 9, abs=1e-5)
    assert "centre of its bounding box" in det["hit_rule"] and "0.2" in det["hit_rule"]
    assert det["mark_score"].startswith("lesions are ranked by")
    assert ds["segmentation"] is None and ds["bootstrap_unit"] == "patients"
    assert ds["classification"]["class_counts"] == {"malignant": 2, "benign": 1}


def _gated_copy(store: Path, target: Path, presence: float) -> Path:
    """``mg-tiny``'s file in a store of its own, its card's presence threshold set."""
    loaded = Registry([DirectoryStore(store)]).load("mg-tiny@production")
    body = loaded.card.model_dump(mode="json", exclude={"name", "version", "registered_at", "onnx"})
    body["onnx"] = {"opset": loaded.card.onnx.opset}
    body["thresholds"]["presence"] = presence
    Registry([DirectoryStore(target)]).register(
        "mg-tiny", loaded.onnx_path, body, alias="production"
    )
    return target


def test_the_froc_runs_past_the_operating_point(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A presence threshold of 0.70 reports the marks scoring 0.731 and 0.711 (a hit and a
    false positive); the 0.690 (hit) and 0.668 regions become candidates. The FROC still ranks all
    four (the hand computation above), the operating point is the two lesions alone, and the
    cases scored under the two cards (one ONNX file) are cached apart."""
    data = make_cbis(tmp_path / "cbis")
    out = tmp_path / "out"
    gated = _gated_copy(store, tmp_path / "gated", 0.70)
    code, report = _evaluate(gated, out, "--stage", "mammography", str(data))
    assert code == 0
    det = report["datasets"][0]["detection"]
    expected = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 2 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3}
    assert {p["fp_per_image"]: p["value"] for p in det["froc"]} == pytest.approx(expected, abs=1e-5)
    point = det["operating_point"]
    assert point["sensitivity"]["value"] == pytest.approx(1 / 3, abs=1e-5)
    assert point["fp_per_image"]["value"] == pytest.approx(1 / 3, abs=1e-5)
    assert "presence threshold" in det["mark_score"]
    html = (out / "report.html").read_text()
    assert "at the card's operating point: FP/image</td><td>0.333" in html
    (line,) = capsys.readouterr().out.splitlines()  # the headline figures, on stdout
    assert line.startswith("CBIS-DDSM: 3 scored; sensitivity at 0.5 FP/image 0.667")
    assert "sensitivity at the operating point 0.333" in line and "its FP/image 0.333" in line
    code, ungated = _evaluate(store, out, "--stage", "mammography", str(data))
    assert code == 0
    point = ungated["datasets"][0]["detection"]["operating_point"]
    assert point["sensitivity"]["value"] == pytest.approx(2 / 3, abs=1e-5)
    assert point["fp_per_image"]["value"] == pytest.approx(2 / 3, abs=1e-5)
    assert len(list((out / "cache").glob("*.jsonl"))) == 2


def test_hit_rule_needs_the_centre_or_enough_overlap() -> None:
    truth = (0.0, 0.0, 10.0, 10.0)
    assert lesions.hits((2.0, 2.0, 4.0, 4.0), truth)  # centre inside
    assert not lesions.hits((8.0, 8.0, 10.0, 10.0), truth)  # centre (13, 13), IoU 4/196
    assert lesions.match_marks([((1, 1, 8, 8), 0.5), ((2, 2, 6, 6), 0.9)], [truth]) == [False, True]


# --- mini-MIAS circles, IDC patients, the hospital CSV ---------------------------------------


def test_mini_mias_circles_become_truth_at_the_image_size(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "mias"
    disc = cv2.circle(np.zeros((256, 256), np.uint8), (128, 128), 32, 255, -1)
    _png(root / "mdb001.png", disc)
    _png(root / "mdb002.png", np.zeros((256, 256), np.uint8))
    (root / "Info.txt").write_text("mdb001 G CIRC M 512 512 128\nmdb002 F NORM\n")
    code, report = _evaluate(store, tmp_path / "out", "--stage", "mammography", str(root))
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["format"] == "mini_mias" and ds["n_patients"] == 1  # mdb001 and mdb002: a pair
    assert ds["segmentation"]["dice"]["value"] > 0.85  # the disc, through a 32 px model
    assert ds["segmentation"]["false_lesion_rate"]["value"] == 0.0
    cache = next((tmp_path / "out" / "cache").glob("*.jsonl")).read_text().splitlines()
    record = next(json.loads(line) for line in cache if '"mdb001"' in line)
    assert record["truth_boxes"] == [[96.0, 96.0, 64.0, 64.0]]  # (512, 1024-512) r 128 at 1/4


def he(value: int) -> np.ndarray:
    patch = np.full((50, 50, 3), (200, 120, 190), np.uint8)
    patch[10:40, 10:40] = (value, 60, 150)
    return patch


def test_idc_gives_per_patient_figures(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "IDC_regular_ps50_idx5"
    for patient, labels in (("101", (0, 0, 1)), ("102", (0, 1, 1)), ("103", (0, 0, 0))):
        for k, label in enumerate(labels):
            name = f"{patient}_idx5_x{50 * k}_y0_class{label}.png"
            _png(root / patient / str(label) / name, he(40 + 60 * label + 10 * k))
    code, report = _evaluate(store, tmp_path / "out", "--stage", "histopathology", str(tmp_path))
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["format"] == "idc" and ds["n_patients"] == 3 and ds["segmentation"] is None
    cache = next((tmp_path / "out" / "cache").glob("*.jsonl")).read_text().splitlines()
    records = [json.loads(line) for line in cache]
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_patient.setdefault(r["group"], []).append(r)
    means = {g: np.mean([r["probability"] for r in rs]) for g, rs in by_patient.items()}
    shares = {g: np.mean([r["label"] for r in rs]) for g, rs in by_patient.items()}
    positive = [g for g in by_patient if shares[g] >= 0.5]  # patient 102 only
    negative = [g for g in by_patient if g not in positive]
    pairs = [
        (means[p] > means[n]) + 0.5 * (means[p] == means[n]) for p in positive for n in negative
    ]
    patient = ds["classification_per_patient"]
    assert patient["n"] == 3 and patient["auc"]["value"] == pytest.approx(np.mean(pairs))
    assert patient["class_counts"] == {"malignant": 1, "benign": 2}
    burden = np.mean([abs(means[g] - shares[g]) for g in by_patient])
    assert patient["burden_mae"]["value"] == pytest.approx(burden, abs=1e-5)
    assert ds["classification"]["n"] == 9


def test_hospital_csv_skips_bad_cases_naming_the_file(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "hospital"
    _png(root / "a.png", _block((64, 64), SQUARE))
    _png(root / "a_mask.png", _block((64, 64), SQUARE))
    _png(root / "b.png", _block((64, 64), SQUARE))
    _png(root / "b_mask.png", _block((32, 32)))  # another size than its image
    _png(root / "c.png", _block((64, 64), SQUARE))
    (root / "d.png").write_bytes(b"\x89PNG broken")
    rows = [
        "image,mask,label,patient,boxes",
        "a.png,a_mask.png,1,p1,",
        "b.png,b_mask.png,0,p1,",
        "c.png,c_missing.png,0,p2,",
        "d.png,,1,p3,none",
    ]
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code, report = _evaluate(store, out, "--stage", "ultrasound", str(root))
    assert code == 1  # cases were skipped
    (ds,) = report["datasets"]
    assert ds["format"] == "csv" and (ds["n_scored"], ds["n_skipped"]) == (1, 3)
    messages = {s["id"]: s["message"] for s in ds["skipped"]}
    assert "b_mask.png" in messages["b.png"] and "32x32" in messages["b.png"]
    assert "c_missing.png" in messages["c.png"] and "missing" in messages["c.png"]
    assert "d.png" in messages["d.png"]
    assert ds["segmentation"]["dice"]["value"] == 1.0


def test_unknown_layout_is_a_clear_error(store: Path, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    code, _ = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(tmp_path / "stuff"))
    err = capsys.readouterr().err
    assert code == 2 and "unknown_layout" in err and "known formats" in err
    assert "Traceback" not in err
    assert set(FORMATS) >= {"busi", "busbra", "cbis_coco", "mini_mias", "idc", "csv"}


# --- splits and cards ----------------------------------------------------------------------------


def _split(path: Path, entries: list[tuple[str, str]], classes: dict[str, str]) -> Path:
    samples = {
        sid: {"group_id": sid, "label": 0, "class_name": classes[sid], "image_path": "x",
              "image_sha256": "0" * 64, "mask_sha256": []}
        for sid, _ in entries
    }  # fmt: skip
    document = {
        "format": "breastdx.split/1",
        "protocol": "leakage_safe",
        "params": {"names": ["train", "val", "test"]},
        "samples": samples,
        "entries": [{"sample_id": s, "split": part} for s, part in entries],
    }
    path.write_text(json.dumps(document))
    return path


def test_a_multi_data_set_split_is_filtered_to_the_data_set(store: Path, tmp_path: Path) -> None:
    data = make_busi(tmp_path / "busi")
    entries = [
        ("busi:benign (1)", "test"),
        ("busi:malignant (1)", "test"),
        ("busi:normal (1)", "train"),
        ("busbra:bus_0001-l", "test"),
    ]
    classes = {"busi:benign (1)": "benign", "busi:malignant (1)": "malignant"}
    classes |= {"busi:normal (1)": "normal", "busbra:bus_0001-l": "benign"}
    split = _split(tmp_path / "us.json", entries, classes)
    args = ["--stage", "ultrasound", str(data), "--split", str(split), "--subset", "test"]
    code, report = _evaluate(store, tmp_path / "out", *args)
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["n_cases"] == 2 and ds["split"]["class_counts"] == {"benign": 1, "malignant": 1}
    from evaluation.cases import Case

    cases = [Case(id=i, dataset="busi", image_path=Path(i)) for i in ("a", "b")]
    part = SplitPart(["busi:a", "busbra:a", "busi:c"], {}, {}, several=True)
    chosen, missing = restrict(cases, part, "busi", tmp_path)
    assert [c.id for c in chosen] == ["a"] and missing == ["c"]
    part = SplitPart(["b", "c"], {}, {}, several=False)  # one data set: every id is its own
    assert restrict(cases, part, "busi", tmp_path)[1] == ["c"]
    # unprefixed ids of several data sets: the recorded image path tells whose an absent id is
    paths = {"d": str(tmp_path / "busi" / "d.png"), "bus_1": str(tmp_path / "busbra" / "x.png")}
    part = SplitPart(["a", "d", "bus_1"], {}, paths, several=True)
    chosen, missing = restrict(cases, part, "busi", tmp_path / "busi")
    assert [c.id for c in chosen] == ["a"] and missing == ["d"]


def test_register_puts_the_evaluated_figures_on_a_new_card(store: Path, tmp_path: Path) -> None:
    data = make_busi(tmp_path / "busi")
    entries = [(s, "test") for s in ("benign (1)", "malignant (1)", "normal (1)", "normal (2)")]
    classes = dict(
        zip([e[0] for e in entries], ["benign", "malignant", "normal", "normal"], strict=True)
    )
    split = _split(tmp_path / "us.json", entries, classes)
    target = tmp_path / "ship"
    args = ["--stage", "ultrasound", str(data), "--model", "us-tiny@1", "--split", str(split)]
    args += ["--register", "--register-store", str(target), "--alias", "production"]
    code, report = _evaluate(store, tmp_path / "out", *args)
    assert code == 0
    registry = Registry([DirectoryStore(target)])
    card = registry.card("us-tiny@production")
    (evaluation,) = card.evaluation_sets
    assert evaluation.dataset == "BUSI" and evaluation.class_counts["normal"] == 2
    metrics = {m.name: m for m in card.metrics}
    seg = report["datasets"][0]["segmentation"]
    assert (
        metrics["dice"].value == seg["dice"]["value"] and metrics["dice"].resolution == "original"
    )
    assert metrics["malignancy_auc"].n == 4 and metrics["false_lesion_rate"].n == 2
    assert card.onnx.sha256 == report["model"]["sha256"]  # the same ONNX file
    assert EVALUATED_NOTE in card.limitations
    (check,) = registry.verify("us-tiny")
    assert check.ok


def test_dicom_pixel_spacing_gives_hausdorff_in_mm(store: Path, tmp_path: Path) -> None:
    from pydicom import uid

    from tests.imaging import dicom_factory as dcm

    root = tmp_path / "dicom"
    pixels = _block((64, 64), SQUARE)
    ds = dcm.base_dataset(uid.UltrasoundImageStorage, "US")
    dcm.set_pixel_data(ds, pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.PixelSpacing = [0.25, 0.25]  # mm (row, column)
    root.mkdir()
    (root / "a.dcm").write_bytes(dcm.to_bytes(ds))
    _png(root / "a_mask.png", _block((64, 64), (16, 24, 16, 16, 255)))
    (root / "cases.csv").write_text("image,mask,label\na.dcm,a_mask.png,1\n")
    code, report = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(root))
    assert code == 0
    seg = report["datasets"][0]["segmentation"]
    assert seg["hd95_mm"]["value"] == pytest.approx(seg["hd95_px"]["value"] * 0.25, abs=1e-5)
    assert seg["dice"]["value"] == pytest.approx(0.5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_with_eta_on_a_terminal_and_lines_elsewhere() -> None:
    from evaluation.run import Progress

    tty, plain = _Terminal(), io.StringIO()
    for stream in (tty, plain):
        bar = Progress(20, "BUSI", stream)
        for _ in range(10):
            bar.advance(2, 2)
    assert "\r" in tty.getvalue() and "ETA" in tty.getvalue() and "[" in tty.getvalue()
    assert tty.getvalue().endswith("20/20 ETA 00:00:00\n")
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and lines[-1].startswith("BUSI: 20/20 cases, ETA")
    assert 2 <= len(lines) <= 11


def test_busbra_cases_are_grouped_by_patient(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "busbra"
    rows = ["ID,Case,Histology,Pathology,BIRADS,Device,Side,BBOX"]
    truths = {  # image -> (case, pathology, truth block): Dice 1, 0.5 and 0
        "bus_0001-l": ("1", "malignant", SQUARE),
        "bus_0001-r": ("1", "malignant", (16, 24, 16, 16, 255)),
        "bus_0002-s": ("2", "benign", (40, 40, 8, 8, 255)),
    }
    for name, (case, pathology, block) in truths.items():
        _png(root / "Images" / f"{name}.png", _block((64, 64), SQUARE))
        _png(root / "Masks" / f"{name.replace('bus_', 'mask_')}.png", _block((64, 64), block))
        rows.append(f"{name},{case},x,{pathology},4,GE,left,")
    (root / "bus_data.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(root).name == "busbra"
    code, report = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(root))
    assert code == 0
    (ds,) = report["datasets"]
    assert ds["n_patients"] == 2 and ds["bootstrap_unit"] == "patients"
    assert ds["segmentation"]["dice"]["value"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert ds["segmentation"]["iou"]["value"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert ds["classification"]["class_counts"] == {"malignant": 2, "benign": 1}


@pytest.mark.parametrize("release", ["busi", "busbra"])
def test_release_sets_skip_a_case_whose_mask_is_missing(
    store: Path, tmp_path: Path, release: str
) -> None:
    """BUSI and BUS-BRA: a missing mask skips that case (named, counted, exit 1), the rest
    of the set is still evaluated."""
    from training.data.synthetic import make_busbra
    from training.data.synthetic import make_busi as make_busi_release

    if release == "busi":
        root = make_busi_release(tmp_path / "busi", n=6, seed=0, duplicates=0)
        gone = root / "benign" / "benign (1)_mask.png"
    else:
        root = make_busbra(tmp_path / "busbra", n_cases=3, seed=0)
        gone = root / "Masks" / "mask_0001-l.png"
    total = len(FORMATS[release].read(root))
    gone.unlink()
    code, report = _evaluate(store, tmp_path / "out", "--stage", "ultrasound", str(root))
    assert code == 1  # a case was skipped
    (ds,) = report["datasets"]
    assert (ds["n_scored"], ds["n_skipped"]) == (total - 1, 1)
    (skipped,) = ds["skipped"]
    assert gone.name in skipped["message"]
