"""API keys (hashed at rest, CLI-managed, revocable, scoped), rate limits, CORS, open routes,
and no patient identifiers in logs."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from breastdx.cli import main as breastdx_main
from service.app import create_app
from service.config import Settings, get_settings
from service.security.keys import RedisKeyStore, create_key, revoke_key, verify_key
from tests.imaging import dicom_factory as dcm
from tests.service import jobs_support as js


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return js.build_store(tmp_path_factory.mktemp("security"))


@pytest.fixture
def keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI and the app share ``BREASTDX_API_KEYS_FILE`` (no Redis)."""
    path = tmp_path / "keys" / "api-keys.json"
    monkeypatch.setenv("BREASTDX_API_KEYS_FILE", str(path))
    monkeypatch.delenv("BREASTDX_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def app_client(store: Path, **overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(model_store=store, **overrides)))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = breastdx_main(["api-keys", *argv])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def upload(image: bytes, name: str = "image.png") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, image, "application/octet-stream"))]


def test_v1_needs_a_key_but_health_and_page_are_open(store: Path) -> None:
    with app_client(store) as client:
        for response in (
            client.get("/v1/models"),
            client.post("/v1/ultrasound/analyses", files=upload(js.ultrasound_png())),
            client.get(f"/v1/analyses/{'a' * 32}"),
        ):
            assert response.status_code == 401
            assert response.json()["type"] == "urn:breastdx:problem:authentication_required"
            assert response.headers["www-authenticate"].startswith("Bearer")
        bad = client.get("/v1/models", headers={"X-API-Key": "bdx_000000000000_" + "x" * 43})
        assert (
            bad.status_code == 401 and bad.json()["type"] == "urn:breastdx:problem:invalid_api_key"
        )
        assert client.get("/healthz").status_code == 200
        assert js.ready(client).status_code == 200
        assert client.get("/").status_code == 200


def test_cli_keys_are_hashed_at_rest_and_revocable(
    store: Path, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, [created] = cli(capsys, "create", "reading-room")
    assert code == 0 and created["name"] == "reading-room"
    token = created["key"]
    assert token.startswith(f"bdx_{created['id']}_")
    text = keys_file.read_text(encoding="utf-8")
    assert token not in text and token.split("_", 2)[2] not in text and "sha256" in text
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    code, listed = cli(capsys, "list")
    assert code == 0 and [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and "sha256" not in listed[0] and "salt" not in listed[0]
    settings = Settings(model_store=store, api_keys_file=keys_file)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models", headers={"X-API-Key": token}).status_code == 200
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/models", headers=bearer).status_code == 200
        assert cli(capsys, "revoke", created["id"])[0] == 0
        revoked = client.get("/v1/models", headers=bearer)
        assert revoked.status_code == 401
        assert revoked.json()["type"] == "urn:breastdx:problem:invalid_api_key"
    assert cli(capsys, "revoke", "0" * 12)[0] == 1
    assert cli(capsys, "list")[1][0]["revoked_at"] is not None


def test_redis_keys_are_hashed_at_rest() -> None:
    client = js.redis_or_skip()
    client.flushdb()
    try:
        keys = RedisKeyStore(client, "t-sec")
        record, token = create_key(keys, "modality-gateway", ["analyses:write"])
        secret = token.split("_", 2)[2]
        stored = b"".join(client.hvals("t-sec:apikeys"))
        assert secret.encode() not in stored and token.encode() not in stored
        assert verify_key(keys, token).id == record.id
        revoke_key(keys, record.id)
        with pytest.raises(Exception, match="revoked"):
            verify_key(keys, token)
    finally:
        client.flushdb()


def test_scopes_limit_what_a_key_may_do(store: Path, tmp_path: Path) -> None:
    settings = Settings(model_store=store, api_keys_file=tmp_path / "keys.json")
    from service.security.keys import FileKeyStore

    _, reader = create_key(FileKeyStore(settings.api_keys_file), "viewer", ["analyses:read"])
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/ultrasound/analyses",
            files=upload(js.ultrasound_png()),
            headers={"X-API-Key": reader},
        )
        assert response.status_code == 403
        assert response.json()["required_scope"] == "analyses:write"


def test_rate_limit_answers_429_with_retry_after(store: Path) -> None:
    with app_client(store, allow_anonymous=True, rate_limit_requests=3) as client:
        codes = [client.get("/v1/models").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.get("/v1/models")
        assert limited.json()["type"] == "urn:breastdx:problem:rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("/healthz").status_code == 200  # not rate limited


def test_cors_is_closed_by_default(store: Path) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with app_client(store, allow_anonymous=True) as client:
        response = client.options("/v1/ultrasound/analyses", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    origin = "https://viewer.example"
    with app_client(store, allow_anonymous=True, cors_origins=[origin]) as client:
        response = client.options("/v1/ultrasound/analyses", headers=preflight | {"Origin": origin})
        assert response.headers["access-control-allow-origin"] == origin


def test_no_patient_identifiers_in_logs_or_job(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = dcm.to_bytes(dcm.mammogram(rows=160, columns=128)[0])
    name = "Doe^Jane^PHI_PHI-0042-XYZ.dcm"
    caplog.set_level(logging.DEBUG)
    with app_client(store, allow_anonymous=True) as client:
        response = client.post(
            "/v1/mammography/analyses", files=upload(image, name), headers={"Prefer": "wait=30"}
        )
        assert response.json()["state"] == "succeeded"
    job_id = response.json()["id"]
    assert any(getattr(r, "job_id", None) == job_id for r in caplog.records)
    extras = " ".join(str(vars(r)) for r in caplog.records)
    text = caplog.text + extras + response.text
    for marker in (*dcm.PHI_MARKERS, name):
        assert marker not in text


def test_key_store_unreachable_is_503(store: Path) -> None:
    down = f"redis://127.0.0.1:{js.free_port()}/0"
    with app_client(store, redis_url=down) as client:
        response = client.get("/v1/models", headers={"X-API-Key": "bdx_000000000000_" + "x" * 43})
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1


def test_redis_backed_keys_work_end_to_end(store: Path) -> None:
    client_db: redis.Redis = js.redis_or_skip()
    client_db.flushdb()
    settings = Settings(model_store=store, redis_url=js.TEST_REDIS_URL, namespace="t-sec")
    try:
        _, token = create_key(RedisKeyStore(client_db, "t-sec"), "ci")
        with TestClient(create_app(settings)) as client:
            assert client.get("/v1/models", headers={"X-API-Key": token}).status_code == 200
            assert client.get("/v1/models").status_code == 401
    finally:
        client_db.flushdb()


def test_a_key_sees_only_its_own_jobs(store: Path, tmp_path: Path) -> None:
    settings = Settings(model_store=store, api_keys_file=tmp_path / "keys.json")
    from service.security.keys import FileKeyStore

    keys = FileKeyStore(settings.api_keys_file)
    (_, alice), (_, bob) = create_key(keys, "alice"), create_key(keys, "bob")
    with TestClient(create_app(settings)) as client:
        submitted = client.post(
            "/v1/ultrasound/analyses",
            files=upload(js.ultrasound_png()),
            headers={"X-API-Key": alice, "Prefer": "wait=30"},
        ).json()
        location = submitted["links"]["self"]
        assert client.get(location, headers={"X-API-Key": alice}).status_code == 200
        for path in (location, submitted["links"]["mask"]):
            other = client.get(path, headers={"X-API-Key": bob})
            assert other.status_code == 404
            assert other.json()["type"] == "urn:breastdx:problem:job_not_found"
