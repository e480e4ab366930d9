"""The model card draft of an exported run, from what the trainer saved beside ``best.pt``.

Sources: the checkpoint (resolved config, git commit, weights -> parameter count), ``metrics.json``
(temperature fitted on validation, test metrics with bootstrap 95 % intervals), ``split.json``
(sha256 of the file, class counts of the test side), ``history.csv`` (training time) and the
parity figures measured at export. Data provenance cites the releases named in
``../shared/data/README.md``; a run on data from ``training.data.synthetic`` (a ``SYNTHETIC.json``
beside the data) is carded as synthetic instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from models_registry.card import (
    DEFAULT_INTENDED_USE,
    DEFAULT_LIMITATIONS,
    Activation,
    Architecture,
    Calibration,
    CardDraft,
    DataSource,
    EvaluationProtocol,
    EvaluationSet,
    Fp16Export,
    InputSpec,
    Metric,
    OnnxExport,
    OutputRole,
    OutputSpec,
    RuntimeParity,
    Stage,
    Thresholds,
    Training,
)
from models_registry.card import Task as CardTask
from training.config import Protocol, Task
from training.export import BATCH_DIM, INPUT_NAME, SPLIT_FILE, TrainedRun
from training.models.heads import LESION_MALIGNANCY, PRESENCE
from training.parity import ExportError, ParityReport

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
SYNTHETIC_MARKER = "SYNTHETIC.json"
_COMMIT = re.compile(r"(?:^|-g)([0-9a-f]{7,40})(-dirty)?$")  # "<hash>" or "<tag>-<n>-g<hash>"

DATASET_NAMES = {
    "busi": "BUSI",
    "busbra": "BUS-BRA",
    "busi+busbra": "BUSI + BUS-BRA",
    "idc": "IDC",
    "mias": "mini-MIAS",
    "cbis_ddsm": "CBIS-DDSM",
    "cbis_ddsm_jpeg": "CBIS-DDSM",
    "cbis_ddsm_coco": "CBIS-DDSM",
    "cbis_ddsm_coco+mias": "CBIS-DDSM + mini-MIAS",
}
SOURCES = {
    "busi": DataSource(
        name="BUSI",
        licence="research use, as released with the Data in Brief article",
        citation='Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. "Dataset of breast ultrasound '
        'images", Data in Brief 28 (2020) 104863',
        url="https://doi.org/10.1016/j.dib.2019.104863",
    ),
    "busbra": DataSource(
        name="BUS-BRA",
        licence="see busbra/LICENSE.txt of the release (permissive; keep the notice, cite)",
        citation="Gomez-Flores W., Gregorio-Calas M.J., Coelho de Albuquerque Pereira W. "
        '"BUS-BRA: A breast ultrasound dataset for assessing computer-aided diagnosis systems", '
        "Medical Physics 51(4):3110-3123 (2024)",
        url="https://doi.org/10.1002/mp.16812",
    ),
    "idc": DataSource(
        name="IDC (breast histopathology, IDC_regular_ps50_idx5)",
        licence="research use, as released by the authors",
        citation='Janowczyk A., Madabhushi A. "Deep learning for digital pathology image '
        'analysis: a comprehensive tutorial with selected use cases", J Pathol Inform 7:29 '
        "(2016); Cruz-Roa A. et al., SPIE Medical Imaging 2014",
        url="https://doi.org/10.4103/2153-3539.186902",
    ),
    "mias": DataSource(
        name="mini-MIAS",
        licence="MIAS licence agreement: research use only",
        citation='Suckling J. et al. "The Mammographic Image Analysis Society digital mammogram '
        'database", Exerpta Medica, International Congress Series 1069 (1994) 375-378',
    ),
    "cbis_ddsm": DataSource(
        name="CBIS-DDSM",
        licence="CC BY 3.0 (The Cancer Imaging Archive)",
        citation='Lee R.S. et al. "A curated mammography data set for use in computer-aided '
        'detection and diagnosis research", Scientific Data 4 (2017) 170177',
        url="https://doi.org/10.1038/sdata.2017.177",
    ),
}
ULTRASOUND_LIMITATIONS = (
    "BUSI and BUS-BRA images carry burned-in calipers, markers and scanner text; the model saw "
    "them in training and may react to them; they were not removed.",
    "BUSI holds a few colour Doppler frames (analysed as grey); Doppler, elastography and "
    "3D/ABUS images were not part of training.",
    "Scanners seen: BUSI's (LOGIQ E9 family, Cairo, 2018) and BUS-BRA's GE Logiq 7, GE Logiq 5, "
    "Toshiba Aplio 300 and U-Systems (Brazil); other scanners, presets and populations need a "
    "local evaluation (breastdx evaluate).",
    "Lesion presence is decided by thresholds chosen on the validation split (the mask's peak "
    "probability, and the presence output's probability where the model has one), which holds "
    "only 14 images without a lesion (BUS-BRA has none).",
)


MIAS_CIRCLES = (
    "Lesion masks are a circle-mask approximation: mini-MIAS gives each abnormality as a "
    "centre and a radius only, so the model learned circles, and Dice/IoU were measured "
    "against circles, not lesion outlines."
)
CBIS_BOX_TARGETS = (
    "Box-derived training targets: CBIS-DDSM masses are given here as bounding boxes, so the "
    "model learned the ellipse inscribed in each box (and mini-MIAS circles); its contours, "
    "Dice and IoU are against those ellipses and circles, not radiologists' outlines. Read "
    "the lesion count, location and FROC; treat the outline as approximate."
)
FILM_ONLY = (
    "Film-only data: CBIS-DDSM (DDSM, 1990s, US) and mini-MIAS (1990s, UK) are digitised "
    "screen-film mammograms; full-field digital mammograms (FFDM), tomosynthesis and current "
    "vendors' processing lie outside the training data and need a local evaluation "
    "(breastdx evaluate) before use."
)
MAMMOGRAPHY_LIMITATIONS = (
    CBIS_BOX_TARGETS,
    FILM_ONLY,
    "Masses only: calcifications, architectural distortion and asymmetries were not targets; "
    "CBIS-DDSM holds no normal film, so the false-positive rate on normal films rests on "
    "mini-MIAS's normal films alone.",
    "CBIS-DDSM was read from the shared 800 x 800 JPEG copy (each film squashed to a square); "
    "the breast box is stretched to the model's square input, which removes that squash, but "
    "the copy's lost resolution limits small masses.",
)


def _dataset_parts(dataset: str) -> list[str]:
    """The source keys of a dataset name (``cbis_ddsm_coco+mias`` -> cbis_ddsm, mias)."""
    return ["cbis_ddsm" if part.startswith("cbis_ddsm") else part for part in dataset.split("+")]


DATASET_LIMITATIONS = {
    "cbis_ddsm_coco": MAMMOGRAPHY_LIMITATIONS,
    "cbis_ddsm_coco+mias": MAMMOGRAPHY_LIMITATIONS,
    "busi": ULTRASOUND_LIMITATIONS,
    "busbra": ULTRASOUND_LIMITATIONS,
    "busi+busbra": ULTRASOUND_LIMITATIONS,
    "mias": (
        MIAS_CIRCLES,
        "mini-MIAS is digitised MLO screen film (1990s), scaled here from 1024x1024 to 512x512 "
        "pixels; full-field digital mammograms, CC views and other scanners lie outside its data.",
    ),
}
STAGE_USE = {
    "mammography": "segmenting suspicious masses on mammograms and scoring their malignancy",
    "ultrasound": "segmenting lesions on breast ultrasound images and scoring their malignancy",
    "histopathology": "scoring invasive ductal carcinoma on H&E-stained breast tissue patches",
}


def read_run_json(path: Path, needed_by: str = "the card") -> dict[str, Any]:
    """A JSON object the training run wrote (``metrics.json``, ...), or ``ExportError``: a run
    stopped before its final evaluation has no ``metrics.json``."""
    if not path.is_file():
        raise ExportError(
            f"the run folder has no {path.name}; {needed_by} needs it (a run stopped before its "
            "final evaluation: finish it with breastdx train --resume)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path.name} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path.name} must hold a JSON object")
    return data


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_synthetic(run: TrainedRun) -> bool:
    """True when the training data came from ``training.data.synthetic`` (marker file)."""
    root = Path(run.config.data.root)
    return any((folder / SYNTHETIC_MARKER).is_file() for folder in (root, root.parent))


def _dataset_name(run: TrainedRun) -> str:
    name = DATASET_NAMES.get(run.config.data.dataset.value, run.config.data.dataset.value)
    return f"{name} (synthetic)" if is_synthetic(run) else name


def _protocol(run: TrainedRun) -> EvaluationProtocol:
    if run.config.data.protocol is Protocol.PAPER:
        return EvaluationProtocol.PAPER
    return EvaluationProtocol.LEAKAGE_SAFE


def _outputs(run: TrainedRun) -> list[OutputSpec]:
    h, w = run.config.preprocess.input_size
    if run.config.task is Task.SEGMENTATION:
        return [
            OutputSpec(
                name="mask_logits",
                role=OutputRole.MASK,
                meaning="per-pixel lesion logit at the model input size",
                shape=[BATCH_DIM, 1, h, w],
                activation=Activation.SIGMOID,
            ),
            OutputSpec(
                name="malignancy_logit",
                role=OutputRole.MALIGNANCY,
                meaning="per-image malignancy logit (divide by the calibration temperature)",
                shape=[BATCH_DIM, 1],
                activation=Activation.SIGMOID,
            ),
            *_lesion_outputs(run, h, w),
        ]
    return [
        OutputSpec(
            name="class_logits",
            role=OutputRole.CLASS_LOGITS,
            meaning="per-image logits over labels; the last label is the malignant class",
            shape=[BATCH_DIM, run.config.num_classes],
            activation=Activation.SOFTMAX,
        )
    ]


def _lesion_outputs(run: TrainedRun, h: int, w: int) -> list[OutputSpec]:
    """The per-pixel malignancy and the lesion-presence outputs, where the model has them."""
    optional = (
        (
            LESION_MALIGNANCY,
            OutputRole.LESION_MALIGNANCY,
            "per-pixel malignancy logit; a lesion's own probability is the mean of "
            "sigmoid(logit / lesion_temperature) over its pixels",
            [BATCH_DIM, 1, h, w],
        ),
        (
            PRESENCE,
            OutputRole.PRESENCE,
            "per-image lesion-presence logit; the image's lesions are marked only where "
            "sigmoid(logit) reaches thresholds.image_presence",
            [BATCH_DIM, 1],
        ),
    )
    return [
        OutputSpec(
            name=name, role=role, meaning=meaning, shape=shape, activation=Activation.SIGMOID
        )
        for name, role, meaning, shape in optional
        if name in run.output_names
    ]


def _labels(run: TrainedRun) -> list[str]:
    if run.config.task is Task.CLASSIFICATION and run.config.data.dataset.value == "idc":
        return ["non_idc", "idc"]
    return ["benign", "malignant"]


def _evaluation_set(run: TrainedRun, split: str = "test") -> EvaluationSet:
    path = run.run_dir / SPLIT_FILE
    document = read_run_json(path)
    samples, entries = document.get("samples", {}), document.get("entries", [])
    counts = Counter(
        str(samples.get(e.get("sample_id"), {}).get("class_name", "unknown"))
        for e in entries
        if e.get("split") == split
    )
    if not counts:
        raise ExportError(f"{SPLIT_FILE} has no {split!r} entries; the card needs its test set")
    data = run.config.data
    fractions = data.fractions
    return EvaluationSet(
        dataset=_dataset_name(run),
        split=split,
        protocol=_protocol(run),
        data_root=f"{data.root} ({data.dataset.value} reader; split seed {data.seed}, fractions "
        f"{fractions.train}/{fractions.val}/{fractions.test})",
        split_file=SPLIT_FILE,
        split_file_sha256=_sha256(path),
        unit="image copies" if data.protocol is Protocol.PAPER else "images",
        class_counts=dict(sorted(counts.items())),
    )


def _metric(name: str, entry: Any, evaluation: EvaluationSet) -> Metric | None:
    """One ``metrics.json`` test entry ``{value, ci_low, ci_high, n}``; None if not finite."""
    if not isinstance(entry, dict) or not entry.get("n"):
        return None
    value, low, high = (_number(entry.get(k)) for k in ("value", "ci_low", "ci_high"))
    if value is None:
        return None
    interval = low is not None and high is not None and low <= value <= high
    return Metric(
        name=name,
        value=value,
        ci_low=low if interval else None,
        ci_high=high if interval else None,
        n=int(entry["n"]),
        dataset=evaluation.dataset,
        split=evaluation.split,
        protocol=evaluation.protocol,
        resolution="model_input",  # training measures at the model's input size
    )


def _number(value: Any) -> float | None:
    """``value`` as a finite float; None for null, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _metrics(report: dict[str, Any], evaluation: EvaluationSet) -> list[Metric]:
    test = report.get("test")
    if not isinstance(test, dict):
        raise ExportError(f"{METRICS_FILE} has no test section; evaluate on a test split first")
    found = [_metric(name, entry, evaluation) for name, entry in test.items()]
    return [m for m in found if m is not None]


