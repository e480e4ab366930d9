"""Synthetic CBIS-DDSM in the TCIA DICOM layout and in the Kaggle JPEG layout.

Both reproduce what makes the real copies awkward (see ``cbis_ddsm_files``): case-CSV paths
whose UIDs and file names do not match the files on disk, ROI masks and cropped images sharing
one series in an unpredictable order, blank ``SeriesDescription`` cells, a stray line break in
a path, ``breast_density`` vs ``breast density``, and images with several abnormalities of
different pathology.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from training.data.synthetic_draw import (
    add_calcifications,
    add_mass,
    fill_mask,
    lesion_polygon,
    mammogram_background,
)

UidFn = Callable[[int], str]  # k -> the k-th UID derived from a seed and a name
SHAPE = (192, 128)  # (rows, columns) of a synthetic full mammogram
_UID_PREFIX = "1.2.826.0.1.3680043.10.1427."
_COLUMNS = {
    "mass": [
        "patient_id",
        "breast_density",
        "left or right breast",
        "image view",
        "abnormality id",
        "abnormality type",
        "mass shape",
        "mass margins",
        "assessment",
        "pathology",
        "subtlety",
        "image file path",
        "cropped image file path",
        "ROI mask file path",
    ],
    "calc": [
        "patient_id",
        "breast density",
        "left or right breast",
        "image view",
        "abnormality id",
        "abnormality type",
        "calc type",
        "calc distribution",
        "assessment",
        "pathology",
        "subtlety",
        "image file path",
        "cropped image file path",
        "ROI mask file path",
    ],
}
_INFO_COLUMNS = [
    "file_path",
    "image_path",
    "BitsAllocated",
    "Columns",
    "Laterality",
    "Modality",
    "PatientID",
    "PhotometricInterpretation",
    "Rows",
    "SeriesDescription",
    "SeriesInstanceUID",
    "StudyInstanceUID",
]


@dataclass
class _Image:
    kind: str  # mass | calc
    subset: str  # train | test
    patient: str
    side: str
    view: str
    density: int
    pixels: np.ndarray  # (H, W) float32 in [0, 1]
    lesions: list[tuple[int, str, np.ndarray]]  # (abnormality id, pathology, mask 0/255)

    @property
    def folder(self) -> str:
        kind = "Mass" if self.kind == "mass" else "Calc"
        subset = "Training" if self.subset == "train" else "Test"
        return f"{kind}-{subset}_{self.patient}_{self.side}_{self.view}"


def make_cbis_ddsm_dicom(root: Path, n: int = 8, seed: int = 0) -> Path:
    """TCIA layout: ``CBIS-DDSM/<folder>/<study>/<series>/1-N.dcm`` and the four case CSVs.

    Returns ``root`` (the folder holding ``CBIS-DDSM/`` and the CSVs).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows: dict[tuple[str, str], list[list[Any]]] = {}
    for image in _plan(rng, n):
        uid = _uids(seed, image.folder)
        _write_dicom(root, image.folder, uid, [(image.pixels, True, "full mammogram images")])
        image_ref = f"{image.folder}/{uid(9)}/{uid(10)}/000000.dcm"
        for number, pathology, mask in image.lesions:
            roi = f"{image.folder}_{number}"
            files = [(mask / 255.0, False, "ROI mask images")]
            files.append((_crop(image.pixels, mask), True, "cropped images"))
            one_series = number % 2 == 1
            if one_series and rng.random() < 0.5:
                files.reverse()  # 1-1.dcm may be the crop or the mask
            _write_dicom(root, roi, _uids(seed, roi), files, one_series=one_series)
            rid = _uids(seed, roi + "csv")  # the CSV's UIDs are not those on disk
            crop_ref = f"{roi}/{rid(1)}/{rid(2)}/000001.dcm\n"  # a stray line break, as in TCIA
            refs = [image_ref, crop_ref, f"{roi}/{rid(1)}/{rid(3)}/000000.dcm"]
            rows.setdefault((image.kind, image.subset), []).append(
                _case_row(image, number, pathology, refs)
            )
    _write_case_csvs(root, rows)
    return root


