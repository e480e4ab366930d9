"""Defensive reading of DICOM: what must hold before pydicom or a codec is trusted.

pydicom's reader is lenient, so ``read_dataset`` notices data that ends inside an element and
calls it truncated. Two ways a small file can claim a huge allocation even when the Image Pixel
module is modest are caught too: a deflated dataset that inflates without bound (pydicom
inflates it whole), and a compressed codestream whose own header declares a larger image than
Rows x Columns.
"""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from imaging.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImagingError,
    TruncatedImageError,
)
from imaging.limits import read_j2k_header, read_jpeg_header


class _EofTrackingStream(io.BytesIO):
    """A stream that notices when a read runs into the end of the data.

    pydicom's reader is lenient: a value cut short by the end of the file is kept short, and an
    undefined-length value without its delimiter ends the dataset with a warning. Both leave a
    dataset that merely looks incomplete; this stream lets ``read_dataset`` call it truncated.
    """

    _SCAN_CHUNK = 8192  # pydicom's read size when scanning for a delimiter; may end short

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.short_value = False
        self.hit_end = False

    def read(self, size: int | None = -1, /) -> bytes:
        """``BytesIO.read`` that records reads cut short by the end of the data."""
        probe = (self.tell(), size) in ((0, 128), (128, 4))  # preamble and "DICM" look-ups
        chunk = super().read(size)
        if not probe and size is not None and size > 0 and len(chunk) < size:
            self.hit_end = True
            self.short_value = self.short_value or (bool(chunk) and size != self._SCAN_CHUNK)
        return chunk

    @property
    def truncated(self) -> bool:
        """A value ended short, or parsing stopped early after reaching the end of the data."""
        return self.short_value or (self.hit_end and self.tell() < self.size)


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file or a bare dataset; pixel data stays encoded."""
    stream = _EofTrackingStream(data)
    try:
        ds = pydicom.dcmread(stream, force=True)
    except (EOFError, struct.error) as exc:
        raise TruncatedImageError("The DICOM file ends in the middle of its header.") from exc
    except InvalidDicomError as exc:
        raise CorruptImageError("The DICOM file's header is not valid DICOM.") from exc
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # any parser failure: report its type only (values may be PHI)
        raise CorruptImageError(
            f"The DICOM header could not be parsed ({type(exc).__name__})."
        ) from exc
    if stream.truncated:
        raise TruncatedImageError("The DICOM file ends in the middle of a data element.")
    return ds


# Room for the non-pixel part of an inflated dataset, beyond 2 bytes per allowed sample.
METADATA_ALLOWANCE = 64 * 1024 * 1024
_INFLATE_STEP = 64 * 1024  # compressed bytes per step: bounds each step's output to ~66 MB
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _deflated_body_offset(data: bytes) -> int | None:
    """Where the deflated dataset starts, or None when the file is not deflated."""
    if DeflatedExplicitVRLittleEndian.encode() not in data[:8192]:
        return None
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force=True)
        file_meta = _read_file_meta_info(stream)
    except Exception:  # an unreadable meta group is reported by the real parse
        return None
    tsuid = str(file_meta.get("TransferSyntaxUID", "")).strip().rstrip("\x00")
    return stream.tell() if tsuid == DeflatedExplicitVRLittleEndian else None


def check_deflated_size(data: bytes, max_pixels: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that inflates beyond what
    ``max_pixels`` 16-bit samples plus ``METADATA_ALLOWANCE`` can need; memory stays bounded."""
    offset = _deflated_body_offset(data)
    if offset is None:
        return
    limit = 2 * max_pixels + METADATA_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(data)[offset:]
    total = 0
    try:
        for start in range(0, len(view), _INFLATE_STEP):
            total += len(inflater.decompress(view[start : start + _INFLATE_STEP]))
            if total > limit:
                raise ImageTooLargeError(
                    f"The deflated DICOM dataset inflates to more than {limit} bytes, beyond "
                    f"what an image of at most {max_pixels} values needs.",
                    max_pixels=max_pixels,
                )
    except zlib.error as exc:
        raise CorruptImageError(
            "The deflated DICOM dataset is not a valid deflate stream."
        ) from exc
    if not inflater.eof:
        raise TruncatedImageError("The deflated DICOM dataset ends before its deflate stream.")


def _frame_header_size(fragment: bytes, tsuid: UID) -> tuple[int, int] | None:
    """(rows, columns) from a fragment that starts a JPEG, JPEG-LS or JPEG 2000 frame."""
    if tsuid in JPEGTransferSyntaxes or tsuid in JPEGLSTransferSyntaxes:
        if not fragment.startswith(b"\xff\xd8"):
            return None
        header = read_jpeg_header(fragment, "JPEG frame in the DICOM Pixel Data")
        return header.rows, header.columns
    if tsuid in JPEG2000TransferSyntaxes:
        if not (fragment.startswith(b"\xff\x4f\xff\x51") or fragment.startswith(_JP2_SIGNATURE)):
            return None
        j2k = read_j2k_header(fragment, "JPEG 2000 frame in the DICOM Pixel Data")
        return j2k.rows, j2k.columns
    return None


def check_codestreams(pixel_data: bytes, rows: int, columns: int, tsuid: UID) -> None:
    """Every frame's codestream header must declare the same size as Rows x Columns."""
    stream = io.BytesIO(pixel_data)
    found = False
    try:
        parse_basic_offsets(stream)
        for fragment in generate_fragments(stream):
            found = found or bool(fragment)
            size = _frame_header_size(fragment, tsuid)
            if size is not None and size != (rows, columns):
                raise CorruptImageError(
                    f"A compressed frame declares {size[0]} x {size[1]} pixels but the DICOM "
                    f"header declares {rows} x {columns}."
                )
    except ImagingError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            "The encapsulated Pixel Data is not a valid sequence of fragments."
        ) from exc
    if not found:
        raise CorruptImageError("The encapsulated Pixel Data holds no compressed frames.")
