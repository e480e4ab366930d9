"""Mask post-processing: lesions in original pixels, measurements, JSON, overlay."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from imaging.errors import InvalidGeometryError
from imaging.geometry import Crop, Flip, Geometry, Interpolation, Resize
from imaging.postprocess import MaskResult, overlay, postprocess_mask
from imaging.preprocess import PreprocessConfig, prepare
from tests.imaging.test_mammo import synthetic_mammogram


def _two_blobs() -> np.ndarray:
    prob = np.zeros((40, 50), np.float32)  # (h, w)
    prob[5:15, 5:25] = 0.9  # 200 px
    prob[25:31, 30:36] = 0.7  # 36 px
    prob[35, 45] = 0.8  # 1 px
    return prob


def test_lesions_are_measured_and_sorted_by_area() -> None:
    result = postprocess_mask(_two_blobs(), Geometry((40, 50)), min_area_px=2)
    assert [lesion.id for lesion in result.lesions] == [1, 2]
    big, small = result.lesions
    assert big.bbox == (5, 5, 20, 10) and big.area_px == 200
    assert big.centroid == (14.5, 9.5) and big.mean_probability == pytest.approx(0.9)
    assert small.bbox == (30, 25, 6, 6) and small.area_px == 36
    assert sorted(big.contour) == [(5, 5), (5, 14), (24, 5), (24, 14)]
    assert big.area_mm2 is None
    assert result.mask.sum() == 236 and result.label_map[27, 32] == 2


def test_contour_points_lie_on_the_lesion() -> None:
    yy, xx = np.mgrid[0:80, 0:80]
    prob = (((yy - 40) ** 2 + (xx - 35) ** 2) < 20**2).astype(np.float32)
    (lesion,) = postprocess_mask(prob, Geometry((80, 80))).lesions
    assert 10 < len(lesion.contour) < 80  # simplified, not every boundary pixel
    for x, y in lesion.contour:
        assert prob[y, x] == 1.0


def test_eight_connected_pixels_form_one_lesion() -> None:
    prob = np.zeros((20, 20), np.float32)
    prob[2:6, 2:6] = 1.0
    prob[6:10, 6:10] = 1.0  # touches the first square at one corner only
    assert len(postprocess_mask(prob, Geometry((20, 20))).lesions) == 1


def test_minimum_areas_in_pixels_and_mm2() -> None:
    prob, geometry = _two_blobs(), Geometry((40, 50))
    assert len(postprocess_mask(prob, geometry, min_area_px=50).lesions) == 1
    spacing = (0.5, 0.4)  # 0.2 mm² per pixel
    result = postprocess_mask(prob, geometry, min_area_mm2=10.0, pixel_spacing_mm=spacing)
    assert [lesion.area_mm2 for lesion in result.lesions] == [pytest.approx(40.0)]
    assert result.min_area_px == 50
    unknown = postprocess_mask(prob, geometry, min_area_px=2, min_area_mm2=10.0)
    assert len(unknown.lesions) == 2  # mm² limit needs a spacing


def test_mask_returns_through_crop_flip_and_resize() -> None:
    geometry = Geometry((100, 90), (Crop(20, 10, 40, 60), Flip(True), Resize((40, 60), (20, 30))))
    prob = np.zeros((20, 30), np.float32)
    prob[5:10, 0:5] = 1.0  # model left edge = original right side of the crop
    result = postprocess_mask(prob, geometry)
    assert result.mask.shape == (100, 90)
    (lesion,) = result.lesions
    x, y, w, h = lesion.bbox
    assert (y, y + h) == (30, 40) and x + w == 70  # rows 20+2*5.., right edge of the crop
    assert not result.mask[:20].any() and not result.mask[:, 70:].any()


def test_linear_upsampling_gives_smooth_edges() -> None:
    """A disc at model size, 8x upscaled: closer to the true disc than nearest upscaling."""
    yy, xx = np.mgrid[0:256, 0:256]
    truth = ((yy - 127.5) ** 2 + (xx - 127.5) ** 2) < 80**2
    geometry = Geometry((256, 256), (Resize((256, 256), (32, 32)),))
    prob = geometry.apply_image(truth.astype(np.float32), Interpolation.AREA)
    smooth = postprocess_mask(prob, geometry).mask
    blocky = geometry.to_original(prob >= 0.5)

    def iou(a: np.ndarray) -> float:
        return float((a & truth).sum() / (a | truth).sum())

    assert iou(smooth) > iou(blocky) and iou(smooth) > 0.98


def test_result_json_has_no_arrays() -> None:
    result = postprocess_mask(_two_blobs(), Geometry((40, 50)), pixel_spacing_mm=(0.1, 0.1))
    data = json.loads(result.model_dump_json())
    assert set(data) == {
        "image_hw",
        "threshold",
        "presence_threshold",
        "min_area_px",
        "pixel_spacing_mm",
        "lesions",
    }
    assert data["lesions"][0]["contour"][0] == list(result.lesions[0].contour[0])
    assert "lesions" in MaskResult.model_json_schema()["properties"]


@pytest.mark.parametrize(
    ("prob", "kwargs", "error", "message"),
    [
        (np.zeros((40, 40), np.float32), {}, InvalidGeometryError, "does not fit"),
        (np.zeros((40, 50, 1), np.float32), {}, InvalidGeometryError, r"\(h, w\)"),
        (np.full((40, 50), 1.5, np.float32), {}, ValueError, "sigmoid"),
        (np.zeros((40, 50), np.float32), {"threshold": 1.0}, ValueError, "threshold"),
        (np.zeros((40, 50), np.float32), {"min_area_px": -1}, ValueError, "min_area_px"),
    ],
)
def test_bad_inputs_state_the_rule(
    prob: np.ndarray, kwargs: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        postprocess_mask(prob, Geometry((40, 50)), **kwargs)


def test_prediction_on_a_prepared_mammogram_lands_on_the_breast() -> None:
    image, truth = synthetic_mammogram(chest_wall="right")
    config = PreprocessConfig(
        input_size=(96, 64), resize_mode="letterbox", crop_breast=True, canonical_orientation=True
    )
    geometry = prepare(image, config).geometry
    prob = geometry.apply_image(truth.astype(np.float32), Interpolation.AREA)  # a perfect model
    result = postprocess_mask(prob, geometry)
    assert len(result.lesions) == 1
    assert (result.mask & truth).sum() / (result.mask | truth).sum() > 0.97


def test_overlay_draws_contours_and_boxes() -> None:
    result = postprocess_mask(_two_blobs(), Geometry((40, 50)))
    image = np.full((40, 50), 0.5, np.float32)
    picture = overlay(image, result.mask, result.lesions, colour=(255, 0, 0))
    assert picture.shape == (40, 50, 3) and picture.dtype == np.uint8
    assert tuple(picture[5, 5]) == (255, 0, 0)  # box corner
    assert tuple(picture[39, 0]) == (128, 128, 128)  # untouched background
    assert picture[10, 15, 0] > picture[10, 15, 1]  # tinted inside
    rgb = overlay(np.dstack([image] * 3), result.mask, [])
    assert rgb.shape == (40, 50, 3)
    with pytest.raises(InvalidGeometryError, match="differ in size"):
        overlay(image, result.mask[:-1], result.lesions)


def test_overlay_png_encodes() -> None:
    result = postprocess_mask(_two_blobs(), Geometry((40, 50)))
    picture = overlay(np.zeros((40, 50), np.float32), result.mask, result.lesions)
    ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    assert ok and data.size > 100


def test_presence_gate_keeps_only_lesions_whose_peak_reaches_it() -> None:
    prob = np.zeros((20, 20), np.float32)
    prob[2:8, 2:8] = 0.6  # a faint component: peak 0.6
    prob[12:18, 12:18] = 0.7
    prob[14, 14] = 0.95  # a confident one: peak 0.95
    geometry = Geometry((20, 20))
    both = postprocess_mask(prob, geometry, threshold=0.5, min_area_px=1)
    assert sorted(lesion.score for lesion in both.lesions) == [0.6, 0.95]
    gated = postprocess_mask(prob, geometry, threshold=0.5, min_area_px=1, presence_threshold=0.9)
    assert [lesion.score for lesion in gated.lesions] == [0.95]
    assert gated.presence_threshold == 0.9
    assert int(gated.mask.sum()) == 36 and gated.mask[14, 14] and not gated.mask[4, 4]
    none = postprocess_mask(prob, geometry, threshold=0.5, min_area_px=1, presence_threshold=0.99)
    assert none.lesions == [] and not none.mask.any()


def test_regions_below_the_presence_gate_are_candidates_not_lesions() -> None:
    prob = np.zeros((20, 20), np.float32)
    prob[2:8, 2:8] = 0.6  # faint: below the gate
    prob[12:18, 12:18] = 0.7
    prob[14, 14] = 0.95  # confident: a lesion
    prob[2:4, 14:16] = 0.8  # 4 px, faint
    prob[10, 2:4] = 0.85  # 2 px: below the minimum area, neither lesion nor candidate
    result = postprocess_mask(
        prob, Geometry((20, 20)), threshold=0.5, min_area_px=3, presence_threshold=0.9
    )
    assert [lesion.score for lesion in result.lesions] == [0.95]
    assert [(c.bbox, c.score) for c in result.candidates] == [  # highest score first
        ((14, 2, 2, 2), 0.8),
        ((2, 2, 6, 6), 0.6),
    ]
    assert "candidates" not in result.model_dump()  # not findings: never in the JSON
    ungated = postprocess_mask(prob, Geometry((20, 20)), threshold=0.5, min_area_px=3)
    assert ungated.candidates == () and len(ungated.lesions) == 3
    # the image-level decision (a presence output below its threshold): nothing is a lesion,
    # every region a candidate, the confident one first
    absent = postprocess_mask(
        prob, Geometry((20, 20)), threshold=0.5, min_area_px=3, presence_threshold=0.9,
        present=False,
    )  # fmt: skip
    assert absent.lesions == [] and not absent.mask.any()
    assert [c.score for c in absent.candidates] == [0.95, 0.8, 0.6]


def test_each_lesion_gets_its_own_malignancy_from_the_map() -> None:
    prob = np.zeros((10, 10), np.float32)
    prob[1:4, 1:4] = 0.9
    prob[6:9, 6:9] = 0.8
    malignancy = np.full((10, 10), 0.5, np.float32)
    malignancy[1:4, 1:4] = 0.9
    malignancy[6:9, 6:9] = 0.1
    # the model ran at 10x10 on a 20x20 image: the map goes through the same geometry
    geometry = Geometry((20, 20)).then(Resize((20, 20), (10, 10)))
    result = postprocess_mask(
        prob, geometry, threshold=0.5, min_area_px=1, malignancy_map=malignancy
    )
    by_score = {round(lesion.score or 0, 1): lesion for lesion in result.lesions}
    assert by_score[0.9].malignancy == pytest.approx(0.85, abs=0.06)  # edges blend with 0.5
    assert by_score[0.8].malignancy == pytest.approx(0.15, abs=0.06)
    assert postprocess_mask(prob, geometry, threshold=0.5).lesions[0].malignancy is None


def test_components_in_the_foreground_box_match_whole_image_labelling() -> None:
    """Labelling only the box around the foreground gives what whole-image labelling gives:
    each lesion's box, area and centroid, and the label map."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        prob = np.zeros((48, 40), np.float32)
        for _ in range(rng.integers(0, 5)):
            r, c = rng.integers(0, 44), rng.integers(0, 36)
            prob[r : r + rng.integers(1, 12), c : c + rng.integers(1, 12)] = rng.uniform(0.6, 1)
        geometry = Geometry((96, 80), (Resize((96, 80), (48, 40)),))
        result = postprocess_mask(prob, geometry, threshold=0.5, min_area_px=1)
        full = geometry.to_original(prob, interpolation=Interpolation.LINEAR)
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(
            (full >= 0.5).astype(np.uint8), connectivity=8
        )
        expected = sorted(
            (
                tuple(int(v) for v in stats[i, :4]),
                int(stats[i, 4]),
                tuple(np.round(centroids[i], 2)),
            )
            for i in range(1, count)
        )
        found = sorted((lesion.bbox, lesion.area_px, lesion.centroid) for lesion in result.lesions)
        assert found == expected, trial
        assert np.array_equal(result.label_map > 0, labels > 0), trial
        for lesion in result.lesions:  # each id covers exactly its component
            x, y, w, h = lesion.bbox
            assert int((result.label_map == lesion.id).sum()) == lesion.area_px
            assert (result.label_map[y : y + h, x : x + w] == lesion.id).any()
