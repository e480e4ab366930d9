"""DICOM -> ``DecodedImage`` with pydicom 3 and its pixel decoders.

The order of checks is the point: parse the dataset, refuse non-image SOP classes, validate the
Image Pixel module (photometric interpretation, bit depth, transfer syntax and its decoder), check
the declared size against ``max_pixels``, check the stored length (native) or every codestream
header (encapsulated) against the module, and only then decode. Colour always ends as RGB:
YBR_FULL(_422) converted (pydicom already does so for most JPEG data), YBR_RCT/ICT by the JPEG
2000 decoder, PALETTE COLOR through its lookup tables.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
)

from imaging import dicom_meta as meta
from imaging.dicom_guard import check_codestreams, check_deflated_size, read_dataset
from imaging.dicom_sop import check_image_sop_class, sop_class_keyword, sop_class_name
from imaging.errors import (
    CorruptImageError,
    ImagingError,
    NotAnImageError,
    TruncatedImageError,
    UnrecognisedFormatError,
    UnsupportedBitDepthError,
    UnsupportedPhotometricError,
    UnsupportedTransferSyntaxError,
)
from imaging.limits import check_declared_size
from imaging.record import DecodedImage, ImageFormat, ImageMetadata

logger = logging.getLogger(__name__)

GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
SUPPORTED_PHOTOMETRIC = GREY | COLOUR | {"PALETTE COLOR"}
_J2K_ONLY = frozenset({"YBR_RCT", "YBR_ICT"})
_YBR = frozenset({"YBR_FULL", "YBR_FULL_422"})
_CODE_STRING = re.compile(r"[^A-Z0-9_ ]")


def clean_code(value: object, limit: int = 16) -> str:
    """A Code String safe to print: upper case, ``[A-Z0-9_ ]`` only, at most ``limit`` chars."""
    return _CODE_STRING.sub("", str(value or "").upper())[:limit].strip()


class _DropPluginTracebacks(logging.Filter):
    """pydicom logs each failing decoding plugin as an ERROR with its traceback, even when the
    next plugin succeeds (``pydicom.pixels.decoders.base``, ``LOGGER.exception``). The outcome
    reaches the caller as pixels or as a typed ``CorruptImageError`` that names every plugin's
    reason; the tracebacks never reach stderr or the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


_PLUGIN_FILTER = _DropPluginTracebacks()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_PLUGIN_FILTER)


def _plugin_reasons(exc: BaseException) -> str:
    """pydicom's "all plugins failed" error as ``plugin: reason; ...`` (one line each, short)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    text = "; ".join(lines)
    return "".join(ch for ch in text if 32 <= ord(ch) < 127)[:300]


def describe_exception(exc: BaseException) -> str:
    """``Type: first line`` of an exception, printable ASCII, short (no values from the file)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = "".join(ch for ch in text if 32 <= ord(ch) < 127)[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class PixelModule:
    """The validated Image Pixel module (PS3.3 C.7.6.3) of one dataset."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str

    @property
    def output_samples(self) -> int:
        """Samples per pixel of the record: 1 for grey, 3 for colour (palette included)."""
        return 1 if self.photometric in GREY else 3


def transfer_syntax(ds: Dataset) -> UID:
    """The file meta Transfer Syntax UID, or the encoding pydicom found for a bare dataset."""
    file_meta = getattr(ds, "file_meta", None)
    value = meta.get(file_meta, "TransferSyntaxUID") if file_meta is not None else None
    if value:
        return UID(str(value).strip().rstrip("\x00"))
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def decoder_for(tsuid: UID) -> Decoder:
    """pydicom's decoder for ``tsuid``; UnsupportedTransferSyntaxError when none can run."""
    printable = tsuid if re.fullmatch(r"[0-9.]{1,64}", tsuid) else "an invalid UID"
    name = tsuid.name if printable == tsuid else printable
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            f"No decoder is available for the transfer syntax {name} ({printable}).",
            transfer_syntax=str(printable),
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"The transfer syntax {name} needs a decoding plugin that is not installed.",
            transfer_syntax=str(printable),
        )
    return decoder


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = meta.get(ds, keyword)
    if value is None and default is not None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise CorruptImageError(
            f"The DICOM attribute {keyword} is missing or not an integer."
        ) from None
    return number


