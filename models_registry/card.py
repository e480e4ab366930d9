"""The model card: how to feed an ONNX model, what its outputs mean and what it was measured on.

A card travels with every registered ONNX file (``card.json`` beside ``model.onnx``); the service
reads input, preprocessing, thresholds, calibration and labels from it, never from its own
constants. Two directions of the same content:

- :class:`CardDraft` is what an exporter writes: everything but the registry's facts.
- :class:`ModelCard` is what the registry stores: the draft plus name, version, registration
  time and the ONNX file's sha256 and size, computed at registration.

The JSON Schema of :class:`ModelCard` is committed at ``models_registry/schema/``: regenerate it
with ``breastdx models schema --write``; bump :data:`CARD_SCHEMA_VERSION` on incompatible changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models_registry.errors import InvalidCardError

if TYPE_CHECKING:
    from imaging.lesion_score import LesionScorer
    from imaging.preprocess import PreprocessConfig

CARD_SCHEMA_VERSION: Final = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "model-card.schema.json"
ONNX_FILE: Final = "model.onnx"
FP16_FILE: Final = "model.fp16.onnx"
INT8_FILE: Final = "model.int8.onnx"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_PRECISION_LOSS: Final = 0.01  # Dice/AUC a reduced-precision runtime may lose (issue 16)

DEFAULT_INTENDED_USE = (
    "Research and software development only: locating suspicious lesions and scoring "
    "malignancy on breast images to study the method of the seed paper. Not for clinical use."
)
DEFAULT_LIMITATIONS = (
    "Not for clinical use: not a medical device, not cleared or approved by any regulator.",
    "Trained and measured on small public data sets; figures do not transfer to other scanners, "
    "sites or populations without a new evaluation.",
    "Figures measured under the paper's protocol (augmentation before the split) overstate "
    "performance; compare with the leakage-safe figures on the same card.",
)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Dim = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Text = Annotated[str, Field(min_length=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stage(StrEnum):
    """The work-up stage a model serves (the paper's Fig. 1)."""

    MAMMOGRAPHY = "mammography"
    ULTRASOUND = "ultrasound"
    HISTOPATHOLOGY = "histopathology"


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class TensorDType(StrEnum):
    """Element type of the input tensor, named as numpy names it."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    UINT8 = "uint8"


class Activation(StrEnum):
    """What turns a raw output into probabilities (after dividing by the temperature)."""

    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"
    IDENTITY = "identity"  # the graph already outputs the final values


class OutputRole(StrEnum):
    """What the service does with an output."""

    MASK = "mask"  # per-pixel lesion logits, (N, 1, H, W)
    MALIGNANCY = "malignancy"  # per-image malignancy logit, (N, 1)
    CLASS_LOGITS = "class_logits"  # per-image logits over ``labels``, (N, len(labels))
    LESION_MALIGNANCY = "lesion_malignancy"  # per-pixel malignancy logits, (N, 1, H, W)
    PRESENCE = "presence"  # per-image lesion-presence logit, (N, 1)


class Runtime(StrEnum):
    """An inference runtime that runs a registered ONNX file (``models_registry.runtime``)."""

    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime: CUDA provider where offered, else CPU
    OPENVINO = "openvino"  # OpenVINO on CPU, float32 inference precision
    OPENVINO_BF16 = "openvino-bf16"  # OpenVINO on CPU, bfloat16 inference precision
    ONNXRUNTIME_INT8 = "onnxruntime-int8"  # ONNX Runtime on CPU, the card's int8 file
    OPENVINO_INT8 = "openvino-int8"  # OpenVINO on CPU, the card's int8 file

    @property
    def reduced_precision(self) -> bool:
        """Computes below float32: a card allows it only through ``reduced_precision``."""
        return self is not Runtime.ONNXRUNTIME and self is not Runtime.OPENVINO

    @property
    def int8(self) -> bool:
        """Runs the card's int8 file (``onnx.int8``, :data:`INT8_FILE`), not ``model.onnx``."""
        return self in (Runtime.ONNXRUNTIME_INT8, Runtime.OPENVINO_INT8)

    @property
    def engine(self) -> Runtime:
        """The float32 runtime whose package runs it (``onnxruntime`` or ``openvino``)."""
        return Runtime.ONNXRUNTIME if self.value.startswith("onnxruntime") else Runtime.OPENVINO


class EvaluationProtocol(StrEnum):
    """How the evaluation split was made (docs/paper.md, "What to keep in mind")."""

    PAPER = "paper"  # augmented copies made before the split, as the paper did
    LEAKAGE_SAFE = "leakage_safe"  # split by patient or source image first, augment train only


class Architecture(_Frozen):
    name: Text = Field(description='network family, e.g. "unet", "resunetpp", "resnet50"')
    encoder: str | None = Field(default=None, description="backbone, where the family has one")
    width: int | None = Field(default=None, ge=1, description="base channel count")
    parameters: int = Field(ge=1, description="number of trainable parameters")
    options: dict[str, Any] = Field(default_factory=dict, description="other constructor args")


class InputSpec(_Frozen):
    """The one input tensor: ``(batch, channels, height, width)``."""

    name: Text = "image"
    channels: int = Field(ge=1, le=4)
    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        description="(height, width) in pixels"
    )
    dtype: TensorDType = TensorDType.FLOAT32
    layout: Literal["NCHW"] = "NCHW"
    batch: Dim = Field(default="N", description="batch dim: a symbol if dynamic, else its size")
    preprocess: dict[str, Any] = Field(
        description="imaging.preprocess.PreprocessConfig fields used in training; see "
        "ModelCard.preprocess_config()"
    )

    def shape(self) -> list[int | str]:
        """The input shape as the ONNX graph should declare it."""
        return [self.batch, self.channels, self.size[0], self.size[1]]


