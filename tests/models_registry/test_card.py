"""The model card: validation rules, JSON round trip, the committed JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from models_registry.card import (
    CARD_SCHEMA_VERSION,
    SCHEMA_PATH,
    CardDraft,
    ModelCard,
    OnnxArtifact,
    Runtime,
    Stage,
    Task,
    parse_card,
    read_card,
    render_card_schema,
    write_card_schema,
)
from models_registry.errors import InvalidCardError
from tests.models_registry.conftest import SIZE, draft_dict


def make_card(**overrides: Any) -> ModelCard:
    body = draft_dict(**overrides)
    body.pop("onnx")
    onnx = OnnxArtifact(sha256="0" * 64, size_bytes=487, opset=17)
    return ModelCard(
        name="tiny", version=3, registered_at=datetime(2025, 11, 25, tzinfo=UTC), onnx=onnx, **body
    )


def error_text(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        CardDraft.model_validate(draft_dict(**overrides))
    return str(info.value)


def test_draft_validates_into_typed_fields() -> None:
    draft = CardDraft.model_validate(draft_dict())
    assert draft.stage is Stage.ULTRASOUND
    assert draft.task is Task.SEGMENTATION
    assert draft.input.shape() == ["N", 1, SIZE, SIZE]
    assert draft.card_schema_version == CARD_SCHEMA_VERSION
    assert draft.calibration.temperature == 1.5
    assert draft.thresholds.min_lesion_area_px == 4


def test_card_json_round_trip_is_exact() -> None:
    card = make_card()
    text = card.to_json()
    again = parse_card(ModelCard, text, source="card.json")
    assert again == card
    assert again.to_json() == text
    assert list(json.loads(text))[:4] == ["card_schema_version", "name", "version", "registered_at"]


def test_card_is_frozen() -> None:
    card = make_card()
    with pytest.raises(ValidationError):
        card.version = 4  # type: ignore[misc]


def test_unknown_field_is_refused_naming_it() -> None:
    text = json.dumps({**json.loads(make_card().to_json()), "threshold": 0.3})
    with pytest.raises(InvalidCardError, match="threshold: Extra inputs are not permitted"):
        parse_card(ModelCard, text, source="tiny/3/card.json")


def test_newer_card_schema_version_is_refused() -> None:
    text = json.dumps({**json.loads(make_card().to_json()), "card_schema_version": 2})
    with pytest.raises(InvalidCardError, match="card_schema_version"):
        parse_card(ModelCard, text, source="card.json")


def test_defaults_say_not_for_clinical_use() -> None:
    card = make_card()
    assert "not for clinical use" in card.intended_use.lower()
    assert any("not for clinical use" in item.lower() for item in card.limitations)
    body = draft_dict()
    del body["calibration"]
    assert CardDraft.model_validate(body).calibration.temperature == 1.0


def test_metric_must_name_an_evaluation_set() -> None:
    metric = {**draft_dict()["metrics"][0], "split": "val"}
    assert "every metric must name one of evaluation_sets" in error_text(metrics=[metric])


def test_metric_interval_must_hold_the_value() -> None:
    metric = {**draft_dict()["metrics"][0], "ci_low": 0.8, "ci_high": 0.9}
    assert "dice_fg: ci [0.8, 0.9] must hold the value 0.71" in error_text(metrics=[metric])
    half = {**draft_dict()["metrics"][0], "ci_high": None}
    assert "give both ci_low and ci_high, or neither" in error_text(metrics=[half])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("labels", ["benign", "benign"], "labels must be unique; repeated: benign"),
        ("thresholds", {"mask": 1.5}, "less than or equal to 1"),
        ("calibration", {"temperature": 0}, "greater than 0"),
        ("stage", "mri", "'mammography', 'ultrasound' or 'histopathology'"),
        ("provenance", [], "at least 1 item"),
    ],
)
def test_field_rules(field: str, value: Any, message: str) -> None:
    assert message in error_text(**{field: value})


def test_a_lesion_score_names_the_features_imaging_computes() -> None:
    score = {
        "features": ["peak_logit", "mean_logit", "log_area_fraction"],
        "coefficients": [1.0, 0.5, -0.2],
        "intercept": -1.5,
        "fitted_on": "3 regions of the train part",
    }
    draft = CardDraft.model_validate(draft_dict(calibration={"lesion_score": score}))
    assert draft.calibration.lesion_score is not None
    scorer = draft.calibration.lesion_score.scorer()
    assert scorer.coefficients == (1.0, 0.5, -0.2) and scorer.intercept == -1.5
    assert CardDraft.model_validate(draft_dict()).calibration.lesion_score is None
    renamed = {**score, "features": ["peak", "mean_logit", "log_area_fraction"]}
    assert "lesion_score.features must be" in error_text(calibration={"lesion_score": renamed})
    short = {**score, "coefficients": [1.0, 0.5]}
    assert "takes 3 coefficients" in error_text(calibration={"lesion_score": short})


def test_output_names_must_be_unique() -> None:
    outputs = draft_dict()["outputs"]
    second = {**outputs[1], "name": "mask_logits"}
    assert "output names must be unique" in error_text(outputs=[outputs[0], second])


def test_image_presence_gate_needs_a_presence_output() -> None:
    thresholds = {**draft_dict()["thresholds"], "image_presence": 0.5}
    assert "no output of role 'presence'" in error_text(thresholds=thresholds)
    outputs = [
        *draft_dict()["outputs"],
        {
            "name": "presence_logit",
            "role": "presence",
            "meaning": "per-image lesion-presence logit",
            "shape": ["N", 1],
            "activation": "sigmoid",
        },
    ]
    draft = CardDraft.model_validate(draft_dict(thresholds=thresholds, outputs=outputs))
    assert draft.thresholds.image_presence == 0.5


def test_training_commit_and_split_hash_patterns() -> None:
    training = {**draft_dict()["training"], "git_commit": "not-a-commit"}
    assert "git_commit" in error_text(training=training)
    eval_set = {**draft_dict()["evaluation_sets"][0], "split_file_sha256": "xyz"}
    assert "split_file_sha256" in error_text(evaluation_sets=[eval_set])


def test_preprocess_config_uses_imaging_preprocess() -> None:
    config = make_card().preprocess_config()
    assert type(config).__module__ == "imaging.preprocess"
    assert tuple(config.input_size) == (SIZE, SIZE)
    assert config.channels == 1


def test_preprocess_config_refuses_bad_parameters() -> None:
    spec = {**draft_dict()["input"], "preprocess": {"input_size": [SIZE, SIZE], "bogus": 1}}
    with pytest.raises(InvalidCardError, match=r"tiny@3: input.preprocess does not validate"):
        make_card(input=spec).preprocess_config()


def test_preprocess_config_must_agree_with_the_input() -> None:
    spec = {**draft_dict()["input"], "preprocess": {"input_size": [64, 64], "channels": 1}}
    with pytest.raises(InvalidCardError, match="the two must agree"):
        make_card(input=spec).preprocess_config()


def test_read_card_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "draft.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidCardError, match=r"draft\.json is not a valid CardDraft"):
        read_card(CardDraft, path)
    with pytest.raises(InvalidCardError, match=r"cannot read card missing\.json"):
        read_card(CardDraft, tmp_path / "missing.json")


def test_committed_json_schema_is_current() -> None:
    assert SCHEMA_PATH.is_file(), "run: breastdx models schema --write"
    stale = "the committed card schema is stale; run: breastdx models schema --write"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_card_schema(), stale


def test_schema_describes_the_card(tmp_path: Path) -> None:
    schema = json.loads(write_card_schema(tmp_path / "schema.json").read_text(encoding="utf-8"))
    assert schema["$id"].endswith(f":{CARD_SCHEMA_VERSION}")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"name", "version", "input", "outputs", "onnx", "parity"}
    assert schema["properties"]["card_schema_version"]["const"] == CARD_SCHEMA_VERSION


# --- reduced precision: allowed only with evaluated figures within 0.01 -------------------------

EVALUATED = [
    {"name": "dice", "value": 0.73, "n": 98, "dataset": "BUSI", "split": "test",
     "protocol": "leakage_safe", "resolution": "original"},
    {"name": "malignancy_auc", "value": 0.96, "n": 98, "dataset": "BUSI", "split": "test",
     "protocol": "leakage_safe", "resolution": "original"},
    {"name": "hd95_px", "value": 41.6, "n": 98, "dataset": "BUSI", "split": "test",
     "protocol": "leakage_safe", "resolution": "original"},
]  # fmt: skip
GATE = {"max_abs_prob_diff": 3e-3, "mask_agreement": 0.9995, "n_images": 4, "tolerance": 7e-3,
        "min_mask_agreement": 0.999}  # fmt: skip


def variant(**changes: float) -> dict[str, Any]:
    """An ``openvino-bf16`` entry whose figures are the card's, some changed by name."""
    metrics = [{**m, "value": changes.get(m["name"], m["value"])} for m in EVALUATED]
    return {"runtime": "openvino-bf16", "device": "CPU", "gate": GATE, "metrics": metrics}


