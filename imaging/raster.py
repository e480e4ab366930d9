"""PNG, JPEG and PGM -> ``DecodedImage``.

Each decoder reads and checks the header itself (size, bit depth, colour type) before a codec
sees the data: PNG chunks are walked and their CRCs checked, the JPEG frame header is read from
its marker segments, the PGM header is parsed by hand. PNG is decoded by OpenCV (it keeps 16-bit
colour), JPEG by Pillow (it refuses truncated data instead of padding it with grey), PGM by NumPy.

Conventions: ``raw`` is ``(1, H, W)`` grey or ``(1, H, W, 3)`` RGB, uint8 or uint16 (bits stored
8 or 16). Alpha is dropped, not composited: medical rasters use it for overlays at most, and
compositing would change stored values. A palette PNG whose palette is all grey becomes grey.
JPEG EXIF orientation is applied, so pixels are the way a viewer shows them. PNG pHYs (metres)
gives the pixel spacing; editors often write a default (72 or 96 dpi) that means nothing
physical, which the ``RasterResolution`` source leaves for the caller to judge.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from imaging.errors import (
    CorruptImageError,
    ImageTooLargeError,
    TruncatedImageError,
    UnsupportedBitDepthError,
    UnsupportedCompressionError,
    UnsupportedPhotometricError,
)
from imaging.limits import check_declared_size, read_jpeg_header
from imaging.record import DecodedImage, ImageFormat, ImageMetadata, PixelSpacingSource

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_LOSSLESS_JPEG = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_MAX_SPACING_MM = 1000.0


def valid_spacing(row_mm: float, column_mm: float) -> tuple[float, float] | None:
    """The pair when both are finite and in (0, 1000) mm, else None."""
    pair = (float(row_mm), float(column_mm))
    return pair if all(0.0 < v < _MAX_SPACING_MM for v in pair) else None


def raster_record(
    fmt: ImageFormat, frames: np.ndarray, spacing: tuple[float, float] | None = None
) -> DecodedImage:
    """Wrap ``(F, H, W)`` grey or ``(F, H, W, 3)`` RGB uint8/uint16 frames in a record."""
    bits = 8 if frames.dtype == np.uint8 else 16
    grey = frames.ndim == 3
    metadata = ImageMetadata(
        format=fmt,
        rows=int(frames.shape[1]),
        columns=int(frames.shape[2]),
        frames=int(frames.shape[0]),
        samples_per_pixel=1 if grey else 3,
        bits_allocated=bits,
        bits_stored=bits,
        photometric_interpretation="MONOCHROME2" if grey else "RGB",
        pixel_spacing_mm=spacing,
        pixel_spacing_source=(
            PixelSpacingSource.RASTER_RESOLUTION if spacing else PixelSpacingSource.UNKNOWN
        ),
    )
    return DecodedImage(metadata=metadata, raw=np.ascontiguousarray(frames))


@dataclass(frozen=True)
class PngInfo:
    """What the PNG chunks declare (ISO/IEC 15948)."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    grey_palette: bool
    spacing: tuple[float, float] | None


def _png_chunks(data: bytes) -> list[tuple[bytes, memoryview, bool]]:
    """(type, payload, crc ok) of every chunk up to IEND; TruncatedImageError without IEND."""
    view, pos, chunks = memoryview(data), len(PNG_SIGNATURE), []
    while pos + 8 <= len(view):
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise CorruptImageError(f"The PNG file has a malformed chunk at byte {pos}.")
        end = pos + 12 + length
        if end > len(view):
            break
        payload = view[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(view[end - 4 : end], "big")
        chunks.append((kind, payload, zlib.crc32(kind + payload) == crc))
        if kind == b"IEND":
            return chunks
        pos = end
    raise TruncatedImageError("The PNG file ends before its IEND chunk.")


def _png_spacing(payload: memoryview) -> tuple[float, float] | None:
    if len(payload) != 9 or payload[8] != 1:  # unit 1: pixels per metre
        return None
    per_x, per_y = int.from_bytes(payload[0:4], "big"), int.from_bytes(payload[4:8], "big")
    return valid_spacing(1000.0 / per_y, 1000.0 / per_x) if per_x and per_y else None


def read_png_info(data: bytes) -> PngInfo:
    """Walk and check the chunks; nothing is decompressed."""
    chunks = _png_chunks(data)
    kind, ihdr, crc_ok = chunks[0]
    if kind != b"IHDR" or len(ihdr) != 13:
        raise CorruptImageError("The PNG file does not start with a valid IHDR chunk.")
    for kind, _, crc_ok in chunks:
        if not crc_ok and kind[:1].isupper():  # critical chunk
            raise CorruptImageError(f"The PNG {kind.decode()} chunk fails its CRC check.")
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour = ihdr[8], ihdr[9]
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise CorruptImageError(
            f"The PNG header declares bit depth {depth} for colour type {colour}."
        )
    by_kind = {kind: payload for kind, payload, ok in chunks if ok}
    if b"IDAT" not in by_kind or (colour == 3 and b"PLTE" not in by_kind):
        raise CorruptImageError("The PNG file lacks its image data or palette.")
    palette = bytes(by_kind.get(b"PLTE", b""))
    grey_palette = colour == 3 and all(
        palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3)
    )
    phys = by_kind.get(b"pHYs")
    return PngInfo(width, height, depth, colour, grey_palette, _png_spacing(phys) if phys else None)


