"""The one entry point: bytes or a path -> ``DecodedImage``, format recognised by content.

``decode`` never trusts a file name or extension: DICOM is recognised by ``DICM`` at offset 128,
or, for a bare dataset without preamble, by a first element in group 0002 or 0008 that parses as
DICOM; PNG, JPEG, TIFF and PGM by their signatures. Every failure is an ``ImagingError`` with a
stable code and a message without patient data; an unexpected exception from a codec becomes a
``CorruptImageError`` (so does a Rust codec's panic, which Python sees as a ``BaseException``).
``MemoryError`` and ``KeyboardInterrupt`` are never swallowed.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import tifffile

from imaging.dicom import decode_dicom, describe_exception
from imaging.dicom_guard import check_deflated_size
from imaging.errors import (
    CorruptImageError,
    EmptyInputError,
    ImageFileNotFoundError,
    ImageTooLargeError,
    ImagingError,
    UnreadableFileError,
    UnrecognisedFormatError,
)
from imaging.limits import DEFAULT_MAX_PIXELS, check_max_pixels, read_jpeg_header
from imaging.raster import (
    PNG_SIGNATURE,
    decode_jpeg,
    decode_pgm,
    decode_png,
    pgm_header,
    read_png_info,
)
from imaging.raster_tiff import decode_tiff, ifd_offsets
from imaging.record import DecodedImage, ImageFormat

logger = logging.getLogger(__name__)

Source = bytes | bytearray | memoryview | str | os.PathLike[str]

_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_DICOM_GROUPS = (0x0002, 0x0008)

DECODERS: dict[ImageFormat, Callable[[bytes, int], DecodedImage]] = {
    ImageFormat.DICOM: decode_dicom,
    ImageFormat.PNG: decode_png,
    ImageFormat.JPEG: decode_jpeg,
    ImageFormat.PGM: decode_pgm,
    ImageFormat.TIFF: decode_tiff,
}


def _looks_like_bare_dicom(head: bytes, size: int) -> bool:
    """A dataset without preamble: first tag in group 0002/0008, explicit VR or a sane length."""
    if len(head) < 8:
        return False
    little = int.from_bytes(head[0:2], "little")
    big = int.from_bytes(head[0:2], "big")
    explicit = head[4:6] in _EXPLICIT_VRS
    if little in _DICOM_GROUPS:
        return explicit or int.from_bytes(head[4:8], "little") <= size - 8
    return big == 0x0008 and explicit  # Explicit VR Big Endian


def sniff_format(data: bytes) -> ImageFormat:
    """The format of ``data`` from its content; UnrecognisedFormatError when none fits."""
    if data[128:132] == b"DICM":
        return ImageFormat.DICOM
    if data.startswith(PNG_SIGNATURE):
        return ImageFormat.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if data[:4] in _TIFF_SIGNATURES:
        return ImageFormat.TIFF
    if data[:2] in (b"P2", b"P5") and data[2:3].isspace():
        return ImageFormat.PGM
    if _looks_like_bare_dicom(data[:8], len(data)):
        return ImageFormat.DICOM
    if data[:1] == b"P" and data[1:2] in b"134567" and data[2:3].isspace():
        raise UnrecognisedFormatError(
            "Only the PGM variants (P2, P5) of the Netpbm formats are supported."
        )
    raise UnrecognisedFormatError(
        "The data is none of DICOM, PNG, JPEG, TIFF or PGM (recognised by content, not name)."
    )


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_source(source: Source) -> bytes:
    """The bytes of ``source``; a path must name a readable regular file.

    Messages do not repeat the path: file names can hold patient names.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be bytes or a path, not {type(source).__name__}")
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImageFileNotFoundError("The file does not exist.") from None
    except OSError as exc:
        raise UnreadableFileError(f"The file cannot be read ({_os_reason(exc)}).") from None
    except ValueError:  # e.g. an embedded NUL character
        raise UnreadableFileError("The path is not a valid file name.") from None
    if not stat.S_ISREG(mode):
        raise UnreadableFileError("The path is not a regular file (a directory or a device).")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"The file cannot be read ({_os_reason(exc)}).") from None


