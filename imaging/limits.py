"""Resource limits for decoding untrusted images, and the header readers that enforce them.

Every decoder states the size it is about to produce *before* it allocates anything: the image
dimensions come from the container header (DICOM Image Pixel module, PNG IHDR, JPEG SOF, JPEG
2000 SIZ, TIFF IFD, PGM header) and are checked here against ``max_pixels``. Pillow's and
OpenCV's own decompression-bomb limits stay in place as a second guard but are never relied on.
"""

from __future__ import annotations

from dataclasses import dataclass

from imaging.errors import CorruptImageError, ImageTooLargeError, TruncatedImageError

# Counted as stored samples: rows x columns x frames x samples per pixel. That is 4 frames of an
# 8000x6000 grey image or 64 frames of 1000x1000 RGB: far above a mammogram (about 4000x3000)
# and well below what would exhaust memory as float32.
DEFAULT_MAX_PIXELS = 200_000_000

_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}) | {
    0xCD,
    0xCE,
    0xCF,
    0xF7,  # JPEG-LS SOF55 (ITU-T T.87)
}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def check_max_pixels(max_pixels: int) -> int:
    """Validate the ``max_pixels`` argument itself: a positive integer."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


def check_declared_size(
    *, rows: int, columns: int, frames: int = 1, samples: int = 1, max_pixels: int, what: str
) -> None:
    """Refuse a declared geometry that is empty or exceeds ``max_pixels`` samples.

    Raises:
        CorruptImageError: a dimension is not a positive integer.
        ImageTooLargeError: ``rows * columns * frames * samples > max_pixels``.
    """
    for name, value in (("rows", rows), ("columns", columns), ("frames", frames)):
        if value <= 0:
            raise CorruptImageError(f"The {what} declares {value} {name}; it must be at least 1.")
    total = rows * columns * frames * samples
    if total > max_pixels:
        raise ImageTooLargeError(
            f"The {what} declares {rows} x {columns} pixels x {frames} frame(s) x {samples} "
            f"sample(s) = {total} values, more than the limit of {max_pixels}.",
            declared=total,
            max_pixels=max_pixels,
        )


@dataclass(frozen=True)
class JpegHeader:
    """The frame header (SOFn) of a JPEG or JPEG-LS codestream."""

    marker: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, 0xC3 lossless, 0xF7 JPEG-LS
    precision: int
    rows: int
    columns: int
    components: int


def read_jpeg_header(data: bytes | memoryview, what: str = "JPEG codestream") -> JpegHeader:
    """Walk the marker segments up to the first SOFn without decoding anything (ITU-T T.81 B.2).

    Raises:
        CorruptImageError: no SOI, a malformed segment, or a scan before the frame header.
        TruncatedImageError: the data ends before the frame header.
    """
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8":
        raise CorruptImageError(f"The {what} does not start with a JPEG SOI marker.")
    pos, size = 2, len(view)
    while True:
        while pos < size and view[pos] == 0xFF and pos + 1 < size and view[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > size:
            raise TruncatedImageError(f"The {what} ends before its frame header.")
        if view[pos] != 0xFF:
            raise CorruptImageError(f"The {what} has a malformed marker at byte {pos}.")
        marker = view[pos + 1]
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if pos + 4 > size:
            raise TruncatedImageError(f"The {what} ends before its frame header.")
        length = int.from_bytes(view[pos + 2 : pos + 4], "big")
        if length < 2 or marker in (0xD9, 0xDA):
            raise CorruptImageError(f"The {what} has no frame header before its image data.")
        if marker in _SOF_MARKERS:
            return _parse_sof(view[pos + 4 : pos + 2 + length], marker, what)
        pos += 2 + length


def _parse_sof(segment: memoryview, marker: int, what: str) -> JpegHeader:
    if len(segment) < 6:
        raise TruncatedImageError(f"The {what} ends inside its frame header.")
    header = JpegHeader(
        marker=marker,
        precision=segment[0],
        rows=int.from_bytes(segment[1:3], "big"),
        columns=int.from_bytes(segment[3:5], "big"),
        components=segment[5],
    )
    if header.rows == 0 or header.columns == 0 or header.components == 0:
        raise CorruptImageError(
            f"The {what} declares {header.rows} x {header.columns} pixels with "
            f"{header.components} component(s); a height defined later (DNL) is not supported."
        )
    return header


@dataclass(frozen=True)
class J2kHeader:
    """The image size (SIZ) of a JPEG 2000 codestream, ISO/IEC 15444-1 A.5.1."""

    rows: int
    columns: int
    components: int


def read_j2k_header(data: bytes | memoryview, what: str = "JPEG 2000 codestream") -> J2kHeader:
    """Read the SIZ marker segment of a raw codestream or a JP2 file, without decoding.

    Raises:
        CorruptImageError: no SOC/SIZ marker or inconsistent offsets.
        TruncatedImageError: the data ends inside the SIZ segment.
    """
    raw = bytes(data[:65536])
    pos = raw.find(b"\xff\x4f\xff\x51")
    if pos < 0:
        raise CorruptImageError(f"The {what} has no SOC/SIZ marker.")
    siz = raw[pos + 4 : pos + 4 + 38]
    if len(siz) < 38:
        raise TruncatedImageError(f"The {what} ends inside its SIZ header.")
    xsiz, ysiz, x0, y0 = (int.from_bytes(siz[i : i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(siz[36:38], "big")
    if xsiz <= x0 or ysiz <= y0 or components == 0:
        raise CorruptImageError(f"The {what} declares an empty image area.")
    return J2kHeader(rows=ysiz - y0, columns=xsiz - x0, components=components)
