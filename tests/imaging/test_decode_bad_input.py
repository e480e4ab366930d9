"""What hospital IT may send: empty, random, truncated, mislabelled, oversized, non-image objects.

Every failure must be an ``ImagingError`` subclass with a user-readable message and no patient
data; the property tests fuzz real files (bit flips, truncation, splicing) to show that nothing
else escapes.
"""

from __future__ import annotations

import importlib
import io
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid
from pydicom.dataset import Dataset

from imaging import (
    CorruptImageError,
    DecodedImage,
    EmptyInputError,
    ImageFileNotFoundError,
    ImageFormat,
    ImageTooLargeError,
    ImagingError,
    NotAnImageError,
    TruncatedImageError,
    UnreadableFileError,
    UnrecognisedFormatError,
    UnsupportedBitDepthError,
    UnsupportedCompressionError,
    UnsupportedPhotometricError,
    UnsupportedTransferSyntaxError,
    decode,
)
from tests.imaging import dicom_factory as factory

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

GREY = (np.arange(16 * 12).reshape(16, 12) * 5 % 256).astype(np.uint8)


def _png(arr: np.ndarray = GREY) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _jpeg(arr: np.ndarray = GREY) -> bytes:
    return cv2.imencode(".jpg", arr)[1].tobytes()


def _tiff(arr: np.ndarray = GREY) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr)
    return buffer.getvalue()


def _pgm(arr: np.ndarray = GREY) -> bytes:
    return f"P5\n{arr.shape[1]} {arr.shape[0]}\n255\n".encode() + arr.tobytes()


def _mammogram(tsuid: str = uid.ExplicitVRLittleEndian, **kwargs: int) -> bytes:
    ds, _ = factory.mammogram(rows=32, columns=32, **kwargs)  # openjpeg needs 32 x 32
    return factory.to_bytes(factory.encode(ds, tsuid))


def _dicom_error(ds: Dataset, error: type[ImagingError], **kwargs: int) -> ImagingError:
    with pytest.raises(error) as info:
        decode(factory.to_bytes(ds), **kwargs)  # type: ignore[arg-type]
    for marker in factory.PHI_MARKERS:
        assert marker not in info.value.message and marker not in str(info.value.to_dict())
    return info.value


# Empty, random, unknown


def test_empty_input(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError):
        decode(b"")
    empty = tmp_path / "empty.dcm"
    empty.touch()
    with pytest.raises(EmptyInputError) as info:
        decode(empty)
    assert info.value.code == "empty_input"


def test_random_bytes_and_text_are_unrecognised() -> None:
    for data in (
        np.random.default_rng(1).bytes(4096),
        b"hello world",
        b"%PDF-1.7\n",
        b"\x00" * 300,
    ):
        with pytest.raises(UnrecognisedFormatError):
            decode(data)


def test_bytes_that_only_start_like_bare_dicom_are_unrecognised() -> None:
    with pytest.raises(UnrecognisedFormatError):
        decode(b"\x08\x00\x16\x00" + b"\xff" * 100)  # implicit length beyond the data
    bare = b"\x08\x00\x08\x00CS\x04\x00ABCD" + b"\x10\x00\x10\x00PN\x08\x00Doe^Jane"
    with pytest.raises(UnrecognisedFormatError) as info:
        decode(bare)  # parses as DICOM, but holds nothing of an image
    assert "Doe" not in info.value.message


def test_other_netpbm_variants_are_named() -> None:
    with pytest.raises(UnrecognisedFormatError, match="PGM"):
        decode(b"P6\n2 2\n255\n" + bytes(12))


# Paths


def test_missing_and_unreadable_paths(tmp_path: Path) -> None:
    missing = tmp_path / "Doe_Jane.dcm"
    with pytest.raises(ImageFileNotFoundError) as info:
        decode(missing)
    assert info.value.code == "file_not_found" and "Doe_Jane" not in info.value.message
    with pytest.raises(UnreadableFileError) as unreadable:
        decode(tmp_path)
    assert unreadable.value.code == "unreadable_file"
    with pytest.raises(UnreadableFileError):
        decode(str(tmp_path / "bad\x00name.png"))
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        with pytest.raises(UnreadableFileError):
            decode(fifo)  # would block forever if read


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(_png())
    locked.chmod(0)
    with pytest.raises(UnreadableFileError):
        decode(locked)


