"""The typed image record every decoder returns.

``DecodedImage.raw`` keeps the stored values (after colour conversion to RGB, before any rescale
or windowing); ``modality_values()`` applies the Modality LUT (rescale slope/intercept);
``display()`` applies the VOI LUT or window (DICOM PS3.3 C.11.2) and MONOCHROME1 inversion and
returns values in [0, 1]. Patient identifiers are never read into the record: only study, series
and instance UIDs, kept apart in ``DicomIdentifiers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict


class ImageFormat(StrEnum):
    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"
    PGM = "pgm"
    TIFF = "tiff"


class Laterality(StrEnum):
    """(0020,0062) Image Laterality / (0020,0060) Laterality."""

    LEFT = "L"
    RIGHT = "R"
    BOTH = "B"
    UNKNOWN = "U"


class ViewPosition(StrEnum):
    """Mammography views, (0018,5101) View Position or the View Code Sequence (CID 4014)."""

    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"
    LMO = "LMO"
    XCCL = "XCCL"
    XCCM = "XCCM"
    FB = "FB"
    SIO = "SIO"
    OTHER = "OTHER"
    UNKNOWN = "UNKNOWN"


class PixelSpacingSource(StrEnum):
    """Where ``pixel_spacing_mm`` came from."""

    PIXEL_SPACING = "PixelSpacing"
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"
    ULTRASOUND_REGION = "SequenceOfUltrasoundRegions"
    NOMINAL_SCANNED_PIXEL_SPACING = "NominalScannedPixelSpacing"
    PIXEL_MEASURES = "PixelMeasuresSequence"  # enhanced / slide microscopy functional groups
    TOTAL_PIXEL_MATRIX = "TotalPixelMatrix"  # slide microscopy: Imaged Volume / matrix size
    RASTER_RESOLUTION = "RasterResolution"  # PNG pHYs / TIFF resolution tags
    UNKNOWN = "unknown"


class DicomIdentifiers(BaseModel):
    """Object identity without patient data: UIDs only."""

    model_config = ConfigDict(frozen=True)

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    transfer_syntax_uid: str | None = None


class ImageMetadata(BaseModel):
    """What ``breastdx inspect`` prints; safe to log (no patient identifiers)."""

    model_config = ConfigDict(frozen=True)

    format: ImageFormat
    modality: str | None = None  # DICOM (0008,0060); None for raster formats
    sop_class: str | None = (
        None  # keyword, e.g. "DigitalMammographyXRayImageStorageForPresentation"
    )
    transfer_syntax: str | None = None  # name, e.g. "JPEG 2000 Image Compression (Lossless Only)"
    rows: int
    columns: int
    frames: int = 1
    samples_per_pixel: int = 1  # of the decoded record: 1 (grey) or 3 (RGB)
    bits_allocated: int = 8
    bits_stored: int = 8
    photometric_interpretation: (
        str  # as stored, e.g. "MONOCHROME1", "YBR_FULL_422", "PALETTE COLOR"
    )
    pixel_spacing_mm: tuple[float, float] | None = None  # (row spacing, column spacing)
    pixel_spacing_source: PixelSpacingSource = PixelSpacingSource.UNKNOWN
    laterality: Laterality = Laterality.UNKNOWN
    view_position: ViewPosition = ViewPosition.UNKNOWN
    body_part: str | None = None  # (0018,0015) or the Anatomic Region Sequence, upper case
    identifiers: DicomIdentifiers | None = None


@dataclass(frozen=True)
class Window:
    """A VOI window, (0028,1050) Window Center / (0028,1051) Window Width."""

    center: float
    width: float
    function: str = "LINEAR"  # (0028,1056) VOI LUT Function: LINEAR, LINEAR_EXACT, SIGMOID


@dataclass(frozen=True, eq=False)
class VoiLut:
    """A VOI LUT from (0028,3010) VOI LUT Sequence: descriptor and table."""

    first_mapped: int
    bits: int
    table: np.ndarray  # (N,) uint16


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Decoded pixels plus metadata.

    Attributes:
        metadata: format, geometry and acquisition facts.
        raw: stored values, ``(F, H, W)`` for grey or ``(F, H, W, 3)`` RGB; every frame.
        rescale_slope: Modality LUT slope (1.0 when absent).
        rescale_intercept: Modality LUT intercept (0.0 when absent).
        voi: the first VOI LUT or window, or None (then ``display`` uses the value range).
        invert: True for MONOCHROME1 (low values are white).
    """

    metadata: ImageMetadata
    raw: np.ndarray
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    voi: Window | VoiLut | None = None
    invert: bool = False

    @property
    def frames(self) -> int:
        return int(self.raw.shape[0])

    @property
    def is_colour(self) -> bool:
        return self.raw.ndim == 4

    def frame(self, index: int = 0) -> np.ndarray:
        """Stored values of one frame: ``(H, W)`` or ``(H, W, 3)``."""
        if not -self.frames <= index < self.frames:
            raise IndexError(f"frame {index} out of range: the image has {self.frames} frame(s)")
        return self.raw[index]

    def modality_values(self, index: int = 0) -> np.ndarray:
        """One frame through the Modality LUT (PS3.3 C.11.1), float32."""
        values = self.frame(index).astype(np.float32)
        if self.rescale_slope != 1.0 or self.rescale_intercept != 0.0:
            values = values * np.float32(self.rescale_slope) + np.float32(self.rescale_intercept)
        return values

    def display(self, index: int = 0) -> np.ndarray:
        """One frame ready for display and models: float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``.

        Applies the VOI LUT or window (PS3.3 C.11.2.1.2) where present, otherwise scales the
        value range (colour and 8-bit data by their nominal range, deeper grey data by the
        frame's min and max); MONOCHROME1 is inverted so that high values are always bright.
        """
        from imaging.voi import apply_display_transform  # local: keeps this module light

        return apply_display_transform(self, index)
