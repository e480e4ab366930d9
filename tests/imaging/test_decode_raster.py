"""PNG, JPEG, PGM and TIFF made in the test with OpenCV, Pillow and tifffile."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from imaging import DecodedImage, ImageFormat, decode
from imaging.decode import sniff_format
from imaging.record import PixelSpacingSource

RNG = np.random.default_rng(3)
GREY8 = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (24, 32), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
SMOOTH_RGB = np.stack(np.meshgrid(np.arange(32) * 7, np.arange(24) * 9), -1)
SMOOTH_RGB = np.dstack([SMOOTH_RGB, np.full((24, 32), 90)]).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    """PNG via OpenCV; colour input is RGB(A) and stored as such."""
    if arr.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR
        arr = cv2.cvtColor(arr, code)
    ok, buffer = cv2.imencode(".png", arr)
    assert ok
    return buffer.tobytes()


def pillow_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def tiff(arr: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr, **kwargs)
    return buffer.getvalue()


def check_raster(image: DecodedImage, fmt: ImageFormat, shape: tuple[int, ...], bits: int) -> None:
    md = image.metadata
    assert md.format is fmt and image.raw.shape == shape
    assert (md.rows, md.columns, md.frames) == (shape[1], shape[2], shape[0])
    assert md.samples_per_pixel == (3 if len(shape) == 4 else 1)
    assert md.bits_stored == md.bits_allocated == bits
    assert md.photometric_interpretation == ("RGB" if len(shape) == 4 else "MONOCHROME2")
    assert image.raw.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert md.modality is None and md.identifiers is None and image.invert is False
    shown = image.display()
    assert shown.dtype == np.float32 and shown.min() >= 0 and shown.max() <= 1


# PNG


@pytest.mark.parametrize(
    ("source", "bits"), [(GREY8, 8), (GREY16, 16), (RGB8, 8), (RGB16, 16)], ids=str
)
def test_png_keeps_values(source: np.ndarray, bits: int) -> None:
    image = decode(png(source))
    check_raster(image, ImageFormat.PNG, (1, *source.shape), bits)
    np.testing.assert_array_equal(image.raw[0], source)


def test_png_alpha_is_dropped() -> None:
    rgba = np.dstack([RGB8, np.full((24, 32), 10, np.uint8)])
    np.testing.assert_array_equal(decode(png(rgba)).raw[0], RGB8)
    grey_alpha = Image.fromarray(np.dstack([GREY8, GREY8 // 2]), mode="LA")
    image = decode(pillow_bytes(grey_alpha, "PNG"))
    check_raster(image, ImageFormat.PNG, (1, 24, 32), 8)
    np.testing.assert_array_equal(image.raw[0], GREY8)


def test_png_palette_becomes_rgb_or_grey() -> None:
    colour = Image.fromarray(SMOOTH_RGB).quantize(colors=16)
    image = decode(pillow_bytes(colour, "PNG"))
    check_raster(image, ImageFormat.PNG, (1, 24, 32, 3), 8)
    np.testing.assert_array_equal(image.raw[0], np.asarray(colour.convert("RGB")))
    grey = Image.fromarray(GREY8).convert("P")  # a palette of greys
    image = decode(pillow_bytes(grey, "PNG"))
    check_raster(image, ImageFormat.PNG, (1, 24, 32), 8)
    np.testing.assert_array_equal(image.raw[0], np.asarray(grey.convert("L")))


def test_png_low_bit_depth_is_scaled_to_8_bits() -> None:
    two_bit = (np.arange(24 * 32).reshape(24, 32) % 4).astype(np.uint8)
    data = pillow_bytes(Image.fromarray(two_bit, mode="L"), "PNG", bits=2)
    assert data[24] == 2  # IHDR bit depth
    np.testing.assert_array_equal(decode(data).raw[0], two_bit * 85)


def _with_phys(data: bytes, per_x: int, per_y: int, unit: int) -> bytes:
    payload = struct.pack(">IIB", per_x, per_y, unit)
    chunk = struct.pack(">I", 9) + b"pHYs" + payload
    chunk += struct.pack(">I", zlib.crc32(b"pHYs" + payload))
    return data[:33] + chunk + data[33:]  # after the signature and IHDR


def test_png_phys_in_metres_gives_pixel_spacing() -> None:
    image = decode(_with_phys(png(GREY8), 10000, 20000, 1))  # 0.1 mm wide, 0.05 mm high
    assert image.metadata.pixel_spacing_mm == pytest.approx((0.05, 0.1))
    assert image.metadata.pixel_spacing_source is PixelSpacingSource.RASTER_RESOLUTION
    unitless = decode(_with_phys(png(GREY8), 1, 1, 0)).metadata
    assert unitless.pixel_spacing_mm is None
    assert unitless.pixel_spacing_source is PixelSpacingSource.UNKNOWN


def test_display_rules_for_raster() -> None:
    dark = np.full((8, 8), 10, np.uint8)
    dark[0, 0] = 20
    np.testing.assert_allclose(decode(png(dark)).display()[1, 1], 10 / 255)  # nominal range
    deep = np.full((8, 8), 1000, np.uint16)
    deep[0, 0] = 3000
    shown = decode(png(deep)).display()
    assert shown[0, 0] == 1 and shown[1, 1] == 0  # min-max
    flat = decode(png(np.full((8, 8), 1234, np.uint16))).display()
    assert flat.dtype == np.float32 and not flat.any()  # constant: zeros, no division by zero


# JPEG


def test_jpeg_grey_and_rgb() -> None:
    ok, grey = cv2.imencode(".jpg", GREY8, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    image = decode(grey.tobytes())
    check_raster(image, ImageFormat.JPEG, (1, 24, 32), 8)
    assert np.abs(image.raw[0].astype(int) - GREY8).mean() < 3
    data = pillow_bytes(Image.fromarray(SMOOTH_RGB), "JPEG", quality=95)
    image = decode(data)
    check_raster(image, ImageFormat.JPEG, (1, 24, 32, 3), 8)
    assert np.abs(image.raw[0].astype(int) - SMOOTH_RGB).mean() < 4


def test_jpeg_cmyk_becomes_rgb() -> None:
    cmyk = Image.fromarray(SMOOTH_RGB).convert("CMYK")
    image = decode(pillow_bytes(cmyk, "JPEG", quality=95))
    check_raster(image, ImageFormat.JPEG, (1, 24, 32, 3), 8)
    assert np.abs(image.raw[0].astype(int) - SMOOTH_RGB).mean() < 6


def test_jpeg_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = pillow_bytes(Image.fromarray(SMOOTH_RGB), "JPEG", quality=95, exif=exif)
    image = decode(data)
    assert image.raw.shape == (1, 32, 24, 3)
    assert (image.metadata.rows, image.metadata.columns) == (32, 24)


# PGM


def _pgm(arr: np.ndarray, plain: bool, maxval: int, comment: bool = True) -> bytes:
    header = b"P2" if plain else b"P5"
    header += b"\n# made by a test\n" if comment else b"\n"
    header += f"{arr.shape[1]} {arr.shape[0]}\n{maxval}\n".encode()
    if plain:
        return header + " ".join(str(int(v)) for v in arr.ravel()).encode() + b"\n"
    return header + arr.astype(">u2" if maxval > 255 else np.uint8).tobytes()


@pytest.mark.parametrize("plain", [False, True], ids=["P5", "P2"])
def test_pgm_8_and_16_bit(plain: bool) -> None:
    image = decode(_pgm(GREY8, plain, 255))
    check_raster(image, ImageFormat.PGM, (1, 24, 32), 8)
    np.testing.assert_array_equal(image.raw[0], GREY8)
    image = decode(_pgm(GREY16, plain, 65535))  # P5 16-bit is big endian
    check_raster(image, ImageFormat.PGM, (1, 24, 32), 16)
    np.testing.assert_array_equal(image.raw[0], GREY16)


def test_pgm_small_maxval_is_rescaled_to_8_bits() -> None:
    values = (np.arange(24 * 32).reshape(24, 32) % 16).astype(np.uint8)
    image = decode(_pgm(values, False, 15, comment=False))
    np.testing.assert_array_equal(image.raw[0], values * 17)


def test_pgm_16_bit_with_12_bit_maxval_keeps_values() -> None:
    values = (GREY16 >> 4).astype(np.uint16)
    image = decode(_pgm(values, False, 4095))
    np.testing.assert_array_equal(image.raw[0], values)


# TIFF


@pytest.mark.parametrize(
    ("source", "bits", "kwargs"),
    [
        (GREY8, 8, {}),
        (GREY16, 16, {}),
        (GREY16, 16, {"byteorder": ">"}),
        (RGB8, 8, {"photometric": "rgb"}),
        (RGB16, 16, {"photometric": "rgb", "byteorder": ">"}),
        (RGB8, 8, {"photometric": "rgb", "planarconfig": "separate"}),
        (GREY8, 8, {"compression": "zlib"}),
        (GREY16, 16, {"bigtiff": True}),
    ],
    ids=["grey8", "grey16", "grey16-be", "rgb8", "rgb16-be", "planar", "deflate", "bigtiff"],
)
def test_tiff_keeps_values(source: np.ndarray, bits: int, kwargs: dict) -> None:
    stored = np.moveaxis(source, -1, 0) if kwargs.get("planarconfig") else source
    image = decode(tiff(stored, **kwargs))
    check_raster(image, ImageFormat.TIFF, (1, *source.shape), bits)
    np.testing.assert_array_equal(image.raw[0], source)


def test_tiff_pages_become_frames() -> None:
    pages = np.stack([GREY8, GREY8 // 2, 255 - GREY8])
    image = decode(tiff(pages, photometric="minisblack"))
    check_raster(image, ImageFormat.TIFF, (3, 24, 32), 8)
    np.testing.assert_array_equal(image.raw, pages)
    np.testing.assert_array_equal(image.frame(2), 255 - GREY8)


def test_tiff_minisblack_miniswhite_and_palette() -> None:
    inverted = decode(tiff(GREY8, photometric="miniswhite"))
    np.testing.assert_array_equal(inverted.raw[0], 255 - GREY8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0] = np.arange(256) * 257
    colormap[2] = (255 - np.arange(256)) * 257
    image = decode(tiff(GREY8, photometric="palette", colormap=colormap))
    check_raster(image, ImageFormat.TIFF, (1, 24, 32, 3), 8)
    np.testing.assert_array_equal(image.raw[0, ..., 0], GREY8)
    np.testing.assert_array_equal(image.raw[0, ..., 2], 255 - GREY8)


def test_tiff_jpeg_compressed_rgb() -> None:
    image = decode(tiff(SMOOTH_RGB, photometric="rgb", compression="jpeg"))
    check_raster(image, ImageFormat.TIFF, (1, 24, 32, 3), 8)
    assert np.abs(image.raw[0].astype(int) - SMOOTH_RGB).mean() < 3


def test_tiff_bilevel_is_8_bit_grey() -> None:
    ink = np.eye(8, dtype=bool)  # tifffile stores bilevel data as MINISWHITE: True is black
    image = decode(tiff(ink))
    check_raster(image, ImageFormat.TIFF, (1, 8, 8), 8)
    np.testing.assert_array_equal(image.raw[0], np.where(ink, 0, 255))


def test_tiff_alpha_is_dropped() -> None:
    rgba = np.dstack([RGB8, np.full((24, 32), 7, np.uint8)])
    image = decode(tiff(rgba, photometric="rgb", extrasamples=["unassalpha"]))
    np.testing.assert_array_equal(image.raw[0], RGB8)


def test_tiff_resolution_gives_pixel_spacing() -> None:
    data = tiff(GREY8, resolution=(100, 50), resolutionunit="CENTIMETER")
    spacing = decode(data).metadata.pixel_spacing_mm
    assert spacing == pytest.approx((0.2, 0.1))  # (row, column) = (10/50, 10/100) mm
    inch = decode(tiff(GREY8, resolution=(254, 254), resolutionunit="INCH")).metadata
    assert inch.pixel_spacing_mm == pytest.approx((0.1, 0.1))
    assert (
        decode(tiff(GREY8, resolution=(5, 5), resolutionunit="NONE")).metadata.pixel_spacing_mm
        is None
    )


# Recognised by content


def test_format_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    misleading = tmp_path / "scan.dcm"
    misleading.write_bytes(png(GREY8))
    assert decode(misleading).metadata.format is ImageFormat.PNG
    as_text = tmp_path / "image.txt"
    as_text.write_bytes(tiff(GREY8))
    assert decode(str(as_text)).metadata.format is ImageFormat.TIFF
    assert sniff_format(_pgm(GREY8, True, 255)) is ImageFormat.PGM
    assert decode(bytearray(png(GREY8))).metadata.format is ImageFormat.PNG