def _history(run: TrainedRun) -> list[dict[str, str]]:
    """The rows of the run's ``history.csv``, one per epoch trained ([] when it is absent)."""
    path = run.run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_duration(run: TrainedRun) -> float:
    """Sum of the epochs' ``seconds`` in ``history.csv`` (0 when the file is absent); an
    ensemble's checkpoint (``training.ensemble``) records its members' summed time instead."""
    if run.state.get("duration_s") is not None:
        return float(run.state["duration_s"])
    return float(sum(float(row.get("seconds") or 0.0) for row in _history(run)))


def _commit(text: Any) -> str:
    """The commit hash (``-dirty`` kept) of ``git describe`` output, tags stripped."""
    found = _COMMIT.search(str(text or ""))
    if found is None:
        raise ExportError(
            f"the checkpoint records no git commit ({text!r}); a card names the code that "
            "trained the model (train from a git checkout)"
        )
    return found.group(1) + (found.group(2) or "")


def _training(run: TrainedRun, report: dict[str, Any]) -> Training:
    commit = _commit(run.state.get("git_commit") or report.get("git_commit"))
    hardware = run.state.get("hardware") or (
        f"not recorded by the trainer (config device: {run.config.device.value})"
    )
    date = datetime.fromtimestamp(run.checkpoint.stat().st_mtime, UTC)
    return Training(
        config=run.config.model_dump(mode="json"),
        git_commit=commit,
        date=date,
        seed=run.config.seed,
        hardware=str(hardware),
        duration_s=round(run_duration(run), 3),
        epochs=len(_history(run)) or None,  # an ensemble's members keep theirs
        framework=f"torch {torch.__version__}",
    )


