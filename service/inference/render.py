"""Pixel outputs of an ``Analysis`` as PNG: the mask (0/255) and the RGB overlay."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from service.inference.result import Analysis, AnalysisResult

MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"
RESULT_SUFFIX = ".json"


RAW_DISPLAY_MAX_BYTES = 4 * 1024 * 1024
_RAW_MAGIC = b"BDXRAW1\x00"  # then rows, columns, channels (uint32, little-endian), the pixels
_RAW_HEADER = struct.Struct("<3I")


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


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes written by :func:`encode_png` -> ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a PNG this service wrote")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def pack_display(image: np.ndarray) -> bytes:
    """The display image as the service keeps it until an overlay is asked for: its raw pixels
    behind a small header up to ``RAW_DISPLAY_MAX_BYTES`` (a copy, where even an uncompressed
    PNG cost a third of a millisecond for a 512 x 384 ultrasound frame), a PNG above (a
    full-field mammogram: compressed, to keep the store small)."""
    if image.nbytes > RAW_DISPLAY_MAX_BYTES:
        return encode_png(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"a display image is (H, W) or (H, W, 3) uint8, got {image.shape}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    header = _RAW_HEADER.pack(image.shape[0], image.shape[1], channels)
    return _RAW_MAGIC + header + np.ascontiguousarray(image).tobytes()


def unpack_display(data: bytes) -> np.ndarray:
    """:func:`pack_display`'s bytes (or a PNG) -> the ``(H, W)`` or ``(H, W, 3)`` image."""
    if not data.startswith(_RAW_MAGIC):
        return decode_png(data)
    rows, columns, channels = _RAW_HEADER.unpack_from(data, len(_RAW_MAGIC))
    pixels = np.frombuffer(data, np.uint8, offset=len(_RAW_MAGIC) + _RAW_HEADER.size)
    shape = (rows, columns) if channels == 1 else (rows, columns, channels)
    if pixels.size != rows * columns * channels:
        raise ValueError("not a display image this service stored")
    return pixels.reshape(shape)


def overlay_from_stored(display: bytes, mask_png: bytes, result: AnalysisResult) -> bytes:
    """The overlay PNG of a stored segmentation: drawn on the display image
    (:func:`pack_display`'s bytes) from the mask and the result's lesions, the same pixels as
    :func:`overlay_png` of the original Analysis."""
    analysis = Analysis(result, decode_png(mask_png), display=unpack_display(display))
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
