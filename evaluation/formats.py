"""Labelled data-set formats, each recognised from its folder layout (``--format`` overrides).

Formats register with ``@data_format(name, display)``; each has ``detect(root) -> bool`` (a cheap
look at the layout) and ``read(root) -> list[Case]``. The release formats reuse the training
readers (``training.data``); CBIS-DDSM as COCO boxes (``cbis_coco``) and the hospital CSV
(``evaluation.csv_format``) are read here.

- ``busi``: ``[Dataset_BUSI_with_GT/]{benign,malignant,normal}/<class> (N).png`` + ``_mask*.png``;
- ``busbra``: ``Images/``, ``Masks/``, ``bus_data.csv``;
- ``cbis_coco``: ``[train/]*.jpg`` + ``_annotations.coco.json`` (COCO ``bbox`` = x, y, w, h) and
  ``labels_image_level.csv`` (``file``, ``patient_id``, ``image_label``) in that folder or above;
- ``mini_mias``: ``Info.txt`` beside ``mdbNNN.png`` (circles in the 1024 grid, origin bottom-left);
- ``idc``: ``[IDC_regular_ps50_idx5/]<patient>/{0,1}/*_classN.png``;
- ``csv``: one ``*.csv`` with columns ``image, mask, label, patient, boxes`` (see csv_format).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from breastdx.errors import BreastdxError
from evaluation.cases import Case, case_from_sample

COCO_FILE = "_annotations.coco.json"


class UnknownLayoutError(BreastdxError):
    """The data folder matches no known format (or not the one ``--format`` named)."""

    code = "unknown_layout"
    title = "Data set layout not recognised"
    http_status = 422


@dataclass(frozen=True)
class DataFormat:
    name: str
    display: str  # how reports and cards name the data set
    detect: Callable[[Path], bool]
    read: Callable[[Path], list[Case]]


FORMATS: dict[str, DataFormat] = {}


def data_format(
    name: str, display: str, detect: Callable[[Path], bool]
) -> Callable[[Callable[[Path], list[Case]]], Callable[[Path], list[Case]]]:
    """Decorator: register ``read`` as the reader of format ``name``."""

    def decorate(read: Callable[[Path], list[Case]]) -> Callable[[Path], list[Case]]:
        FORMATS[name] = DataFormat(name, display, detect, read)
        return read

    return decorate


def detect_format(root: Path) -> DataFormat:
    """The first format whose layout ``root`` has; an unknown layout lists the formats."""
    if not root.is_dir():
        raise UnknownLayoutError(f"data folder {root} does not exist or is not a folder")
    for fmt in FORMATS.values():
        if fmt.detect(root):
            return fmt
    raise UnknownLayoutError(
        f"{root} is in no known data-set layout; known formats: {', '.join(FORMATS)} "
        "(see docs/evaluation.md; name one with --format, or write a CSV with columns "
        "image, mask, label, patient, boxes)"
    )


def get_format(name: str) -> DataFormat:
    if name not in FORMATS:
        raise UnknownLayoutError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def read_cases(root: Path, fmt: DataFormat) -> list[Case]:
    """``fmt.read(root)`` with the readers' layout errors as :class:`UnknownLayoutError`."""
    from training.data.records import DatasetError

    try:
        cases = fmt.read(root)
    except DatasetError as exc:
        raise UnknownLayoutError(f"{fmt.display} data at {root}: {exc.message}") from exc
    if not cases:
        raise UnknownLayoutError(f"{fmt.display} data at {root} holds no case")
    return cases


# --- release formats read by training.data -----------------------------------------------------


def _busi_root(root: Path) -> bool:
    from training.data.busi import CLASSES, RELEASE_FOLDER

    return any(all((c / n).is_dir() for n in CLASSES) for c in (root / RELEASE_FOLDER, root))


@data_format("busi", "BUSI", _busi_root)
def read_busi_cases(root: Path) -> list[Case]:
    from training.data.busi import read_busi

    return [case_from_sample(s) for s in read_busi(root, strict=False)]  # missing: skipped


def _busbra_root(root: Path) -> bool:
    return (root / "bus_data.csv").is_file() and (root / "Images").is_dir()


@data_format("busbra", "BUS-BRA", _busbra_root)
def read_busbra_cases(root: Path) -> list[Case]:
    from training.data.busbra import read_busbra

    return [case_from_sample(s) for s in read_busbra(root, strict=False)]  # missing: skipped


def _coco_root(root: Path) -> bool:
    return any((folder / COCO_FILE).is_file() for folder in (root, root / "train", root / "test"))


@data_format("cbis_coco", "CBIS-DDSM", _coco_root)
def read_cbis_coco_cases(root: Path) -> list[Case]:
    from training.data.cbis_ddsm_coco import read_cbis_coco

    return [case_from_sample(s) for s in read_cbis_coco(root)]


def _mias_root(root: Path) -> bool:
    return (root / "Info.txt").is_file()


@data_format("mini_mias", "mini-MIAS", _mias_root)
def read_mias_cases(root: Path) -> list[Case]:
    from training.data.mias import read_mias

    return [case_from_sample(s) for s in read_mias(root)]


def _idc_root(root: Path) -> bool:
    from training.data.idc import RELEASE_FOLDER

    base = root / RELEASE_FOLDER if (root / RELEASE_FOLDER).is_dir() else root
    return any(p.is_dir() and ((p / "0").is_dir() or (p / "1").is_dir()) for p in base.iterdir())


@data_format("idc", "IDC", _idc_root)
def read_idc_cases(root: Path) -> list[Case]:
    from training.data.idc import read_idc

    return [case_from_sample(s) for s in read_idc(root)]


def _csv_root(root: Path) -> bool:
    from evaluation.csv_format import find_table

    return find_table(root) is not None


@data_format("csv", "local", _csv_root)
def read_csv_cases(root: Path) -> list[Case]:
    from evaluation.csv_format import read_table

    return read_table(root)
