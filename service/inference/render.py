"""Pixel outputs of an ``Analysis`` as PNG: the mask (0/255) and the RGB overlay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from service.inference.result import Analysis, AnalysisResult

MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"
RESULT_SUFFIX = ".json"


FAST_PNG_MAX_BYTES = 4 * 1024 * 1024


def encode_png(image: np.ndarray, *, fast: bool = False) -> bytes:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 -> PNG bytes.

    ``fast``: an image up to ``FAST_PNG_MAX_BYTES`` is stored without compression (about 4x
    faster to write, as large as the raw pixels); for intermediate images the service keeps
    briefly, such as the display image an overlay is drawn from.
    """
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(f"PNG output needs (H, W) or (H, W, 3) uint8, got {image.shape}")
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = []
    if fast and image.nbytes <= FAST_PNG_MAX_BYTES:
        params = [
            cv2.IMWRITE_PNG_COMPRESSION,
            0,
            cv2.IMWRITE_PNG_FILTER,
            cv2.IMWRITE_PNG_FILTER_NONE,
        ]
    ok, data = cv2.imencode(".png", pixels, params)
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported input, checked above
        raise ValueError("OpenCV could not encode the PNG")
    return bytes(data)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes written by :func:`encode_png` -> ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a PNG this service wrote")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def overlay_from_stored(display_png: bytes, mask_png: bytes, result: AnalysisResult) -> bytes:
    """The overlay PNG of a stored segmentation: drawn on the display image from the mask and
    the result's lesions, the same pixels as :func:`overlay_png` of the original Analysis."""
    analysis = Analysis(result, decode_png(mask_png), display=decode_png(display_png))
    return overlay_png(analysis)


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
