"""Where one analysis spends its time, per phase, in process: no HTTP, no job, no queue.

Each image goes through ``service.inference.analyse`` (the pipeline the API's jobs run) with a
stage's served model ``--runs`` times after ``--warm`` unrecorded runs; the table gives the
median of each phase the result's ``timings_ms`` reports: ``decode``, ``preprocess`` (the stage
and tissue checks included), ``inference`` (the model run alone) and ``postprocess`` (the
outputs' activation, the mask at the original geometry, lesions, scores), and their ``total``.
It is the finer instrument beside ``bench_service.py``: a change of a millisecond in
pre- or post-processing is lost in an end-to-end figure on a shared 2-core machine, not here.

To compare two commits, run each checkout's own copy, alternating, in the same minutes:

    git worktree add /tmp/before <commit>
    .venv/bin/python /tmp/before/bench/bench_phases.py --stage ultrasound IMAGE
    .venv/bin/python bench/bench_phases.py --stage ultrasound IMAGE

Usage: ``.venv/bin/python bench/bench_phases.py --stage ultrasound IMAGE [IMAGE ...]
[--runs N] [--runtime auto|onnxruntime|...] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from bench.bench_service import machine  # noqa: E402
from breastdx.errors import BreastdxError  # noqa: E402
from models_registry.store import SHIPPED_STORE  # noqa: E402
from service.config import RuntimeName, Settings  # noqa: E402
from service.inference import Stage, analyse  # noqa: E402
from service.jobs.backend import get_backend  # noqa: E402
from service.jobs.execute import runner_options  # noqa: E402

PHASES = ("decode", "preprocess", "inference", "postprocess", "total")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, DICOM, ...)")
    parser.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    parser.add_argument("--store", type=Path, default=SHIPPED_STORE)
    parser.add_argument("--model", default=None, help="NAME[@VERSION]; default: the stage's")
    parser.add_argument(
        "--runtime", default="auto", choices=get_args(RuntimeName), help="as BREASTDX_RUNTIME"
    )
    parser.add_argument("--runs", type=_positive, default=40, help="recorded analyses per image")
    parser.add_argument("--warm", type=_positive, default=3, help="unrecorded analyses first")
    parser.add_argument("--json", type=Path, default=None, help="write the medians here")
    return parser.parse_args(argv)


def phase_medians(
    image: bytes, stage: Stage, settings: Settings, model: str | None, runs: int, warm: int
) -> tuple[dict[str, float], str]:
    """The median of each phase over ``runs`` analyses of ``image`` (after ``warm``), and the
    model and runtime that ran them."""
    registry = get_backend(settings).registry
    options = runner_options(settings, stage)
    rows: list[dict[str, Any]] = []
    for index in range(warm + runs):
        analysis = analyse(stage, [image], registry=registry, model_ref=model, options=options)[0]
        if index >= warm:
            rows.append(analysis.result.timings_ms.model_dump())
    served = analysis.result.model
    runtime = served.runtime.value if served.runtime is not None else "?"
    medians = {phase: round(statistics.median(row[phase] for row in rows), 3) for phase in PHASES}
    return medians, f"{served.ref} on {runtime}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stage = Stage(args.stage)
    settings = Settings(model_store=args.store, runtime=args.runtime)
    print(machine())
    print(f"# stage {stage.value}; store {args.store}; BREASTDX_RUNTIME {args.runtime}")
    print(f"# median ms of {args.runs} in-process analyses each, after {args.warm} unrecorded")
    print(f"{'image':40s}" + "".join(f"{phase:>12s}" for phase in PHASES) + "  served")
    found: dict[str, dict[str, Any]] = {}
    for path in args.images:
        try:
            medians, served = phase_medians(
                path.read_bytes(), stage, settings, args.model, args.runs, args.warm
            )
        except (OSError, BreastdxError) as exc:
            print(f"bench_phases: {path}: {exc}", file=sys.stderr)
            return 2
        found[str(path)] = {"served": served, "median_ms": medians}
        row = "".join(f"{medians[p]:12.2f}" for p in PHASES)
        print(f"{path.name[-40:]:40s}{row}  {served}")
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
