"""TIFF -> ``DecodedImage`` with tifffile: grey 8/16 bit, RGB, palette; pages become frames.

The chain of IFDs is walked by hand first (``ifd_offsets``): each IFD at most once, at most
``MAX_TIFF_PAGES`` of them, every offset inside the file, so that a chain that points back at
itself (a 426-byte file can loop forever) is refused before tifffile follows it. Then every
page's IFD is read: its size is added to the ``max_pixels`` budget and its strips or tiles must
lie inside the file, before any pixel is decoded. Pages with another size, type or
photometric interpretation than the first (thumbnails, pyramid levels, masks) are skipped.
MINISWHITE is inverted to MINISBLACK so that the record is always MONOCHROME2; extra samples
(alpha) are dropped; a palette becomes RGB, or grey when every entry is grey. The resolution
tags give the pixel spacing when the unit is inch or centimetre (inch when the unit is absent,
as TIFF 6.0 says); see ``imaging.raster`` about default resolutions.
"""

from __future__ import annotations

import io
import logging
import struct

import numpy as np
import tifffile
from tifffile import COMPRESSION, PHOTOMETRIC

from imaging.errors import (
    CorruptImageError,
    ImagingError,
    TruncatedImageError,
    UnsupportedBitDepthError,
    UnsupportedCompressionError,
    UnsupportedPhotometricError,
)
from imaging.limits import check_declared_size
from imaging.raster import raster_record, valid_spacing
from imaging.record import DecodedImage, ImageFormat

logger = logging.getLogger(__name__)

_GREY = (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE)
_SUPPORTED = (*_GREY, PHOTOMETRIC.RGB, PHOTOMETRIC.PALETTE, PHOTOMETRIC.YCBCR)
_MM_PER_UNIT = {2: 25.4, 3: 10.0}  # ResolutionUnit: 2 inch, 3 centimetre
MAX_TIFF_PAGES = 1024  # IFDs in one file: far above any multi-page medical TIFF


def ifd_offsets(data: bytes, max_pages: int = MAX_TIFF_PAGES) -> list[int]:
    """The offsets of the main IFD chain (TIFF 6.0 section 2, BigTIFF), each visited once.

    Raises:
        CorruptImageError: the chain comes back to an IFD already seen, or holds more than
            ``max_pages`` IFDs.
        TruncatedImageError: an IFD lies (partly) outside the file.
    """
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    head, count_size, entry_size = (16, 8, 20) if big else (8, 2, 12)
    if len(data) < head:
        raise TruncatedImageError("The TIFF file ends inside its header.")
    word = "Q" if big else "I"
    offset = struct.unpack_from(order + word, data, 8 if big else 4)[0]
    seen: set[int] = set()
    offsets: list[int] = []
    while offset:
        if offset in seen:
            raise CorruptImageError(
                f"The TIFF IFD chain loops: IFD {len(offsets)} points back to an earlier IFD."
            )
        if len(offsets) >= max_pages:
            raise CorruptImageError(f"The TIFF file holds more than {max_pages} pages (IFDs).")
        if offset + count_size > len(data):
            raise TruncatedImageError("The TIFF file ends before one of its IFDs.")
        entries = struct.unpack_from(order + ("Q" if big else "H"), data, offset)[0]
        end = offset + count_size + entries * entry_size
        if end + (8 if big else 4) > len(data):
            raise TruncatedImageError("The TIFF file ends inside one of its IFDs.")
        seen.add(offset)
        offsets.append(offset)
        offset = struct.unpack_from(order + word, data, end)[0]
    return offsets


def _output_samples(page: tifffile.TiffPage) -> int:
    if page.photometric in _GREY:
        return 1
    if page.photometric == PHOTOMETRIC.PALETTE and _grey_colormap(page.colormap):
        return 1
    return 3


def _check_first_page(page: tifffile.TiffPage) -> None:
    photometric = page.photometric
    if photometric not in _SUPPORTED:
        name = getattr(photometric, "name", str(photometric))
        raise UnsupportedPhotometricError(
            f"The TIFF photometric interpretation {name} is not supported; supported: "
            "MINISBLACK, MINISWHITE, RGB, PALETTE, YCBCR (JPEG-compressed)."
        )
    if photometric == PHOTOMETRIC.YCBCR and page.compression != COMPRESSION.JPEG:
        raise UnsupportedPhotometricError("Uncompressed YCbCr TIFF is not supported.")
    if page.dtype is None or page.dtype.char not in "?BH":
        raise UnsupportedBitDepthError(
            f"The TIFF samples are {page.bitspersample}-bit "
            f"{str(getattr(page.sampleformat, 'name', page.sampleformat)).lower()}; "
            "only 1-, 8- and 16-bit unsigned integers are supported."
        )
    if page.imagedepth > 1:
        raise UnsupportedBitDepthError("Volumetric (SGI image depth) TIFF is not supported.")


