"""``breastdx grid``: run or resume the paper's experiment grid and write its reports.

    breastdx grid --modality ultrasound --scale cpu --data-root ../shared/data \
        --protocol both --out runs/grid --report-dir docs/results
    breastdx grid --modality all --scale smoke --synthetic --out /tmp/grid
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from breastdx.errors import BreastdxError
from training.grid.report import carry_over, collect, write_csv, write_markdown
from training.grid.run import run_grid
from training.grid.spec import DATASETS, Cell, Modality, Scale, build_cells

PROTOCOLS = {
    "both": ["leakage_safe", "paper"],
    "leakage_safe": ["leakage_safe"],
    "paper": ["paper"],
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastdx grid", description=__doc__.splitlines()[0])
    parser.add_argument("--modality", choices=[*Modality, "all"], default="all")
    parser.add_argument("--scale", choices=list(Scale), default=Scale.SMOKE.value)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-root", type=Path, help="folder holding busi/, idc/, mammography/")
    source.add_argument("--synthetic", action="store_true", help="generate small synthetic data")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="both")
    parser.add_argument("--models", nargs="*", help="only these paper models")
    parser.add_argument("--losses", nargs="*", help="only these losses")
    parser.add_argument("--policies", nargs="*", help="only these policies")
    parser.add_argument("--out", type=Path, default=Path("runs/grid"), help="run folders")
    parser.add_argument("--report-dir", type=Path, help="write <modality>.md/.csv here")
    parser.add_argument("--notes-dir", type=Path, help="<modality>.md notes appended to reports")
    parser.add_argument("--report-only", action="store_true", help="write reports, train nothing")
    parser.add_argument(
        "--carry-over",
        action="store_true",
        help="cells with no finished run folder keep their figures from the existing CSV report "
        "(marked in the report)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=_non_negative,
        default=0,
        help="torch CPU threads per cell (0: torch's default); with 1, a cell's figures repeat "
        "bit for bit on the same CPU",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def _non_negative(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _data_roots(args: argparse.Namespace, modalities: list[Modality]) -> dict[Modality, Path]:
    if args.synthetic:
        from training.data import synthetic

        base = args.out / "synthetic-data"
        makers = {
            Modality.ULTRASOUND: lambda: synthetic.make_busi(base / "busi", n=24),
            Modality.MAMMOGRAPHY: lambda: synthetic.make_mias(base / "mias", n=16, size=128),
            Modality.HISTOPATHOLOGY: lambda: synthetic.make_idc(base / "idc", n=48, patients=8),
        }
        return {m: makers[m]() for m in modalities}
    if args.data_root is None:
        raise BreastdxError("give --data-root (the real data) or --synthetic")
    return {m: args.data_root / DATASETS[m][1] for m in modalities}


def _report(
    args: argparse.Namespace, modality: Modality, cells: list[Cell], argv: list[str]
) -> None:
    from training.checkpoint import git_commit

    results = collect(cells, Scale(args.scale), args.out)
    report_dir = args.report_dir or args.out
    stem = f"{modality.value}-{args.scale}"
    if args.carry_over:
        results = carry_over(
            results, report_dir / f"{stem}.csv", _previous_commit(report_dir / f"{stem}.md")
        )
    notes_file = args.notes_dir / f"{modality.value}.md" if args.notes_dir else None
    notes = notes_file.read_text(encoding="utf-8") if notes_file and notes_file.is_file() else None
    skip = {"--report-only", "--carry-over"}
    command = shlex.join(["breastdx", "grid", *[a for a in argv if a not in skip]])
    write_csv(results, report_dir / f"{stem}.csv")
    write_markdown(
        modality,
        results,
        Scale(args.scale),
        args.out,
        report_dir / f"{stem}.md",
        command=command,
        commit=git_commit(),
        notes=notes,
    )
    done = sum(r.status == "done" for r in results)
    print(f"{modality.value}: {done}/{len(results)} cells done -> {report_dir / stem}.md")


def _previous_commit(report: Path) -> str:
    """Where carried cells come from: the commit line of the report being replaced."""
    if report.is_file():
        for line in report.read_text(encoding="utf-8").splitlines():
            if line.startswith("- commit `"):
                return "report of commit " + line.split("`")[1][:12]
    return "an earlier report"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    modalities = list(Modality) if args.modality == "all" else [Modality(args.modality)]
    try:
        roots = {} if args.report_only else _data_roots(args, modalities)
        for modality in modalities:
            cells = build_cells(
                modality,
                PROTOCOLS[args.protocol],
                models=args.models,
                losses=args.losses,
                policies=args.policies,
            )
            if not cells:
                print(
                    f"breastdx grid: no {modality.value} cell matches the filters", file=sys.stderr
                )
                return 2
            if not args.report_only:
                records = run_grid(
                    cells,
                    Scale(args.scale),
                    roots,
                    args.out,
                    seed=args.seed,
                    device=args.device,
                    threads=args.threads,
                )
                failed = [r for r in records if r.get("status") != "done"]
                for record in failed:
                    print(f"breastdx grid: cell failed: {record.get('error')}", file=sys.stderr)
            _report(args, modality, cells, argv)
    except BreastdxError as exc:
        print(f"breastdx grid: {exc.message}", file=sys.stderr)
        return 1
    return 0
