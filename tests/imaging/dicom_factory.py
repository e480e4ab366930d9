"""Small DICOM objects built in memory, in every transfer syntax the decoder has to read.

Each builder returns a :class:`pydicom.Dataset` plus, where useful, the pixels it was made from,
so that tests can compare decoded values with the source. Compressed variants are made with
pydicom's own encoders (RLE, JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg) and with
imagecodecs for the JPEG processes pydicom cannot encode (baseline, 12-bit extended, lossless).
Every dataset carries fake patient identifiers (``PHI_MARKERS``) so tests can prove that none of
them reaches a record, a log line or an error message.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence

import imagecodecs
import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder, set_pixel_data

PHI_MARKERS = ("Doe^Jane^PHI", "PHI-0042-XYZ", "19450101")

JPEG_SYNTAXES = {  # encoded with imagecodecs, HTJ2K included
    uid.HTJ2KLossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
}
PYDICOM_ENCODED = {
    uid.RLELossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
}
NATIVE_SYNTAXES = {
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
}
LOSSY_SYNTAXES = {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000}


def base_dataset(sop_class: str, modality: str) -> Dataset:
    """A dataset with file meta, UIDs and fake patient identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = modality
    ds.PatientName = PHI_MARKERS[0]
    ds.PatientID = PHI_MARKERS[1]
    ds.PatientBirthDate = PHI_MARKERS[2]
    return ds


def mammogram_pixels(rows: int = 64, columns: int = 48, bits_stored: int = 12) -> np.ndarray:
    """A deterministic ``(rows, columns)`` pattern over the stored bit range (uint8 up to 8
    bits, else uint16)."""
    top = (1 << bits_stored) - 1
    yy, xx = np.mgrid[0:rows, 0:columns]
    ramp = (xx * top) // max(columns - 1, 1)
    noise = np.random.default_rng(7).integers(0, 64, size=(rows, columns))
    values = np.clip(ramp + noise * top // 4095 - 32 * top // 4095 + (yy % 5) * 3, 0, top)
    return values.astype(np.uint8 if bits_stored <= 8 else np.uint16)


def voi_lut_item(bits_stored: int = 12) -> Dataset:
    """A VOI LUT Sequence item: a square-root curve over the stored range, 16-bit output."""
    entries = 1 << bits_stored
    table = np.sqrt(np.arange(entries) / (entries - 1)) * 65535
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [entries if entries < 65536 else 0, 0, 16]))
    item.add(DataElement(0x00283006, "US", [int(v) for v in np.round(table)]))
    item.LUTExplanation = "SQRT"
    return item


def mammogram(
    *,
    bits_stored: int = 12,
    rows: int = 64,
    columns: int = 48,
    photometric: str = "MONOCHROME1",
    with_voi_lut: bool = True,
) -> tuple[Dataset, np.ndarray]:
    """An MG For Presentation image (native Explicit VR Little Endian) and its pixels.

    16 bits allocated unless ``bits_stored`` is 8 or less (then 8, as JPEG Baseline needs).
    """
    ds = base_dataset(uid.DigitalMammographyXRayImageStorageForPresentation, "MG")
    pixels = mammogram_pixels(rows, columns, bits_stored)
    set_pixel_data(ds, pixels, photometric, bits_stored, generate_instance_uid=False)
    ds.ImageLaterality = "L"
    ds.ViewPosition = "MLO"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    if with_voi_lut:
        ds.VOILUTSequence = [voi_lut_item(bits_stored)]
    return ds, pixels


def multiframe_ultrasound(
    frames: int = 3, rows: int = 32, columns: int = 48
) -> tuple[Dataset, np.ndarray]:
    """A native RGB US Multi-frame image with a calibrated ultrasound region, and its pixels."""
    ds = base_dataset(uid.UltrasoundMultiFrameImageStorage, "US")
    yy, xx = np.mgrid[0:rows, 0:columns]
    pixels = np.zeros((frames, rows, columns, 3), dtype=np.uint8)
    for f in range(frames):
        pixels[f, ..., 0] = xx * 4 + f * 20
        pixels[f, ..., 1] = yy * 6
        pixels[f, ..., 2] = 100 + f * 30
    set_pixel_data(ds, pixels, "RGB", 8, generate_instance_uid=False)
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = columns - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.02  # cm per pixel -> 0.2 mm
    region.PhysicalDeltaY = 0.015
    ds.SequenceOfUltrasoundRegions = [region]
    ds.FrameTime = 33.3
    return ds, pixels


