"""A BREASTDX_* variable that does not parse: every command names it and exits non-zero, no
traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from breastdx.cli import main
from service.config import SettingsError, get_settings
from service.pacs.config import get_dicom_settings


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    get_dicom_settings.cache_clear()
    yield
    get_settings.cache_clear()
    get_dicom_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("BREASTDX_ORT_SPINNING", "maybe", "serve"),
        ("BREASTDX_INPROCESS_WORKERS", "many", "worker"),
        ("BREASTDX_JOB_TIMEOUT_S", "0", "api-keys"),
    ],
)
def test_bad_setting_is_a_message_not_a_traceback(
    variable: str,
    value: str,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert main([command, *(["list"] if command == "api-keys" else [])]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"breastdx {command}: ") and f"invalid settings: {variable}: " in err
    assert "Traceback" not in err


def test_settings_error_lists_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREASTDX_ORT_SPINNING", "maybe")
    monkeypatch.setenv("BREASTDX_DICOM_PORT", "port")
    with pytest.raises(SettingsError, match="BREASTDX_ORT_SPINNING: Input should be a valid"):
        get_settings()
    with pytest.raises(SettingsError, match="BREASTDX_DICOM_PORT: Input should be a valid"):
        get_dicom_settings()
