"""``breastdx evaluate``: score a registered model on labelled local data at original resolution.

    breastdx evaluate --stage ultrasound DATA [DATA...] --out DIR [--model NAME@VERSION]
        [--format F] [--split FILE --subset test] [--runtime RUNTIME]
        [--register [--register-store DIR] [--alias production]]

Each DATA folder is one data set, its format recognised from the layout (``--format`` names it):
BUSI, BUS-BRA, CBIS-DDSM (COCO boxes), mini-MIAS, IDC or a hospital CSV (docs/evaluation.md).
Every case runs through the service's pipeline; ``DIR/report.json``, ``DIR/report.html`` and
``DIR/plots/`` hold the figures; ``DIR/cache/`` the scored cases (a re-run resumes). With
``--register`` a new version of the model is registered whose card carries these figures.
The model runs on ``--runtime`` (default ``onnxruntime``: the reference runtime, on which card
figures are measured; ``BREASTDX_RUNTIME`` is not read), even one the card does not allow yet;
the report names it. ``--runtime openvino-bf16 --register`` lists that reduced-precision
runtime on the new card with these figures, refused where a Dice or AUC figure is more than
0.01 below the card's own (docs/deployment.md, "Runtimes").

Exit 0: every case scored; 1: a case was skipped (bad image, missing or mismatched mask) or the
model is unusable; 2: bad usage or a data folder in no known format.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from breastdx.errors import BreastdxError
from evaluation import formats
from evaluation.cases import Case
from evaluation.figures import N_BOOT
from models_registry.card import Runtime, Stage
from models_registry.registry import Registry
from service.inference.runtime_choice import RUNTIME_CHOICES

if TYPE_CHECKING:
    from service.inference import ModelRunner, RunnerOptions

PROG = "breastdx evaluate"
REGISTRABLE = (Runtime.ONNXRUNTIME.value, *(r.value for r in Runtime if r.reduced_precision))
logger = logging.getLogger(__name__)


class SplitUseError(BreastdxError):
    """A split file cannot restrict this data set (unreadable, no such subset, no case of it)."""

    code = "split_unusable"
    title = "Split file not usable"
    http_status = 422


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    parser.add_argument("data", nargs="+", type=Path, metavar="DATA", help="data set folders")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument("--model", help="NAME, NAME@ALIAS or NAME@VERSION (default: the stage's)")
    parser.add_argument("--store", action="append", help="model store (repeatable)")
    parser.add_argument("--format", choices=sorted(formats.FORMATS), help="data-set format")
    parser.add_argument("--split", type=Path, help="a split file (models_registry/store/splits)")
    parser.add_argument("--subset", default="test", help="the split's part to evaluate (test)")
    parser.add_argument("--limit", type=int, help="only the first N cases (a quick look)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=Runtime.ONNXRUNTIME.value,
        help="inference runtime (default: onnxruntime, the reference card figures are measured on)",
    )
    parser.add_argument("--register", action="store_true", help="register a re-carded version")
    parser.add_argument("--register-store", type=Path, help="store for --register (the model's)")
    parser.add_argument("--alias", help="alias for the registered version, e.g. production")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


@dataclass(frozen=True)
class SplitPart:
    """The entries of one part of a split file, and what the file says of each sample."""

    ids: list[str]  # as written: ``id``, or ``dataset:id`` / ``dataset/id``
    classes: dict[str, str]  # sample key -> class name
    paths: dict[str, str]  # sample key -> image path as recorded
    several: bool  # the split holds samples of several data sets


def _split_part(split_path: Path, subset: str) -> SplitPart:
    from training.data.records import DatasetError
    from training.data.splits import Split

    try:
        split = Split.load(split_path)
    except DatasetError as exc:
        raise SplitUseError(exc.message) from exc
    if subset not in split.names():
        raise SplitUseError(f"{split_path} has no subset {subset!r}; it has {list(split.names())}")
    return SplitPart(
        ids=split.ids(subset),
        classes={key: record.class_name for key, record in split.samples.items()},
        paths={key: record.image_path for key, record in split.samples.items()},
        several=len(split.params.get("datasets", [])) > 1,
    )


DATASETS = ("busi", "busbra", "cbis_ddsm", "mini_mias", "idc", "csv")


def _prefix(entry: str) -> tuple[str | None, str]:
    """``(data set, id)`` of a split entry: ``busi:benign (1)`` or ``busi/benign (1)`` name
    their data set; a plain id names none."""
    for sep in (":", "/"):
        prefix, found, rest = entry.partition(sep)
        if found and prefix in DATASETS:
            return prefix, rest
    return None, entry


def _under(path: str | None, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root.resolve())


def restrict(
    cases: list[Case], part: SplitPart, dataset: str, root: Path
) -> tuple[list[Case], list[str]]:
    """The cases the split names for ``dataset`` (in split order), and the split's ids of this
    data set that are absent from the data. An entry prefixed with another data set belongs to
    it; so does, in a split of several data sets, an unprefixed entry that is not in this data
    and whose recorded image lies outside ``root``."""
    by_id = {c.id: c for c in cases}
    chosen, missing = [], []
    for entry in part.ids:
        owner, own = _prefix(entry)
        if owner is not None and owner != dataset:
            continue
        if own in by_id:
            chosen.append(by_id[own])
        elif owner is None and part.several and not _under(part.paths.get(entry), root):
            continue
        else:
            missing.append(own)
    return chosen, missing


def _registry(stores: list[str] | None) -> Registry:
    return Registry(stores) if stores else Registry.default()


def _evaluate_one(
    root: Path, args: argparse.Namespace, registry: Registry, runner: ModelRunner
) -> dict[str, Any]:
    from evaluation import report
    from evaluation.card import split_facts
    from evaluation.run import CaseCache, Progress, Skipped, evaluate_cases, scoring_key

    card = runner.card

    fmt = formats.get_format(args.format) if args.format else formats.detect_format(root)
    cases = formats.read_cases(root, fmt)
    dataset = cases[0].dataset
    split_info: dict[str, Any] | None = None
    missing: list[str] = []
    if args.split:
        part = _split_part(args.split, args.subset)
        cases, missing = restrict(cases, part, dataset, root)
        if not cases:
            raise SplitUseError(
                f"split {args.split} names no case of the {fmt.display} data at {root} in its "
                f"{args.subset!r} part"
            )
        if args.limit:
            cases, missing = cases[: args.limit], []
        own = {
            _prefix(k)[1]: v for k, v in part.classes.items() if _prefix(k)[0] in (None, dataset)
        }
        split_info = split_facts(args.split, args.subset, [c.id for c in cases] + missing, own)
    cases = cases[: args.limit] if args.limit else cases
    records, skipped = evaluate_cases(
        cases,
        stage=Stage(args.stage),
        registry=registry,
        model_ref=card.ref,
        cache=CaseCache(args.out, card.onnx.sha256, scoring_key(card), runner.runtime),
        progress=Progress(len(cases), fmt.display),
        options=runner_options(args),
    )
    skipped += [
        Skipped(m, dataset, "not_in_data", f"split {args.split} names {m!r}, absent from {root}")
        for m in missing
    ]
    for item in skipped:
        print(f"{PROG}: {item.dataset}: skipped {item.id}: {item.message}", file=sys.stderr)
    section: dict[str, Any] = {
        "name": dataset,
        "display": fmt.display,
        "format": fmt.name,
        "root": str(root),
    }
    section["split"] = split_info
    section |= report.dataset_section(records, skipped, card=card, n_boot=args.n_boot)
    by_id = {c.id: c for c in cases}
    section["plots"] = report.write_plots(args.out, dataset, section, records, by_id)
    return section


def runner_options(args: argparse.Namespace) -> RunnerOptions:
    """``--threads`` and ``--runtime`` as the runner takes them; a runtime named here runs even
    where the card does not allow it or it misses the parity gate (the report names it, with
    its gate figures): evaluating it is how a card comes to allow it."""
    from service.inference import RunnerOptions
    from service.inference.runtime_choice import parse_runtime

    runtime = parse_runtime(args.runtime)
    return RunnerOptions(intra_op_threads=args.threads, runtime=runtime, measuring=True)


def _run(args: argparse.Namespace, command: str) -> int:
    from evaluation import report, report_html
    from service.inference import get_runner
    from service.inference.pipeline import default_model_ref

    registry = _registry(args.store)
    card = registry.card(args.model or default_model_ref(Stage(args.stage), registry))
    if card.stage.value != args.stage:
        print(
            f"{PROG}: model {card.ref} serves {card.stage.value}, not {args.stage}", file=sys.stderr
        )
        return 2
    runner = get_runner(card.ref, registry, runner_options(args))  # a runtime error: exit 1
    print(f"{PROG}: {card.ref} runs on {runner.selection.describe()}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [_evaluate_one(root, args, registry, runner) for root in args.data]
    document = report.report_document(
        card, command, sections, args.n_boot, runtime=report.runtime_section(runner.selection)
    )
    report.write_json(args.out, document)
    report_html.write_html(args.out, document)
    print(f"{PROG}: {card.ref}: report {args.out / 'report.html'}", file=sys.stderr)
    for line in report.summary_lines(document):  # 95 % intervals in brackets
        print(line)
    skipped = sum(s["n_skipped"] for s in sections)
    if args.register:
        from evaluation.card import register_evaluated

        target = Registry([args.register_store]) if args.register_store else None
        new = register_evaluated(
            registry, card, document, target=target, alias=args.alias, selection=runner.selection
        )
        listed = (
            f"{runner.runtime.value} in reduced_precision, "
            if runner.runtime.reduced_precision
            else ""
        )
        print(f"{PROG}: registered {new.ref} with {listed}the evaluated figures", file=sys.stderr)
    return 1 if skipped else 0


def main(argv: list[str] | None = None) -> int:
    """Evaluate; exit 0 (all scored), 1 (a case skipped, model unusable) or 2 (bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.n_boot < 1 or args.threads < 0 or (args.limit is not None and args.limit < 1):
        parser.error("--n-boot and --limit must be >= 1, --threads >= 0")
    if args.register and args.limit:
        parser.error("--register takes the whole split, not --limit")
    if args.register and not args.split:
        parser.error("--register needs --split: a card's figures name their test split")
    if args.register and args.runtime not in REGISTRABLE:
        parser.error(
            "--register takes the figures of onnxruntime (the card's own) or of a "
            f"reduced-precision runtime ({', '.join(REGISTRABLE[1:])}), not {args.runtime}"
        )
    if args.out.exists() and not args.out.is_dir():
        parser.error("--out must be a folder")
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(["breastdx", "evaluate", *(sys.argv[1:] if argv is None else argv)])
    return exit_code(PROG, lambda: _run(args, command))


def exit_code(prog: str, run: Callable[[], int]) -> int:
    """``run()``, its errors printed as ``prog: code: message``: exit 2 for data or a split
    that cannot be used, 1 for the model, the store, a registration or a file."""
    try:
        return run()
    except (formats.UnknownLayoutError, SplitUseError) as exc:
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except BreastdxError as exc:  # the model, the store, a registration
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: cannot read or write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