class OutputSpec(_Frozen):
    name: Text
    role: OutputRole
    meaning: Text = Field(description="what the values are, in words")
    shape: list[Dim] = Field(min_length=1, description="symbols for dynamic dims")
    activation: Activation


class Thresholds(_Frozen):
    mask: Probability = Field(default=0.5, description="pixel probability -> lesion")
    malignancy: Probability = Field(default=0.5, description="probability -> malignant call")
    min_lesion_area_px: int = Field(default=0, ge=0, description="smaller components dropped")
    presence: Probability = Field(
        default=0.0,
        description="a lesion is marked only where its detection score (its peak pixel "
        "probability, or calibration.lesion_score where the card has one) reaches this "
        "(the lesion-presence decision, chosen on validation data; 0: no such gate)",
    )
    image_presence: Probability = Field(
        default=0.0,
        description="an image's lesions are marked only where the model's lesion-presence "
        "output (role 'presence') reaches this probability; chosen on validation data together "
        "with 'presence' (0: no such gate)",
    )


class LesionScore(_Frozen):
    """A fitted detection score for a segmentation model's regions (``imaging.lesion_score``):
    ``sigmoid(intercept + coefficients . features)``, the probability that a region is a true
    lesion; it replaces the peak probability as each lesion's ``score``, and
    ``thresholds.presence`` applies to it."""

    features: list[Text] = Field(min_length=1, description="the features, in order")
    coefficients: list[float] = Field(min_length=1)
    intercept: float
    fitted_on: Text = Field(description="the regions it was fitted on, in words")

    @model_validator(mode="after")
    def _known(self) -> Self:
        from imaging.lesion_score import FEATURES, LesionScorer

        if tuple(self.features) != FEATURES:
            raise ValueError(
                f"lesion_score.features must be {list(FEATURES)} (what imaging.lesion_score "
                f"computes), got {self.features}"
            )
        LesionScorer(tuple(self.coefficients), self.intercept)  # raises on a bad length
        return self

    def scorer(self) -> LesionScorer:
        from imaging.lesion_score import LesionScorer

        return LesionScorer(tuple(self.coefficients), self.intercept)