def _photometric(ds: Dataset, samples: int, tsuid: UID) -> str:
    value = meta.get(ds, "PhotometricInterpretation")
    photometric = clean_code(value) if value is not None else ""
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
        logger.warning("Photometric Interpretation missing; assuming %s", photometric)
        ds.PhotometricInterpretation = photometric
    if photometric != value:
        ds.PhotometricInterpretation = photometric  # pydicom's decoders read it back
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedPhotometricError(
            f"The photometric interpretation {photometric!r} is not supported; supported: "
            f"{', '.join(sorted(SUPPORTED_PHOTOMETRIC))}.",
            photometric_interpretation=photometric,
        )
    if photometric in _J2K_ONLY and tsuid not in JPEG2000TransferSyntaxes:
        raise UnsupportedPhotometricError(
            f"The photometric interpretation {photometric} is only valid for JPEG 2000 data, "
            f"but the transfer syntax is {tsuid.name}.",
            photometric_interpretation=photometric,
        )
    expected = 1 if photometric in GREY or photometric == "PALETTE COLOR" else 3
    if samples != expected:
        raise CorruptImageError(
            f"The photometric interpretation {photometric} needs {expected} sample(s) per "
            f"pixel, but Samples per Pixel is {samples}."
        )
    return photometric


def _bit_depth(ds: Dataset, photometric: str) -> tuple[int, int, int]:
    bits_allocated = _int(ds, "BitsAllocated")
    if bits_allocated not in (8, 16):
        raise UnsupportedBitDepthError(
            f"Bits Allocated is {bits_allocated}; only 8 and 16 bits per sample are supported.",
            bits_allocated=bits_allocated,
        )
    bits_stored = _int(ds, "BitsStored", bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise CorruptImageError(
            f"Bits Stored ({bits_stored}) must be between 1 and Bits Allocated ({bits_allocated})."
        )
    representation = _int(ds, "PixelRepresentation", 0)
    if representation not in (0, 1):
        raise CorruptImageError(f"Pixel Representation must be 0 or 1, not {representation}.")
    if photometric in _YBR and bits_allocated != 8:  # pydicom's YBR -> RGB is 8-bit only
        raise UnsupportedBitDepthError(
            f"{photometric} colour is supported with 8 bits per sample only, not {bits_allocated}.",
            bits_allocated=bits_allocated,
        )
    return bits_allocated, bits_stored, representation


def pixel_module(ds: Dataset, tsuid: UID, sop_name: str) -> PixelModule:
    """Validate the Image Pixel module before anything is decoded."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise UnsupportedBitDepthError(
            "The DICOM object holds floating-point pixel data (32 or 64 bit), which is not "
            "supported."
        )
    if "PixelData" not in ds:
        raise NotAnImageError(
            f"The DICOM object ({sop_name}) holds no Pixel Data.", sop_class=sop_name
        )
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = _photometric(ds, samples, tsuid)
    bits_allocated, bits_stored, representation = _bit_depth(ds, photometric)
    frames = _int(ds, "NumberOfFrames", 1) or 1  # 0 or empty: a single frame (pydicom too)
    return PixelModule(
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        photometric=photometric,
    )


def check_native_length(ds: Dataset, module: PixelModule) -> None:
    """Native Pixel Data must hold every declared byte (PS3.5 8.1.1; YBR_FULL_422 is 2/3)."""
    element = ds["PixelData"]
    value = element.value
    if getattr(element, "is_undefined_length", False) or not isinstance(value, bytes | bytearray):
        raise CorruptImageError(
            "The Pixel Data is encapsulated (compressed), but the transfer syntax says it is not."
        )
    per_frame = module.rows * module.columns * module.samples * (module.bits_allocated // 8)
    if module.photometric == "YBR_FULL_422":
        per_frame = per_frame // 3 * 2
    expected = per_frame * module.frames
    if len(value) < expected:
        raise TruncatedImageError(
            f"The Pixel Data holds {len(value)} bytes but the image header declares "
            f"{expected}: the file is truncated or its header is wrong."
        )


def _decode(decoder: Decoder, ds: Dataset, tsuid: UID) -> tuple[np.ndarray, str]:
    try:
        arr, info = decoder.as_array(ds)  # as_rgb (default True): YBR_FULL(_422) -> RGB
    except (ImagingError, MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pylibjpeg-rle (Rust) panics on some corrupt RLE segments
        reasons = _plugin_reasons(exc) if isinstance(exc, RuntimeError) else ""
        why = f"every decoder failed: {reasons}" if reasons else describe_exception(exc)
        raise CorruptImageError(
            f"The {tsuid.name} pixel data could not be decoded ({why})."
        ) from exc
    return arr, str(info.get("photometric_interpretation", ""))


def _to_frames(arr: np.ndarray, module: PixelModule) -> np.ndarray:
    """``(F, H, W)`` or ``(F, H, W, S)`` in native byte order, at most the declared frames."""
    arr = np.asarray(arr)
    ndim = 3 if module.samples == 1 else 4
    if arr.ndim == ndim - 1:
        arr = arr[np.newaxis]
    if arr.ndim != ndim or arr.shape[1:3] != (module.rows, module.columns):
        raise CorruptImageError(
            f"The decoded pixel data has shape {arr.shape}, which does not match the header."
        )
    if arr.shape[0] > module.frames:
        arr = arr[: module.frames]
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _to_rgb(arr: np.ndarray, module: PixelModule, decoded_as: str, ds: Dataset) -> np.ndarray:
    """Colour frames as RGB; grey frames untouched."""
    if module.photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except (MemoryError, ImagingError):
            raise
        except Exception as exc:
            raise CorruptImageError(
                f"The palette colour lookup tables are unusable ({describe_exception(exc)})."
            ) from exc
        return np.ascontiguousarray(rgb[..., :3])
    if decoded_as in _YBR or (not decoded_as and module.photometric in _YBR):
        return convert_color_space(arr, "YBR_FULL", "RGB")
    return arr


def decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode a DICOM file or bare dataset into a ``DecodedImage`` (see the module docstring)."""
    check_deflated_size(data, max_pixels)
    ds = read_dataset(data)
    if data[128:132] != b"DICM" and not any(k in ds for k in ("SOPClassUID", "PixelData", "Rows")):
        raise UnrecognisedFormatError(
            "The data starts like a DICOM dataset without preamble but holds no SOP Class, "
            "image size or Pixel Data."
        )
    sop_uid = meta.clean_uid(meta.get(ds, "SOPClassUID"))
    modality = clean_code(meta.get(ds, "Modality")) or None
    check_image_sop_class(sop_uid, modality)
    tsuid = transfer_syntax(ds)
    module = pixel_module(ds, tsuid, sop_class_name(sop_uid))
    decoder = decoder_for(tsuid)
    check_declared_size(
        rows=module.rows,
        columns=module.columns,
        frames=module.frames,
        samples=module.output_samples,
        max_pixels=max_pixels,
        what="DICOM image",
    )
    if tsuid.is_encapsulated:
        check_codestreams(ds.PixelData, module.rows, module.columns, tsuid)
    else:
        check_native_length(ds, module)
    arr, decoded_as = _decode(decoder, ds, tsuid)
    raw = _to_rgb(_to_frames(arr, module), module, decoded_as, ds)
    logger.debug("decoded DICOM %s, %s, shape %s", sop_uid, tsuid.name, raw.shape)
    return _record(ds, module, np.ascontiguousarray(raw), tsuid, sop_uid, modality)


def _record(
    ds: Dataset,
    module: PixelModule,
    raw: np.ndarray,
    tsuid: UID,
    sop_uid: str | None,
    modality: str | None,
) -> DecodedImage:
    """The record: metadata, stored values, and for grey images the rescale and VOI."""
    grey = raw.ndim == 3
    bits_allocated, bits_stored = module.bits_allocated, module.bits_stored
    if module.photometric == "PALETTE COLOR":
        bits_allocated = bits_stored = raw.dtype.itemsize * 8
    spacing, spacing_source = meta.read_pixel_spacing(ds)
    little_endian = tsuid != ExplicitVRBigEndian
    metadata = ImageMetadata(
        format=ImageFormat.DICOM,
        modality=modality,
        sop_class=sop_class_keyword(sop_uid),
        transfer_syntax=tsuid.name,
        rows=module.rows,
        columns=module.columns,
        frames=int(raw.shape[0]),
        samples_per_pixel=1 if grey else 3,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        photometric_interpretation=module.photometric,
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        laterality=meta.read_laterality(ds),
        view_position=meta.read_view_position(ds),
        body_part=meta.read_body_part(ds),
        identifiers=meta.read_identifiers(ds, str(tsuid)),
    )
    slope, intercept = meta.read_rescale(ds) if grey else (1.0, 0.0)
    voi = meta.read_voi(ds, module.pixel_representation, little_endian) if grey else None
    return DecodedImage(
        metadata=metadata,
        raw=raw,
        rescale_slope=slope,
        rescale_intercept=intercept,
        voi=voi,
        invert=module.photometric == "MONOCHROME1",
    )
