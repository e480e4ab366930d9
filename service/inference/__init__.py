"""Torch-free inference: ONNX Runtime sessions, stage checks, the pipeline, results, rendering.

``analyse(stage, inputs, registry=...)`` is the one entry point the CLI, the API and the queue
workers share; it returns an ``Analysis`` (JSON result + mask + overlay) per input image.
"""

from service.inference.histopathology import Aggregate, TileOptions
from service.inference.inputs import CheckedInput, check_input
from service.inference.pinning import ModelStageMismatchError, NoModelForStageError, pin_model
from service.inference.pipeline import analyse, analyse_each
from service.inference.result import DISCLAIMER, Analysis, AnalysisResult
from service.inference.runner import ModelRunner, RunnerOptions, clear_runners, get_runner
from service.inference.stages import Stage, WrongStageError, parse_stage

__all__ = [
    "DISCLAIMER",
    "Aggregate",
    "Analysis",
    "AnalysisResult",
    "CheckedInput",
    "ModelRunner",
    "ModelStageMismatchError",
    "NoModelForStageError",
    "RunnerOptions",
    "Stage",
    "TileOptions",
    "WrongStageError",
    "analyse",
    "analyse_each",
    "check_input",
    "clear_runners",
    "get_runner",
    "parse_stage",
    "pin_model",
]
