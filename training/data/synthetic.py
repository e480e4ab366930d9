"""Small synthetic copies of BUSI, CBIS-DDSM, mini-MIAS and IDC in their release layouts.

Each ``make_<name>(root, n, seed)`` writes under ``root`` exactly the folders and names the
release uses and returns the folder its reader takes. Pixels carry a learnable signal (see
``synthetic_draw``), so that a tiny model learns something in a smoke test; output is
deterministic for a seed. ``make_busi`` also writes near-duplicates (crops of other images,
one filed under another class, as in the real BUSI) and lists them in ``SYNTHETIC.json`` beside
the release folder, the only file outside the release layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from training.data.synthetic_cbis import make_cbis_ddsm_dicom, make_cbis_ddsm_jpeg
from training.data.synthetic_draw import (
    add_calcifications,
    add_mass,
    fill_mask,
    he_patch,
    lesion_polygon,
    mammogram_background,
    ultrasound_background,
    ultrasound_lesion,
)

__all__ = [
    "make_busbra",
    "make_busi",
    "make_cbis_ddsm_dicom",
    "make_cbis_ddsm_jpeg",
    "make_idc",
    "make_mias",
]

TRUTH_FILE = "SYNTHETIC.json"


def make_busi(root: Path, n: int = 24, seed: int = 0, duplicates: int = 3) -> Path:
    """BUSI layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N)[_mask[_K]].png``.

    ``n`` originals (half benign, a third malignant, the rest normal; every fourth benign image
    has two lesions, every fifth image is stored RGB) plus ``duplicates`` crops of originals:
    the first barely cropped, the others by 10-25 % per side and rescaled, the last filed under
    another class. Returns the ``Dataset_BUSI_with_GT`` folder.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "Dataset_BUSI_with_GT"
    counts = {"benign": 0, "malignant": 0, "normal": 0}
    for name in counts:
        (base / name).mkdir(parents=True, exist_ok=True)
    n_benign, n_malignant = max(1, n // 2), max(1, n // 3)
    plan = ["benign"] * n_benign + ["malignant"] * n_malignant
    plan += ["normal"] * max(1, n - len(plan))
    originals: list[tuple[str, np.ndarray, list[np.ndarray]]] = []
    for index, class_name in enumerate(plan):
        shape = (int(rng.integers(120, 170)), int(rng.integers(150, 210)))
        image, masks = _busi_frame(rng, shape, class_name, two=index % 4 == 3)
        counts[class_name] += 1
        stem = f"{class_name} ({counts[class_name]})"
        _write_busi(base / class_name, stem, image, masks, colour=index % 5 == 4)
        if class_name != "normal":
            originals.append((stem, image, masks))
    pairs = []
    for k in range(duplicates):
        source_stem, image, masks = originals[int(rng.integers(len(originals)))]
        cut = 0.03 if k == 0 else float(rng.uniform(0.1, 0.25))
        scale = 1.0 if k == 0 else float(rng.uniform(0.8, 1.2))
        crop, crop_masks = _crop(rng, image, masks, cut, scale)
        class_name = source_stem.split(" ")[0]
        if k == duplicates - 1 and duplicates > 1:
            class_name = "benign" if class_name == "malignant" else "malignant"
        counts[class_name] += 1
        stem = f"{class_name} ({counts[class_name]})"
        _write_busi(base / class_name, stem, crop, crop_masks, colour=False)
        pairs.append([source_stem, stem])
    truth = {"dataset": "busi", "seed": seed, "n": n, "duplicates": pairs}
    (Path(root) / TRUTH_FILE).write_text(json.dumps(truth, indent=2) + "\n")
    return base


def make_busbra(root: Path, n_cases: int = 12, seed: int = 0) -> Path:
    """BUS-BRA layout: ``Images/bus_NNNN-{l,r,s}.png``, ``Masks/mask_NNNN-{l,r,s}.png`` and
    ``bus_data.csv``. Every case (patient) has one lesion: every third case one view (``-s``),
    the others two (``-l``, ``-r``); every second case is malignant. Returns the folder."""
    rng = np.random.default_rng(seed)
    base = Path(root)
    (base / "Images").mkdir(parents=True, exist_ok=True)
    (base / "Masks").mkdir(parents=True, exist_ok=True)
    rows = ["ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX"]
    for case in range(1, n_cases + 1):
        malignant = case % 2 == 0
        pathology = "malignant" if malignant else "benign"
        sides = ("s",) if case % 3 == 0 else ("l", "r")
        for side in sides:
            shape = (int(rng.integers(120, 170)), int(rng.integers(150, 210)))
            image, masks = _busi_frame(rng, shape, pathology, two=False)
            image_id = f"bus_{case:04d}-{side}"
            grey = (image * 255).round().astype(np.uint8)
            cv2.imwrite(str(base / "Images" / f"{image_id}.png"), grey)
            cv2.imwrite(str(base / "Masks" / f"mask_{case:04d}-{side}.png"), masks[0])
            x, y, w, h = cv2.boundingRect(masks[0])
            name = {"l": "left", "r": "right", "s": "single"}[side]
            rows.append(
                f"{image_id},{case},synthetic,{pathology},{5 if malignant else 3},"
                f'synthetic probe,{shape[1]},{shape[0]},{name},"[{x},{y},{w},{h}]"'
            )
    (base / "bus_data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return base


def _busi_frame(
    rng: np.random.Generator, shape: tuple[int, int], class_name: str, two: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    image = ultrasound_background(rng, shape)
    masks: list[np.ndarray] = []
    if class_name == "normal":
        return image, [np.zeros(shape, np.uint8)]
    h, w = shape
    malignant = class_name == "malignant"
    centres = [(w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.55))]
    if two and not malignant:
        centres = [(w * 0.28, h * 0.35), (w * 0.72, h * 0.45)]
    for centre in centres:
        radius = min(h, w) * (rng.uniform(0.12, 0.18) if len(centres) > 1 else 0.22)
        mask = fill_mask(shape, lesion_polygon(rng, centre, radius, malignant))
        image = ultrasound_lesion(image, mask, malignant)
        masks.append(mask)
    return image, masks


def _write_busi(
    folder: Path, stem: str, image: np.ndarray, masks: list[np.ndarray], colour: bool
) -> None:
    grey = (image * 255).round().astype(np.uint8)
    if colour:  # a Doppler-like overlay, stored RGB (BGR on disk via OpenCV)
        bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        cv2.rectangle(bgr, (4, 4), (20, 14), (0, 0, 255), -1)
    cv2.imwrite(str(folder / f"{stem}.png"), bgr if colour else grey)
    for k, mask in enumerate(masks):
        suffix = "_mask" if k == 0 else f"_mask_{k}"
        cv2.imwrite(str(folder / f"{stem}{suffix}.png"), mask)


def _crop(
    rng: np.random.Generator, image: np.ndarray, masks: list[np.ndarray], cut: float, scale: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = image.shape
    top, bottom = (round(h * cut * f) for f in rng.uniform(0.5, 1.0, 2))
    left, right = (round(w * cut * f) for f in rng.uniform(0.5, 1.0, 2))
    window = (slice(top, h - bottom), slice(left, w - right))
    size = (round((w - left - right) * scale), round((h - top - bottom) * scale))
    crop = cv2.resize(image[window], size, interpolation=cv2.INTER_AREA)
    crop_masks = [cv2.resize(m[window], size, interpolation=cv2.INTER_NEAREST) for m in masks]
    return crop, crop_masks


def make_mias(root: Path, n: int = 12, seed: int = 0, size: int = 256) -> Path:
    """mini-MIAS layout: ``mini-mias/Info.txt`` and ``mdbNNN.png`` (``size`` px square).

    Info rows use the release's conventions (1024 grid, origin bottom-left) and quirks: a free
    text header, NORM rows with a trailing blank, two rows for one film, a benign mass without
    coordinates and widely distributed calcifications with a ``*NOTE 3*`` instead of a circle.
    Returns the ``mini-mias`` folder.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "mini-mias"
    base.mkdir(parents=True, exist_ok=True)
    lines = [
        "MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY (synthetic copy)",
        "",
        "Coordinate system origin is the bottom-left corner.",
        "=" * 40,
        "",
    ]
    for number in range(1, n + 1):
        image, rows = _mias_film(rng, number, size)
        ref = f"mdb{number:03d}"
        cv2.imwrite(str(base / f"{ref}.png"), (image * 255).round().astype(np.uint8))
        lines.extend(f"{ref} {row}" for row in rows)
    lines += ["", "=" * 40, ""]
    (base / "Info.txt").write_text("\n".join(lines))
    return base


def _mias_film(rng: np.random.Generator, number: int, size: int) -> tuple[np.ndarray, list[str]]:
    tissue = "FGD"[number % 3]
    image, breast = mammogram_background(rng, (size, size), breast_on_left=number % 2 == 0)
    kind = ["NORM", "CIRC", "SPIC", "CALC", "NORM", "CIRC"][number % 6]
    if kind == "NORM":
        return image, [f"{tissue} NORM "]
    malignant = kind == "SPIC" or (kind == "CALC" and number % 4 == 3)
    severity = "M" if malignant else "B"
    if number == 11:  # a mass the release lists without a location
        return image, [f"{tissue} CIRC B"]
    if number == 3:  # widely distributed calcifications: no centre, no radius
        for _ in range(5):
            spot = np.argwhere(breast)[int(rng.integers(int(breast.sum())))]
            add_calcifications(rng, image, (float(spot[1]), float(spot[0])), size * 0.05, True)
        return image, [f"{tissue} CALC M *NOTE 3*"]
    count = 2 if number == 5 else 1
    rows = []
    for k in range(count):
        x = (0.18 + 0.3 * k if number % 2 == 0 else 0.82 - 0.3 * k) * size
        y = size * rng.uniform(0.35, 0.65)
        radius = size * rng.uniform(0.05, 0.08)
        if kind == "CALC":
            add_calcifications(rng, image, (x, y), radius, malignant)
        else:
            add_mass(image, fill_mask(image.shape, lesion_polygon(rng, (x, y), radius, malignant)))
        grid = 1024 / size  # Info.txt: 1024 grid, origin bottom-left
        rows.append(
            f"{tissue} {kind} {severity} {round(x * grid)} {round(1024 - y * grid)} "
            f"{round(radius * grid)}"
        )
    return image, rows


def make_idc(root: Path, n: int = 48, seed: int = 0, patients: int = 4) -> Path:
    """IDC layout: ``IDC_regular_ps50_idx5/<patient>/{0,1}/<patient>_idx5_x<X>_y<Y>_class<C>.png``.

    ``n`` patches over ``patients`` patients on each patient's slide grid (50 px steps, as in
    the release); tumour patches cluster in one corner of a slide, one patient has none, and
    patches on a slide's last column are cut short (as the release's edge patches are).
    Returns the ``IDC_regular_ps50_idx5`` folder.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "IDC_regular_ps50_idx5"
    per_patient = max(1, n // patients)
    for p in range(patients):
        patient = str(10250 + 3 * p)
        columns = max(2, int(np.ceil(np.sqrt(per_patient))))
        for k in range(per_patient):
            col, row = k % columns, k // columns
            tumour = p != patients - 1 and col + row < columns * 0.6
            label = int(tumour)
            shape = (50, 36) if col == columns - 1 and p == 0 else (50, 50)
            x, y = 1 + 50 * (col + p), 1 + 50 * row
            folder = base / patient / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{patient}_idx5_x{x}_y{y}_class{label}.png"
            patch = he_patch(rng, shape, tumour)
            cv2.imwrite(str(folder / name), cv2.cvtColor(patch, cv2.COLOR_RGB2BGR))
    return base