def _provenance(run: TrainedRun) -> list[DataSource]:
    dataset = run.config.data.dataset.value
    if is_synthetic(run):
        return [
            DataSource(
                name=f"synthetic {DATASET_NAMES.get(dataset, dataset)}-like images",
                licence="generated by breastdx (Apache-2.0)",
                citation=f"breastdx training.data.synthetic, {dataset} layout",
            )
        ]
    return [SOURCES[part] for part in _dataset_parts(dataset)]


def _empty_mask_baseline(run: TrainedRun, evaluation: EvaluationSet) -> str | None:
    """Segmentation: what mean Dice/IoU a model that never marks a lesion would score."""
    empty = evaluation.class_counts.get("normal", 0)  # BUSI and mini-MIAS: no lesion, no mask
    total = sum(evaluation.class_counts.values())
    if run.config.task is not Task.SEGMENTATION or not empty:
        return None
    return (
        "Mean Dice and IoU count an empty prediction on a lesion-free image as 1: "
        f"{empty} of {total} test images hold no lesion, so a model that never marks anything "
        f"would score {empty / total:.3f}; read the figures against that baseline."
    )


def _weights_fp16_note(parity: ParityReport, fp32: ParityReport) -> str:
    text = (
        "Weights are stored as float16 in this ONNX file (cast to float32 when loaded; compute "
        f"is float32) to keep the shipped file small. Against the float32 torch model on "
        f"{parity.n_images} test images its probabilities differ by at most "
        f"{parity.max_abs_prob_diff:.2g} (tolerance {parity.tolerance.prob:g})"
    )
    if parity.mask_agreement is not None:
        text += (
            f" and {parity.mask_agreement:.4%} of mask pixels agree (minimum "
            f"{parity.tolerance.mask_agreement:.1%})"
        )
    return text + (
        f"; the float32 export it was made from differs by {fp32.max_abs_prob_diff:.2g}. "
        "The held-out metrics were measured with the float32 torch model."
    )