def test_a_reduced_precision_runtime_is_allowed_only_where_listed() -> None:
    plain = CardDraft.model_validate(draft_dict(metrics=EVALUATED))
    assert plain.runtimes is None and plain.allows(Runtime.OPENVINO)
    assert not plain.allows(Runtime.OPENVINO_BF16)  # no list: float32 runtimes only
    listed = CardDraft.model_validate(
        draft_dict(metrics=EVALUATED, reduced_precision=[variant(dice=0.721, hd95_px=60.0)])
    )
    assert listed.allows(Runtime.OPENVINO_BF16)  # 0.009 below: within the rule
    entry = listed.reduced_variant(Runtime.OPENVINO_BF16)
    assert entry is not None and entry.gate.tolerance == 7e-3


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (variant(dice=0.7189), "dice on BUSI test is 0.7189 against 0.7300 in float32, a loss"),
        (variant(malignancy_auc=0.9), "malignancy_auc on BUSI test is 0.9000 against 0.9600"),
        ({**variant(), "metrics": variant()["metrics"][:1]}, "no malignancy_auc on BUSI test"),
        ({**variant(), "runtime": "openvino"}, "reduced_precision lists openvino, a float32 one"),
    ],
)
def test_reduced_precision_needs_figures_within_the_loss_rule(
    entry: dict[str, Any], message: str
) -> None:
    assert message in error_text(metrics=EVALUATED, reduced_precision=[entry])


def test_reduced_precision_needs_an_evaluated_dice_or_auc_on_the_card() -> None:
    text = error_text(reduced_precision=[variant()])  # the card holds dice_fg from training only
    assert "no Dice or AUC figure measured by breastdx evaluate" in text


def test_runtimes_lists_float32_runtimes_only() -> None:
    listed = [{"runtime": name, "device": "CPU", "parity": GATE}
              for name in ("onnxruntime", "openvino-bf16")]  # fmt: skip
    assert "a reduced-precision one belongs in reduced_precision" in error_text(runtimes=listed)
