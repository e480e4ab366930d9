"""torch eager vs every installed runtime on the same ONNX file, per model, at batch 1 and more.

Runtimes (``models_registry.runtime``, as the service opens them): ONNX Runtime on its CPU
provider and OpenVINO on CPU at float32 precision; ``--openvino-variants`` adds OpenVINO with its
own default precision hint (bfloat16 on CPUs with bf16 units: other numerics, the service never
uses it) and with ``PERFORMANCE_HINT THROUGHPUT``, each with the largest probability difference
from ONNX Runtime on the same input.

Models: ``--checkpoint best.pt`` runs (weights loaded, exported to a temporary ONNX file), else
every registered model with a ``production`` alias (the registry's ONNX file; the torch side is
the same architecture rebuilt from the card's training config with random weights: timing does
not depend on weight values), else the shipped training configs (``training/configs/*.yaml``,
random weights). Both sides run on CPU with the same thread count, on random inputs of the
model's input size; each case repeats until ``--budget`` seconds (at least ``--min-repeat``
times, after one warm-up) and reports the median.

Usage: ``.venv/bin/python bench/bench_models.py [--checkpoint best.pt ...] [--store DIR]
[--config cfg.yaml ...] [--batch 8] [--threads 2] [--budget 3] [--openvino-variants]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from models_registry.card import Runtime
from models_registry.registry import PRODUCTION, Registry
from models_registry.runtime import (
    CPU_PROVIDER,
    OPENVINO_CONFIG,
    RuntimeOptions,
    installed_runtimes,
    open_session,
)
from training.config import TrainConfig, config_from_dict, load_config
from training.export import TrainedRun, export_onnx, load_trained
from training.trainer import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.yaml"))


@dataclass(frozen=True)
class Case:
    """One model to time: its label, torch module, ONNX file and input shape ``(C, H, W)``."""

    label: str
    weights: str  # "trained" or "random"
    model: torch.nn.Module
    onnx_path: Path
    chw: tuple[int, int, int]


def _random_run(config: TrainConfig) -> TrainedRun:
    no_download = config.model.model_copy(update={"pretrained": None})
    model = build_model(config.model_copy(update={"model": no_download})).eval()
    return TrainedRun(Path("random.pt"), config, model, {})  # type: ignore[arg-type]


def _chw(config: TrainConfig) -> tuple[int, int, int]:
    return (config.preprocess.channels, *config.preprocess.input_size)


def cases_from_checkpoints(paths: list[Path], folder: Path) -> list[Case]:
    cases = []
    for i, path in enumerate(paths):
        run = load_trained(path)
        onnx_path = export_onnx(run, folder / f"checkpoint-{i}.onnx")
        label = f"{path.parent.name}/{path.name} ({run.config.model.name})"
        cases.append(Case(label, "trained", run.model, onnx_path, _chw(run.config)))
    return cases


def cases_from_registry(registry: Registry) -> list[Case]:
    cases = []
    for name in registry.names():
        if PRODUCTION not in registry.aliases(name):
            continue
        loaded = registry.load(f"{name}@{PRODUCTION}")
        config = config_from_dict(loaded.card.training.config)
        run = _random_run(config)
        label = f"{loaded.card.ref} ({config.model.name})"
        cases.append(Case(label, "random", run.model, loaded.onnx_path, _chw(config)))
    return cases


def cases_from_configs(paths: list[Path], folder: Path) -> list[Case]:
    cases = []
    for path in paths:
        config = load_config(path)
        run = _random_run(config)
        onnx_path = export_onnx(run, folder / f"{path.stem}.onnx")
        cases.append(Case(f"{path.stem}", "random", run.model, onnx_path, _chw(config)))
    return cases


def median_ms(fn: Callable[[], object], budget: float, min_repeat: int) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call."""
    fn()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_repeat or time.perf_counter() - began < budget:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values.astype(np.float64)))


