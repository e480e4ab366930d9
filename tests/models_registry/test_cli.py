"""``breastdx models`` in process: output, JSON, exit codes and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breastdx.cli import main as breastdx_main
from models_registry.card import render_card_schema
from models_registry.cli import main
from service.config import get_settings
from tests.models_registry.conftest import draft_dict, tamper

Capsys = pytest.CaptureFixture[str]


def run(capsys: Capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def registered(capsys: Capsys, store_dir: Path, onnx_file: Path, draft_file: Path) -> Path:
    """Two versions of ``tiny`` in ``store_dir``; version 1 is ``staging``."""
    base = ["register", "--name", "tiny", "--onnx", str(onnx_file), "--card", str(draft_file)]
    assert main([*base, "--store", str(store_dir), "--alias", "staging"]) == 0
    assert main([*base, "--store", str(store_dir)]) == 0
    capsys.readouterr()
    return store_dir


def test_register_prints_the_new_version(
    capsys: Capsys, store_dir: Path, onnx_file: Path, draft_file: Path
) -> None:
    argv = ["register", "--name", "tiny", "--onnx", str(onnx_file), "--card", str(draft_file)]
    code, out, err = run(capsys, *argv, "--store", str(store_dir), "--alias", "staging")
    assert (code, err) == (0, "")
    assert out.startswith("registered tiny@1 in file://")
    assert "tiny@staging -> 1" in out
    code, out, _ = run(capsys, *argv, "--store", str(store_dir), "--json")
    data = json.loads(out)
    assert (code, data["model"], data["version"], data["alias"]) == (0, "tiny", 2, None)
    assert len(data["sha256"]) == 64


def test_list_table_and_json(capsys: Capsys, registered: Path) -> None:
    code, out, _ = run(capsys, "list", "--store", str(registered))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:5] == ["MODEL", "VERSION", "ALIASES", "STAGE", "TASK"]
    assert lines[1].split()[:5] == ["tiny", "1", "staging", "ultrasound", "segmentation"]
    assert lines[2].split()[:3] == ["tiny", "2", "-"]
    code, out, _ = run(capsys, "list", "--store", str(registered), "--json")
    rows = json.loads(out)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["staging"]), (2, [])]


def test_list_empty_store(capsys: Capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "list", "--store", str(tmp_path / "none"))
    assert code == 0
    assert out.startswith("no models in file://")
    assert json.loads(run(capsys, "list", "--store", str(tmp_path), "--json")[1]) == []


def test_show_human_and_json(capsys: Capsys, registered: Path) -> None:
    code, out, _ = run(capsys, "show", "tiny@staging", "--store", str(registered))
    assert code == 0
    assert out.startswith("tiny@1\n")
    for text in (
        "aliases       staging",
        "image ['N', 1, 32, 32] float32",
        "Not for clinical use",
        "dice_fg",
        "leakage_safe",
        "temperature 1.5",
    ):
        assert text in out
    code, out, _ = run(capsys, "show", "tiny", "--store", str(registered), "--json")
    card = json.loads(out)
    assert (code, card["name"], card["version"]) == (0, "tiny", 2)
    assert card["input"]["preprocess"] == draft_dict()["input"]["preprocess"]


def test_promote_moves_the_alias(capsys: Capsys, registered: Path) -> None:
    code, out, _ = run(
        capsys, "promote", "tiny@staging", "--alias", "production", "--store", str(registered)
    )
    assert (code, out.strip()) == (0, "tiny@production -> 1 (was unset)")
    code, out, _ = run(
        capsys, "promote", "tiny@2", "--alias", "production", "--store", str(registered), "--json"
    )
    assert json.loads(out) == {"model": "tiny", "alias": "production", "version": 2, "previous": 1}
    assert (
        json.loads(run(capsys, "show", "tiny", "--store", str(registered), "--json")[1])["version"]
        == 2
    )


def test_verify_passes_then_fails_after_tampering(capsys: Capsys, registered: Path) -> None:
    code, out, _ = run(capsys, "verify", "--store", str(registered))
    assert code == 0
    assert "OK    tiny@1" in out
    assert "2 version(s) checked, 0 failed" in out
    tamper(registered / "tiny" / "2" / "model.onnx", "append")
    code, out, _ = run(capsys, "verify", "--store", str(registered))
    assert code == 1
    assert "FAIL  tiny@2" in out
    assert "model_integrity: tiny@2: model.onnx has sha256" in out
    code, out, _ = run(capsys, "verify", "tiny@1", "--store", str(registered), "--json")
    assert code == 0
    assert json.loads(out)["reports"][0]["ok"] is True
    assert (
        main(["show", "tiny@2", "--store", str(registered)]) == 0
    )  # show reads the card only; load and verify check the file


def test_errors_go_to_stderr_with_exit_1(capsys: Capsys, registered: Path) -> None:
    code, out, err = run(capsys, "show", "nope", "--store", str(registered))
    assert (code, out) == (1, "")
    assert err.strip() == "breastdx models show: unknown model 'nope'; known models: tiny"
    code, out, err = run(capsys, "promote", "tiny@1", "--alias", "Prod", "--store", str(registered))
    assert code == 1
    assert "alias 'Prod' is invalid" in err
    code, out, err = run(capsys, "show", "tiny@9", "--store", str(registered), "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unknown_model_version"
    assert "valid versions: 1, 2" in err


def test_register_with_invalid_card(
    capsys: Capsys, store_dir: Path, onnx_file: Path, tmp_path: Path
) -> None:
    card = tmp_path / "bad.json"
    card.write_text(json.dumps(draft_dict(stage="mri")), encoding="utf-8")
    argv = ["register", "--name", "tiny", "--onnx", str(onnx_file), "--card", str(card)]
    code, _, err = run(capsys, *argv, "--store", str(store_dir))
    assert code == 1
    assert "bad.json is not a valid CardDraft: stage:" in err
    assert not store_dir.exists() or not any(store_dir.iterdir())


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["promote", "tiny@1"], ["register", "--name", "x"], ["list", "--bogus"]],
)
def test_bad_usage_exits_2(capsys: Capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: breastdx models" in err


def test_help_exits_0(capsys: Capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "register" in out and "verify" in out


def test_schema_prints_and_writes(capsys: Capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "schema")
    assert (code, out) == (0, render_card_schema())
    target = tmp_path / "s.json"
    code, out, _ = run(capsys, "schema", "--write", "--output", str(target))
    assert code == 0
    assert target.read_text(encoding="utf-8") == render_card_schema()


def test_default_store_comes_from_settings(
    capsys: Capsys, registered: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BREASTDX_MODEL_STORE", str(registered))
    monkeypatch.delenv("BREASTDX_EXTRA_MODEL_STORES", raising=False)
    get_settings.cache_clear()
    try:
        code, out, _ = run(capsys, "list", "--json")
    finally:
        get_settings.cache_clear()
    assert code == 0
    assert [r["store"] for r in json.loads(out)] == [registered.as_uri()] * 2


def test_breastdx_dispatches_to_models(capsys: Capsys, registered: Path) -> None:
    code = breastdx_main(["models", "list", "--store", str(registered), "--json"])
    assert code == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
