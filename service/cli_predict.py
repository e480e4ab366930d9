"""``breastdx predict``: analyse images with a registered model and write the results.

    breastdx predict --stage ultrasound scan1.png scan2.dcm --out results/ \\
        [--model NAME[@ALIAS|@VERSION]] [--store DIR]... [--runtime auto|onnxruntime|...]

For each input ``<stem>.mask.png`` (original geometry, 0/255), ``<stem>.overlay.png`` and
``<stem>.json`` (an ``AnalysisResult``) are written to ``--out`` and one JSON line is printed.
A DICOM input also gets ``<stem>.sr.dcm`` (TID 1500 findings) and, when a lesion was found,
``<stem>.seg.dcm``; ``--sc`` adds ``<stem>.sc.dcm`` (the overlay as Secondary Capture). They are
built by ``service.dicom.outputs``, as the API and the DICOM listener build them; a source whose
outputs cannot be built keeps its analysis and is reported as failed (exit 1).
An input that fails (undecodable, not an image, wrong stage) gets ``<stem>.error.json`` and a
line ``breastdx predict: NAME: CODE: message`` on stderr; the others are still analysed. Exit 0
when every input was analysed, 1 when any failed (or the model could not be used), 2 on bad usage.
The model runs on ``--runtime`` (default: the stage's ``BREASTDX_STAGE_RUNTIMES`` entry, else
``BREASTDX_RUNTIME``, as the service; unset: ``auto``;
docs/deployment.md, "Runtimes"); each result names the runtime that ran it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from breastdx.errors import BreastdxError
from imaging.record import ImageFormat
from models_registry.card import Stage
from models_registry.registry import Registry
from service.inference.runtime_choice import RUNTIME_CHOICES, parse_runtime

if TYPE_CHECKING:
    from service.inference.result import Analysis

PROG = "breastdx predict"
ERROR_SUFFIX = ".error.json"
logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--stage", required=True, choices=[s.value for s in Stage])
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", help="NAME, NAME@ALIAS or NAME@VERSION (default: the stage's)")
    parser.add_argument("--store", action="append", help="model store (repeatable)")
    parser.add_argument("--fp16", action="store_true", help="run the model's fp16 variant")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="inference runtime (default: the stage's BREASTDX_STAGE_RUNTIMES entry, else "
        "BREASTDX_RUNTIME, else auto: the fastest that passes the parity gate)",
    )
    parser.add_argument("--overlap", type=float, default=0.0, help="histopathology tile overlap")
    parser.add_argument("--aggregate", choices=["max", "top_k_mean"], default="top_k_mean")
    parser.add_argument("--top-k", type=int, default=3, help="windows in top_k_mean")
    parser.add_argument(
        "--sc", action="store_true", help="DICOM inputs: also write <stem>.sc.dcm (overlay)"
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _stems(inputs: Sequence[Path]) -> list[str]:
    """File stems, made unique with ``-2``, ``-3``... in input order."""
    seen: dict[str, int] = {}
    stems = []
    for path in inputs:
        stem = path.stem or "input"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _registry(stores: list[str] | None) -> Registry:
    """``--store`` folders, else the registry's default stores (``models_registry.settings``)."""
    return Registry(stores) if stores else Registry.default()


def _runtime(args: argparse.Namespace) -> str:
    """``--runtime``, else the stage's runtime in the service's settings
    (``BREASTDX_STAGE_RUNTIMES``, else ``BREASTDX_RUNTIME``, default auto).

    Raises:
        SettingsError: a ``BREASTDX_*`` variable does not parse.
    """
    from service.config import Settings, load_settings

    return str(args.runtime or load_settings(Settings, "BREASTDX_").runtime_for(args.stage))


def _run(args: argparse.Namespace) -> int:
    from service.inference import Aggregate, RunnerOptions, TileOptions, analyse_each
    from service.inference.render import write_outputs

    registry = _registry(args.store)
    runtime = parse_runtime(_runtime(args))
    outcomes = analyse_each(
        args.stage,
        list(args.inputs),
        registry=registry,
        model_ref=args.model,
        options=RunnerOptions(intra_op_threads=args.threads, fp16=args.fp16, runtime=runtime),
        tiles=TileOptions(
            overlap=args.overlap, aggregate=Aggregate(args.aggregate), top_k=args.top_k
        ),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, stem, outcome in zip(args.inputs, _stems(args.inputs), outcomes, strict=True):
        if isinstance(outcome, BreastdxError):
            failed += 1
            _report_error(args.out, path, stem, outcome)
            continue
        files = write_outputs(outcome, args.out, stem)
        result = outcome.result
        if result.input.format is ImageFormat.DICOM:
            try:
                files |= _write_dicom(path, outcome, registry, args.out / stem, sc=args.sc)
            except BreastdxError as exc:
                failed += 1
                _report_error(args.out, path, stem, exc)
        line = {
            "input": path.name,
            "files": {kind: str(file) for kind, file in files.items()},
            "model": result.model.ref,
            "runtime": result.model.runtime,
            "malignancy": result.malignancy.model_dump() if result.malignancy else None,
            "lesions": len(result.lesions),
            "warnings": result.warnings,
        }
        print(json.dumps(line))
    return 1 if failed else 0


def _write_dicom(
    path: Path, analysis: Analysis, registry: Registry, base: Path, *, sc: bool
) -> dict[str, Path]:
    """``<base>.sr.dcm``, ``<base>.seg.dcm`` (when a lesion was found), ``<base>.sc.dcm``.

    Raises:
        BreastdxError: the source header cannot be referenced (``dicom_source_unusable``).
    """
    from service.dicom.identity import SourceHeaderError, parse_header, to_bytes
    from service.dicom.outputs import build_outputs, build_seg_and_sr

    header = parse_header(path.read_bytes())
    card = registry.card(analysis.result.model.ref)
    try:
        if sc:
            built = build_outputs(header, analysis, card)
            objects = {"seg": built.seg, "sr": built.sr, "sc": built.sc}
        else:
            seg, sr = build_seg_and_sr(header, analysis, card)
            objects = {"seg": seg, "sr": sr}
    except BreastdxError:
        raise
    except Exception as exc:  # highdicom refused the source; its message may quote it
        raise SourceHeaderError(
            f"an unexpected {type(exc).__name__} stopped building the DICOM outputs"
        ) from None
    files = {}
    for kind, ds in objects.items():
        if ds is not None:
            files[kind] = base.with_name(f"{base.name}.{kind}.dcm")
            files[kind].write_bytes(to_bytes(ds))
    return files


def _report_error(folder: Path, path: Path, stem: str, error: BreastdxError) -> None:
    print(f"{PROG}: {path.name}: {error.code}: {error.message}", file=sys.stderr)
    document = {"input": path.name, "error": error.to_dict()}
    target = folder / f"{stem}{ERROR_SUFFIX}"
    target.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Analyse every input; exit 0 (all analysed), 1 (any failed) or 2 (bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0 (0: ONNX Runtime chooses)")
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if not 0.0 <= args.overlap <= 0.9:
        parser.error("--overlap must lie in [0, 0.9]")
    if args.out.exists() and not args.out.is_dir():
        parser.error("--out must be a folder")
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except BreastdxError as exc:  # the request as a whole: model, store, stage
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output folder cannot be written
        print(f"{PROG}: cannot write outputs: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback on the command line; the log keeps it
        logger.debug("unexpected error", exc_info=True)
        print(f"{PROG}: internal_error: {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