def _check_inside_file(page: tifffile.TiffPage, size: int) -> None:
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
        if offset + count > size:
            raise TruncatedImageError("The TIFF file ends before the end of its image data.")


def _frame_pages(tif: tifffile.TiffFile, data: bytes, max_pixels: int) -> list[tifffile.TiffPage]:
    count = len(ifd_offsets(data))  # before tifffile follows the chain: no loops, bounded
    first = tif.pages.first
    _check_first_page(first)
    key = (first.shape, first.dtype, first.photometric)
    samples, pages, skipped = _output_samples(first), [], 0
    for index in range(count):
        page = tif.pages[index]
        if not isinstance(page, tifffile.TiffPage):
            continue
        if (page.shape, page.dtype, page.photometric) != key or page.subfiletype & 1:
            skipped += 1
            continue
        pages.append(page)
        check_declared_size(
            rows=first.imagelength,
            columns=first.imagewidth,
            frames=len(pages),
            samples=samples,
            max_pixels=max_pixels,
            what="TIFF image",
        )
        _check_inside_file(page, len(data))
    if skipped:
        logger.warning("skipped %d TIFF page(s) that differ from the first", skipped)
    return pages


def _grey_colormap(colormap: np.ndarray | None) -> bool:
    return colormap is not None and bool(
        np.all(colormap[0] == colormap[1]) and np.all(colormap[1] == colormap[2])
    )


def _apply_colormap(index: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette indices -> RGB (or grey); 8-bit when the 16-bit map only repeats bytes."""
    if colormap.max() <= 255:
        table = colormap.astype(np.uint8)
    elif np.all(colormap % 257 == 0):
        table = (colormap // 257).astype(np.uint8)
    else:
        table = colormap.astype(np.uint16)
    index = np.clip(index, 0, table.shape[1] - 1)
    if _grey_colormap(colormap):
        return table[0][index]
    return np.stack([table[0][index], table[1][index], table[2][index]], axis=-1)


def _page_pixels(page: tifffile.TiffPage) -> np.ndarray:
    """One page as ``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8 or uint16."""
    arr = page.asarray(maxworkers=1)
    if page.axes.startswith("S"):  # planar configuration 2
        arr = np.moveaxis(arr, 0, -1)
    if page.photometric == PHOTOMETRIC.PALETTE:
        if page.colormap is None:
            raise CorruptImageError("The TIFF palette image has no colour map.")
        return _apply_colormap(arr if arr.ndim == 2 else arr[..., 0], page.colormap)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    if page.photometric in _GREY:
        arr = arr if arr.ndim == 2 else arr[..., 0]
        if page.photometric == PHOTOMETRIC.MINISWHITE:
            top = 255 if arr.dtype == np.uint8 else (1 << min(page.bitspersample, 16)) - 1
            arr = (top - np.minimum(arr, top)).astype(arr.dtype)
        return arr
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise CorruptImageError("The TIFF colour page does not hold three samples per pixel.")
    return arr[..., :3]


def _spacing(page: tifffile.TiffPage) -> tuple[float, float] | None:
    tags = page.tags
    x_tag, y_tag = tags.get("XResolution"), tags.get("YResolution")
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    if x_tag is None or y_tag is None or unit not in _MM_PER_UNIT:
        return None
    try:
        x_res = x_tag.value[0] / x_tag.value[1]
        y_res = y_tag.value[0] / y_tag.value[1]
        return valid_spacing(_MM_PER_UNIT[unit] / y_res, _MM_PER_UNIT[unit] / x_res)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def _decode_pages(pages: list[tifffile.TiffPage]) -> np.ndarray:
    try:
        return np.stack([_page_pixels(page) for page in pages])
    except (ImagingError, MemoryError):
        raise
    except Exception as exc:
        if "imagecodecs" in str(exc):
            name = getattr(pages[0].compression, "name", "this")
            raise UnsupportedCompressionError(
                f"TIFF {name} compression needs the optional imagecodecs package."
            ) from exc
        raise CorruptImageError("The TIFF image data could not be decoded.") from exc


def decode_tiff(data: bytes, max_pixels: int) -> DecodedImage:
    """TIFF or BigTIFF, little or big endian; every matching page is a frame."""
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except tifffile.TiffFileError as exc:
        raise CorruptImageError("The TIFF header is not valid.") from exc
    with tif:
        try:
            pages = _frame_pages(tif, data, max_pixels)
        except (ImagingError, MemoryError):
            raise
        except Exception as exc:
            raise CorruptImageError("The TIFF directory (IFD) is not valid.") from exc
        if not pages:
            raise CorruptImageError("The TIFF file holds no image page.")
        frames = _decode_pages(pages)
        spacing = _spacing(pages[0])
    return raster_record(ImageFormat.TIFF, frames, spacing)
