"""A tiny real ONNX model (built with the onnx helper API, no torch) and a card draft for it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models_registry.registry import Registry
from models_registry.store import DirectoryStore
from tests.cards import segmentation_io

SIZE = 32
BIAS = 0.25  # malignancy_logit = mean(image) * 2 + BIAS


def build_onnx(path: Path, *, fp16: bool = False, size: int = SIZE) -> Path:
    """``image`` (N, 1, size, size) -> ``mask_logits`` (N, 1, size, size), ``malignancy_logit``.

    The 3x3 convolution is the identity (centre weight 1), so ``mask_logits == image``; the
    malignancy head is ``Gemm(ReduceMean(image), w=2, b=BIAS)``.
    """
    elem, dtype = (TensorProto.FLOAT16, np.float16) if fp16 else (TensorProto.FLOAT, np.float32)
    kernel = np.zeros((1, 1, 3, 3), dtype)  # (C_out, C_in, kH, kW)
    kernel[0, 0, 1, 1] = 1
    inits = [
        numpy_helper.from_array(kernel, "conv_w"),
        numpy_helper.from_array(np.zeros(1, dtype), "conv_b"),
        numpy_helper.from_array(np.full((1, 1), 2, dtype), "fc_w"),
        numpy_helper.from_array(np.full(1, BIAS, dtype), "fc_b"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["mask_logits"], pads=[1] * 4),
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),  # (N, 1)
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["malignancy_logit"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", elem, ["N", 1, size, size])],
        [
            helper.make_tensor_value_info("mask_logits", elem, ["N", 1, size, size]),
            helper.make_tensor_value_info("malignancy_logit", elem, ["N", 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def draft_dict(**overrides: Any) -> dict[str, Any]:
    """A valid card draft for :func:`build_onnx`'s model; top-level keys replaced by overrides."""
    draft: dict[str, Any] = {
        "stage": "ultrasound",
        "task": "segmentation",
        "architecture": {"name": "tiny-conv", "width": 1, "parameters": 12},
        **segmentation_io(SIZE),
        "labels": ["benign", "malignant"],
        "thresholds": {"mask": 0.5, "malignancy": 0.4, "min_lesion_area_px": 4},
        "calibration": {"temperature": 1.5, "fitted_on": "BUSI val, leakage_safe"},
        "evaluation_sets": [
            {
                "dataset": "BUSI",
                "split": "test",
                "protocol": "leakage_safe",
                "data_root": "BUSI 2020 release, normal images excluded, split by source image",
                "split_file": "busi-test.txt",
                "split_file_sha256": "ab" * 32,
                "class_counts": {"benign": 66, "malignant": 32},
            },
        ],
        "metrics": [
            {
                "name": "dice_fg",
                "value": 0.71,
                "ci_low": 0.66,
                "ci_high": 0.75,
                "n": 98,
                "dataset": "BUSI",
                "split": "test",
                "protocol": "leakage_safe",
            },
        ],
        "training": {
            "config": {"loss": "tversky", "alpha": 0.3, "beta": 0.7},
            "git_commit": "3f7428e",
            "date": "2025-11-25T08:00:00Z",
            "seed": 7,
            "hardware": "2 CPU cores",
            "duration_s": 12.5,
        },
        "provenance": [
            {
                "name": "BUSI",
                "licence": "CC BY 4.0",
                "citation": "Al-Dhabyani W. et al., Data in Brief 28 (2020) 104863",
            },
        ],
        "parity": {"max_abs_prob_diff": 1e-6, "mask_agreement": 1.0, "n_images": 8},
        "onnx": {"opset": 17},
    }
    result = copy.deepcopy(draft)
    result.update(overrides)
    return result


def fp16_draft_dict() -> dict[str, Any]:
    parity = {"max_abs_prob_diff": 1e-3, "mask_agreement": 0.999, "n_images": 8}
    return draft_dict(onnx={"opset": 17, "fp16": {"parity": parity}})


@pytest.fixture(scope="session")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def onnx_fp16_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx(tmp_path_factory.mktemp("onnx") / "tiny.fp16.onnx", fp16=True)


@pytest.fixture
def draft_file(tmp_path: Path) -> Path:
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(draft_dict()), encoding="utf-8")
    return path


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def registry(store_dir: Path) -> Registry:
    return Registry([DirectoryStore(store_dir)])


def tamper(path: Path, how: str) -> None:
    """Change a stored (read-only) file: flip one byte or append bytes."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data += b"\x00extra"
    path.write_bytes(bytes(data))
