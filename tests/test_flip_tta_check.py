"""``tools/flip_tta_check.py``: the views are averaged per image, spatial outputs flipped back."""

from __future__ import annotations

from typing import Any

import numpy as np

from tools.flip_tta_check import averaged, main, views


def _fake_run(self: Any, batch: np.ndarray, max_batch: int = 64) -> dict[str, np.ndarray]:
    """A flip-equivariant "model": its map is its input, its score a left-right asymmetry."""
    half = batch.shape[-1] // 2
    score = batch[..., :half].sum(axis=(1, 2, 3)) - batch[..., half:].sum(axis=(1, 2, 3))
    return {"mask": batch.copy(), "score": score[:, None]}


def test_maps_come_back_in_place_and_scalars_average_over_the_views() -> None:
    rng = np.random.default_rng(0)
    batch = rng.random((3, 1, 4, 6)).astype(np.float32)
    out = averaged(_fake_run, "hv")(None, batch)
    # an equivariant map averaged over flipped-back views is the map itself
    np.testing.assert_allclose(out["mask"], batch, rtol=1e-6)
    # the asymmetry flips sign under h and hv, not under v: the four views cancel
    np.testing.assert_allclose(out["score"], 0.0, atol=1e-5)
    once = averaged(_fake_run, "v")(None, batch)["score"]
    np.testing.assert_allclose(once, _fake_run(None, batch)["score"], rtol=1e-5)
    assert len(views("none")) == 1 and len(views("h")) == 2 and len(views("hv")) == 4


def test_bad_usage_exits_2() -> None:
    assert main([]) == 2 and main(["x", "--stage", "ultrasound"]) == 2
