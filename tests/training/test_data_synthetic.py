"""Synthetic data sets: deterministic, fast, and carrying a signal a tiny model can learn."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from training.data.busi import read_busi
from training.data.dataset import load_sample
from training.data.duplicates import UnionFind, find_near_duplicates
from training.data.idc import read_idc
from training.data.synthetic import (
    TRUTH_FILE,
    make_busi,
    make_cbis_ddsm_dicom,
    make_cbis_ddsm_jpeg,
    make_idc,
    make_mias,
)

MAKERS: list[Callable[..., Path]] = [
    make_busi,
    make_cbis_ddsm_dicom,
    make_cbis_ddsm_jpeg,
    make_idc,
    make_mias,
]


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__)
def test_deterministic_per_seed_and_fast(make: Callable[..., Path], tmp_path: Path) -> None:
    start = time.perf_counter()
    make(tmp_path / "a", seed=1)
    elapsed = time.perf_counter() - start
    make(tmp_path / "b", seed=1)
    make(tmp_path / "c", seed=2)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    assert elapsed < 2.0


def test_busi_lesion_shape_separates_benign_from_malignant(tmp_path: Path) -> None:
    samples = [s for s in read_busi(make_busi(tmp_path, n=30, seed=0)) if s.class_name != "normal"]
    solidity = {}
    for sample in samples:
        mask = cv2.imread(str(sample.mask_paths[0]), cv2.IMREAD_GRAYSCALE)
        contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=len)
        hull = cv2.convexHull(contour)
        solidity[sample.id] = cv2.contourArea(contour) / cv2.contourArea(hull)
    benign = [solidity[s.id] for s in samples if s.class_name == "benign"]
    malignant = [solidity[s.id] for s in samples if s.class_name == "malignant"]
    # oval circumscribed vs spiculated (crops filed under the other class aside)
    assert np.median(benign) > 0.95 > np.median(malignant)


def test_busi_lesions_are_hypoechoic(tmp_path: Path) -> None:
    samples = [s for s in read_busi(make_busi(tmp_path, n=12, seed=1)) if s.class_name != "normal"]
    for sample in samples:
        image, mask = load_sample(sample)
        grey = image.mean(axis=2)
        assert grey[mask > 0].mean() < grey[mask == 0].mean() - 0.1


def test_idc_tumour_patches_are_darker(tmp_path: Path) -> None:
    samples = read_idc(make_idc(tmp_path, n=48, seed=0))
    brightness = np.array([load_sample(s)[0].mean() for s in samples])
    labels = np.array([s.label for s in samples])
    threshold = (brightness[labels == 0].min() + brightness[labels == 1].max()) / 2
    assert ((brightness < threshold) == (labels == 1)).mean() == 1.0


def test_busi_duplicates_are_found_exactly(tmp_path: Path) -> None:
    root = tmp_path / "busi"
    samples = read_busi(make_busi(root, n=24, seed=0))
    truth = json.loads((root / TRUTH_FILE).read_text())["duplicates"]
    pairs = find_near_duplicates(samples)
    assert {frozenset((p.a, p.b)) for p in pairs} == {frozenset(pair) for pair in truth}
    assert {p.reason for p in pairs} == {"phash", "crop"}  # a 3 % crop and larger crops
    classes = {s.id: s.class_name for s in samples}
    assert any(classes[a] != classes[b] for a, b in truth)  # one copy filed under another class


def test_union_find_groups() -> None:
    union = UnionFind(["a", "b", "c", "d"])
    union.union("a", "b")
    union.union("c", "b")
    assert sorted(map(sorted, union.groups().values())) == [["a", "b", "c"], ["d"]]


def test_data_package_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import training.data.splits, training.data.synthetic, training.data.dataset\n"
        "import training.data.cbis_ddsm, training.data.mias, training.data.idc\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
