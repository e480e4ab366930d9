"""Pieces of model-card drafts that several test suites share."""

from __future__ import annotations

from typing import Any


def segmentation_io(size: int) -> dict[str, Any]:
    """``input`` and ``outputs`` of a grey ``size`` x ``size`` segmenter with a malignancy
    head (the tiny ONNX models the tests build)."""
    return {
        "input": {
            "name": "image",
            "channels": 1,
            "size": [size, size],
            "preprocess": {"input_size": [size, size], "channels": 1, "normalisation": "unit"},
        },
        "outputs": [
            {
                "name": "mask_logits",
                "role": "mask",
                "meaning": "per-pixel lesion logit",
                "shape": ["N", 1, size, size],
                "activation": "sigmoid",
            },
            {
                "name": "malignancy_logit",
                "role": "malignancy",
                "meaning": "malignancy logit",
                "shape": ["N", 1],
                "activation": "sigmoid",
            },
        ],
    }
