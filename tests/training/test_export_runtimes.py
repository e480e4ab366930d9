"""Export checks torch against every installed runtime on the test split's images; the card lists
the runtimes that pass, and a runtime that misses the tolerance is left off."""

from __future__ import annotations

from pathlib import Path

import pytest

from models_registry.card import ModelCard, Runtime
from models_registry.registry import Registry
from training.export import ExportResult, export_onnx, load_trained, split_images
from training.parity import FP32_TOLERANCE, check_runtimes, compare, load_images, torch_outputs

from . import tiny_runs
from .test_export import tamper_initializer


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return tiny_runs.exported("ultrasound", tmp_path_factory)


def test_the_card_lists_every_runtime_that_met_the_tolerance(exported: ExportResult) -> None:
    runtimes = {r.runtime: r for r in exported.draft.runtimes or []}
    assert set(runtimes) == {Runtime.ONNXRUNTIME, Runtime.OPENVINO}
    assert runtimes[Runtime.ONNXRUNTIME].parity == exported.draft.parity
    openvino = runtimes[Runtime.OPENVINO]
    assert openvino.device == "CPU" and openvino.parity.n_images == exported.parity.n_images
    assert openvino.parity.max_abs_prob_diff <= FP32_TOLERANCE.prob
    assert openvino.parity.min_mask_agreement == FP32_TOLERANCE.mask_agreement
    mask = openvino.parity.mask_agreement
    assert mask is not None and mask >= FP32_TOLERANCE.mask_agreement


def test_registration_keeps_the_runtimes(exported: ExportResult, tmp_path: Path) -> None:
    card: ModelCard = Registry([tmp_path]).register("us", exported.onnx_path, exported.draft)
    assert card.runtimes == exported.draft.runtimes
    assert card.allows(Runtime.OPENVINO)


def test_a_runtime_that_misses_the_tolerance_is_left_off(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The torch reference of the real model against a file whose head bias moved by 0.5:
    ONNX Runtime's own check would fail it; check_runtimes must not list OpenVINO for it."""
    checkpoint = tiny_runs.trained("ultrasound", tmp_path_factory)
    run = load_trained(checkpoint)
    batch = load_images(split_images(checkpoint.parent, "test", 4), run.config.preprocess)
    reference = torch_outputs(run.model, batch, run.output_names)
    good = export_onnx(run, tmp_path / "good.onnx")
    bad = tamper_initializer(good, tmp_path / "bad.onnx")
    passing = compare(reference, reference, FP32_TOLERANCE, "torch vs torch")
    listed = check_runtimes(reference, bad, batch, passing, tolerance=FP32_TOLERANCE)
    assert [r.runtime for r in listed] == [Runtime.ONNXRUNTIME]
    kept = check_runtimes(reference, good, batch, passing, tolerance=FP32_TOLERANCE)
    assert [r.runtime for r in kept] == [Runtime.ONNXRUNTIME, Runtime.OPENVINO]
