"""The shipped model store (``models_registry/store``): what `make models` built and git carries.

Every version verifies (sha256, ONNX Runtime load, contract); each stage has a ``production``
model; the committed ONNX files fit the 100 MB budget; each card carries held-out metrics with
intervals, its data set, the sha256 of the committed split file and "not for clinical use";
``breastdx predict`` runs each shipped model on a generated image; a tampered copy is refused.
Skipped, with the reason, only while the store holds no model at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from models_registry.card import ModelCard, Stage
from models_registry.errors import ModelIntegrityError
from models_registry.registry import PRODUCTION, Registry
from models_registry.store import SHIPPED_STORE
from service.cli_predict import main as predict
from service.inference import clear_runners
from service.inference.result import AnalysisResult
from tests.conftest import REPO_ROOT

BUDGET_BYTES = 100_000_000  # every committed ONNX file together
SPLITS = SHIPPED_STORE / "splits"
CONFIGS = REPO_ROOT / "training" / "configs" / "ship"
SHIPPED = {
    Stage.MAMMOGRAPHY: ("mammography-unet", "CBIS-DDSM, mini-MIAS", ()),
    Stage.ULTRASOUND: ("ultrasound-unet", "BUSI, BUS-BRA", ("dice", "iou")),
    Stage.HISTOPATHOLOGY: ("histopathology-resnet18", "IDC", ("accuracy", "auc")),
}  # stage -> (model name, data sets, metrics that must carry a 95 % interval)


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry([SHIPPED_STORE])
    if not registry.names():
        pytest.skip(
            f"no model in the shipped store {SHIPPED_STORE} yet: build them with make models"
        )
    return registry


@pytest.fixture(scope="module")
def cards(registry: Registry) -> dict[Stage, ModelCard]:
    return {stage: registry.card(f"{name}@{PRODUCTION}") for stage, (name, *_) in SHIPPED.items()}


def onnx_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.onnx") if ".staging" not in p.parts)


def test_every_shipped_version_verifies(registry: Registry) -> None:
    reports = registry.verify()
    assert reports
    failed = [r.to_dict() for r in reports if not r.ok]
    assert not failed, failed


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_each_stage_has_a_production_model(registry: Registry, stage: Stage) -> None:
    name = SHIPPED[stage][0]
    assert PRODUCTION in registry.aliases(name), f"{name} has no {PRODUCTION} alias"
    loaded = registry.load(name)  # sha256 checked against the card
    assert loaded.card.stage is stage and loaded.card.version == registry.aliases(name)[PRODUCTION]
    (report,) = registry.verify(name)
    assert report.ok, report.to_dict()


def test_committed_onnx_files_fit_the_budget(registry: Registry) -> None:
    sizes = {str(p.relative_to(SHIPPED_STORE)): p.stat().st_size for p in onnx_files(SHIPPED_STORE)}
    assert sum(sizes.values()) <= BUDGET_BYTES, (
        f"ONNX files in the shipped store weigh {sum(sizes.values())} bytes, over the "
        f"{BUDGET_BYTES} budget: retire superseded versions (see store/README.md): {sizes}"
    )


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_card_states_held_out_metrics_data_and_use(
    cards: dict[Stage, ModelCard], stage: Stage
) -> None:
    card = cards[stage]
    _, datasets, required = SHIPPED[stage]
    assert [e.dataset for e in card.evaluation_sets] == datasets.split(", ")
    raw = yaml.safe_load((CONFIGS / f"{stage.value}.yaml").read_text(encoding="utf-8"))
    split_file = REPO_ROOT / raw["data"]["split_file"]
    test_ids = [e for e in json.loads(split_file.read_text())["entries"] if e["split"] == "test"]
    # each data set's test part, together the split's whole test part
    assert sum(sum(e.class_counts.values()) for e in card.evaluation_sets) == len(test_ids)
    for evaluation in card.evaluation_sets:
        assert evaluation.split == "test" and evaluation.protocol.value == "leakage_safe"
        digest = hashlib.sha256(split_file.read_bytes()).hexdigest()
        assert evaluation.split_file_sha256 == digest
        metrics = {m.name: m for m in card.metrics if m.dataset == evaluation.dataset}
        n_test = sum(evaluation.class_counts.values())
        for name in required:
            metric = metrics[name]
            assert metric.ci_low is not None and metric.ci_high is not None, name
            assert metric.ci_low <= metric.value <= metric.ci_high and metric.ci_level == 0.95
            # Dice and IoU average the test images that hold a lesion (breastdx evaluate)
            lesion_free = evaluation.class_counts.get("normal", 0) if name in ("dice", "iou") else 0
            assert metric.n == n_test - lesion_free, (evaluation.dataset, name)
    assert "Not for clinical use" in card.intended_use
    assert any("not for clinical use" in item.lower() for item in card.limitations)
    assert card.provenance and card.training.duration_s > 0


def test_mammography_card_names_its_data_limits(cards: dict[Stage, ModelCard]) -> None:
    """Issue 12: box-derived targets and film-only data; the operating point and its FROC."""
    card = cards[Stage.MAMMOGRAPHY]
    text = " ".join(card.limitations)
    assert "Box-derived training targets" in text and "Film-only data" in text
    names = {m.name for m in card.metrics if m.dataset == "CBIS-DDSM"}
    assert {"froc_sensitivity_at_0.5_fp", "froc_sensitivity_at_1_fp"} <= names
    assert card.thresholds.presence is not None
    assert card.calibration.image_malignancy == "lesion_weighted"


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_fp16_weight_storage_is_carded(cards: dict[Stage, ModelCard], stage: Stage) -> None:
    """A file with float16 weights says so, with its own parity figures and tolerance."""
    import onnx

    card = cards[stage]
    path = SHIPPED_STORE / card.name / str(card.version) / card.onnx.file
    model = onnx.load(str(path), load_external_data=False)
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    noted = any("stored as float16" in item for item in card.limitations)
    assert half == noted
    tolerance = 2e-3 if half else 1e-4
    assert card.parity.tolerance == tolerance and card.parity.max_abs_prob_diff <= tolerance
    if card.parity.mask_agreement is not None:
        assert card.parity.mask_agreement >= (0.995 if half else 0.999)


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_ship_config_matches_the_card(cards: dict[Stage, ModelCard], stage: Stage) -> None:
    raw = yaml.safe_load((CONFIGS / f"{stage.value}.yaml").read_text(encoding="utf-8"))
    trained = cards[stage].training.config
    split = Path(raw["data"]["split_file"])
    assert split.parent == SPLITS.relative_to(REPO_ROOT) and (REPO_ROOT / split).is_file()
    assert split == Path(trained["data"]["split_file"])
    assert raw["data"]["dataset"] == trained["data"]["dataset"]
    assert raw["augment"]["policy"] == trained["augment"]["policy"]
    # an ensemble gives a presence output only where all its members have one; else its
    # validation loss leaves that term out
    members = trained["model"]["options"].get("members") or []
    partial = members and not all(m["options"].get("presence") for m in members)
    unscored = {"presence_weight"} if partial else set()
    assert {k: v for k, v in raw["loss"].items() if k not in unscored} == {
        k: trained["loss"][k] for k in raw["loss"] if k not in unscored
    }
    # an ensemble (``breastdx ensemble``, scripts/build-models.sh's members_of) ships networks
    # of the ship config's family, the ship config's own among them
    networks = members or [trained["model"]]
    assert all(raw["model"]["name"] == network["name"] for network in networks)
    assert raw["model"].get("width") in [network["width"] for network in networks]
    assert raw["model"]["input_size"] == trained["model"]["input_size"]
    assert raw["seed"] == trained["seed"] and raw["optim"] == {
        k: trained["optim"][k] for k in raw["optim"]
    }


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_ship_configs_validate(stage: Stage) -> None:
    pytest.importorskip("torch")  # training.config checks augmentation policies (training extra)
    from training.config import load_config

    config = load_config(CONFIGS / f"{stage.value}.yaml")
    assert config.stage.value == stage.value and config.data.protocol.value == "leakage_safe"
    assert config.output_dir == Path("runs/ship") / stage.value


def generated_image(stage: Stage, folder: Path) -> Path:
    """A synthetic image of the stage's kind (no patient data)."""
    rng = np.random.default_rng(0)
    if stage is Stage.HISTOPATHOLOGY:  # pink stroma with purple nuclei, (H, W, 3) RGB
        image = np.empty((96, 96, 3), np.uint8)
        image[...] = (230, 170, 200)
        for y, x in rng.integers(4, 92, size=(60, 2)):
            cv2.circle(image, (int(x), int(y)), 3, (120, 60, 160), -1)
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif stage is Stage.ULTRASOUND:  # speckle with a dark oval lesion
        image = (rng.gamma(2.0, 40.0, size=(180, 220))).clip(0, 255).astype(np.uint8)
        cv2.ellipse(image, (110, 90), (30, 20), 0, 0, 360, 20, -1)
    else:  # a bright breast on a black film, a denser blob inside
        image = np.zeros((512, 400), np.uint8)
        cv2.ellipse(image, (0, 256), (260, 220), 0, -90, 90, 140, -1)
        cv2.circle(image, (120, 250), 25, 210, -1)
        image = cv2.GaussianBlur(image, (9, 9), 3)
    path = folder / f"{stage.value}.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize("stage", list(SHIPPED))
