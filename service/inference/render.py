"""Pixel outputs of an ``Analysis`` as PNG: the mask (0/255) and the RGB overlay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from service.inference.result import Analysis

MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"
RESULT_SUFFIX = ".json"


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 -> PNG bytes."""
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(f"PNG output needs (H, W) or (H, W, 3) uint8, got {image.shape}")
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", pixels)
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported input, checked above
        raise ValueError("OpenCV could not encode the PNG")
    return bytes(data)


def mask_png(analysis: Analysis) -> bytes:
    """The lesion mask at the original geometry, 0 background, 255 lesion."""
    return encode_png(analysis.mask)


def overlay_png(analysis: Analysis) -> bytes:
    """The overlay: mask tint and contours, or the histopathology heatmap."""
    return encode_png(analysis.overlay)


def result_json(analysis: Analysis) -> str:
    """The ``AnalysisResult`` as indented JSON with a final newline."""
    return analysis.result.model_dump_json(indent=2) + "\n"


def write_outputs(analysis: Analysis, folder: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.mask.png``, ``<stem>.overlay.png`` and ``<stem>.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "mask": (folder / f"{stem}{MASK_SUFFIX}", mask_png(analysis)),
        "overlay": (folder / f"{stem}{OVERLAY_SUFFIX}", overlay_png(analysis)),
        "result": (folder / f"{stem}{RESULT_SUFFIX}", result_json(analysis).encode("utf-8")),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {kind: path for kind, (path, _) in files.items()}