def palette_colour() -> tuple[Dataset, np.ndarray]:
    """An 8-bit PALETTE COLOR image with 16-bit LUTs, and the RGB it should decode to."""
    ds = base_dataset(uid.SecondaryCaptureImageStorage, "OT")
    indices = (np.arange(16 * 20).reshape(16, 20) % 256).astype(np.uint8)
    set_pixel_data(ds, indices, "PALETTE COLOR", 8, generate_instance_uid=False)
    ramp = np.arange(256, dtype=np.uint16)
    luts = {"Red": ramp * 257, "Green": (255 - ramp) * 257, "Blue": (ramp // 2) * 257}
    for colour, lut in luts.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    expected = np.stack([luts["Red"][indices], luts["Green"][indices], luts["Blue"][indices]], -1)
    return ds, expected


def rescaled(slope: float = 2.0, intercept: float = -1024.0) -> tuple[Dataset, np.ndarray]:
    """A signed 16-bit CT-like image with Rescale Slope/Intercept and a window."""
    ds = base_dataset(uid.CTImageStorage, "CT")
    pixels = (np.arange(24 * 24).reshape(24, 24) * 3 - 700).astype(np.int16)
    set_pixel_data(ds, pixels, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.WindowCenter = [40.0, 400.0]
    ds.WindowWidth = [400.0, 1500.0]
    ds.VOILUTFunction = "LINEAR"
    return ds, pixels


def ybr_full_native(rgb: np.ndarray) -> Dataset:
    """A native YBR_FULL image made from ``rgb`` (H, W, 3)."""
    ds = base_dataset(uid.SecondaryCaptureImageStorage, "OT")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    set_pixel_data(ds, ybr, "RGB", 8, generate_instance_uid=False)
    ds.PhotometricInterpretation = "YBR_FULL"
    return ds


def ybr_full_422_native(rgb: np.ndarray) -> Dataset:
    """A native YBR_FULL_422 image (PS3.3 C.7.6.3.1.2): Y Y Cb Cr per pair of pixels."""
    ds = ybr_full_native(rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint16)
    pairs = ybr.reshape(ybr.shape[0], ybr.shape[1] // 2, 2, 3)
    chroma = (pairs[..., 1:].sum(axis=2) + 1) // 2  # (H, W/2, 2): Cb, Cr averaged per pair
    packed = np.concatenate([pairs[..., 0], chroma], axis=-1).astype(np.uint8)
    ds.PixelData = packed.tobytes()
    ds.PhotometricInterpretation = "YBR_FULL_422"
    return ds


def _jpeg_frames(ds: Dataset, tsuid: str, arr: np.ndarray) -> list[bytes]:
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    out: list[bytes] = []
    for frame in frames:
        if tsuid == uid.JPEGBaseline8Bit:
            if frame.ndim == 3:
                out.append(imagecodecs.jpeg8_encode(frame, level=95, subsampling="422"))
            else:
                out.append(imagecodecs.jpeg8_encode(frame, level=95))
        elif tsuid == uid.HTJ2KLossless:
            out.append(imagecodecs.htj2k_encode(frame))
        elif tsuid == uid.JPEGExtended12Bit:
            out.append(imagecodecs.jpeg8_encode(frame, level=95, bitspersample=12))
        elif tsuid == uid.JPEGLosslessSV1:
            bits = int(ds.BitsStored)
            out.append(
                imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1, bitspersample=bits)
            )
        else:  # JPEG Lossless process 14, any predictor
            bits = int(ds.BitsStored)
            out.append(
                imagecodecs.jpeg8_encode(frame, lossless=True, predictor=6, bitspersample=bits)
            )
    return out


def encode(ds: Dataset, tsuid: str) -> Dataset:
    """A copy of native ``ds`` with its pixel data in transfer syntax ``tsuid``."""
    result = copy.deepcopy(ds)
    tsuid = uid.UID(tsuid)
    if tsuid in NATIVE_SYNTAXES:
        result.file_meta.TransferSyntaxUID = tsuid
        return result
    source_syntax = ds.file_meta.TransferSyntaxUID
    arr, _ = get_decoder(source_syntax).as_array(ds, raw=True)  # stored values, YBR kept YBR
    if tsuid in PYDICOM_ENCODED:
        kwargs: dict[str, object] = {"generate_instance_uid": False}
        if tsuid == uid.JPEGLSNearLossless:
            kwargs["jls_error"] = 2
        if tsuid == uid.JPEG2000:
            kwargs["j2k_cr"] = [8]
        result.compress(tsuid, arr, **kwargs)  # type: ignore[arg-type]
        return result
    if tsuid not in JPEG_SYNTAXES:
        raise ValueError(f"the factory cannot encode {tsuid.name}")
    if tsuid == uid.JPEGBaseline8Bit and ds.BitsAllocated != 8:
        raise ValueError("JPEG Baseline needs 8-bit data")
    result.PixelData = encapsulate(_jpeg_frames(ds, tsuid, arr))
    result["PixelData"].VR = "OB"
    result.file_meta.TransferSyntaxUID = tsuid
    if tsuid == uid.JPEGBaseline8Bit and result.SamplesPerPixel == 3:
        result.PhotometricInterpretation = "YBR_FULL_422"  # JFIF YCbCr, chroma 4:2:2
    if tsuid in LOSSY_SYNTAXES:
        result.LossyImageCompression = "01"
    return result


def to_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Serialise ``ds``: a DICOM file, or with ``preamble=False`` a bare dataset (no meta)."""
    buffer = io.BytesIO()
    tsuid = ds.file_meta.TransferSyntaxUID
    if tsuid == uid.ExplicitVRBigEndian:
        ds = _as_big_endian(ds)
    if not preamble:
        bare = copy.deepcopy(ds)
        del bare.file_meta
        bare.preamble = None
        pydicom.dcmwrite(
            buffer,
            bare,
            implicit_vr=tsuid == uid.ImplicitVRLittleEndian,
            little_endian=tsuid != uid.ExplicitVRBigEndian,
        )
        return buffer.getvalue()
    if not tsuid.is_transfer_syntax:  # unknown or private: pydicom needs the encoding spelled out
        labelled = copy.deepcopy(ds)
        labelled.preamble = b"\x00" * 128
        pydicom.dcmwrite(
            buffer, labelled, implicit_vr=False, little_endian=True, force_encoding=True
        )
        return buffer.getvalue()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def relabel_transfer_syntax(data: bytes, old: str, new: str) -> bytes:
    """Change the Transfer Syntax UID of a written file to another of the same length."""
    old_value, new_value = old.encode(), new.encode()
    if len(old_value) != len(new_value):
        raise ValueError("the UIDs must have the same length")
    end = 132 + 12 + int.from_bytes(data[140:144], "little")  # after the file meta group
    return data[:end].replace(old_value, new_value, 1) + data[end:]


def _as_big_endian(ds: Dataset) -> Dataset:
    """Swap 16-bit pixel bytes: pydicom writes OW values as they are."""
    result = copy.deepcopy(ds)
    if int(result.BitsAllocated) == 16:
        result.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
    return result


def non_image(kind: str) -> Dataset:
    """A non-image object: ``sr``, ``kos``, ``gsps``, ``seg`` (with Pixel Data) or ``ann``."""
    sop = {
        "sr": uid.ComprehensiveSRStorage,
        "kos": uid.KeyObjectSelectionDocumentStorage,
        "gsps": uid.GrayscaleSoftcopyPresentationStateStorage,
        "seg": uid.SegmentationStorage,
        "ann": uid.MicroscopyBulkSimpleAnnotationsStorage,
        "pdf": uid.EncapsulatedPDFStorage,
    }[kind]
    modality = {"sr": "SR", "kos": "KO", "gsps": "PR", "seg": "SEG", "ann": "ANN", "pdf": "DOC"}
    ds = base_dataset(sop, modality[kind])
    if kind == "seg":
        mask = np.zeros((2, 8, 8), dtype=np.uint8)
        mask[:, 2:6, 2:6] = 1
        set_pixel_data(ds, mask, "MONOCHROME2", 8, generate_instance_uid=False)
        ds.SegmentationType = "BINARY"
    return ds


def with_attributes(ds: Dataset, **attributes: object) -> Dataset:
    """A copy of ``ds`` with attributes set (``None`` deletes one)."""
    result = copy.deepcopy(ds)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in result:
                delattr(result, keyword)
        else:
            setattr(result, keyword, value)
    return result


def fake_encapsulated(
    ds: Dataset, tsuid: str, fragments: Sequence[bytes] = (b"\x00" * 64,)
) -> Dataset:
    """A copy of ``ds`` that claims transfer syntax ``tsuid`` with meaningless encapsulated data."""
    result = copy.deepcopy(ds)
    result.PixelData = encapsulate(list(fragments))
    result["PixelData"].VR = "OB"
    result.file_meta.TransferSyntaxUID = tsuid
    return result