class Calibration(_Frozen):
    """Temperature scaling: probabilities are ``activation(logits / temperature)``."""

    temperature: float = Field(default=1.0, gt=0.0)
    fitted_on: str | None = Field(default=None, description="data the temperature was fit on")
    lesion_temperature: float = Field(
        default=1.0, gt=0.0, description="temperature of the per-pixel lesion malignancy output"
    )
    image_malignancy: Literal["head", "lesion_weighted"] = Field(
        default="head",
        description="how an image's malignancy probability is formed: 'head', the image "
        "malignancy output (temperature-scaled); 'lesion_weighted', derived from the lesions: the "
        "per-pixel lesion malignancy probabilities averaged with the lesion probability map as "
        "weights (a segmentation model with a lesion malignancy output)",
    )
    lesion_score: LesionScore | None = Field(
        default=None,
        description="a fitted detection score for the regions (breastdx lesion-score); None: a "
        "lesion's score is its peak pixel probability",
    )


class EvaluationSet(_Frozen):
    """The exact data a metric was measured on."""

    dataset: Text = Field(description='e.g. "CBIS-DDSM", "BUSI", "BHI"')
    split: Text = Field(description='e.g. "test", "val", "fold-3"')
    protocol: EvaluationProtocol
    data_root: Text = Field(description="where the data came from: release, folder, filters")
    split_file: str | None = Field(default=None, description="file name of the split list")
    split_file_sha256: Sha256
    unit: Text = Field(default="images", description='what is counted: "images", "patients"')
    class_counts: dict[str, Annotated[int, Field(ge=0)]] = Field(min_length=1)


class Metric(_Frozen):
    name: Text = Field(description='e.g. "dice_fg", "iou_fg", "mean_iou", "accuracy", "auroc"')
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: Probability = 0.95
    n: int = Field(ge=1, description="number of units the value averages over")
    dataset: Text
    split: Text
    protocol: EvaluationProtocol
    resolution: Literal["original", "model_input"] | None = Field(
        default=None,
        description="original: measured on each image at its own geometry (breastdx evaluate); "
        "model_input: at the model's input size inside training; None: not stated",
    )

    @model_validator(mode="after")
    def _interval_holds_value(self) -> Self:
        low, high = self.ci_low, self.ci_high
        if (low is None) != (high is None):
            raise ValueError("give both ci_low and ci_high, or neither")
        if low is not None and high is not None and not low <= self.value <= high:
            raise ValueError(f"{self.name}: ci [{low}, {high}] must hold the value {self.value}")
        return self


class Training(_Frozen):
    config: dict[str, Any] = Field(description="the resolved training config")
    git_commit: str = Field(pattern=r"^[0-9a-f]{7,40}(-dirty)?$")
    date: datetime
    seed: int
    hardware: Text = Field(description='e.g. "1x NVIDIA H200, 16 CPU cores"')
    duration_s: float = Field(ge=0.0)
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="epochs trained: fewer than the config's optim.epochs where the run stopped "
        "early or its schedule was fitted to its time budget (time_budget_fit)",
    )
    framework: str | None = Field(default=None, description='e.g. "torch 2.13.0"')


class DataSource(_Frozen):
    name: Text
    licence: Text
    citation: Text
    url: str | None = None


class Parity(_Frozen):
    """Reference (torch, or the fp32 ONNX for fp16) vs this ONNX file, measured at export."""

    max_abs_prob_diff: float = Field(ge=0.0)
    mask_agreement: Probability | None = Field(
        default=None, description="fraction of mask pixels with the same thresholded value"
    )
    n_images: int = Field(ge=1)
    tolerance: float | None = Field(default=None, ge=0.0, description="max_abs_prob_diff bound")
    min_mask_agreement: Probability | None = Field(
        default=None, description="mask_agreement bound (None: not recorded)"
    )


