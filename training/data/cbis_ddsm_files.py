"""Finding CBIS-DDSM's files on disk, for the TCIA DICOM download and the Kaggle JPEG copy.

The case-description CSVs name files as ``<folder>/<study uid>/<series uid>/000000.dcm``, but
the TCIA download stores ``CBIS-DDSM/<folder>/<study dir>/<series dir>/1-1.dcm`` (other UIDs or
descriptive names, ``1-1``/``1-2`` numbering) and the JPEG copy stores
``jpeg/<series uid>/1-N.jpg``, indexed by ``csv/dicom_info.csv`` (``PatientID`` = the folder
name, ``SeriesDescription`` = ``full mammogram images`` | ``ROI mask images`` |
``cropped images``, sometimes blank). So a path from the CSV is used as it is where that file
exists, and otherwise only its first component, the folder name, is used.

Rules (``pick_full``, ``pick_mask``):
- full mammogram: the file of the image folder described ``full mammogram images``, else the
  largest one;
- ROI mask: among the files of the ROI and cropped-image folders of one abnormality, the one
  with the full mammogram's rows and columns; where none or several have them (a few masks are
  some pixels off), the one whose pixels are binary (DICOM: two values; JPEG: >= 99 % of
  pixels within 24 of 0 or 255), the largest if several; the cropped image is another file of
  those folders (smaller, grey-valued). Descriptions are not trusted for masks: the mask and
  the crop often share one series and so one description.
"""

from __future__ import annotations

import csv
import re
from abc import ABC, abstractmethod
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom

from training.data.records import DatasetFormatError, DatasetLayoutError

DATASET = "cbis_ddsm"
FULL = "full mammogram images"
_FOLDER_RE = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")
_INFO_COLUMNS = ("image_path", "PatientID")


class CbisFiles(ABC):
    """Files of one CBIS-DDSM copy, looked up by the paths the case CSVs list."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def candidates(self, ref: str) -> list[Path]:
        """The file ``ref`` names if it exists, else every file of its folder (maybe none)."""
        if not ref:
            return []
        for path in (self.root / ref, self.root / ref.removeprefix("CBIS-DDSM/")):
            if path.is_file():
                return [path]
        folder = ref.split("/")[0]
        if not _FOLDER_RE.match(folder):
            raise DatasetLayoutError(
                f"file {self.root / ref} listed in a case CSV is missing",
                dataset=DATASET,
                path=str(self.root / ref),
            )
        return self.folder_files(folder)

    @abstractmethod
    def folder_files(self, folder: str) -> list[Path]:
        """Every image file of a release folder such as ``Mass-Training_P_00001_LEFT_CC_1``."""

    @abstractmethod
    def description(self, path: Path) -> str:
        """The series description of a file, ``""`` where unknown."""

    @abstractmethod
    def shape(self, path: Path) -> tuple[int, int]:
        """``(rows, columns)`` without decoding the pixels where the format allows."""

    @abstractmethod
    def is_binary(self, path: Path) -> bool:
        """True where the pixels hold a mask (two levels), False for a grey image."""


class DicomFiles(CbisFiles):
    """The TCIA download: ``<root>/CBIS-DDSM/<folder>/**/*.dcm``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.base = self.root / "CBIS-DDSM"
        if not self.base.is_dir():
            raise DatasetLayoutError(
                f"missing folder {self.base}: the TCIA download's image folders",
                dataset=DATASET,
                path=str(self.base),
            )
        self._index: dict[str, list[Path]] | None = None

    def folder_files(self, folder: str) -> list[Path]:
        if self._index is None:
            self._index = {
                d.name: sorted(d.rglob("*.dcm")) for d in sorted(self.base.iterdir()) if d.is_dir()
            }
        return self._index.get(folder, [])

    def description(self, path: Path) -> str:
        return str(_dicom_header(path).get("SeriesDescription", "")).strip().lower()

    def shape(self, path: Path) -> tuple[int, int]:
        header = _dicom_header(path)
        return int(header.Rows), int(header.Columns)

    def is_binary(self, path: Path) -> bool:
        pixels = pydicom.dcmread(path).pixel_array
        return bool(np.unique(pixels).size <= 2)


