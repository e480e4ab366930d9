"""A fitted detection score: features, the logistic fit, and the presence gate on it."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.geometry import Geometry
from imaging.lesion_score import FEATURES, LesionScorer, fit_scorer, region_features
from imaging.postprocess import postprocess_mask


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_features_are_the_logits_and_the_log_area_share() -> None:
    got = region_features(np.array([0.9, 1.0]), np.array([0.6, 0.5]), np.array([50, 0]), 1000)
    assert got.shape == (2, len(FEATURES))
    assert got[0] == pytest.approx([_logit(0.9), _logit(0.6), np.log(0.05)])
    assert got[1][0] == pytest.approx(_logit(0.999))  # clipped: a certain pixel stays finite
    assert got[1][2] == pytest.approx(np.log(1 / 1000))  # an empty area counts as one pixel
    assert region_features(np.zeros(0), np.zeros(0), np.zeros(0), 10).shape == (0, 3)
    with pytest.raises(ValueError, match="image_area"):
        region_features(np.array([0.5]), np.array([0.5]), np.array([1]), 0)


def test_the_fit_finds_the_feature_that_separates_true_regions() -> None:
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.random(n) < 0.3
    peak = rng.uniform(0.6, 0.99, n)  # says nothing
    mean = np.where(truth, rng.uniform(0.6, 0.9, n), rng.uniform(0.35, 0.65, n))
    area = rng.integers(20, 2000, n)
    features = region_features(peak, mean, area, 100_000)
    scorer = fit_scorer(features, truth, l2=1.0)
    assert scorer.coefficients[1] > 1.0  # the mean logit carries it
    assert abs(scorer.coefficients[0]) < 0.5 * scorer.coefficients[1]
    scores = scorer(features)
    assert ((scores > 0) & (scores < 1)).all()
    assert scores[truth].min() > np.median(scores[~truth])
    # the fitted probability is about right on average (a logistic fit's own calibration)
    assert scores.mean() == pytest.approx(truth.mean(), abs=0.02)


def test_a_fit_needs_both_kinds_of_region_and_matching_lengths() -> None:
    features = region_features(np.full(4, 0.9), np.full(4, 0.7), np.full(4, 30), 1000)
    with pytest.raises(ValueError, match="regions that hit a true lesion and regions that do not"):
        fit_scorer(features, [True] * 4)
    with pytest.raises(ValueError, match="4 feature rows against 3 labels"):
        fit_scorer(features, [True, False, True])
    with pytest.raises(ValueError, match="3 coefficients"):
        LesionScorer((1.0, 2.0), 0.0)
    with pytest.raises(ValueError, match="finite"):
        LesionScorer((1.0, float("nan"), 0.0), 0.0)


def _peaked_and_broad() -> np.ndarray:
    prob = np.zeros((60, 60), np.float32)
    prob[5:9, 5:9] = 0.55
    prob[6, 6] = 0.99  # small, one very confident pixel: peak 0.99, mean ~0.58
    prob[20:50, 20:50] = 0.9  # broad and uniformly confident: peak 0.9, mean 0.9
    return prob


def test_without_a_scorer_the_score_is_the_peak() -> None:
    result = postprocess_mask(_peaked_and_broad(), Geometry((60, 60)), min_area_px=4)
    by_area = {lesion.area_px: lesion for lesion in result.lesions}
    assert by_area[16].score == pytest.approx(0.99) and by_area[900].score == pytest.approx(0.9)
    regions = {r.area_px: r for r in result.regions}
    assert set(regions) == {16, 900} and all(r.kept for r in regions.values())
    assert regions[16].peak == pytest.approx(0.99)
    assert regions[16].mean_probability == pytest.approx((15 * 0.55 + 0.99) / 16)
    assert regions[900].score == regions[900].peak


def test_a_scorer_ranks_the_regions_and_the_presence_gate_applies_to_it() -> None:
    scorer = LesionScorer((0.0, 2.0, 0.0), 0.0)  # the mean's logit alone
    prob = _peaked_and_broad()
    geometry = Geometry((60, 60))
    result = postprocess_mask(prob, geometry, min_area_px=4, scorer=scorer, presence_threshold=0.8)
    (lesion,) = result.lesions  # the broad region passes, the peaked one does not
    assert lesion.area_px == 900
    features = region_features(np.array([0.9]), np.array([0.9]), np.array([900]), 3600)
    assert lesion.score == pytest.approx(float(scorer(features)[0]), abs=1e-4)
    (candidate,) = result.candidates  # below the gate on the fitted score, though its peak is 0.99
    mean = (15 * 0.55 + 0.99) / 16
    assert candidate.score == pytest.approx(1 / (1 + ((1 - mean) / mean) ** 2), abs=1e-4)
    assert candidate.score < 0.8 < 0.99
    regions = {r.area_px: r for r in result.regions}
    assert regions[16].peak == pytest.approx(0.99) and not regions[16].kept
    assert regions[900].kept and regions[900].score == pytest.approx(lesion.score, abs=1e-4)
    # the peak alone would keep both at the same gate
    plain = postprocess_mask(prob, geometry, min_area_px=4, presence_threshold=0.8)
    assert len(plain.lesions) == 2