def make_cbis_ddsm_jpeg(root: Path, n: int = 8, seed: int = 0, case_paths: str = "dicom") -> Path:
    """Kaggle layout: ``jpeg/<series uid>/1-N.jpg``, ``csv/dicom_info.csv``, ``csv/<case CSVs>``.

    ``case_paths``: ``dicom`` writes the case CSVs with TCIA paths (as the Kaggle copy ships
    them), ``jpeg`` with ``CBIS-DDSM/jpeg/...`` paths (as some re-processed copies do, one row
    with mask and crop swapped). Returns ``root`` (the folder holding ``csv/`` and ``jpeg/``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    info: list[dict[str, Any]] = []
    rows: dict[tuple[str, str], list[list[Any]]] = {}
    for image in _plan(rng, n):
        uid = _uids(seed, image.folder)
        full = _write_jpeg(root, uid(2), 1, image.pixels)
        info.append(_info(full, image.folder, uid, "full mammogram images", image.pixels))
        for number, pathology, mask in image.lesions:
            roi = f"{image.folder}_{number}"
            rid = _uids(seed, roi)
            crop = _crop(image.pixels, mask)
            crop_series = rid(2) if number % 2 == 1 else rid(3)  # shared series or not
            mask_path = _write_jpeg(root, rid(2), 1, mask / 255.0)
            crop_path = _write_jpeg(root, crop_series, 2, crop)
            blank = number % 3 == 0  # some descriptions are missing in dicom_info.csv
            info.append(_info(mask_path, roi, rid, "" if blank else "ROI mask images", mask))
            info.append(_info(crop_path, roi, rid, "" if blank else "cropped images", crop))
            if case_paths == "jpeg":
                swap = number == 2
                refs = [full, mask_path if swap else crop_path, crop_path if swap else mask_path]
            else:
                refs = [f"{image.folder}/{uid(9)}/{uid(10)}/000000.dcm"]
                refs += [f"{roi}/{rid(9)}/{rid(10)}/000000.dcm"]
                refs += [f"{roi}/{rid(9)}/{rid(11)}/000001.dcm"]
            rows.setdefault((image.kind, image.subset), []).append(
                _case_row(image, number, pathology, refs)
            )
    _write_csv(root / "csv" / "dicom_info.csv", _INFO_COLUMNS, [list(r.values()) for r in info])
    _write_case_csvs(root / "csv", rows)
    return root


def _plan(rng: np.random.Generator, n: int) -> list[_Image]:
    """``n`` images over all four CSVs; patients have CC and MLO, some images two lesions."""
    images = []
    for index in range(n):
        pair = index // 2  # one patient, one breast, CC and MLO
        kind, subset = ("mass", "calc")[(pair // 2) % 2], ("train", "test")[pair % 2]
        patient, side = f"P_{pair * 7 + 1:05d}", ("LEFT", "RIGHT")[pair % 2]
        view = ("CC", "MLO")[index % 2]
        pixels, breast = mammogram_background(rng, SHAPE, breast_on_left=side == "LEFT")
        count = 2 if index % 3 == 0 else 1
        lesions = []
        for number in range(1, count + 1):
            malignant = bool((index + number) % 2)
            benign = ("BENIGN", "BENIGN_WITHOUT_CALLBACK")[index % 2]
            pathology = "MALIGNANT" if malignant else benign
            centre = _spot(rng, breast, side, number)
            radius = float(rng.uniform(9, 14))
            if kind == "mass":
                mask = fill_mask(SHAPE, lesion_polygon(rng, centre, radius, malignant))
                add_mass(pixels, mask)
            else:
                mask = add_calcifications(rng, pixels, centre, radius, malignant)
            lesions.append((number, pathology, mask))
        images.append(_Image(kind, subset, patient, side, view, 1 + index % 4, pixels, lesions))
    return images


def _spot(
    rng: np.random.Generator, breast: np.ndarray, side: str, number: int
) -> tuple[float, float]:
    h, w = breast.shape
    x = w * (0.25 if side == "LEFT" else 0.75)
    y = h * (0.3 + 0.35 * (number - 1)) + rng.uniform(-8, 8)
    return float(x + rng.uniform(-6, 6)), float(y)


def _crop(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    top, left = max(0, ys.min() - 6), max(0, xs.min() - 6)
    return pixels[top : ys.max() + 7, left : xs.max() + 7]


def _uids(seed: int, name: str) -> UidFn:
    def uid(k: int) -> str:
        return str(generate_uid(_UID_PREFIX, entropy_srcs=[str(seed), name, str(k)]))

    return uid


def _case_row(image: _Image, number: int, pathology: str, refs: list[str]) -> list[Any]:
    descriptors = (
        ["OVAL", "CIRCUMSCRIBED"] if image.kind == "mass" else ["PLEOMORPHIC", "CLUSTERED"]
    )
    kind = "mass" if image.kind == "mass" else "calcification"
    assessment = 5 if pathology == "MALIGNANT" else 3
    return [
        image.patient,
        image.density,
        image.side,
        image.view,
        number,
        kind,
        *descriptors,
        assessment,
        pathology,
        3,
        *refs,
    ]


def _write_case_csvs(folder: Path, rows: dict[tuple[str, str], list[list[Any]]]) -> None:
    for kind in ("mass", "calc"):
        for subset in ("train", "test"):
            path = folder / f"{kind}_case_description_{subset}_set.csv"
            _write_csv(path, _COLUMNS[kind], rows.get((kind, subset), []))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_dicom(
    root: Path,
    folder: str,
    uid: UidFn,
    files: list[tuple[np.ndarray, bool, str]],
    one_series: bool = True,
) -> None:
    """``files``: (pixels in [0, 1], 16-bit?, series description), numbered 1-1, 1-2 ..."""
    for k, (pixels, deep, description) in enumerate(files):
        series = uid(2) if one_series else uid(2 + k)
        path = root / "CBIS-DDSM" / folder / uid(1) / series / f"1-{k + 1 if one_series else 1}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = UID(uid(20 + k))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid(20 + k)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1), series
        ds.PatientID, ds.Modality, ds.SeriesDescription = folder, "MG", description
        ds.Rows, ds.Columns, ds.SamplesPerPixel = pixels.shape[0], pixels.shape[1], 1
        ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
        bits, dtype = (16, np.uint16) if deep else (8, np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelData = (pixels * np.iinfo(dtype).max).round().astype(dtype).tobytes()
        ds.save_as(path, enforce_file_format=True)


def _write_jpeg(root: Path, series: str, number: int, pixels: np.ndarray) -> str:
    """Write ``jpeg/<series>/1-<number>.jpg``; return its path as dicom_info.csv lists it."""
    path = root / "jpeg" / series / f"1-{number}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return f"CBIS-DDSM/jpeg/{series}/1-{number}.jpg"


def _info(
    path: str, folder: str, uid: UidFn, description: str, pixels: np.ndarray
) -> dict[str, Any]:
    series = path.split("/")[2]
    side = "L" if "_LEFT_" in folder else "R"
    return {
        "file_path": f"CBIS-DDSM/dicom/{uid(30)}.dcm",
        "image_path": path,
        "BitsAllocated": 8,
        "Columns": pixels.shape[1],
        "Laterality": side,
        "Modality": "MG",
        "PatientID": folder,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": pixels.shape[0],
        "SeriesDescription": description,
        "SeriesInstanceUID": series,
        "StudyInstanceUID": uid(1),
    }


COCO_GRID = (160, 160)  # the COCO copy's square grid (the real one: 800 x 800)
_COCO_MASS_COLUMNS = _COLUMNS["mass"][:11]  # the per-mass CSV without its three file paths
_COCO_LABEL_COLUMNS = [
    "split",
    "file",
    "patient_id",
    "side",
    "view",
    "n_boxes",
    "pathologies",
    "image_label",
    "max_assessment",
    "breast_density",
]


def make_cbis_ddsm_coco(root: Path, n_patients: int = 6, seed: int = 0) -> Path:
    """The COCO copy of CBIS-DDSM masses (as ``../shared/data/cbis-ddsm-mass``).

    ``train/<patient>_<side>_<view>.jpg`` drawn portrait (``SHAPE``) and squashed to the square
    ``COCO_GRID`` without keeping the aspect ratio, ``train/_annotations.coco.json`` with each
    mass's box on the squashed grid, ``labels_image_level.csv`` and
    ``mass_case_description_train_set.csv``. Even patients have LEFT CC and MLO, odd ones RIGHT
    MLO; every third film holds two masses of different pathology whose boxes are listed in the
    reverse of the CSV's order. Returns ``root`` (the folder holding ``train/``).
    """
    root = Path(root)
    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco: dict[str, list[dict[str, Any]]] = {
        "categories": [{"id": 0, "name": "Mass", "supercategory": "none"}],
        "images": [],
        "annotations": [],
    }
    labels: list[list[Any]] = []
    masses: list[list[Any]] = []
    sy, sx = COCO_GRID[0] / SHAPE[0], COCO_GRID[1] / SHAPE[1]
    films = [
        (p, side, view)
        for p in range(1, n_patients + 1)
        for side, views in ((("LEFT", ("CC", "MLO")),) if p % 2 == 0 else (("RIGHT", ("MLO",)),))
        for view in views
    ]
    for index, (p, side, view) in enumerate(films):
        patient, name = f"P_{p:05d}", f"{p:05d}_{side}_{view}.jpg"
        pixels, breast = mammogram_background(rng, SHAPE, breast_on_left=side == "LEFT")
        boxes, pathologies = [], []
        density = 1 + index % 4
        for number in range(1, 3 if index % 3 == 0 else 2):
            malignant = bool((index + number) % 2)
            polygon = lesion_polygon(rng, _spot(rng, breast, side, number), 12.0, malignant)
            add_mass(pixels, fill_mask(SHAPE, polygon))
            x, y, w, h = cv2.boundingRect(polygon)
            boxes.append([x * sx, y * sy, w * sx, h * sy])
            pathology = "MALIGNANT" if malignant else "BENIGN"
            pathologies.append(pathology)
            shape = "IRREGULAR" if malignant else "OVAL"
            masses.append([patient, density, side, view, number, "mass", shape, "CIRCUMSCRIBED"])
            masses[-1] += [4 if malignant else 3, pathology, 3]
        squashed = cv2.resize(pixels, COCO_GRID[::-1], interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name), (squashed * 255).round().astype(np.uint8))
        image_id = len(films) - 1 - index  # ids in another order than the files
        coco["images"].append(
            {"id": image_id, "file_name": name, "height": COCO_GRID[0], "width": COCO_GRID[1]}
        )
        for box in reversed(boxes):  # not the CSV's order
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": image_id,
                    "category_id": 0,
                    "bbox": [round(v, 2) for v in box],
                    "area": round(box[2] * box[3], 2),
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
        malignant_film = "MALIGNANT" in pathologies
        labels.append(
            ["train", name, patient, side, view, len(boxes), ";".join(pathologies),
             "malignant" if malignant_film else "benign", 4 if malignant_film else 3, density]
        )  # fmt: skip
    (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    _write_csv(root / "labels_image_level.csv", _COCO_LABEL_COLUMNS, labels)
    _write_csv(root / "mass_case_description_train_set.csv", _COCO_MASS_COLUMNS, masses)
    return root