class RuntimeParity(_Frozen):
    """Torch vs one runtime running this card's ONNX file, measured at export."""

    runtime: Runtime
    device: Text = Field(description='where it ran, e.g. "CPUExecutionProvider", "CPU"')
    parity: Parity


class ReducedPrecision(_Frozen):
    """A reduced-precision runtime this file may run on, with the figures that show it loses
    at most 0.01 of each Dice and AUC figure the card holds (breastdx evaluate)."""

    runtime: Runtime
    device: Text = Field(description='where it ran, e.g. "CPU"')
    gate: Parity = Field(
        description="ONNX Runtime on CPU vs this runtime on the parity gate's inputs; its "
        "tolerance and min_mask_agreement bound this runtime's load-time gate"
    )
    metrics: list[Metric] = Field(
        min_length=1,
        description="breastdx evaluate on this runtime, on the same cases as the card's own "
        "metrics (same name, data set, split, protocol and n)",
    )

    def check_loss(self, reference: list[Metric]) -> None:
        """Raise ``ValueError`` unless every Dice and AUC figure of ``reference`` measured at the
        original resolution has its counterpart here, on as many units, at most
        :data:`MAX_PRECISION_LOSS` lower."""
        own = {(m.name, m.dataset, m.split, m.protocol): m for m in self.metrics}
        guarded = [m for m in reference if _loss_guarded(m)]
        if not guarded:
            raise ValueError(
                f"reduced_precision {self.runtime.value}: the card holds no Dice or AUC figure "
                "measured by breastdx evaluate to compare it with"
            )
        for ref in guarded:
            mine = own.get((ref.name, ref.dataset, ref.split, ref.protocol))
            where = f"{ref.name} on {ref.dataset} {ref.split}"
            if mine is None or mine.n != ref.n:
                raise ValueError(
                    f"reduced_precision {self.runtime.value}: no {where} figure on the card's "
                    f"{ref.n} units; evaluate it on the card's own split"
                )
            if ref.value - mine.value > MAX_PRECISION_LOSS:
                raise ValueError(
                    f"reduced_precision {self.runtime.value}: {where} is {mine.value:.4f} "
                    f"against {ref.value:.4f} in float32, a loss above {MAX_PRECISION_LOSS}"
                )


def _loss_guarded(metric: Metric) -> bool:
    """Dice and AUC figures measured by ``breastdx evaluate`` (the reduced-precision rule)."""
    return metric.resolution == "original" and (
        metric.name == "dice" or metric.name.endswith("auc")
    )


class Fp16Export(_Frozen):
    parity: Parity


class Fp16Artifact(_Frozen):
    file: Literal["model.fp16.onnx"] = FP16_FILE
    sha256: Sha256
    size_bytes: int = Field(ge=1)
    parity: Parity


class Quantization(_Frozen):
    """How ``model.int8.onnx`` was made from ``model.onnx``: post-training static quantisation,
    calibrated on training images through the card's own preprocessing (``breastdx quantize``)."""

    method: Literal["static_qdq"] = Field(
        default="static_qdq",
        description="QuantizeLinear/DequantizeLinear pairs around int8 weights and uint8 "
        "activations, scales fixed by calibration (ONNX Runtime and OpenVINO run it in int8)",
    )
    tool: Text = Field(description='e.g. "onnxruntime.quantization 1.32.0"')
    weights: Literal["int8"] = "int8"
    activations: Literal["uint8"] = "uint8"
    per_channel: bool = True
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration: Text = Field(description="the images the scales were fitted on")
    n_calibration_images: int = Field(ge=1)
    excluded_nodes: list[str] = Field(
        default_factory=list, description="nodes kept in float32 (e.g. the first convolution)"
    )


class Int8Export(_Frozen):
    quantization: Quantization


class Int8Artifact(_Frozen):
    file: Literal["model.int8.onnx"] = INT8_FILE
    sha256: Sha256
    size_bytes: int = Field(ge=1)
    quantization: Quantization


