"""The real DICOM test objects in ``../shared/data/dicom``: images decode with the right metadata,
segmentations and annotations are refused as not images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging import DecodedImage, NotAnImageError, decode
from imaging.record import Laterality, PixelSpacingSource, ViewPosition, Window

pytestmark = pytest.mark.realdata

NOT_IMAGES = {
    "seg_image_sm_control.dcm": "Segmentation Storage",
    "seg_image_sm_control_labelmap.dcm": "Label Map Segmentation Storage",
    "seg_image_sm_control_labelmap_palette_color.dcm": "Label Map Segmentation Storage",
    "seg_image_sm_dots.dcm": "Segmentation Storage",
    "seg_image_sm_dots_tiled_full.dcm": "Segmentation Storage",
    "seg_image_sm_numbers.dcm": "Segmentation Storage",
    "sm_annotations.dcm": "Microscopy Bulk Simple Annotations Storage",
}
SM_IMAGES = [
    "sm_image.dcm",
    "sm_image_control.dcm",
    "sm_image_dots.dcm",
    "sm_image_grayscale.dcm",
    "sm_image_jpegls.dcm",
    "sm_image_numbers.dcm",
]


@pytest.fixture(scope="module")
def decoded(shared_dicom_dir: Path) -> dict[str, DecodedImage]:
    """Every image object of the folder, decoded once."""
    names = sorted(p.name for p in shared_dicom_dir.glob("*.dcm") if p.name not in NOT_IMAGES)
    return {name: decode(shared_dicom_dir / name) for name in names}


def test_every_file_is_either_an_image_or_a_known_non_image(shared_dicom_dir: Path) -> None:
    for path in sorted(shared_dicom_dir.glob("*.dcm")):
        if path.name in NOT_IMAGES:
            with pytest.raises(NotAnImageError) as info:
                decode(path)
            assert NOT_IMAGES[path.name] in info.value.message
            assert info.value.code == "not_an_image"
        else:
            image = decode(path)
            assert image.raw.shape[0] == image.metadata.frames


def test_pixels_match_pydicom(shared_dicom_dir: Path, decoded: dict[str, DecodedImage]) -> None:
    for name, image in decoded.items():
        expected = pydicom.dcmread(shared_dicom_dir / name).pixel_array
        expected = expected.reshape(image.raw.shape)
        np.testing.assert_array_equal(image.raw, expected, err_msg=name)


def test_mammogram(decoded: dict[str, DecodedImage]) -> None:
    image = decoded["MG_Explicit_Little.dcm"]
    md = image.metadata
    assert (md.modality, md.rows, md.columns, md.frames) == ("MG", 512, 512, 1)
    assert md.sop_class == "DigitalMammographyXRayImageStorageForPresentation"
    assert md.photometric_interpretation == "MONOCHROME2" and image.invert is False
    # Pixel Spacing wins over Imager Pixel Spacing (0.5) and its magnification correction.
    assert md.pixel_spacing_mm == (0.25, 0.25)
    assert md.pixel_spacing_source is PixelSpacingSource.PIXEL_SPACING
    assert md.laterality is Laterality.RIGHT
    assert md.view_position is ViewPosition.CC  # View Code Sequence, SRT R-10242
    assert image.voi == Window(center=127.5, width=256.0)


def test_ultrasound_in_every_transfer_syntax_has_identical_pixels(
    decoded: dict[str, DecodedImage],
) -> None:
    reference = decoded["US1_UNCR.dcm"]
    assert reference.raw.shape == (1, 480, 640, 3) and reference.raw.dtype == np.uint8
    for name in ("US1_UNCI.dcm", "US1_RLE.dcm", "US1_J2KR.dcm"):
        np.testing.assert_array_equal(decoded[name].raw, reference.raw, err_msg=name)
        assert decoded[name].metadata.modality == "US"
    assert decoded["US1_J2KR.dcm"].metadata.photometric_interpretation == "YBR_RCT"
    assert decoded["US1_RLE.dcm"].metadata.transfer_syntax == "RLE Lossless"
    assert decoded["US1_J2KR.dcm"].metadata.transfer_syntax == (
        "JPEG 2000 Image Compression (Lossless Only)"
    )


def test_dx_is_monochrome1_and_inverted(decoded: dict[str, DecodedImage]) -> None:
    image = decoded["dx_image.dcm"]
    md = image.metadata
    assert md.photometric_interpretation == "MONOCHROME1" and image.invert is True
    assert md.laterality is Laterality.LEFT
    assert md.pixel_spacing_mm == pytest.approx((1.2, 1.2012))
    low = image.raw[0] == image.raw[0].min()
    assert np.all(image.display()[low] > 0.9)  # lowest stored values shown white


@pytest.mark.parametrize("name", SM_IMAGES)
def test_slide_microscopy_keeps_every_frame(name: str, decoded: dict[str, DecodedImage]) -> None:
    image = decoded[name]
    md = image.metadata
    grey = name == "sm_image_grayscale.dcm"
    assert image.raw.shape == ((25, 10, 10) if grey else (25, 10, 10, 3))
    assert (md.frames, md.modality, md.sop_class) == (
        25,
        "SM",
        "VLWholeSlideMicroscopyImageStorage",
    )
    assert md.pixel_spacing_source is PixelSpacingSource.PIXEL_MEASURES
    assert md.pixel_spacing_mm == pytest.approx((0.000499, 0.000499))
    for index in range(image.frames):
        assert image.display(index).shape == image.raw.shape[1:]


def test_jpeg_ls_tiles_equal_the_uncompressed_ones(decoded: dict[str, DecodedImage]) -> None:
    assert decoded["sm_image_jpegls.dcm"].metadata.transfer_syntax == (
        "JPEG-LS Lossless Image Compression"
    )
    np.testing.assert_array_equal(decoded["sm_image_jpegls.dcm"].raw, decoded["sm_image.dcm"].raw)