def test_bad_max_pixels_is_a_programming_error() -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_pixels"):
            decode(_png(), max_pixels=bad)  # type: ignore[arg-type]


# Truncated and corrupt containers


@pytest.mark.parametrize(
    "make",
    [
        _png,
        _jpeg,
        _tiff,
        _pgm,
        _mammogram,
        lambda: _mammogram(uid.RLELossless),
        lambda: _mammogram(uid.JPEG2000Lossless),
        lambda: _mammogram(uid.DeflatedExplicitVRLittleEndian),
    ],
    ids=["png", "jpeg", "tiff", "pgm", "dicom", "dicom-rle", "dicom-j2k", "dicom-deflated"],
)
def test_truncated_files(make) -> None:
    data = make()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        with pytest.raises((TruncatedImageError, CorruptImageError)):
            decode(data[:cut])


def test_truncated_native_dicom_says_truncated() -> None:
    data = _mammogram()
    with pytest.raises(TruncatedImageError, match=r"truncated|ends"):
        decode(data[:-100])


def test_png_with_a_bad_crc_is_corrupt() -> None:
    data = bytearray(_png())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF
    with pytest.raises(CorruptImageError, match="CRC"):
        decode(bytes(data))


# DICOM objects that are not images to analyse


@pytest.mark.parametrize("kind", ["sr", "kos", "gsps", "seg", "ann", "pdf"])
def test_non_image_sop_classes_are_refused(kind: str) -> None:
    ds = factory.non_image(kind)
    error = _dicom_error(ds, NotAnImageError)
    assert ds.SOPClassUID.name in error.message
    assert error.context["sop_class"] == ds.SOPClassUID.name


def test_image_sop_class_without_pixel_data() -> None:
    ds = factory.with_attributes(factory.rescaled()[0], PixelData=None)
    error = _dicom_error(ds, NotAnImageError)
    assert "no Pixel Data" in error.message and "CT Image Storage" in error.message


def test_private_sop_class_with_seg_modality_is_refused() -> None:
    ds = factory.with_attributes(factory.non_image("seg"), SOPClassUID="1.2.3.4.5.6")
    _dicom_error(ds, NotAnImageError)


# Unsupported pixel encodings


@pytest.mark.parametrize(
    ("photometric", "samples"),
    [("ARGB", 4), ("CMYK", 4), ("HSV", 3), ("YBR_ICT", 3), ("YBR_PARTIAL_420", 3)],
)
def test_unsupported_photometric(photometric: str, samples: int) -> None:
    ds, _ = factory.multiframe_ultrasound(frames=1)
    ds = factory.with_attributes(ds, PhotometricInterpretation=photometric, SamplesPerPixel=samples)
    error = _dicom_error(ds, UnsupportedPhotometricError)
    assert photometric in error.message


@pytest.mark.parametrize(("bits_allocated", "bits_stored"), [(32, 32), (1, 1), (12, 12), (64, 64)])
def test_unsupported_bit_depth(bits_allocated: int, bits_stored: int) -> None:
    ds, _ = factory.mammogram()
    ds = factory.with_attributes(ds, BitsAllocated=bits_allocated, BitsStored=bits_stored)
    _dicom_error(ds, UnsupportedBitDepthError)


def test_float_pixel_data_is_unsupported() -> None:
    ds, _ = factory.mammogram(with_voi_lut=False)
    ds = factory.with_attributes(ds, PixelData=None, BitsAllocated=32, BitsStored=None)
    ds.FloatPixelData = np.zeros((64, 48), np.float32).tobytes()
    _dicom_error(ds, UnsupportedBitDepthError)


def test_16_bit_ybr_is_unsupported() -> None:
    ds, _ = factory.multiframe_ultrasound(frames=1)
    ds = factory.with_attributes(ds, PhotometricInterpretation="YBR_FULL", BitsAllocated=16)
    _dicom_error(ds, UnsupportedBitDepthError)


@pytest.mark.parametrize(
    "tsuid",
    ["1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.102", "1.2.3.4"],
    ids=["jpeg-xl", "mpeg2", "mpeg4", "private"],
)
def test_transfer_syntax_without_decoder(tsuid: str) -> None:
    ds = factory.fake_encapsulated(factory.mammogram()[0], tsuid)
    error = _dicom_error(ds, UnsupportedTransferSyntaxError)
    assert tsuid in error.message


