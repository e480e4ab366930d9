"""``breastdx lesion-score`` end to end on the tiny ultrasound model and BUSI-like images.

The tiny model's mask probability is ``sigmoid(pixel)``: a bright block (255) is a confident
region, a grey one (150) a weaker one. On the training part each image holds a true lesion
(bright, in the mask) and a distractor (grey, outside it); the command fits the score on those
regions, chooses the presence threshold on the validation part and registers a new version whose
card carries both; ``breastdx evaluate`` then ranks the marks by the fitted score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breastdx.cli import main as breastdx
from imaging.lesion_score import FEATURES
from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from service.inference import clear_runners
from tests.service.jobs_support import build_store
from tests.test_evaluation import _block, _evaluate, _png, _split

LESION, DISTRACTOR = 255, 150
TRAIN = ["benign (1)", "benign (2)", "malignant (1)", "malignant (2)"]
VAL = ["benign (3)", "malignant (3)", "normal (1)", "normal (2)"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clear_runners()
    return build_store(tmp_path_factory.mktemp("lesion-score-models"))


@pytest.fixture(autouse=True)
def _fresh_runners() -> None:
    clear_runners()


def _data(root: Path, *, distractors: bool = True) -> tuple[Path, Path]:
    """BUSI-like 64 x 64 images: a bright lesion block (in the mask) and, unless told not to,
    a grey distractor block (outside it); normal images hold a distractor only."""
    base = root / "busi" / "Dataset_BUSI_with_GT"
    for i, name in enumerate(TRAIN + VAL):
        cls = name.split(" ")[0]
        lesion = (6 + 2 * i, 6, 14, 14, LESION)
        distractor = (40, 36 + (i % 3), 12, 12, DISTRACTOR)
        blocks = [distractor] if distractors or cls == "normal" else []
        if cls != "normal":
            blocks.append(lesion)
        _png(base / cls / f"{name}.png", _block((64, 64), *blocks))
        truth = _block((64, 64), lesion) if cls != "normal" else _block((64, 64))
        _png(base / cls / f"{name}_mask.png", truth)
    classes = {n: n.split(" ")[0] for n in TRAIN + VAL}
    entries = [(n, "train") for n in TRAIN] + [(n, "val") for n in VAL]
    return root / "busi", _split(root / "us.json", entries, classes)


def _lesion_score(store: Path, data: Path, split: Path, *args: str) -> int:
    return breastdx(
        ["lesion-score", "--stage", "ultrasound", str(data), "--split", str(split),
         "--model", "us-tiny@1", "--store", str(store), *args]
    )  # fmt: skip


def test_the_fitted_score_is_registered_and_ranks_the_marks(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, split = _data(tmp_path)
    target, out = tmp_path / "ship", tmp_path / "out"
    code = _lesion_score(
        store, data, split, "--out", str(out), "--register-store", str(target), "--l2", "1"
    )
    assert code == 0, capsys.readouterr().err
    card = Registry([DirectoryStore(target)]).card("us-tiny@1")
    score = card.calibration.lesion_score
    assert score is not None and score.features == list(FEATURES)
    assert score.coefficients[0] > 0  # a higher peak: more likely a true lesion
    assert "8 regions (4 hitting a true lesion) of 4 images of the 'train' part" in score.fitted_on
    assert card.metrics == [] and card.reduced_precision == []  # measured with the peak
    report = json.loads((out / "lesion-score.json").read_text())
    chosen = report["val"]["lesion_score"]
    assert card.thresholds.presence == chosen["threshold"]
    assert chosen["lesion_sensitivity"] == 1.0 and chosen["false_marks_per_image"] == 0.0
    assert chosen["false_lesion_rate"] == 0.0 and chosen["n_lesion_free_images"] == 2
    assert report["val"]["peak"]["lesion_sensitivity"] == 1.0
    assert report["val"]["froc_lesion_score"]["busi"][3] == 1.0  # at 1 false mark per image

    code, evaluated = _evaluate(
        target, tmp_path / "eval", str(data), "--stage", "ultrasound", "--model", "us-tiny@1",
        "--split", str(split), "--subset", "val",
    )  # fmt: skip
    assert code == 0
    section = evaluated["datasets"][0]
    assert section["segmentation"]["false_lesion_rate"]["value"] == 0.0  # the grey ones dropped
    records = [
        json.loads(line) for path in (tmp_path / "eval" / "cache").iterdir()
        for line in path.read_text().splitlines()
    ]  # fmt: skip
    marks = [m for r in records for m in r["marks"]]
    below = [c for r in records for c in r["candidates"]]
    assert len(marks) == 2 and len(below) == 4  # each lesion marked, each distractor a candidate
    assert min(m[4] for m in marks) >= chosen["threshold"] > max(c[4] for c in below)
    assert all(0 < m[4] < 1 for m in marks + below)


def test_the_test_split_is_never_used_and_one_kind_of_region_cannot_be_fitted(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, split = _data(tmp_path, distractors=False)
    target = str(tmp_path / "ship")
    assert _lesion_score(store, data, split, "--choose-subset", "test") == 2
    assert "never fitted or chosen on" in capsys.readouterr().err
    assert _lesion_score(store, data, split, "--register-store", target) == 2
    assert "regions that hit a true lesion and regions that do not" in capsys.readouterr().err
    assert not (tmp_path / "ship" / "us-tiny").exists()
    assert _lesion_score(store, data, split, "--model", "idc-tiny@1") == 2


def test_hard_negatives_are_the_false_regions_in_model_input_pixels(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, split = _data(tmp_path)
    out = tmp_path / "negatives.json"
    args = ["hard-negatives", "--stage", "ultrasound", str(data), "--split", str(split),
            "--model", "us-tiny@1", "--store", str(store), "--out", str(out)]  # fmt: skip
    assert breastdx(args) == 0, capsys.readouterr().err
    document = json.loads(out.read_text())
    assert document["format"] == "breastdx.hard-negatives/1" and document["model"] == "us-tiny@1"
    assert document["input_size"] == [32, 32] and document["columns"] == ["x", "y", "peak"]
    assert document["n_images"] == 4 and document["n_false_regions"] == 4
    assert set(document["films"]) == {f"busi:{name}" for name in TRAIN}  # never val or test
    for i, name in enumerate(TRAIN):
        ((x, y, peak),) = document["films"][f"busi:{name}"]  # the distractor; not the lesion
        # the grey block's centre (rows 40-51, columns 36 + i % 3 ...), halved to 32 px
        assert abs(x - (36 + i % 3 + 6) / 2) <= 1 and abs(y - 46 / 2) <= 1
        assert 0.5 < peak < 0.7  # sigmoid(150 / 255)
    assert breastdx([*args[:-2], "--out", str(out), "--subset", "test"]) == 2
    assert "never trained on" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--l2", "-1"], "--l2 must be >= 0"),
        (["--max-fp-per-image", "-0.5"], "--max-fp-per-image must be >= 0"),
        (["--max-false-lesion-rate", "1.5"], "--max-false-lesion-rate must lie in [0, 1]"),
    ],
)
def test_bad_limits_are_usage_errors(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    data, split = _data(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _lesion_score(store, data, split, *option)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_unwritable_out_folder_fails_before_anything_is_registered(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, split = _data(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = tmp_path / "ship"
    out = ["--out", str(blocker / "out"), "--register-store", str(target)]
    assert _lesion_score(store, data, split, *out) == 1
    assert "cannot read or write" in capsys.readouterr().err
    assert not (target / "us-tiny").exists()
