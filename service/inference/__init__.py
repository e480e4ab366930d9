"""Torch-free inference: ONNX Runtime sessions, stage checks, the pipeline, results, rendering.

``analyse(stage, inputs, registry=...)`` is the one entry point the CLI, the API and the queue
workers share; it returns an ``Analysis`` (JSON result + mask + overlay) per input image.
"""

from service.inference.histopathology import Aggregate, TileOptions
from service.inference.pipeline import NoModelForStageError, analyse, analyse_each
from service.inference.result import DISCLAIMER, Analysis, AnalysisResult
from service.inference.runner import ModelRunner, RunnerOptions, clear_runners, get_runner
from service.inference.stages import ModelStageMismatchError, Stage, WrongStageError

__all__ = [
    "DISCLAIMER",
    "Aggregate",
    "Analysis",
    "AnalysisResult",
    "ModelRunner",
    "ModelStageMismatchError",
    "NoModelForStageError",
    "RunnerOptions",
    "Stage",
    "TileOptions",
    "WrongStageError",
    "analyse",
    "analyse_each",
    "clear_runners",
    "get_runner",
]