def test_predict_with_the_shipped_model(
    cards: dict[Stage, ModelCard], stage: Stage, tmp_path: Path
) -> None:
    clear_runners()
    image = generated_image(stage, tmp_path)
    out = tmp_path / "out"
    argv = ["--stage", stage.value, str(image), "--out", str(out), "--store", str(SHIPPED_STORE)]
    assert predict(argv) == 0
    result = AnalysisResult.model_validate_json((out / f"{stage.value}.json").read_text())
    assert result.model.ref == cards[stage].ref and result.stage.value == stage.value
    assert result.model.sha256 == cards[stage].onnx.sha256
    assert result.malignancy is not None and 0.0 <= result.malignancy.probability <= 1.0
    mask = cv2.imread(str(out / f"{stage.value}.mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (result.input.rows, result.input.columns)


def test_a_tampered_copy_is_refused(cards: dict[Stage, ModelCard], tmp_path: Path) -> None:
    card = cards[Stage.ULTRASOUND]  # the smallest file: copy only that model's folder
    copy = tmp_path / "store"
    shutil.copytree(SHIPPED_STORE / card.name, copy / card.name)
    path = copy / card.name / str(card.version) / card.onnx.file
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    registry = Registry([copy])
    with pytest.raises(ModelIntegrityError):
        registry.load(card.ref)
    (report,) = registry.verify(card.ref)
    assert not report.ok
    clear_runners()
    image = generated_image(Stage.ULTRASOUND, tmp_path)
    argv = ["--stage", "ultrasound", str(image), "--out", str(tmp_path / "out")]
    assert predict([*argv, "--store", str(copy)]) == 1
    Registry([SHIPPED_STORE]).load(card.ref)  # the shipped file itself is untouched
