"""``breastdx models``: list, show, register, promote and verify registered ONNX models.

Every sub-command takes ``--store PATH_OR_URI`` (repeatable; default: the registry's settings,
``BREASTDX_MODEL_STORE``, else the shipped store, then ``$BREASTDX_EXTRA_MODEL_STORES``) and
``--json``. Errors go to stderr (and, with ``--json``, as ``{"error": {...}}`` to stdout) with
exit status 1; bad usage exits with 2; ``verify`` exits with 1 if any version fails a check.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from breastdx.errors import BreastdxError
from models_registry.card import (
    SCHEMA_PATH,
    CardDraft,
    ModelCard,
    read_card,
    render_card_schema,
    write_card_schema,
)
from models_registry.registry import Registry, VerifyReport

PROG = "breastdx models"
Handler = Callable[[argparse.Namespace], int]


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(args.store) if args.store else Registry.default()


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows: list[dict[str, Any]] = []
    for name in registry.names():
        store = registry.store_of(name)
        by_version: dict[int, list[str]] = {}
        for alias, version in sorted(store.read_aliases(name).items()):
            by_version.setdefault(version, []).append(alias)
        for version in store.versions(name):
            try:
                card = store.read_card(name, version)
            except BreastdxError as exc:  # one broken card must not hide the others
                print(f"{PROG} list: {name}@{version}: {exc.message}", file=sys.stderr)
                continue
            rows.append(_list_row(card, by_version.get(version, []), store.uri))
    if not rows:
        stores = ", ".join(s.uri for s in registry.stores)
        _emit(args, [], f"no models in {stores}")
        return 0
    headers = ["MODEL", "VERSION", "ALIASES", "STAGE", "TASK", "SIZE", "SHA256", "REGISTERED"]
    table = [
        [
            r["model"],
            r["version"],
            ",".join(r["aliases"]) or "-",
            r["stage"],
            r["task"],
            _size(r["size_bytes"]),
            r["sha256"][:12],
            r["registered_at"][:19],
        ]
        for r in rows
    ]
    _emit(args, rows, _table(headers, table))
    return 0


def _list_row(card: ModelCard, aliases: list[str], store: str) -> dict[str, Any]:
    return {
        "model": card.name,
        "version": card.version,
        "aliases": aliases,
        "stage": card.stage.value,
        "task": card.task.value,
        "size_bytes": card.onnx.size_bytes,
        "sha256": card.onnx.sha256,
        "registered_at": card.registered_at.isoformat(),
        "store": store,
    }


def _cmd_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    card = registry.card(args.ref)
    aliases = sorted(a for a, v in registry.aliases(card.name).items() if v == card.version)
    _emit(args, card.model_dump(mode="json"), _describe(card, aliases))
    return 0


def _describe(card: ModelCard, aliases: list[str]) -> str:
    spec, arch, par = card.input, card.architecture, card.parity
    outputs = [
        f"{o.name} {o.shape} {o.activation.value} ({o.role.value}): {o.meaning}"
        for o in card.outputs
    ]
    fp16 = f"; fp16 variant {card.onnx.fp16.sha256[:12]}" if card.onnx.fp16 else ""
    pairs = [
        ("aliases", ", ".join(aliases) or "-"),
        ("stage / task", f"{card.stage.value} / {card.task.value}"),
        ("architecture", f"{arch.name} width={arch.width} parameters={arch.parameters:,}"),
        ("input", f"{spec.name} {spec.shape()} {spec.dtype.value} {spec.layout}"),
        ("preprocess", json.dumps(spec.preprocess, sort_keys=True)),
        ("outputs", "\n".join(outputs)),
        ("labels", ", ".join(card.labels)),
        ("thresholds", card.thresholds.model_dump_json()),
        (
            "calibration",
            f"temperature {card.calibration.temperature} "
            f"(fitted on {card.calibration.fitted_on or '-'})",
        ),
        (
            "onnx",
            f"{_size(card.onnx.size_bytes)} sha256 {card.onnx.sha256[:12]} "
            f"opset {card.onnx.opset}{fp16}",
        ),
        (
            "parity",
            f"max |dp| {par.max_abs_prob_diff:g}, mask agreement {par.mask_agreement} "
            f"over {par.n_images} images",
        ),
        (
            "training",
            f"commit {card.training.git_commit}, {card.training.date:%Y-%m-%d}, "
            f"seed {card.training.seed}, {card.training.hardware}",
        ),
        ("data", "; ".join(f"{d.name} ({d.licence})" for d in card.provenance)),
        ("intended use", card.intended_use),
        ("limitations", "\n".join(f"- {item}" for item in card.limitations)),
    ]
    width = max(len(k) for k, _ in pairs)
    lines = [card.ref]
    for key, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines += [f"  {key:<{width}}  {first}", *(f"  {'':<{width}}  {r}" for r in rest)]
    return "\n".join(lines) + "\n\n" + _metrics_table(card)


def _metrics_table(card: ModelCard) -> str:
    if not card.metrics:
        return "metrics: none recorded"
    rows = [
        [
            m.name,
            f"{m.value:.4f}",
            f"[{m.ci_low:.4f}, {m.ci_high:.4f}]"
            if m.ci_low is not None and m.ci_high is not None
            else "-",
            m.n,
            m.dataset,
            m.split,
            m.protocol.value,
        ]
        for m in card.metrics
    ]
    return _table(["METRIC", "VALUE", "CI", "N", "DATASET", "SPLIT", "PROTOCOL"], rows)


def _cmd_register(args: argparse.Namespace) -> int:
    registry = _registry(args)
    draft = read_card(CardDraft, Path(args.card))
    card = registry.register(
        args.name,
        Path(args.onnx),
        draft,
        fp16_path=Path(args.fp16_onnx) if args.fp16_onnx else None,
        alias=args.alias,
        check_contract=not args.no_check,
    )
    store = registry.store_of(card.name).uri
    data = {
        "model": card.name,
        "version": card.version,
        "sha256": card.onnx.sha256,
        "size_bytes": card.onnx.size_bytes,
        "store": store,
        "alias": args.alias,
    }
    text = (
        f"registered {card.ref} in {store} "
        f"(sha256 {card.onnx.sha256[:12]}..., {_size(card.onnx.size_bytes)})"
    )
    if args.alias:
        text += f"\n{card.name}@{args.alias} -> {card.version}"
    _emit(args, data, text)
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    found = registry.resolve(args.ref)
    previous = registry.promote(found.name, found.version, args.alias)
    data = {
        "model": found.name,
        "alias": args.alias,
        "version": found.version,
        "previous": previous,
    }
    was = "unset" if previous is None else str(previous)
    _emit(args, data, f"{found.name}@{args.alias} -> {found.version} (was {was})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    reports = _registry(args).verify(args.ref, runtimes=not args.no_runtimes)
    failed = [r for r in reports if not r.ok]
    data = {"ok": not failed, "reports": [r.to_dict() for r in reports]}
    _emit(args, data, _verify_text(reports, failed))
    return 1 if failed else 0


def _verify_text(reports: list[VerifyReport], failed: list[VerifyReport]) -> str:
    if not reports:
        return "no models to verify"
    lines = []
    for report in reports:
        lines.append(f"{'OK  ' if report.ok else 'FAIL'}  {report.name}@{report.version}")
        lines += [f"        {c.name}: {c.detail}" for c in report.checks if not c.ok]
    lines.append(f"{len(reports)} version(s) checked, {len(failed)} failed")
    return "\n".join(lines)


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.write:
        target = write_card_schema(Path(args.output) if args.output else SCHEMA_PATH)
        print(f"wrote {target}")
    else:
        print(render_card_schema(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-parser per sub-command)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        action="append",
        metavar="PATH_OR_URI",
        help="model store (repeatable; default: BREASTDX_MODEL_STORE or the "
        "shipped store, then $BREASTDX_EXTRA_MODEL_STORES)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=help_, description=help_)
        cmd.set_defaults(handler=handler)
        return cmd

    add("list", _cmd_list, "list every version with its aliases")
    add("show", _cmd_show, "show a model card").add_argument("ref", help="NAME[@VERSION|@ALIAS]")
    reg = add("register", _cmd_register, "register an ONNX file and its card as a new version")
    reg.add_argument("--name", required=True)
    reg.add_argument("--onnx", required=True, metavar="FILE")
    reg.add_argument("--card", required=True, metavar="CARD.json", help="a card draft")
    reg.add_argument("--fp16-onnx", metavar="FILE", help="optional fp16 variant")
    reg.add_argument("--alias", help="also point this alias at the new version")
    reg.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime checks")
    promote = add("promote", _cmd_promote, "point an alias at a version")
    promote.add_argument("ref", help="NAME@VERSION (or any reference)")
    promote.add_argument("--alias", required=True, help="e.g. production, staging")
    verify = add(
        "verify",
        _cmd_verify,
        "check hashes, ONNX Runtime load, the card contract and every other installed runtime's "
        "parity against ONNX Runtime",
    )
    verify.add_argument("ref", nargs="?", help="one reference; default: every version")
    verify.add_argument(
        "--no-runtimes", action="store_true", help="skip the other runtimes' parity gate"
    )
    schema = add("schema", _cmd_schema, "print (or --write) the model card JSON Schema")
    schema.add_argument("--write", action="store_true", help=f"write it (default {SCHEMA_PATH})")
    schema.add_argument("--output", metavar="PATH", help="with --write: where to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``breastdx models``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        handler: Handler = args.handler
        return handler(args)
    except BreastdxError as exc:
        print(f"{PROG} {args.command}: {exc.message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": exc.to_dict()}, default=str))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
