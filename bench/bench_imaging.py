"""Decode and preprocessing time per input kind, on inputs generated in memory.

Inputs: a 4000x3000 MONOCHROME1 mammogram (uint16, 14 bits stored) as uncompressed, RLE and
JPEG 2000 lossless DICOM; a 640x480 RGB ultrasound as PNG and as uncompressed DICOM; a 50x50
RGB histopathology patch as PNG. Each is decoded with ``imaging.decode.decode`` and preprocessed
with ``imaging.preprocess.preprocess`` under a typical config; the table gives the median and the
95th percentile over the repetitions (each case stops early at ``--budget`` seconds, with at
least three repetitions, so the whole run stays under a minute on two cores).

Usage: ``.venv/bin/python bench/bench_imaging.py [--repeat N] [--budget SECONDS]``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from imaging.preprocess import Normalisation, PreprocessConfig, ResizeMode, preprocess
from imaging.record import DecodedImage

MAMMO = PreprocessConfig(
    input_size=(1024, 832),
    channels=1,
    resize_mode=ResizeMode.LETTERBOX,
    crop_breast=True,
    canonical_orientation=True,
)
ULTRASOUND = PreprocessConfig(
    input_size=(256, 256), channels=3, normalisation=Normalisation.IMAGENET
)
PATCH = PreprocessConfig(input_size=(50, 50), channels=3, normalisation=Normalisation.IMAGENET)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    config: PreprocessConfig


def _mammogram_pixels(rows: int = 4000, cols: int = 3000) -> np.ndarray:
    """A right breast (chest wall on the right) as MONOCHROME1: tissue is low values."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:400, 0:300].astype(np.float32)
    radius = np.sqrt(((xx - 300) / 230) ** 2 + ((yy - 200) / 170) ** 2)
    texture = cv2.GaussianBlur(rng.random((400, 300), dtype=np.float32), (0, 0), 2)
    small = np.where(radius < 1, 0.35 + 0.4 * (1 - radius**2) + 0.5 * (texture - 0.5), 0.02)
    density = cv2.resize(small.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    top = (1 << 14) - 1
    noise = rng.integers(0, 24, size=(rows, cols), dtype=np.int32)
    values = np.clip((1.0 - density) * (top - 400) + noise, 0, top)
    return values.astype(np.uint16)


def _dataset(pixels: np.ndarray, modality: str, photometric: str, bits_stored: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = (
        uid.DigitalMammographyXRayImageStorageForPresentation
        if modality == "MG"
        else uid.UltrasoundImageStorage
    )
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.tobytes()
    if modality == "MG":
        ds.ImageLaterality = "R"
        ds.WindowCenter, ds.WindowWidth = 8192, 16384
    return ds


def _dicom_bytes(ds: Dataset, syntax: uid.UID | None = None) -> bytes:
    if syntax is not None:
        plugin = "pylibjpeg" if syntax == uid.RLELossless else ""  # the fast RLE encoder
        ds.compress(syntax, encoding_plugin=plugin)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _ultrasound() -> np.ndarray:
    rng = np.random.default_rng(1)
    speckle = cv2.GaussianBlur(rng.random((480, 640), dtype=np.float32), (0, 0), 1.5)
    grey = np.clip(speckle * 255, 0, 255).astype(np.uint8)
    cv2.circle(grey, (320, 240), 60, 20, -1)  # a dark lesion
    rgb = np.dstack([grey] * 3)
    cv2.putText(rgb, "L BREAST 10 o'clock", (20, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0))
    return rgb


def build_cases() -> list[Case]:
    """Every input, encoded in memory."""
    mammogram = _mammogram_pixels()
    us = _ultrasound()
    patch = np.random.default_rng(2).integers(120, 255, size=(50, 50, 3), dtype=np.uint8)
    cases = [
        Case(
            "MG 4000x3000 uint16 uncompressed",
            _dicom_bytes(_dataset(mammogram, "MG", "MONOCHROME1", 14)),
            MAMMO,
        ),
    ]
    for label, syntax in (("RLE", uid.RLELossless), ("JPEG 2000 lossless", uid.JPEG2000Lossless)):
        ds = _dataset(mammogram, "MG", "MONOCHROME1", 14)
        cases.append(Case(f"MG 4000x3000 uint16 {label}", _dicom_bytes(ds, syntax), MAMMO))
    cases += [
        Case("US 640x480 RGB PNG", _png(us), ULTRASOUND),
        Case("US 640x480 RGB DICOM", _dicom_bytes(_dataset(us, "US", "RGB", 8)), ULTRASOUND),
        Case("patch 50x50 RGB PNG", _png(patch), PATCH),
    ]
    return cases


def _fallback_decode(data: bytes) -> np.ndarray:
    """Display image without ``imaging.decode`` (only if that module is not importable)."""
    if data[128:132] == b"DICM":
        ds = pydicom.dcmread(io.BytesIO(data))
        values = ds.pixel_array.astype(np.float32)
        values = (values - values.min()) / max(float(np.ptp(values)), 1.0)
        return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError("OpenCV could not decode the input")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _timed(run: Callable[[], object], repeat: int, budget_s: float) -> list[float]:
    """Durations in ms: up to ``repeat`` runs, stopping after ``budget_s`` (at least 3)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _stats(times: list[float]) -> str:
    if not times:
        return f"{'n/a':>9} {'n/a':>9}"
    return f"{np.median(times):9.1f} {np.percentile(times, 95):9.1f}"


def _versions() -> str:
    names = ("numpy", "opencv-python-headless", "pydicom", "pylibjpeg-openjpeg", "pylibjpeg-rle")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def _machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.machine()} {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores ({usable} usable), OpenCV threads {cv2.getNumThreads()}, "
        f"Python {platform.python_version()}"
    )


def _decoder() -> Callable[[bytes], DecodedImage] | None:
    try:
        from imaging.decode import decode
    except ImportError:
        return None
    return decode


def run_case(case: Case, repeat: int, budget_s: float) -> str:
    """One table row: decode, display and preprocess timings for ``case``."""
    decode = _decoder()
    if decode is None:
        decode_ms = _timed(lambda: _fallback_decode(case.data), repeat, budget_s)
        display_ms: list[float] = []
        image = _fallback_decode(case.data)
    else:
        decode_ms = _timed(lambda: decode(case.data), repeat, budget_s)
        decoded = decode(case.data)
        display_ms = _timed(lambda: decoded.display(0), repeat, budget_s)
        image = decoded.display(0)
    preprocess_ms = _timed(lambda: preprocess(image, case.config), repeat, budget_s)
    n = f"{len(decode_ms)}/{len(preprocess_ms)}"
    size = f"{len(case.data) / 1e6:7.2f}"
    return (
        f"{case.name:<40} {size} {_stats(decode_ms)} {_stats(display_ms)} "
        f"{_stats(preprocess_ms)} {n:>6}"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the machine, the versions and one timing row per input kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="repetitions per case (max)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per case and stage")
    args = parser.parse_args(argv)
    if args.repeat < 3:
        parser.error("--repeat must be at least 3")
    print(f"machine: {_machine()}")
    print(f"versions: {_versions()}")
    if _decoder() is None:
        print("note: imaging.decode is not importable; decode uses a pydicom/OpenCV fallback")
    t0 = time.perf_counter()
    cases = build_cases()
    print(f"inputs generated in {time.perf_counter() - t0:.1f} s; times in ms")
    print("decode: bytes -> DecodedImage; display: VOI/window -> [0, 1]; preproc: -> (C, H, W)")
    print("n: decode / preprocess repetitions (slow cases stop at --budget seconds)")
    header = f"{'input':<40} {'MB':>7} {'decode':>9} {'p95':>9} {'display':>9} {'p95':>9}"
    print(f"{header} {'preproc':>9} {'p95':>9} {'n':>6}")
    for case in cases:
        print(run_case(case, args.repeat, args.budget), flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