def _tiff_with(arr: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_tiff_with(np.zeros((8, 8), np.float32)), UnsupportedBitDepthError),
        (_tiff_with(np.zeros((8, 8), np.int16)), UnsupportedBitDepthError),
        (
            _tiff_with(np.zeros((8, 8, 4), np.uint8), photometric="separated"),
            UnsupportedPhotometricError,
        ),
        (
            _tiff_with(np.zeros((8, 8, 3), np.uint8), photometric="ycbcr"),
            UnsupportedPhotometricError,
        ),
        (
            imagecodecs.jpeg8_encode(GREY.astype(np.uint16) * 16, bitspersample=12),
            UnsupportedBitDepthError,
        ),
        (imagecodecs.jpeg8_encode(GREY, lossless=True), UnsupportedCompressionError),
        (imagecodecs.jpegls_encode(GREY), UnsupportedCompressionError),
    ],
    ids=["tiff-float", "tiff-int16", "tiff-cmyk", "tiff-ycbcr-raw", "jpeg-12", "jpeg-ll", "jls"],
)
def test_unsupported_raster_encodings(data: bytes, error: type[ImagingError]) -> None:
    with pytest.raises(error):
        decode(data)


def test_encapsulated_garbage_is_corrupt() -> None:
    ds = factory.fake_encapsulated(factory.mammogram()[0], uid.JPEGLSLossless)
    _dicom_error(ds, CorruptImageError)
    ds = factory.fake_encapsulated(factory.mammogram()[0], uid.JPEG2000, fragments=[b"\xff" * 64])
    _dicom_error(ds, CorruptImageError)


def test_native_pixel_data_under_a_compressed_transfer_syntax_is_corrupt() -> None:
    data = factory.to_bytes(factory.mammogram()[0])
    relabelled = factory.relabel_transfer_syntax(data, uid.ExplicitVRLittleEndian, uid.RLELossless)
    with pytest.raises(CorruptImageError, match="encapsulated"):
        decode(relabelled)


def test_codestream_larger_than_the_header_is_refused() -> None:
    ds, _ = factory.mammogram()
    encoded = factory.encode(ds, uid.JPEG2000Lossless)
    encoded.Rows, encoded.Columns = 16, 12
    error = _dicom_error(encoded, CorruptImageError)
    assert "64 x 48" in error.message


# Declared size over max_pixels, refused before anything is allocated


def test_dicom_declared_size_is_checked_before_decoding() -> None:
    ds, _ = factory.mammogram()
    huge = factory.with_attributes(ds, Rows=60000, Columns=60000, NumberOfFrames=50)
    tracemalloc.start()
    try:
        error = _dicom_error(huge, ImageTooLargeError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000 and error.context["declared"] == 60000 * 60000 * 50
    _dicom_error(ds, ImageTooLargeError, max_pixels=64 * 48 - 1)
    assert decode(factory.to_bytes(ds), max_pixels=64 * 48).raw.shape == (1, 64, 48)
    us, _ = factory.multiframe_ultrasound()  # 3 frames x 32 x 48 x 3 samples
    _dicom_error(us, ImageTooLargeError, max_pixels=3 * 32 * 48 * 3 - 1)


def test_deflate_bomb_is_refused() -> None:
    ds, _ = factory.mammogram(rows=1024, columns=1024, with_voi_lut=False)
    ds.PixelData = bytes(len(ds.PixelData))  # zeros: about 1000:1 when deflated
    data = factory.to_bytes(factory.encode(ds, uid.DeflatedExplicitVRLittleEndian))
    assert len(data) < 20_000
    with pytest.raises(ImageTooLargeError):
        decode(data, max_pixels=1000)


def _forged_png(width: int, height: int) -> bytes:
    data = bytearray(_png())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _forged_jpeg(width: int, height: int) -> bytes:
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        _forged_png(100_000, 100_000),
        _forged_jpeg(65_000, 65_000),
        b"P5\n100000 100000\n255\n" + bytes(64),
        b"P2\n100000 100000\n255\n1 2 3",
    ],
    ids=["png", "jpeg", "pgm-raw", "pgm-plain"],
)
def test_forged_raster_headers_are_refused_before_decoding(data: bytes) -> None:
    with pytest.raises(ImageTooLargeError):
        decode(data)


