"""Reader for BUSI, the Breast Ultrasound Images data set.

Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. "Dataset of breast ultrasound images", Data in
Brief 28 (2020) 104863. Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png``
with ``<class> (N)_mask.png`` and, for images with several lesions, ``_mask_1.png``,
``_mask_2.png`` ...; the masks of one image are merged by logical OR. ``normal`` images come with
an empty mask. The release has no patient identifiers, so each image is its own group; the split
adds near-duplicate grouping (the release holds the same frame cropped differently).
"""

from __future__ import annotations

import re
from pathlib import Path

from training.data.records import (
    BENIGN,
    MALIGNANT,
    DatasetFormatError,
    DatasetLayoutError,
    Modality,
    Sample,
)

DATASET = "busi"
RELEASE_FOLDER = "Dataset_BUSI_with_GT"
CLASSES: dict[str, int] = {"benign": BENIGN, "malignant": MALIGNANT, "normal": BENIGN}

_IMAGE_RE = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)\.png$")
_MASK_RE = re.compile(r"^(?P<stem>[a-z]+ \(\d+\))_mask(?:_(?P<k>\d+))?\.png$")


def find_root(root: Path) -> Path:
    """The ``Dataset_BUSI_with_GT`` folder: ``root`` itself or its child of that name."""
    root = Path(root)
    for candidate in (root / RELEASE_FOLDER, root):
        if all((candidate / name).is_dir() for name in CLASSES):
            return candidate
    missing = [n for n in CLASSES if not (root / RELEASE_FOLDER / n).is_dir()]
    raise DatasetLayoutError(
        f"BUSI layout not found under {root}: expected folders "
        f"{RELEASE_FOLDER}/{{benign,malignant,normal}}; missing {missing}",
        dataset=DATASET,
        path=str(root),
    )


def read_busi(root: Path, *, strict: bool = True) -> list[Sample]:
    """All BUSI images with their masks, sorted by class then image number.

    ``strict=False`` (evaluation) keeps an image whose ``_mask.png`` is missing, naming the
    expected file, so that the caller can skip and count that case instead of failing the set.

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder or the folder that holds it.

    Raises:
        DatasetLayoutError: a class folder or an image's ``_mask.png`` is missing.
        DatasetFormatError: a PNG whose name is not ``<class> (N).png`` or ``..._mask[_K].png``,
            or a mask without its image.
    """
    base = find_root(root)
    samples: list[Sample] = []
    for class_name, label in CLASSES.items():
        samples.extend(_read_class(base / class_name, class_name, label, strict))
    return samples


def _read_class(folder: Path, class_name: str, label: int, strict: bool = True) -> list[Sample]:
    images: dict[str, int] = {}
    masks: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue  # .DS_Store, Thumbs.db and the like
        mask = _MASK_RE.match(path.name)
        image = _IMAGE_RE.match(path.name)
        if mask:
            masks.setdefault(mask["stem"], []).append((int(mask["k"] or 0), path))
        elif image and image["cls"] == class_name:
            images[path.stem] = int(image["n"])
        else:
            raise DatasetFormatError(
                f"unexpected file {path}: BUSI names images '{class_name} (N).png' and masks "
                f"'{class_name} (N)_mask.png' / '_mask_K.png'",
                dataset=DATASET,
                path=str(path),
            )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetFormatError(
            f"mask without image in {folder}: expected '{orphans[0]}.png' beside its mask",
            dataset=DATASET,
            path=str(folder / f"{orphans[0]}.png"),
        )
    return [
        _sample(folder, stem, n, class_name, label, masks.get(stem, []), strict)
        for stem, n in sorted(images.items(), key=lambda item: item[1])
    ]


def _sample(
    folder: Path,
    stem: str,
    n: int,
    class_name: str,
    label: int,
    masks: list[tuple[int, Path]],
    strict: bool = True,
) -> Sample:
    ordered = sorted(masks)
    if not strict and (not ordered or ordered[0][0] != 0):
        ordered = [(0, folder / f"{stem}_mask.png"), *ordered]  # missing: the caller skips it
    if not ordered or ordered[0][0] != 0:
        raise DatasetLayoutError(
            f"missing mask {folder / (stem + '_mask.png')}: every BUSI image has one "
            "(empty for normal images)",
            dataset=DATASET,
            path=str(folder / f"{stem}_mask.png"),
        )
    return Sample(
        id=stem,
        dataset=DATASET,
        image_path=folder / f"{stem}.png",
        label=label,
        class_name=class_name,
        modality=Modality.US,
        mask_paths=tuple(path for _, path in ordered),
        extra={"number": n, "lesions": len(ordered) if class_name != "normal" else 0},
    )
