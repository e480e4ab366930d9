"""Measure flip test-time averaging with ``breastdx evaluate``, without changing any model.

    python tools/flip_tta_check.py hv --stage histopathology ../shared/data/idc \
        --model histopathology-resnet18 --split models_registry/store/splits/histopathology.json \
        --subset val --out /tmp/tta-hv

The first argument names the flips: ``none``, ``h`` (left-right), ``v`` (up-down) or ``hv``
(the four views: as is, h, v, both); the rest is ``breastdx evaluate``'s command line. Each
model run then sees every view of each image; the raw outputs (logits) are averaged over the
views, a spatial output flipped back first, so the card's thresholds and temperatures apply to
the average as they would to one run. Use a fresh ``--out`` per setting: the evaluation's case
cache knows the model and card, not this script. Measured on the validation splits on
2026-12-06 (docs/results/*-model.md): no gain worth the extra model runs, so no card asks for it and
the service has no such option.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from evaluation.cli import main as evaluate
from service.inference import runner as runner_module

View = Callable[[np.ndarray], np.ndarray]


def views(flips: str) -> list[View]:
    """The identity, then each flip named (``h``, ``v``, and both where both are named)."""
    out: list[View] = [lambda a: a]
    if "h" in flips:
        out.append(lambda a: a[..., ::-1])
    if "v" in flips:
        out.append(lambda a: a[..., ::-1, :])
    if "h" in flips and "v" in flips:
        out.append(lambda a: a[..., ::-1, ::-1])
    return out


def averaged(run: Callable[..., dict[str, np.ndarray]], flips: str) -> Callable[..., dict]:
    """``ModelRunner.run`` over every view at once, its outputs averaged per image."""

    def run_views(self, batch: np.ndarray, max_batch: int = 64) -> dict[str, np.ndarray]:
        chosen = views(flips)
        n = len(batch)
        outputs = run(self, np.concatenate([np.ascontiguousarray(v(batch)) for v in chosen]))
        merged = {}
        for name, value in outputs.items():
            parts = [value[k * n : (k + 1) * n] for k in range(len(chosen))]
            if value.ndim == 4:  # (N, C, h, w): flip each view's map back (a flip undoes itself)
                parts = [view(part) for view, part in zip(chosen, parts, strict=True)]
            merged[name] = np.mean(parts, axis=0).astype(value.dtype)
        return merged

    return run_views


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"none", "h", "v", "hv"}:
        print("usage: flip_tta_check.py {none,h,v,hv} EVALUATE-ARGS...", file=sys.stderr)
        return 2
    if argv[0] != "none":
        runner_module.ModelRunner.run = averaged(runner_module.ModelRunner.run, argv[0])
    return evaluate(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