def decode(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a DICOM, PNG, JPEG, PGM or TIFF image from bytes or a path.

    Args:
        source: the encoded bytes, or the path of a file.
        max_pixels: the most values (rows x columns x frames x samples per pixel) the declared
            image may hold; checked before anything is decoded.

    Returns:
        The decoded record, with every frame in ``raw``.

    Raises:
        ImagingError: a subclass naming what is wrong (see ``imaging.errors``).
        ValueError: ``max_pixels`` is not a positive integer.
    """
    check_max_pixels(max_pixels)
    data = read_source(source)
    if not data:
        raise EmptyInputError("The input is empty (0 bytes).")
    fmt = sniff_format(data)
    try:
        return DECODERS[fmt](data, max_pixels)
    except (ImagingError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError:
        logger.error("out of memory while decoding a %s image of %d bytes", fmt, len(data))
        raise
    except RecursionError as exc:
        raise CorruptImageError(f"The {fmt.name} data is nested too deeply to decode.") from exc
    except BaseException as exc:  # Exception, and pyo3's PanicException from Rust codecs
        logger.warning("unexpected %s while decoding a %s image", type(exc).__name__, fmt)
        # DICOM parser messages may quote attribute values: keep only the exception type.
        detail = type(exc).__name__ if fmt is ImageFormat.DICOM else describe_exception(exc)
        raise CorruptImageError(f"The {fmt.name} data could not be decoded ({detail}).") from exc


@dataclass(frozen=True)
class DeclaredSize:
    """What a header says decoding will allocate, read without decoding any pixel."""

    format: ImageFormat
    rows: int
    columns: int
    frames: int
    samples: int
    bytes_per_sample: int

    @property
    def values(self) -> int:
        """Stored values: rows x columns x frames x samples per pixel."""
        return self.rows * self.columns * self.frames * self.samples

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded stored values (``DecodedImage.raw``)."""
        return self.values * self.bytes_per_sample


def _png_size(data: bytes) -> DeclaredSize:
    info = read_png_info(data)
    grey = info.colour_type in (0, 4) or info.grey_palette
    depth = 2 if info.bit_depth == 16 else 1
    return DeclaredSize(ImageFormat.PNG, info.height, info.width, 1, 1 if grey else 3, depth)


def _jpeg_size(data: bytes) -> DeclaredSize:
    header = read_jpeg_header(data, "JPEG file")
    samples = 1 if header.components == 1 else 3
    depth = 1 if header.precision <= 8 else 2
    return DeclaredSize(ImageFormat.JPEG, header.rows, header.columns, 1, samples, depth)


def _tiff_size(data: bytes) -> DeclaredSize:
    pages = len(ifd_offsets(data))  # every page counts: an upper bound, no loop followed
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        first = tif.pages.first
        samples = 1 if first.samplesperpixel == 1 and first.photometric != 3 else 3
        depth = 1 if first.bitspersample <= 8 else 2
        return DeclaredSize(
            ImageFormat.TIFF, first.imagelength, first.imagewidth, pages, samples, depth
        )


def _pgm_size(data: bytes) -> DeclaredSize:
    _, width, height, maxval, _ = pgm_header(data)
    return DeclaredSize(ImageFormat.PGM, height, width, 1, 1, 2 if maxval > 255 else 1)


def _dicom_size(data: bytes) -> DeclaredSize:
    check_deflated_size(data, DEFAULT_MAX_PIXELS)  # pydicom would inflate it whole
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return DeclaredSize(
        ImageFormat.DICOM,
        int(ds.Rows),
        int(ds.Columns),
        frames,
        int(ds.get("SamplesPerPixel", 1) or 1),
        max(1, (bits + 7) // 8),
    )


_SIZE_READERS: dict[ImageFormat, Callable[[bytes], DeclaredSize]] = {
    ImageFormat.DICOM: _dicom_size,
    ImageFormat.PNG: _png_size,
    ImageFormat.JPEG: _jpeg_size,
    ImageFormat.PGM: _pgm_size,
    ImageFormat.TIFF: _tiff_size,
}


def declared_size(data: bytes) -> DeclaredSize | None:
    """The decoded size the header of ``data`` declares, without decoding pixels.

    For budgets taken before any decoding (``service.security.budget``). None when the header
    cannot be read (a TIFF IFD loop, a corrupt chunk): ``decode`` then names what is wrong
    with a typed error, as fast. A TIFF counts every page of its IFD chain (an upper bound).

    Raises:
        ImageTooLargeError: a deflated DICOM dataset inflates beyond any image's need.
    """
    try:
        return _SIZE_READERS[sniff_format(data)](data)
    except ImageTooLargeError:
        raise
    except Exception:  # unreadable header: decode reports it with a typed error
        return None