class OnnxExport(_Frozen):
    """What the exporter knows about the ONNX file; the registry adds hash and size."""

    opset: int = Field(ge=7)
    fp16: Fp16Export | None = None
    int8: Int8Export | None = None


class OnnxArtifact(_Frozen):
    file: Literal["model.onnx"] = ONNX_FILE
    sha256: Sha256
    size_bytes: int = Field(ge=1)
    opset: int = Field(ge=7)
    fp16: Fp16Artifact | None = None
    int8: Int8Artifact | None = None


class _CardBase(_Frozen):
    card_schema_version: Literal[1] = CARD_SCHEMA_VERSION


class _Identity(_CardBase):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    registered_at: datetime


class _CardBody(_CardBase):
    stage: Stage
    task: Task
    architecture: Architecture
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    labels: list[Text] = Field(min_length=1, description='e.g. ["benign", "malignant"]')
    thresholds: Thresholds = Thresholds()
    calibration: Calibration = Calibration()
    metrics: list[Metric] = Field(default_factory=list)
    evaluation_sets: list[EvaluationSet] = Field(default_factory=list)
    training: Training
    provenance: list[DataSource] = Field(min_length=1, description="training data sources")
    intended_use: Text = DEFAULT_INTENDED_USE
    limitations: list[Text] = Field(default_factory=lambda: list(DEFAULT_LIMITATIONS))
    parity: Parity = Field(description="torch vs the fp32 ONNX file, measured at export")
    runtimes: list[RuntimeParity] | None = Field(
        default=None,
        description="the runtimes this file may run on, each with its export parity against "
        "torch; None (cards older than this field): ONNX Runtime, and any other installed "
        "runtime that passes the load-time parity gate against ONNX Runtime on CPU",
    )
    reduced_precision: list[ReducedPrecision] = Field(
        default_factory=list,
        description="reduced-precision runtimes this file may run on, each with its gate "
        "tolerance and its breastdx evaluate figures (at most 0.01 below each Dice and AUC)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _require_unique("output names", [o.name for o in self.outputs])
        if self.runtimes is not None:
            names = [r.runtime.value for r in self.runtimes]
            _require_unique("runtimes", names)
            if Runtime.ONNXRUNTIME.value not in names:
                raise ValueError(
                    "runtimes must include onnxruntime: ONNX Runtime on CPU is the reference "
                    "every other runtime is checked against"
                )
            if any(r.runtime.reduced_precision for r in self.runtimes):
                raise ValueError(
                    "runtimes lists float32 runtimes only; a reduced-precision one belongs in "
                    "reduced_precision, with its evaluated figures"
                )
        _require_unique("reduced_precision", [v.runtime.value for v in self.reduced_precision])
        onnx = getattr(self, "onnx", None)  # OnnxExport (draft) or OnnxArtifact (card)
        for variant in self.reduced_precision:
            if not variant.runtime.reduced_precision:
                raise ValueError(f"reduced_precision lists {variant.runtime.value}, a float32 one")
            if variant.runtime.int8 and (onnx is None or onnx.int8 is None):
                raise ValueError(
                    f"reduced_precision lists {variant.runtime.value}, but the card has no int8 "
                    f"file (onnx.int8): make one with 'breastdx quantize'"
                )
            variant.check_loss(self.metrics)
        _require_unique("output roles", [o.role.value for o in self.outputs])
        roles = {o.role for o in self.outputs}
        if self.thresholds.image_presence > 0 and OutputRole.PRESENCE not in roles:
            raise ValueError(
                "thresholds.image_presence gates on the model's presence output, and the card "
                "lists no output of role 'presence'"
            )
        _require_unique("labels", self.labels)
        keys = [(e.dataset, e.split, e.protocol.value) for e in self.evaluation_sets]
        _require_unique("evaluation sets (dataset, split, protocol)", keys)
        for metric in [*self.metrics, *(m for v in self.reduced_precision for m in v.metrics)]:
            if (metric.dataset, metric.split, metric.protocol.value) not in keys:
                raise ValueError(
                    f"metric {metric.name!r} names ({metric.dataset}, {metric.split}, "
                    f"{metric.protocol.value}); every metric must name one of evaluation_sets"
                )
        return self

    def describe(self) -> str:  # how messages name this card
        return "the card draft"

    def allows(self, runtime: Runtime) -> bool:
        """True when the card lets ``runtime`` run it: a reduced-precision one where
        ``reduced_precision`` lists it, another where ``runtimes`` does (no list: every one,
        gate permitting)."""
        if runtime.reduced_precision:
            return self.reduced_variant(runtime) is not None
        return self.runtimes is None or any(r.runtime is runtime for r in self.runtimes)

    def reduced_variant(self, runtime: Runtime) -> ReducedPrecision | None:
        """The ``reduced_precision`` entry of ``runtime``, if listed."""
        return next((v for v in self.reduced_precision if v.runtime is runtime), None)

    def preprocess_config(self) -> PreprocessConfig:
        """``input.preprocess`` validated as ``imaging.preprocess.PreprocessConfig``.

        Raises:
            InvalidCardError: the parameters do not validate, or their size and channels differ
                from ``input``.
        """
        from imaging.preprocess import PreprocessConfig  # lazy: keeps the card module light

        try:
            config = PreprocessConfig.model_validate(self.input.preprocess)
        except ValidationError as exc:
            raise InvalidCardError(
                f"{self.describe()}: input.preprocess does not validate as "
                f"imaging.preprocess.PreprocessConfig: {_summary(exc)}"
            ) from exc
        made = (config.channels, *config.input_size)
        wanted = (self.input.channels, *self.input.size)
        if made != wanted:
            raise InvalidCardError(
                f"{self.describe()}: input.preprocess makes (C, H, W) = {made} images but the "
                f"input takes {wanted}; the two must agree"
            )
        return config


def _require_unique(what: str, values: list[Any]) -> None:
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(duplicates)}")


