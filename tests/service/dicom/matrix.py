"""The input kinds breastdx accepts over DICOM, one builder each, for the validator matrix.

Each builder answers the bytes of one instance: the real file from ``../shared/data/dicom``
where the set has one, else a generated one (so the matrix also runs without the shared data).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import set_pixel_data

from imaging.geometry import Geometry
from imaging.postprocess import postprocess_mask
from service.inference import Analysis
from service.inference.result import mask_summary
from tests.conftest import shared_data_root
from tests.imaging import dicom_factory as dcm
from tests.service.dicom.conftest import mammogram, ultrasound


@dataclass(frozen=True)
class Input:
    stage: str
    make: Callable[[], bytes]


def shared_or(name: str, made: Callable[[], Dataset]) -> Callable[[], bytes]:
    def build() -> bytes:
        path = shared_data_root() / "dicom" / name
        return path.read_bytes() if path.is_file() else dcm.to_bytes(made())

    return build


def generated(made: Callable[[], Dataset]) -> Callable[[], bytes]:
    return lambda: dcm.to_bytes(made())


def grey_ultrasound() -> Dataset:
    return ultrasound(rows=96, columns=128)


def multiframe_us(tsuid: str = uid.ExplicitVRLittleEndian) -> Dataset:
    ds, _ = dcm.multiframe_ultrasound(frames=3, rows=96, columns=128)
    ds.BodyPartExamined = "BREAST"
    return dcm.encode(ds, tsuid)


def radiograph(sop_class: str, modality: str, **tags: object) -> Dataset:
    """A 12-bit DX or CR of the breast (For Presentation), tags as given."""
    ds = dcm.base_dataset(sop_class, modality)
    pixels = dcm.mammogram_pixels(192, 160, 12)
    set_pixel_data(ds, pixels, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def dx_mammogram() -> Dataset:
    return radiograph(
        uid.DigitalXRayImageStorageForPresentation,
        "DX",
        BodyPartExamined="BREAST",
        ViewPosition="CC",
        ImageLaterality="R",
        PatientOrientation=["L", "H"],
    )


def cr_mammogram() -> Dataset:
    return radiograph(
        uid.ComputedRadiographyImageStorage, "CR", ViewPosition="MLO", ImageLaterality="L"
    )


def film_sc(modality: str = "RG", body_part: str = "BREAST") -> Dataset:
    """A digitised film mammogram: 12-bit Secondary Capture, Body Part Examined as given."""
    ds = dcm.base_dataset(uid.SecondaryCaptureImageStorage, modality)
    pixels = dcm.mammogram_pixels(200, 160, 12)
    set_pixel_data(ds, pixels, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.ConversionType = "DF"  # digitized film (PS3.3 C.8.6.1)
    ds.BodyPartExamined = body_part
    ds.Laterality = "R"
    ds.PatientOrientation = ["A", "F"]
    return ds


def he_tile_sc() -> Dataset:
    """A secondary-capture pathology tile (RGB, Modality SM)."""
    from training.data.synthetic_draw import he_patch

    tile = he_patch(np.random.default_rng(3), (64, 64), tumour=True)  # (H, W, 3) uint8
    ds = dcm.base_dataset(uid.SecondaryCaptureImageStorage, "SM")
    set_pixel_data(ds, tile, "RGB", 8, generate_instance_uid=False)
    return ds


def slide_tiles() -> bytes | None:
    """The shared whole-slide image (SM, tiled) with H&E-like colour tiles; None when absent."""
    from training.data.synthetic_draw import he_patch

    path = shared_data_root() / "dicom" / "sm_image.dcm"
    if not path.is_file():
        return None
    ds = pydicom.dcmread(path)
    rng = np.random.default_rng(0)
    frames = int(ds.NumberOfFrames)
    tiles = np.stack([he_patch(rng, (10, 10), tumour=True) for _ in range(frames)])
    ds.PixelData = tiles.tobytes()  # (F, 10, 10, 3): colour in place of the grey test pattern
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


MATRIX: dict[str, Input] = {
    "us-single-uncompressed": Input("ultrasound", shared_or("US1_UNCR.dcm", grey_ultrasound)),
    "us-single-rle": Input(
        "ultrasound",
        shared_or("US1_RLE.dcm", lambda: dcm.encode(grey_ultrasound(), uid.RLELossless)),
    ),
    "us-single-j2k": Input(
        "ultrasound",
        shared_or("US1_J2KR.dcm", lambda: dcm.encode(grey_ultrasound(), uid.JPEG2000Lossless)),
    ),
    "us-multi-uncompressed": Input("ultrasound", generated(multiframe_us)),
    "us-multi-rle": Input("ultrasound", generated(lambda: multiframe_us(uid.RLELossless))),
    "us-multi-j2k": Input("ultrasound", generated(lambda: multiframe_us(uid.JPEG2000Lossless))),
    "mg": Input("mammography", shared_or("MG_Explicit_Little.dcm", mammogram)),
    "mg-generated": Input("mammography", generated(mammogram)),
    "dx-mammogram": Input("mammography", generated(dx_mammogram)),
    "cr-mammogram": Input("mammography", generated(cr_mammogram)),
    "sc-film": Input("mammography", generated(film_sc)),
    "sc-pathology-tile": Input("histopathology", generated(he_tile_sc)),
    "sm-tiles": Input("histopathology", lambda: slide_tiles() or dcm.to_bytes(he_tile_sc())),
}


def with_lesions(analysis: Analysis) -> Analysis:
    """The analysis with a made-up mask of two lesions (the tiny models often find none)."""
    rows, columns = analysis.mask.shape
    prob = np.zeros((rows, columns), np.float32)
    prob[rows // 4 : rows // 2, columns // 5 : columns // 2] = 0.9
    prob[rows * 2 // 3 : rows * 3 // 4, columns * 2 // 3 : columns * 3 // 4] = 0.8
    spacing = analysis.result.input.pixel_spacing_mm
    masks = postprocess_mask(
        prob, Geometry((rows, columns)), threshold=0.5, min_area_px=1, pixel_spacing_mm=spacing
    )
    result = analysis.result.model_copy(
        update={"lesions": masks.lesions, "mask": mask_summary(masks)}
    )
    mask = np.where(masks.mask, 255, 0).astype(np.uint8)
    return Analysis(result=result, mask=mask, overlay=analysis.overlay)


def without_lesions(analysis: Analysis) -> Analysis:
    """The analysis with an empty mask: nothing found."""
    rows, columns = analysis.mask.shape
    masks = postprocess_mask(
        np.zeros((rows, columns), np.float32),
        Geometry((rows, columns)),
        threshold=0.5,
        min_area_px=1,
        pixel_spacing_mm=analysis.result.input.pixel_spacing_mm,
    )
    result = analysis.result.model_copy(update={"lesions": [], "mask": mask_summary(masks)})
    empty = np.zeros((rows, columns), np.uint8)
    return Analysis(result=result, mask=empty, overlay=analysis.overlay)