def _limitations(run: TrainedRun) -> list[str]:
    items = list(DEFAULT_LIMITATIONS)
    items += DATASET_LIMITATIONS.get(run.config.data.dataset.value, ())
    if run.config.data.protocol is Protocol.PAPER:
        items.append(
            "Evaluated under the paper's protocol only: augmented copies of one image lie on "
            "both sides of the split, so the test figures are optimistic."
        )
    if is_synthetic(run):
        items.append("Trained on synthetic images: a test artefact, not a usable model.")
    members = run.state.get("members")
    if isinstance(members, list) and members:
        listed = "; ".join(
            f"{m.get('source')} ({m.get('network')}, seed {m.get('seed')})" for m in members
        )
        items.append(
            f"An ensemble of {len(members)} networks, their logits averaged: {listed}. Model "
            "time is about the members' summed; the training time on this card is theirs "
            "summed, the hardware theirs; temperature and thresholds were fitted to the "
            "ensemble on validation."
        )
    if run.config.model.pretrained is not None:
        items.append(
            f"Fine-tuned: this run started from the weights in {run.config.model.pretrained.name} "
            "(model.pretrained: an earlier run of this network, or its shipped ONNX file rebuilt "
            "by breastdx warm-start); the training duration on this card is this run's alone."
        )
    return items