class CardDraft(_CardBody):
    """A card as an exporter writes it, before registration."""

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    onnx: OnnxExport

    def describe(self) -> str:
        return f"the card draft for {self.name!r}" if self.name else "the card draft"


class ModelCard(_CardBody, _Identity):
    """A registered model's card (``card.json``)."""

    onnx: OnnxArtifact

    @property
    def ref(self) -> str:
        """``name@version``: how logs, errors and DICOM outputs name this model."""
        return f"{self.name}@{self.version}"

    def describe(self) -> str:
        return self.ref

    def to_json(self) -> str:
        """Indented JSON with a final newline, as stored in ``card.json``."""
        return self.model_dump_json(indent=2) + "\n"


CardT = TypeVar("CardT", ModelCard, CardDraft)


def _summary(exc: ValidationError, limit: int = 5) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '(card)'}: {e['msg']}" for e in exc.errors()]
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def parse_card(cls: type[CardT], data: str | bytes | Mapping[str, Any], *, source: str) -> CardT:
    """Validate JSON text or a mapping as ``cls``; errors become :class:`InvalidCardError`."""
    try:
        if isinstance(data, Mapping):
            return cls.model_validate(data)
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidCardError(
            f"{source} is not a valid {cls.__name__}: {_summary(exc)}", source=source
        ) from exc


def read_card(cls: type[CardT], path: Path) -> CardT:
    """Read and validate a card file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidCardError(f"cannot read card {path.name}: {exc.strerror}") from exc
    return parse_card(cls, text, source="/".join(path.parts[-3:]))


def card_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`ModelCard`."""
    schema = ModelCard.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:breastdx:schema:model-card:{CARD_SCHEMA_VERSION}",
        **schema,
    }


def render_card_schema() -> str:
    """The schema file's exact text."""
    return json.dumps(card_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_card_schema(path: Path = SCHEMA_PATH) -> Path:
    """(Re)write the committed schema file; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_card_schema(), encoding="utf-8")
    return path