def test_raster_limits() -> None:
    for data in (_png(), _jpeg(), _tiff(), _pgm()):
        with pytest.raises(ImageTooLargeError):
            decode(data, max_pixels=16 * 12 - 1)
        assert decode(data, max_pixels=16 * 12).raw.shape == (1, 16, 12)


# Nothing else escapes


def test_unexpected_decoder_failures_become_corrupt_image_errors(monkeypatch) -> None:
    def explode(data: bytes, max_pixels: int) -> DecodedImage:
        raise RuntimeError("codec bug")

    decode_module = importlib.import_module("imaging.decode")  # the module, not the function
    monkeypatch.setitem(decode_module.DECODERS, ImageFormat.PNG, explode)
    with pytest.raises(CorruptImageError, match="RuntimeError"):
        decode(_png())
    for fatal in (MemoryError, KeyboardInterrupt):

        def fail(data: bytes, max_pixels: int, fatal: type[BaseException] = fatal) -> DecodedImage:
            raise fatal()

        monkeypatch.setitem(decode_module.DECODERS, ImageFormat.PNG, fail)
        with pytest.raises(fatal):
            decode(_png())


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException, which derives from BaseException, not Exception."""


def test_codec_panics_become_corrupt_image_errors(monkeypatch) -> None:
    def panic(data: bytes, max_pixels: int) -> DecodedImage:
        raise FakePanic("index out of bounds")

    decode_module = importlib.import_module("imaging.decode")
    monkeypatch.setitem(decode_module.DECODERS, ImageFormat.PNG, panic)
    with pytest.raises(CorruptImageError, match="FakePanic"):
        decode(_png())


def test_corrupt_rle_segment_does_not_escape() -> None:
    """A one-bit error that made pylibjpeg-rle 2.2 panic (found by fuzzing)."""
    data = bytearray(_mammogram(uid.RLELossless))
    header = data.index(struct.pack("<4I", 2, 64, 1088, 0))  # 2 segments, 32 x 32 x 16 bit
    data[header + 296] ^= 0x08
    with pytest.raises(ImagingError):
        decode(bytes(data))


# Property-based: random and mutated files


def _corpus() -> list[bytes]:
    ds, _ = factory.multiframe_ultrasound(frames=2, rows=8, columns=8)
    return [
        _png(),
        _png(np.dstack([GREY, GREY, GREY]).astype(np.uint16) * 200),
        _jpeg(),
        _tiff(),
        _pgm(),
        b"P2\n3 2\n255\n0 1 2\n3 4 5\n",
        _mammogram(),
        _mammogram(uid.RLELossless),
        _mammogram(uid.JPEGLSLossless),
        _mammogram(uid.JPEG2000Lossless),
        _mammogram(uid.JPEGLosslessSV1),
        _mammogram(uid.DeflatedExplicitVRLittleEndian),
        factory.to_bytes(factory.encode(ds, uid.JPEGBaseline8Bit)),
        factory.to_bytes(factory.mammogram(rows=8, columns=8)[0], preamble=False),
    ]


CORPUS = _corpus()
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decodes_or_fails_cleanly(data: bytes) -> None:
    try:
        image = decode(data, max_pixels=4_000_000)
    except ImagingError as exc:
        assert exc.code and exc.message
        return
    md = image.metadata
    assert image.raw.ndim in (3, 4) and image.raw.shape[0] == md.frames >= 1
    assert image.raw.shape[1:3] == (md.rows, md.columns)
    shown = image.display(0)
    assert shown.dtype == np.float32 and shown.shape == image.raw.shape[1:]


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_never_escape(data: bytes) -> None:
    _decodes_or_fails_cleanly(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    operation = draw(st.sampled_from(["flip", "truncate", "splice", "overwrite"]))
    if operation == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[position] ^= 1 << draw(st.integers(0, 7))
    elif operation == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif operation == "splice":
        other = draw(st.sampled_from(CORPUS))
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + other[draw(st.integers(0, len(other))) :]
    else:
        start = draw(st.integers(0, len(data) - 1))
        data[start : start + 4] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_files_decode_or_fail_cleanly(data: bytes) -> None:
    _decodes_or_fails_cleanly(data)