def _sigmoid_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |sigmoid(a) - sigmoid(b)| over every output (probability scale)."""
    return max(float(np.max(np.abs(_sigmoid(x) - _sigmoid(y)))) for x, y in zip(a, b, strict=True))


def _openvino_variants(case: Case, x: np.ndarray, threads: int) -> dict[str, object]:
    """OpenVINO compiled with its default precision, and with the throughput hint."""
    import openvino as ov

    core = ov.Core()
    variants = {
        "ov default precision": {"PERFORMANCE_HINT": "LATENCY"},
        "ov f32 throughput": {**OPENVINO_CONFIG, "PERFORMANCE_HINT": "THROUGHPUT"},
    }
    compiled = {}
    for label, config in variants.items():
        model = core.compile_model(
            str(case.onnx_path), "CPU", {**config, "INFERENCE_NUM_THREADS": str(threads)}
        )
        compiled[label] = model.create_infer_request()
    return compiled


def time_case(
    case: Case, batch: int, threads: int, budget: float, repeat: int, variants: bool
) -> dict[str, tuple[float, float | None]]:
    """``{label: (ms per batch of batch images, max |prob diff| from onnxruntime)}``."""
    x = np.random.default_rng(0).random((batch, *case.chw), dtype=np.float32)  # (B, C, H, W)
    tensor = torch.from_numpy(x)
    torch.set_num_threads(threads)

    def eager() -> object:
        with torch.inference_mode():
            return case.model(tensor)

    results: dict[str, tuple[float, float | None]] = {
        "torch": (median_ms(eager, budget, repeat), None)
    }
    reference: list[np.ndarray] = []
    names = list(getattr(case.model, "output_names", ()))
    for runtime in installed_runtimes():
        providers = (CPU_PROVIDER,) if runtime is Runtime.ONNXRUNTIME else None
        options = RuntimeOptions(threads=threads, spinning=False, providers=providers)
        session = open_session(case.onnx_path, runtime, options)
        outputs = session.run(names, {"image": x})
        reference = reference or outputs
        ms = median_ms(lambda s=session, n=names: s.run(n, {"image": x}), budget, repeat)
        results[runtime.value] = (ms, _sigmoid_diff(reference, outputs))
    if variants and Runtime.OPENVINO in installed_runtimes():
        for label, request in _openvino_variants(case, x, threads).items():
            out = request.infer({"image": x})
            got = [np.asarray(out[name]) for name in names]
            ms = median_ms(lambda r=request: r.infer({"image": x}), budget, repeat)
            results[label] = (ms, _sigmoid_diff(reference, got))
    return results


def _header(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"# torch {torch.__version__} (eager, inference_mode) vs onnxruntime {ort.__version__} "
        f"(CPUExecutionProvider) and the other installed runtimes "
        f"({', '.join(r.value for r in installed_runtimes())})\n# {threads} intra-op thread(s) "
        f"each, spinning off; {os.cpu_count()} logical CPUs ({cpu}); python "
        f"{platform.python_version()}; median of repeats, ms per batch; x: speed-up over "
        "onnxruntime; dp: max |prob diff| from onnxruntime"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--store", action="append", help="registry store (default: shipped)")
    parser.add_argument("--config", type=Path, action="append", default=[])
    parser.add_argument("--batch", type=int, default=8, help="the larger batch (and 1)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--min-repeat", type=int, default=3)
    parser.add_argument(
        "--openvino-variants",
        action="store_true",
        help="also OpenVINO at its default precision and with the throughput hint",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = cases_from_checkpoints(args.checkpoint, folder)
        if not cases and not args.config:
            registry = Registry(args.store) if args.store else Registry.default()
            cases = cases_from_registry(registry)
        if not cases:
            cases = cases_from_configs(args.config or CONFIGS, folder)
        print(_header(args.threads))
        for case in cases:
            for batch in sorted({1, args.batch}):
                results = time_case(
                    case, batch, args.threads, args.budget, args.min_repeat, args.openvino_variants
                )
                base = results[Runtime.ONNXRUNTIME.value][0]
                cells = [f"torch {results['torch'][0]:.2f}"]
                for label, (ms, diff) in list(results.items())[1:]:
                    cells.append(f"{label} {ms:.2f} ({base / ms:.2f}x, dp {diff:.1e})")
                print(f"{case.label[:44]:<44} {case.weights:>7} b{batch:<3} " + "; ".join(cells),
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
