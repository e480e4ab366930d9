"""DICOM decoding of objects built by ``dicom_factory``: every transfer syntax, colour model and
metadata rule, plus the display transform (PS3.3 C.11.2)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from imaging import DecodedImage, ImageFormat, decode
from imaging.record import Laterality, PixelSpacingSource, ViewPosition, VoiLut, Window
from imaging.voi import apply_display_transform, window_linear, window_linear_exact, window_sigmoid
from tests.imaging import dicom_factory as factory

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

LOSSLESS = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.HTJ2KLossless,
]
LOSSY = {  # transfer syntax -> largest absolute error allowed on the 12-bit mammogram
    uid.JPEGExtended12Bit: 64,
    uid.JPEGLSNearLossless: 2,
    uid.JPEG2000: 160,
}


def _decode(ds: Dataset, **kwargs: object) -> DecodedImage:
    return decode(factory.to_bytes(ds, **kwargs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mammogram() -> tuple[Dataset, np.ndarray]:
    return factory.mammogram()


def _check_mammogram_metadata(image: DecodedImage, tsuid: str) -> None:
    md = image.metadata
    assert md.format is ImageFormat.DICOM
    assert md.modality == "MG"
    assert md.sop_class == "DigitalMammographyXRayImageStorageForPresentation"
    assert md.transfer_syntax == uid.UID(tsuid).name
    assert (md.rows, md.columns, md.frames, md.samples_per_pixel) == (64, 48, 1, 1)
    assert (md.bits_allocated, md.bits_stored) == (16, 12)
    assert md.photometric_interpretation == "MONOCHROME1"
    assert md.laterality is Laterality.LEFT
    assert md.view_position is ViewPosition.MLO
    assert md.pixel_spacing_source is PixelSpacingSource.IMAGER_PIXEL_SPACING
    assert md.pixel_spacing_mm == pytest.approx((0.08, 0.08))  # 0.1 mm / magnification 1.25
    assert md.identifiers is not None and md.identifiers.transfer_syntax_uid == tsuid
    assert image.invert is True
    assert isinstance(image.voi, VoiLut) and image.voi.table.size == 4096


@pytest.mark.parametrize("tsuid", LOSSLESS, ids=lambda t: uid.UID(t).keyword)
def test_mammogram_lossless_syntaxes_give_identical_pixels(tsuid: str, mammogram) -> None:
    ds, pixels = mammogram
    image = _decode(factory.encode(ds, tsuid))
    _check_mammogram_metadata(image, tsuid)
    assert image.raw.shape == (1, 64, 48)
    assert image.raw.dtype == np.uint16 and image.raw.dtype.isnative
    np.testing.assert_array_equal(image.raw[0], pixels)


@pytest.mark.parametrize("tsuid", list(LOSSY), ids=lambda t: uid.UID(t).keyword)
def test_mammogram_lossy_syntaxes_are_close(tsuid: str, mammogram) -> None:
    ds, pixels = mammogram
    image = _decode(factory.encode(ds, tsuid))
    _check_mammogram_metadata(image, tsuid)
    error = np.abs(image.raw[0].astype(np.int32) - pixels.astype(np.int32))
    assert error.max() <= LOSSY[tsuid]
    assert error.mean() < 16  # below 0.4 % of the 12-bit range


def test_jpeg_baseline_8bit_mammogram_is_close() -> None:
    ds, pixels = factory.mammogram(bits_stored=8)
    image = _decode(factory.encode(ds, uid.JPEGBaseline8Bit))
    assert image.raw.dtype == np.uint8 and image.metadata.bits_stored == 8
    error = np.abs(image.raw[0].astype(np.int32) - pixels.astype(np.int32))
    assert error.max() <= 12 and error.mean() < 3


@pytest.mark.parametrize(
    "tsuid", [uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.JPEGLossless]
)
@pytest.mark.filterwarnings("ignore:The value for the data element:UserWarning")
def test_full_16_bit_values_survive_lossless_compression(tsuid: str) -> None:
    ds, pixels = factory.mammogram(bits_stored=16)
    image = _decode(factory.encode(ds, tsuid))
    assert image.metadata.bits_stored == 16
    np.testing.assert_array_equal(image.raw[0], pixels)
    assert isinstance(image.voi, VoiLut) and image.voi.table.size == 65536  # descriptor 0


@pytest.mark.parametrize(
    "tsuid", [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian]
)
def test_dataset_without_preamble_or_file_meta(tsuid: str, mammogram) -> None:
    ds, pixels = mammogram
    data = factory.to_bytes(factory.encode(ds, tsuid), preamble=False)
    assert data[128:132] != b"DICM"
    image = decode(data)
    np.testing.assert_array_equal(image.raw[0], pixels)
    assert image.metadata.transfer_syntax == uid.UID(tsuid).name


@pytest.mark.parametrize(
    "tsuid",
    [uid.ExplicitVRLittleEndian, uid.JPEGBaseline8Bit, uid.RLELossless, uid.JPEG2000Lossless],
)
def test_multiframe_ultrasound_is_rgb_with_region_spacing(tsuid: str) -> None:
    ds, pixels = factory.multiframe_ultrasound()
    encoded = factory.encode(ds, tsuid)
    image = _decode(encoded)
    md = image.metadata
    assert image.raw.shape == (3, 32, 48, 3) and image.raw.dtype == np.uint8
    assert (md.frames, md.samples_per_pixel, md.modality) == (3, 3, "US")
    assert md.photometric_interpretation == encoded.PhotometricInterpretation
    assert md.pixel_spacing_source is PixelSpacingSource.ULTRASOUND_REGION
    assert md.pixel_spacing_mm == pytest.approx((0.15, 0.2))
    assert image.voi is None and image.invert is False
    error = np.abs(image.raw.astype(np.int32) - pixels.astype(np.int32))
    if tsuid == uid.JPEGBaseline8Bit:
        assert md.photometric_interpretation == "YBR_FULL_422"
        assert error.mean() < 3  # RGB again, not YCbCr: a YCbCr result would be far off
    else:
        assert error.max() == 0


def _ybr_ict_j2k(rgb: np.ndarray) -> Dataset:
    ds = factory.with_attributes(factory.ybr_full_native(rgb), PhotometricInterpretation="RGB")
    ds.PhotometricInterpretation = "YBR_ICT"  # irreversible colour transform, lossy JPEG 2000
    ds.compress(uid.JPEG2000, rgb, j2k_cr=[10], generate_instance_uid=False)
    return ds


@pytest.mark.parametrize(
    ("make", "stored", "max_error"),
    [
        (factory.ybr_full_native, "YBR_FULL", 2),
        (factory.ybr_full_422_native, "YBR_FULL_422", 4),
        (lambda rgb: factory.encode(factory.ybr_full_native(rgb), uid.RLELossless), "YBR_FULL", 2),
        (_ybr_ict_j2k, "YBR_ICT", 8),
        (
            lambda rgb: factory.encode(factory.ybr_full_native(rgb), uid.JPEGLSLossless),
            "YBR_FULL",
            2,
        ),
    ],
    ids=["native-ybr-full", "native-ybr-full-422", "rle-ybr-full", "j2k-ybr-ict", "jpegls-ybr"],
)
def test_every_colour_model_ends_as_rgb(make, stored: str, max_error: int) -> None:
    _, pixels = factory.multiframe_ultrasound(frames=1)
    image = _decode(make(pixels[0]))
    assert image.metadata.photometric_interpretation == stored
    assert image.raw.shape == (1, 32, 48, 3) and image.metadata.samples_per_pixel == 3
    error = np.abs(image.raw[0].astype(np.int32) - pixels[0])
    assert error.max() <= max_error and error.mean() < 3  # YCbCr left as is would be far off


def test_palette_colour_becomes_rgb() -> None:
    ds, expected = factory.palette_colour()
    image = _decode(ds)
    assert image.metadata.photometric_interpretation == "PALETTE COLOR"
    assert image.metadata.samples_per_pixel == 3 and image.metadata.bits_stored == 16
    np.testing.assert_array_equal(image.raw[0], expected)
    shown = image.display()
    assert shown.shape == (16, 20, 3) and shown.dtype == np.float32
    np.testing.assert_allclose(shown, expected / 65535.0, atol=1e-6)


def test_rescale_and_first_window_are_kept() -> None:
    ds, pixels = factory.rescaled()
    image = _decode(ds)
    assert image.raw.dtype == np.int16
    np.testing.assert_array_equal(image.raw[0], pixels)
    assert (image.rescale_slope, image.rescale_intercept) == (2.0, -1024.0)
    np.testing.assert_allclose(image.modality_values(), pixels * 2.0 - 1024.0)
    assert image.voi == Window(center=40.0, width=400.0, function="LINEAR")
    shown = image.display()
    hu = pixels * 2.0 - 1024.0
    assert np.all(shown[hu <= 40 - 0.5 - 199.5] == 0) and np.all(shown[hu > 40 - 0.5 + 199.5] == 1)


def test_window_used_when_no_voi_lut(mammogram) -> None:
    ds, _ = mammogram
    image = _decode(factory.with_attributes(ds, VOILUTSequence=None, VOILUTFunction="SIGMOID"))
    assert image.voi == Window(center=2048.0, width=4096.0, function="SIGMOID")


def test_display_applies_voi_lut_then_monochrome1_inversion(mammogram) -> None:
    ds, pixels = mammogram
    image = _decode(ds)
    table = factory.voi_lut_item(12).LUTData
    expected = 1.0 - np.asarray(table, dtype=np.float64)[pixels] / 65535.0
    np.testing.assert_allclose(image.display(), expected, atol=1e-6)


def test_monochrome1_without_voi_is_inverted_min_max() -> None:
    ds, pixels = factory.mammogram(with_voi_lut=False)
    ds = factory.with_attributes(ds, WindowCenter=None, WindowWidth=None)
    shown = _decode(ds).display()
    low, high = float(pixels.min()), float(pixels.max())
    np.testing.assert_allclose(shown, 1.0 - (pixels - low) / (high - low), atol=1e-6)


def test_patient_identifiers_never_reach_the_record(mammogram) -> None:
    ds, _ = mammogram
    image = _decode(ds)
    text = image.metadata.model_dump_json() + repr(image)
    for marker in factory.PHI_MARKERS:
        assert marker not in text


@pytest.mark.parametrize(
    ("attributes", "view"),
    [
        ({"ViewPosition": "CC"}, ViewPosition.CC),
        ({"ViewPosition": "rmlo"}, ViewPosition.MLO),
        ({"ViewPosition": "XCCL"}, ViewPosition.XCCL),
        ({"ViewPosition": "AP"}, ViewPosition.OTHER),
        ({"ViewPosition": None, "code": ("399162004", "SCT")}, ViewPosition.CC),
        ({"ViewPosition": None, "code": ("R-10226", "SRT")}, ViewPosition.MLO),
        ({"ViewPosition": None, "code": ("399352003", "SCT")}, ViewPosition.LM),
        ({"ViewPosition": None, "code": ("441555000", "SCT")}, ViewPosition.OTHER),
        ({"ViewPosition": None}, ViewPosition.UNKNOWN),
    ],
)
def test_view_position_and_view_code_sequence(mammogram, attributes: dict, view) -> None:
    ds, _ = mammogram
    attributes = dict(attributes)
    code = attributes.pop("code", None)
    ds = factory.with_attributes(ds, **attributes)
    if code is not None:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = code
        item.CodeMeaning = "view"
        ds.ViewCodeSequence = [item]
    assert _decode(ds).metadata.view_position is view


def _frame_anatomy(laterality: str) -> Dataset:
    anatomy, group = Dataset(), Dataset()
    anatomy.FrameLaterality = laterality
    group.FrameAnatomySequence = [anatomy]
    return group


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"ImageLaterality": "R"}, Laterality.RIGHT),
        ({"ImageLaterality": None, "Laterality": "L"}, Laterality.LEFT),
        ({"ImageLaterality": "", "Laterality": ""}, Laterality.UNKNOWN),
        ({"ImageLaterality": None, "functional": "R"}, Laterality.RIGHT),
        ({"ImageLaterality": "B"}, Laterality.BOTH),
    ],
)
def test_laterality_sources(mammogram, attributes: dict, expected: Laterality) -> None:
    ds, _ = mammogram
    attributes = dict(attributes)
    functional = attributes.pop("functional", None)
    ds = factory.with_attributes(ds, **attributes)
    if functional:
        ds.SharedFunctionalGroupsSequence = [_frame_anatomy(functional)]
    assert _decode(ds).metadata.laterality is expected


def _measures(spacing: list[float]) -> Dataset:
    measures, group = Dataset(), Dataset()
    measures.PixelSpacing = spacing
    group.PixelMeasuresSequence = [measures]
    return group


@pytest.mark.parametrize(
    ("attributes", "spacing", "source"),
    [
        ({"PixelSpacing": [0.05, 0.06]}, (0.05, 0.06), PixelSpacingSource.PIXEL_SPACING),
        ({"Modality": "DX"}, (0.1, 0.1), PixelSpacingSource.IMAGER_PIXEL_SPACING),
        (
            {"EstimatedRadiographicMagnificationFactor": None},
            (0.1, 0.1),
            PixelSpacingSource.IMAGER_PIXEL_SPACING,
        ),
        (
            {"ImagerPixelSpacing": None, "NominalScannedPixelSpacing": [0.2, 0.2]},
            (0.2, 0.2),
            PixelSpacingSource.NOMINAL_SCANNED_PIXEL_SPACING,
        ),
        (
            {"ImagerPixelSpacing": [0, 0.1], "functional": [0.3, 0.4]},
            (0.3, 0.4),
            PixelSpacingSource.PIXEL_MEASURES,
        ),
        (
            {"ImagerPixelSpacing": None, "ImagedVolumeWidth": 4.8, "ImagedVolumeHeight": 3.2}
            | {"TotalPixelMatrixColumns": 48, "TotalPixelMatrixRows": 64},
            (0.05, 0.1),
            PixelSpacingSource.TOTAL_PIXEL_MATRIX,
        ),
        ({"ImagerPixelSpacing": None}, None, PixelSpacingSource.UNKNOWN),
    ],
)
def test_pixel_spacing_sources(mammogram, attributes: dict, spacing, source) -> None:
    ds, _ = mammogram
    attributes = dict(attributes)
    functional = attributes.pop("functional", None)
    ds = factory.with_attributes(ds, **attributes)
    if functional:
        ds.SharedFunctionalGroupsSequence = [_measures(functional)]
    md = _decode(ds).metadata
    assert md.pixel_spacing_source is source
    assert md.pixel_spacing_mm == (pytest.approx(spacing) if spacing else None)


def test_malformed_uids_are_dropped(mammogram) -> None:
    ds, _ = mammogram
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = "not a uid"
    ids = _decode(ds).metadata.identifiers
    assert ids is not None
    assert ids.study_instance_uid is None and ids.sop_instance_uid == ds.SOPInstanceUID


# Display transform: PS3.3 C.11.2.1.2 window functions on hand-computed values.


def test_linear_window_matches_the_standard() -> None:
    values = np.array([0, 49.5, 50, 100, 150.5, 151, 300], dtype=np.float32)
    out = window_linear(values, center=100, width=101)
    # y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped: bottom at 49.5, top above 149.5
    np.testing.assert_allclose(out, [0, 0, 0.005, 0.505, 1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(window_linear(values, 100, 1), [0, 0, 0, 1, 1, 1, 1])


def test_linear_exact_and_sigmoid_windows() -> None:
    values = np.array([0, 50, 100, 150, 200], dtype=np.float32)
    np.testing.assert_allclose(window_linear_exact(values, 100, 100), [0, 0, 0.5, 1, 1])
    sig = window_sigmoid(values, 100, 100)
    np.testing.assert_allclose(sig[2], 0.5)
    np.testing.assert_allclose(sig[3], 1 / (1 + np.exp(-2)), rtol=1e-6)
    assert np.all(np.diff(sig) > 0)


def test_constant_deep_image_displays_as_zeros(mammogram) -> None:
    ds, pixels = factory.mammogram(with_voi_lut=False)
    ds = factory.with_attributes(ds, WindowCenter=None, WindowWidth=None)
    ds.PixelData = np.full_like(pixels, 1000).tobytes()
    image = _decode(ds)
    shown = apply_display_transform(image)
    assert shown.dtype == np.float32 and not shown.any()
