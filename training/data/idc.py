"""Reader for the IDC breast histopathology patches ("Breast Histopathology Images").

Janowczyk A., Madabhushi A. "Deep learning for digital pathology image analysis: a comprehensive
tutorial with selected use cases", J Pathol Inform 7:29 (2016); Cruz-Roa A. et al., SPIE Medical
Imaging 2014. Layout:
``IDC_regular_ps50_idx5/<patient>/{0,1}/<patient>_idx5_x<X>_y<Y>_class<C>.png``; X and Y are
the patch's position in the whole slide (pixels), C is 1 for invasive ductal carcinoma. The
class and patient in the file name must agree with the folders. Patches of one patient are
strongly correlated, so the patient is the group.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.data.records import DatasetFormatError, DatasetLayoutError, Modality, Sample

DATASET = "idc"
RELEASE_FOLDER = "IDC_regular_ps50_idx5"
CLASS_NAMES = {0: "non_idc", 1: "idc"}

_NAME_RE = re.compile(
    r"^(?P<patient>\w+?)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<c>[01])\.png$", re.ASCII
)


def find_root(root: Path) -> Path:
    """The ``IDC_regular_ps50_idx5`` folder: ``root``'s child of that name or ``root`` itself."""
    root = Path(root)
    if (root / RELEASE_FOLDER).is_dir():
        return root / RELEASE_FOLDER
    if root.is_dir() and any(_is_patient_dir(p) for p in root.iterdir()):
        return root
    raise DatasetLayoutError(
        f"IDC layout not found under {root}: expected {RELEASE_FOLDER}/<patient>/{{0,1}}/*.png",
        dataset=DATASET,
        path=str(root),
    )


def read_idc(root: Path) -> list[Sample]:
    """All IDC patches, sorted by patient, class, y, x.

    Args:
        root: the ``IDC_regular_ps50_idx5`` folder or the folder that holds it.

    Raises:
        DatasetLayoutError: no patient folders, or a patient folder without ``0``/``1``.
        DatasetFormatError: a file name that does not parse, or whose patient or class disagrees
            with its folders.
    """
    base = find_root(root)
    samples: list[Sample] = []
    for patient_dir in sorted(p for p in base.iterdir() if _is_patient_dir(p)):
        class_dirs = [patient_dir / c for c in ("0", "1") if (patient_dir / c).is_dir()]
        if not class_dirs:
            raise DatasetLayoutError(
                f"patient folder {patient_dir} holds neither '0' nor '1' class folder",
                dataset=DATASET,
                path=str(patient_dir),
            )
        for class_dir in class_dirs:
            samples.extend(_read_class_dir(class_dir, patient_dir.name, int(class_dir.name)))
    if not samples:
        raise DatasetLayoutError(f"no IDC patches under {base}", dataset=DATASET, path=str(base))
    samples.sort(key=lambda s: (_natural(s.patient_id or ""), s.label, s.extra["y"], s.extra["x"]))
    return samples


def parse_name(name: str) -> tuple[str, int, int, int]:
    """``(patient, x, y, class)`` from a patch name, e.g. ``10253_idx5_x1351_y1101_class0.png``.

    Raises:
        DatasetFormatError: the name does not follow ``<patient>_idx5_x<X>_y<Y>_class<C>.png``.
    """
    match = _NAME_RE.match(name)
    if not match:
        raise DatasetFormatError(
            f"IDC patch name {name!r} does not follow '<patient>_idx5_x<X>_y<Y>_class<0|1>.png'",
            dataset=DATASET,
        )
    return match["patient"], int(match["x"]), int(match["y"]), int(match["c"])


def _read_class_dir(class_dir: Path, patient: str, label: int) -> list[Sample]:
    samples = []
    for path in sorted(class_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue
        name_patient, x, y, name_class = parse_name(path.name)
        if name_patient != patient or name_class != label:
            raise DatasetFormatError(
                f"{path}: the name says patient {name_patient} class {name_class} but the file "
                f"lies in {patient}/{label}/ (the name and the folders must agree)",
                dataset=DATASET,
                path=str(path),
            )
        samples.append(
            Sample(
                id=path.stem,
                dataset=DATASET,
                image_path=path,
                label=label,
                class_name=CLASS_NAMES[label],
                modality=Modality.SM,
                patient_id=patient,
                extra={"x": x, "y": y},
            )
        )
    return samples


def _is_patient_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and path.name != RELEASE_FOLDER


def _natural(text: str) -> tuple[int, str]:
    """Numeric patient ids sort as numbers, any others after them as text."""
    return (int(text), "") if text.isdigit() else (1 << 62, text)