def _architecture(run: TrainedRun) -> Architecture:
    spec = run.model.config
    return Architecture(
        name=spec.name,
        width=spec.width,
        parameters=sum(p.numel() for p in run.model.parameters()),
        options={"in_channels": spec.in_channels, **dict(spec.options)},
    )


def build_card_draft(
    run: TrainedRun,
    *,
    parity: ParityReport,
    fp16_parity: ParityReport | None,
    opset: int,
    thresholds: Thresholds,
    name: str | None = None,
    fp32_parity: ParityReport | None = None,
    lesion_temperature: float | None = None,
    image_malignancy: str = "head",
    runtimes: Sequence[RuntimeParity] | None = None,
) -> CardDraft:
    """The card draft of ``run`` with the export's parity figures.

    ``fp32_parity`` (the float32 export's figures) says that the carded file stores float16
    weights and ``parity`` measures it; the card's limitations then state both. ``runtimes``:
    the runtimes that met the parity tolerance against torch (None: the field stays unset).

    Raises:
        ExportError: the run folder lacks what the card needs, or the draft does not validate.
    """
    try:
        draft = _draft(run, parity, fp16_parity, opset, thresholds, name, fp32_parity)
        update: dict[str, Any] = {}
        calibrated: dict[str, Any] = {}
        if lesion_temperature is not None:
            calibrated["lesion_temperature"] = lesion_temperature
        if image_malignancy != "head":
            calibrated["image_malignancy"] = image_malignancy
        if calibrated:
            update["calibration"] = draft.calibration.model_copy(update=calibrated).model_dump()
        if runtimes is not None:
            update["runtimes"] = [r.model_dump() for r in runtimes]
        return CardDraft.model_validate({**draft.model_dump(), **update}) if update else draft
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(card)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ExportError(f"the model card draft does not validate: {problems}") from exc


def _chosen_threshold(
    run: TrainedRun, report: dict[str, Any], thresholds: Thresholds
) -> Thresholds:
    """A classifier's malignancy threshold as chosen on validation for balanced accuracy
    (``metrics.json`` ``decision_threshold``, ``training.calibration.decision_threshold``)."""
    chosen = report.get("decision_threshold")
    value = _number(chosen.get("threshold")) if isinstance(chosen, dict) else None
    if run.config.task is not Task.CLASSIFICATION or value is None or not 0 < value < 1:
        return thresholds
    return thresholds.model_copy(update={"malignancy": value})


def _draft(
    run: TrainedRun,
    parity: ParityReport,
    fp16_parity: ParityReport | None,
    opset: int,
    thresholds: Thresholds,
    name: str | None,
    fp32_parity: ParityReport | None = None,
) -> CardDraft:
    pre = run.config.preprocess
    report = read_run_json(run.run_dir / METRICS_FILE)
    evaluation = _evaluation_set(run)
    limitations = _limitations(run)
    baseline = _empty_mask_baseline(run, evaluation)
    if baseline is not None:
        limitations.append(baseline)
    if fp32_parity is not None:
        limitations.append(_weights_fp16_note(parity, fp32_parity))
    temperature = _number(report.get("temperature"))
    fitted = temperature is not None and temperature > 0
    thresholds = _chosen_threshold(run, report, thresholds)
    fp16 = Fp16Export(parity=fp16_parity.to_card()) if fp16_parity is not None else None
    return CardDraft(
        name=name,
        stage=Stage(run.config.stage.value),
        task=CardTask(run.config.task.value),
        architecture=_architecture(run),
        input=InputSpec(
            name=INPUT_NAME,
            channels=pre.channels,
            size=pre.input_size,
            batch=BATCH_DIM,
            preprocess=pre.model_dump(mode="json"),
        ),
        outputs=_outputs(run),
        labels=_labels(run),
        thresholds=thresholds,
        calibration=Calibration(
            temperature=temperature if temperature is not None and fitted else 1.0,
            fitted_on=f"{evaluation.dataset} val, {evaluation.protocol.value}" if fitted else None,
        ),
        metrics=_metrics(report, evaluation),
        evaluation_sets=[evaluation],
        training=_training(run, report),
        provenance=_provenance(run),
        intended_use=DEFAULT_INTENDED_USE.replace(
            "locating suspicious lesions and scoring malignancy on breast images",
            STAGE_USE[run.config.stage.value],
        ),
        limitations=limitations,
        parity=parity.to_card(),
        onnx=OnnxExport(opset=opset, fp16=fp16),
    )