def decode_png(data: bytes, max_pixels: int) -> DecodedImage:
    """PNG 1-16 bit, grey, grey+alpha, RGB, RGBA or palette."""
    info = read_png_info(data)
    grey = info.colour_type in (0, 4) or info.grey_palette
    check_declared_size(
        rows=info.height,
        columns=info.width,
        samples=1 if grey else 3,
        max_pixels=max_pixels,
        what="PNG image",
    )
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != (info.height, info.width):
        raise CorruptImageError("The PNG image data could not be decoded.")
    if arr.ndim == 3:
        arr = arr[..., 0] if grey else cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)
    return raster_record(ImageFormat.PNG, arr[np.newaxis], info.spacing)


def _check_jpeg_header(data: bytes, max_pixels: int) -> int:
    """Validate the frame header; returns the number of components."""
    header = read_jpeg_header(data, "JPEG file")
    if header.marker == 0xF7:
        raise UnsupportedCompressionError("JPEG-LS is supported inside DICOM files only.")
    if header.marker in _LOSSLESS_JPEG:
        raise UnsupportedCompressionError("Lossless JPEG is supported inside DICOM files only.")
    if header.precision != 8:
        raise UnsupportedBitDepthError(
            f"The JPEG file has {header.precision}-bit samples; outside DICOM only 8-bit JPEG "
            "is supported."
        )
    if header.components not in (1, 3, 4):
        raise UnsupportedPhotometricError(
            f"The JPEG file has {header.components} colour components; 1, 3 or 4 are supported."
        )
    check_declared_size(
        rows=header.rows,
        columns=header.columns,
        samples=1 if header.components == 1 else 3,
        max_pixels=max_pixels,
        what="JPEG image",
    )
    return header.components


def decode_jpeg(data: bytes, max_pixels: int) -> DecodedImage:
    """8-bit JPEG: grey, YCbCr/RGB, or CMYK/YCCK (converted to RGB by Pillow)."""
    _check_jpeg_header(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            arr = np.asarray(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The JPEG image exceeds Pillow's pixel limit ({exc}).") from exc
    except OSError as exc:
        if "truncated" in str(exc):
            raise TruncatedImageError("The JPEG file is truncated.") from exc
        raise CorruptImageError("The JPEG image data could not be decoded.") from exc
    return raster_record(ImageFormat.JPEG, arr[np.newaxis])


_PGM_HEADER = re.compile(
    rb"\AP([25])(?:\s|#[^\n\r]*[\n\r])+(\d+)(?:\s|#[^\n\r]*[\n\r])+(\d+)"
    rb"(?:\s|#[^\n\r]*[\n\r])+(\d+)\s"
)


def pgm_header(data: bytes) -> tuple[bool, int, int, int, int]:
    """(plain, width, height, maxval, raster offset) of a P2 or P5 header."""
    match = _PGM_HEADER.match(data[:4096])
    if match is None:
        if len(data) < 4096 and _PGM_HEADER.match(data + b"\n0 0 1 ") is not None:
            raise TruncatedImageError("The PGM file ends inside its header.")
        raise CorruptImageError("The PGM header is malformed.")
    width, height, maxval = (int(match.group(i)) for i in (2, 3, 4))
    if not 1 <= maxval <= 65535:
        raise CorruptImageError(f"The PGM maximum value {maxval} is not between 1 and 65535.")
    return match.group(1) == b"2", width, height, maxval, match.end()


def _pgm_plain(body: bytes, count: int) -> np.ndarray:
    text = re.sub(rb"#[^\n\r]*", b" ", body)
    if re.search(rb"[^0-9\s]", text):
        raise CorruptImageError("The plain PGM raster holds something other than numbers.")
    values = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode: digits checked above
    if values.size < count:
        raise TruncatedImageError(f"The PGM raster holds {values.size} of {count} values.")
    return values[:count]


def decode_pgm(data: bytes, max_pixels: int) -> DecodedImage:
    """PGM, plain (P2) or raw (P5), 8 or 16 bit (16-bit raw is big endian, Netpbm rule).

    Values are kept as stored, except that an 8-bit maxval below 255 is rescaled to 0-255, so
    that the nominal range shown by ``display()`` is the one the file means.
    """
    plain, width, height, maxval, offset = pgm_header(data)
    check_declared_size(rows=height, columns=width, max_pixels=max_pixels, what="PGM image")
    count, wide = width * height, maxval > 255
    if plain:
        values = _pgm_plain(data[offset:], count)
    else:
        size = count * (2 if wide else 1)
        if len(data) - offset < size:
            raise TruncatedImageError(f"The PGM raster holds {len(data) - offset} of {size} bytes.")
        values = np.frombuffer(data, dtype=">u2" if wide else np.uint8, count=count, offset=offset)
    if int(values.max(initial=0)) > maxval:
        raise CorruptImageError(f"The PGM raster holds values above its maximum {maxval}.")
    if wide:
        frame = values.astype(np.uint16)
    elif maxval < 255:
        frame = np.rint(values.astype(np.float32) * (255.0 / maxval)).astype(np.uint8)
    else:
        frame = values.astype(np.uint8)
    return raster_record(ImageFormat.PGM, frame.reshape(1, height, width))