class JpegFiles(CbisFiles):
    """The JPEG re-release: ``<root>/jpeg/<series uid>/1-N.jpg``, ``<root>/csv/dicom_info.csv``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        info = self.root / "csv" / "dicom_info.csv"
        if not info.is_file() or not (self.root / "jpeg").is_dir():
            raise DatasetLayoutError(
                f"missing {info} or {self.root / 'jpeg'}/: the JPEG re-release's index and images",
                dataset=DATASET,
                path=str(self.root),
            )
        self._by_folder: dict[str, list[Path]] = {}
        self._descriptions: dict[Path, str] = {}
        self._read_info(info)

    def _read_info(self, info: Path) -> None:
        for row in read_table(info, _INFO_COLUMNS):
            path = self.root / row["image_path"].strip().removeprefix("CBIS-DDSM/")
            self._by_folder.setdefault(row["PatientID"].strip(), []).append(path)
            description = (row.get("SeriesDescription") or "").strip().lower()
            self._descriptions[path] = description
        for paths in self._by_folder.values():
            paths.sort()

    def folder_files(self, folder: str) -> list[Path]:
        paths = self._by_folder.get(folder, [])
        for path in paths:
            if not path.is_file():
                raise DatasetLayoutError(
                    f"file {path} listed in dicom_info.csv is missing",
                    dataset=DATASET,
                    path=str(path),
                )
        return paths

    def description(self, path: Path) -> str:
        return self._descriptions.get(path, "")

    def shape(self, path: Path) -> tuple[int, int]:
        from PIL import Image

        with Image.open(path) as image:  # reads the header only
            return image.height, image.width

    def is_binary(self, path: Path) -> bool:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise DatasetFormatError(f"{path} could not be decoded", path=str(path))
        middle = np.count_nonzero((grey > 24) & (grey < 231))
        return bool(middle <= 0.01 * grey.size)


def read_table(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV file that must hold ``columns`` (a missing one is a format error)."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(
                f"{path} lacks the columns {missing}", dataset=DATASET, path=str(path)
            )
        return list(reader)


def pick_full(files: CbisFiles, ref: str, folder: str) -> Path:
    """The full mammogram of an image folder (see the module's rules)."""
    found = files.candidates(ref)
    if not found:
        raise DatasetLayoutError(
            f"no image for {folder}: expected a file under the folder {folder} ({ref})",
            dataset=DATASET,
            folder=folder,
        )
    described = [p for p in found if files.description(p) == FULL]
    if len(described) == 1:
        return described[0]
    return max(described or found, key=lambda p: _area(files.shape(p)))


def pick_mask(
    files: CbisFiles, refs: tuple[str, ...], full_shape: tuple[int, int]
) -> tuple[Path, Path | None]:
    """``(ROI mask, cropped image or None)`` of one abnormality (see the module's rules)."""
    found = list(dict.fromkeys(p for ref in refs for p in files.candidates(ref)))
    if not found:
        folder = refs[0].split("/")[0]
        raise DatasetLayoutError(
            f"no files for ROI folder {folder}: expected its ROI mask and cropped image",
            dataset=DATASET,
            folder=folder,
        )
    same = [p for p in found if files.shape(p) == full_shape]
    if len(same) == 1:
        mask = same[0]
    else:
        binary = [p for p in (same or found) if files.is_binary(p)]
        if not binary:
            raise DatasetFormatError(
                f"no ROI mask among {[str(p) for p in found]} for {refs[0]}: expected a binary "
                f"image of the full mammogram's size {full_shape}",
                dataset=DATASET,
                ref=refs[0],
            )
        mask = max(binary, key=lambda p: _area(files.shape(p)))
    crops = [p for p in found if p != mask]
    return mask, (crops[0] if crops else None)


@cache
def _dicom_header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _area(shape: tuple[int, int]) -> int:
    return shape[0] * shape[1]
