"""The operating point chosen on validation: thresholds from hand-made cases, and the export
path that writes it into the card."""

from __future__ import annotations

import numpy as np
import pytest

from training.operating_point import MASK_THRESHOLDS, _Case, choose


def _case(
    label: int,
    truth: int,
    comps: list[tuple[float, ...]],
    logit: float,
    truth_boxes: list[tuple[float, float, float, float]] | None = None,
) -> _Case:
    """Components as (area, overlap, peak) or (area, overlap, peak, x, y, w, h)."""
    rows = np.asarray([(*c, 0, 0, 1, 1)[:7] for c in comps], np.float64).reshape(-1, 7)
    return _Case(
        label=label,
        truth_area=truth,
        components={t: rows for t in MASK_THRESHOLDS},  # the same components at every threshold
        malignancy_logit=logit,
        lesion_logit=2.0 if label else -2.0,
        truth_boxes=truth_boxes or [],
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


def test_detection_objective_hits_most_lesions_within_the_false_mark_budget() -> None:
    """Mammography: the presence threshold admits the faint true lesions as long as false marks
    per film stay within the budget (and lesion-free films within their rate)."""
    box_a, box_b = (10.0, 10.0, 20.0, 20.0), (100.0, 100.0, 20.0, 20.0)
    cases = [
        # a film with two lesions: one strong mark on A, one faint mark on B, a false mark at 0.7
        _case(
            1,
            800,
            [
                (300, 250, 0.95, 12, 12, 16, 16),
                (200, 150, 0.60, 102, 102, 14, 14),
                (100, 0, 0.70, 300, 300, 10, 10),
            ],
            2.0,
            [box_a, box_b],
        ),
        # a film with one lesion marked faintly (0.52), below a false mark at 0.55
        _case(
            0, 400, [(200, 150, 0.52, 12, 12, 16, 16), (50, 0, 0.55, 200, 50, 8, 8)], -1.0, [box_a]
        ),
        _case(0, 0, [(40, 0, 0.58, 50, 50, 8, 8)], -2.0),  # a normal film with a false mark
        _case(0, 0, [], -2.0),  # a normal film, nothing marked
    ]
    # 1 false mark per film allowed, half the normal films may be marked: the gate goes down to
    # the faintest hit (0.52) and lets the three false marks through
    loose = choose(
        cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.5, max_fp_per_image=1.0
    )
    assert loose.val["objective"] == "detection"
    assert loose.presence <= 0.52
    assert loose.val["lesion_sensitivity"] == 1.0
    assert loose.val["false_marks_per_image"] == pytest.approx(3 / 4)
    # 0.5 false marks per film: the 0.52 hit costs too many false marks; of the gates that keep
    # 2 of 3 lesions, the one above 0.58 leaves the fewest false marks (one)
    tight = choose(
        cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.5, max_fp_per_image=0.5
    )
    assert 0.58 < tight.presence <= 0.60
    assert tight.val["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert tight.val["false_marks_per_image"] == pytest.approx(1 / 4)
    # no false mark at all: only the strong hit survives (gate above 0.70)
    none = choose(
        cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.0, max_fp_per_image=0.0
    )
    assert none.presence > 0.70
    assert none.val["lesion_sensitivity"] == pytest.approx(1 / 3)
    assert none.val["false_marks_per_image"] == 0.0
    # the segmentation objective (no budget) reports no detection figures
    assert "lesion_sensitivity" not in choose(cases, temperature=1.0, min_area=16).val


def test_lesion_weighted_image_malignancy_is_thresholded_on_its_own_score() -> None:
    """With ``image_malignancy="lesion_weighted"`` the threshold is chosen on the score the
    service derives from the lesions, not on the image head (here useless: the same logit)."""
    from training.operating_point import LOGIT_CENTRES

    def weighted(logit: float) -> np.ndarray:
        hist = np.zeros(len(LOGIT_CENTRES))
        hist[int(np.argmin(np.abs(LOGIT_CENTRES - logit)))] = 50.0  # lesion pixels' weight
        return hist

    cases = [_case(label, 100, [(100, 80, 0.97)], 0.0) for label in (1, 1, 0, 0)]
    for case, logit in zip(cases, (3.0, 2.0, -2.0, -3.0), strict=True):
        case.weighted_logits = weighted(logit)
    head = choose(cases, temperature=1.0, min_area=16)
    assert head.val["malignancy_balanced_accuracy"] == 0.5  # one logit for all: no separation
    derived = choose(cases, temperature=1.0, min_area=16, image_malignancy="lesion_weighted")
    assert derived.val["malignancy_balanced_accuracy"] == 1.0
    assert derived.val["image_malignancy"] == "lesion_weighted"
    lesion_t = derived.lesion_temperature or 1.0
    # the threshold separates the derived scores: above the benign films (logit -2), below the
    # malignant ones (logit 2), each through the lesion temperature
    assert 1 / (1 + np.exp(2.0 / lesion_t)) < derived.malignancy < 1 / (1 + np.exp(-2.0 / lesion_t))


def test_image_presence_output_clears_a_confident_false_region_and_keeps_faint_lesions() -> None:
    """A model with a presence output: its image-level gate, chosen with the peak gate, lets
    faint true lesions through where the peak gate alone must drop them to keep a lesion-free
    image clean."""

    def with_presence(case: _Case, presence: float) -> _Case:
        case.presence = presence
        return case

    cases = [
        with_presence(_case(1, 100, [(100, 80, 0.97)], 3.0), 0.95),  # confident hit
        with_presence(_case(0, 100, [(50, 50, 0.80)], -3.0), 0.70),  # faint hit, present
        with_presence(_case(0, 0, [(40, 0, 0.90)], -1.0), 0.20),  # confident false region
        with_presence(_case(0, 0, [], -2.0), 0.10),
    ]
    point = choose(cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.0)
    assert 0.20 < point.image_presence <= 0.70
    assert point.presence <= 0.80  # the faint lesion stays
    assert point.val["lesion_dice"] == pytest.approx((0.8 + 2 * 50 / 150) / 2)
    assert point.val["false_lesion_rate"] == 0.0
    # without presence probabilities the peak gate alone has to drop the faint lesion
    for case in cases:
        case.presence = None
    peak_only = choose(cases, temperature=1.0, min_area=16, max_false_lesion_rate=0.0)
    assert peak_only.image_presence == 0.0
    assert peak_only.val["lesion_dice"] == pytest.approx(0.4)
