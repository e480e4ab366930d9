"""The operating point chosen on validation: thresholds from hand-made cases, and the export
path that writes it into the card."""

from __future__ import annotations

import numpy as np
import pytest

from training.operating_point import MASK_THRESHOLDS, _Case, choose


def _case(label: int, truth: int, comps: list[tuple[int, int, float]], logit: float) -> _Case:
    rows = np.asarray(comps, np.float64).reshape(-1, 3)
    return _Case(
        label=label,
        truth_area=truth,
        components={t: rows for t in MASK_THRESHOLDS},  # the same components at every threshold
        malignancy_logit=logit,
        lesion_logit=2.0 if label else -2.0,
    )


def test_presence_threshold_trades_a_faint_true_lesion_for_no_false_lesions() -> None:
    cases = [
        _case(1, 100, [(100, 80, 0.97)], 3.0),  # a confident hit: Dice 2*80/200 = 0.8
        _case(0, 100, [(50, 50, 0.80)], -3.0),  # a faint hit: Dice 2*50/150 = 0.667
        _case(0, 0, [(40, 0, 0.85)], -1.0),  # a lesion-free image with a false lesion at 0.85
        _case(0, 0, [], -2.0),  # a lesion-free image, nothing marked
    ]
    # at most 10 % false lesions: the gate must pass 0.85 -> only the confident hit survives
    strict = choose(cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.10)
    assert 0.85 < strict.presence <= 0.97
    assert strict.val["lesion_dice"] == pytest.approx(0.4)  # (0.8 + 0) / 2
    assert strict.val["false_lesion_rate"] == 0.0
    # half of the lesion-free images may hold a false lesion: no gate is needed, both hits kept
    loose = choose(cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.5)
    assert loose.presence == 0.0
    assert loose.val["lesion_dice"] == pytest.approx((0.8 + 2 * 50 / 150) / 2)
    assert loose.val["false_lesion_rate"] == 0.5
    # the malignancy threshold separates the one malignant image (p = 0.95) from the rest
    assert strict.malignancy > 1 / (1 + np.exp(1.0))
    assert strict.val["malignancy_balanced_accuracy"] == 1.0
    assert strict.lesion_temperature is not None and strict.lesion_temperature > 0
    assert strict.to_dict()["min_lesion_area_px"] == 16
