"""Ensembles (``training.models.ensemble``, ``training.ensemble``, ``breastdx ensemble``).

Two tiny U-Nets trained one epoch each on synthetic ultrasound images (seeds 0 and 1): one is a
member as its trainer checkpoint, the other as its exported ONNX file with the card beside it
(rebuilt by ``training.onnx_weights``). The ensemble's run folder must export like any run, its
file must compute the mean of the members' logits, and its card must say what it is.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from training.cli_ensemble import main
from training.config import config_from_dict
from training.data.synthetic import make_busi
from training.export import ExportResult, export_checkpoint, split_images
from training.models import ModelConfigError, build_model
from training.trainer import train

from . import tiny_runs


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ensemble")


@pytest.fixture(scope="module")
def raw(folder: Path) -> dict[str, object]:
    """The shipped U-Net's heads (malignancy map) at width 4, depth 2, 32 px."""
    config = tiny_runs._config("ultrasound", make_busi(folder / "data", n=12), folder / "run0")
    config["model"]["options"] = {"depth": 2, "lesion_malignancy": True}  # type: ignore[index]
    return config


@pytest.fixture(scope="module")
def config_file(raw: dict[str, object], folder: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def members(raw: dict[str, object], folder: Path) -> tuple[Path, ExportResult]:
    """Seed 1's checkpoint, and seed 0's run exported (model.onnx + model.card.json)."""
    first = train(config_from_dict(raw)).best_checkpoint
    exported = export_checkpoint(
        first,
        folder / "member0" / "model.onnx",
        parity_images=split_images(first.parent, "test", 4),
    )
    second = copy.deepcopy(raw) | {"seed": 1, "output_dir": str(folder / "run1")}
    return train(config_from_dict(second)).best_checkpoint, exported


@pytest.fixture(scope="module")
def built(members: tuple[Path, ExportResult], config_file: Path, folder: Path) -> Path:
    """The ensemble's run folder, made by the CLI."""
    checkpoint, exported = members
    out = folder / "ens"
    argv = ["--config", str(config_file), "--out", str(out), "--n", "8"]
    argv += ["--member", str(checkpoint), "--member", str(exported.onnx_path)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def exported_ensemble(built: Path, folder: Path) -> ExportResult:
    """The ensemble's run exported (model.onnx + model.card.json), as a release would ship it."""
    return export_checkpoint(
        built / "best.pt",
        folder / "ens-export" / "model.onnx",
        parity_images=split_images(built, "test", 4),
    )


@pytest.fixture(scope="module")
def member_files(members: tuple[Path, ExportResult], folder: Path) -> tuple[Path, Path]:
    """Each member's own file: seed 0's export, and seed 1's checkpoint exported."""
    checkpoint, exported = members
    own = export_checkpoint(
        checkpoint,
        folder / "member1" / "model.onnx",
        parity_images=split_images(checkpoint.parent, "test", 4),
    )
    return exported.onnx_path, own.onnx_path


def _onnx(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": batch}), strict=True))


def test_the_ensemble_is_the_mean_of_its_members_logits() -> None:
    spec = {"name": "unet", "width": 4, "options": {"depth": 2}}
    deeper = {"name": "unet", "width": 4, "options": {"depth": 3}}
    model = build_model("ensemble", input_size=32, members=[spec, deeper]).eval()
    assert model.output_names == ("mask_logits", "malignancy_logit")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        got = model(x)
        each = [m(x) for m in model.members]
    for name in model.output_names:
        expected = (each[0][name] + each[1][name]) / 2
        torch.testing.assert_close(got[name], expected)
    resolved = model.config.options["members"]
    assert resolved[0]["options"]["head_dropout"] == 0.2  # defaults filled for the card
    with pytest.raises(ModelConfigError, match="multiple of 8"):  # depth 3 needs 2**3
        build_model("ensemble", input_size=36, members=[spec, deeper])


def test_a_head_only_some_members_have_is_left_out() -> None:
    plain = {"name": "unet", "width": 4, "options": {"depth": 2}}
    presence = {"name": "unet", "width": 4, "options": {"depth": 2, "presence": True}}
    model = build_model("ensemble", input_size=32, members=[presence, plain])
    assert "presence_logit" not in model.output_names
    both = build_model("ensemble", input_size=32, members=[presence, presence])
    assert "presence_logit" in both.output_names


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([{"name": "unet", "width": 4}], "at least two"),
        ([{"name": "unet"}, {"name": "resnet18"}], "classification network"),
        ([{"name": "unet"}, {"name": "unet", "input_size": 64}], "unknown key"),
        ([{"name": "unet"}, "unet"], "must be a mapping"),
    ],
)
def test_an_ensemble_that_cannot_be_is_refused_with_the_rule(
    members: list[object], message: str
) -> None:
    with pytest.raises(ModelConfigError, match=message):
        build_model("ensemble", input_size=32, members=members)


def test_the_run_folder_exports_a_file_that_averages_the_members(
    built: Path,
    members: tuple[Path, ExportResult],
    exported_ensemble: ExportResult,
    member_files: tuple[Path, Path],
) -> None:
    metrics = json.loads((built / "metrics.json").read_text())
    assert metrics["temperature"] is not None and metrics["val"]["dice"] >= 0
    card = exported_ensemble.draft
    assert card.architecture.name == "ensemble"
    assert len(card.architecture.options["members"]) == 2
    assert any("An ensemble of 2 networks" in item for item in card.limitations)
    assert card.training.duration_s >= members[1].draft.training.duration_s  # theirs summed
    # the ensemble's file against its members' own: the mean of their logits
    batch = np.random.default_rng(3).random((3, 1, 32, 32), dtype=np.float32)
    got = _onnx(exported_ensemble.onnx_path, batch)
    one, two = (_onnx(path, batch) for path in member_files)
    assert set(got) == set(one)
    for name, value in got.items():
        # the ONNX member was rebuilt from its file (batch norms un-folded): equal within 1e-3
        np.testing.assert_allclose(value, (one[name] + two[name]) / 2, atol=2e-3, rtol=0)


def test_an_ensemble_file_joins_as_its_networks_each_with_an_equal_vote(
    members: tuple[Path, ExportResult],
    exported_ensemble: ExportResult,
    member_files: tuple[Path, Path],
    config_file: Path,
    folder: Path,
) -> None:
    """A shipped ensemble's file plus a new run: three networks at 1/3 each, not 1/2 + 1/4 +
    1/4 (the new run here is seed 1 again, so its weight shows: 2/3 of the vote, not 3/4)."""
    checkpoint, _ = members
    out = folder / "grown"
    argv = ["--config", str(config_file), "--out", str(out), "--n", "8"]
    argv += ["--member", str(exported_ensemble.onnx_path), "--member", str(checkpoint)]
    assert main(argv) == 0
    result = export_checkpoint(
        out / "best.pt", folder / "grown-export" / "model.onnx",
        parity_images=split_images(out, "test", 4),
    )  # fmt: skip
    assert len(result.draft.architecture.options["members"]) == 3
    assert any("An ensemble of 3 networks" in item for item in result.draft.limitations)
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    sources = [member["source"] for member in state["members"]]
    assert sources[0].endswith("network 1 of 2") and sources[1].endswith("network 2 of 2")
    batch = np.random.default_rng(4).random((2, 1, 32, 32), dtype=np.float32)
    got = _onnx(result.onnx_path, batch)
    one, two = (_onnx(path, batch) for path in member_files)
    for name, value in got.items():  # rebuilt twice from ONNX: equal within a few 1e-3
        np.testing.assert_allclose(value, (one[name] + 2 * two[name]) / 3, atol=4e-3, rtol=0)


def test_the_cli_answers_members_that_do_not_fit_with_a_message(
    members: tuple[Path, ExportResult],
    raw: dict[str, object],
    config_file: Path,
    folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint, exported = members
    out = str(folder / "bad")
    base = ["--config", str(config_file), "--out", out]
    assert main([*base, "--member", str(checkpoint)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main([*base, "--member", str(checkpoint), "--member", str(folder / "no.pt")]) == 1
    assert "no.pt is not a file" in capsys.readouterr().err
    lonely = folder / "lonely" / "model.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(exported.onnx_path.read_bytes())  # no card beside it
    assert main([*base, "--member", str(checkpoint), "--member", str(lonely)]) == 1
    assert "needs its card beside it" in capsys.readouterr().err
    bigger = copy.deepcopy(raw)
    bigger["model"]["input_size"] = 64  # type: ignore[index]
    other = folder / "bigger.yaml"
    other.write_text(yaml.safe_dump(bigger))
    argv = ["--config", str(other), "--out", out, "--member", str(checkpoint)]
    assert main([*argv, "--member", str(checkpoint)]) == 1
    assert "must see the same preprocessed image" in capsys.readouterr().err
    assert not (folder / "bad" / "best.pt").exists()
    argv = ["--config", str(config_file), "--out", str(checkpoint.parent)]  # a member's own run
    assert main([*argv, "--member", str(checkpoint), "--member", str(exported.onnx_path)]) == 1
    assert "would replace that run's best.pt" in capsys.readouterr().err
    assert checkpoint.is_file()
