"""Request ids, Prometheus metrics and JSON log lines (``service.observability``,
``service.metrics``, ``service.logs``)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import redis
from fastapi import FastAPI, File, UploadFile
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from breastdx.errors import BreastdxError
from models_registry.card import Stage
from service.app import create_app
from service.config import Settings
from service.logs import JsonFormatter, configure_logging, log_context, scrub
from service.metrics import (
    QueueDepthCollector,
    SharedMetrics,
    observe_inference,
    observe_job,
    read_shared,
)
from service.observability import install_observability
from service.problems import install_problem_handlers

REDIS_URL = "redis://127.0.0.1:6379/14"
PATIENT_FILE = "DOE_JANE_19700101_1.2.840.113619.2.55.3.604688119.dcm"
PATIENT_UID = "1.2.840.113619.2.55.3.604688119"
LOG_KEYS = {"time", "level", "logger", "message", "request_id", "job_id", "model"}


class _RefusedError(BreastdxError):
    code = "refused_for_test"
    title = "Refused"
    http_status = 422


def _app(tmp_path: Path, **overrides: object) -> FastAPI:
    """A small app with the project's problem handlers and a few routes of each outcome."""
    app = FastAPI()
    install_problem_handlers(app)
    log = logging.getLogger("tests.observability")

    @app.get("/v1/{stage}/things")
    def things(stage: str) -> dict[str, str]:
        log.info("listing things", extra={"stage": stage})
        return {"stage": stage}

    @app.post("/v1/{stage}/uploads")
    async def upload(stage: str, file: Annotated[UploadFile, File()]) -> dict[str, int]:
        data = await file.read()
        # A careless log line: the formatter must not let the name or the UID through.
        log.warning("got %s (%s)", file.filename, PATIENT_UID, extra={"upload": file.filename})
        with log_context(job_id="job-123", model="us-tiny@1"):
            log.info("analysed")
        return {"bytes": len(data)}

    @app.get("/refuse")
    def refuse() -> None:
        raise _RefusedError("refused for the test", stage="ultrasound")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"failed on {PATIENT_FILE}")

    settings = Settings(model_store=tmp_path / "store", **overrides)  # type: ignore[arg-type]
    install_observability(app, settings)
    return app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(_app(tmp_path), raise_server_exceptions=False)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record, as the entry points format it, into a buffer; root restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure_logging("INFO", buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a Prometheus text exposition."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def test_request_id_is_generated_echoed_or_replaced(client: TestClient) -> None:
    generated = client.get("/v1/ultrasound/things").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/v1/ultrasound/things").headers["X-Request-ID"] != generated
    echoed = client.get("/v1/ultrasound/things", headers={"X-Request-ID": "abc-123.x"})
    assert echoed.headers["X-Request-ID"] == "abc-123.x"
    for unsafe in ("a b", "x" * 129, "<script>"):
        response = client.get("/v1/ultrasound/things", headers={"X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_problem_responses_carry_the_request_id(client: TestClient) -> None:
    for path, status in [("/nowhere", 404), ("/refuse", 422), ("/boom", 500)]:
        response = client.get(path, headers={"X-Request-ID": f"rid-{status}"})
        assert response.status_code == status
        assert response.headers["X-Request-ID"] == f"rid-{status}"
        assert response.headers["content-type"].startswith("application/problem+json")


def test_metrics_after_some_requests(client: TestClient) -> None:
    before = _samples(client.get("/metrics").text)
    for stage in ("ultrasound", "ultrasound", "mammography", "not-a-stage"):
        client.get(f"/v1/{stage}/things")
    client.get("/nowhere")
    client.get("/refuse")
    client.get("/boom")
    client.post("/v1/ultrasound/uploads")  # no file: a validation problem
    observe_job("ultrasound", 0.25, "succeeded")
    observe_inference("ultrasound", "us-tiny@1", 0.01)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    latency = "breastdx_http_request_duration_seconds_count"
    assert delta(latency, route="/v1/{stage}/things", stage="ultrasound") == 2
    assert delta(latency, route="/v1/{stage}/things", stage="mammography") == 1
    assert delta(latency, route="/v1/{stage}/things", stage="none") == 1  # not a label value
    assert delta(latency, route="<unmatched>") == 1  # raw paths never become labels
    requests = "breastdx_http_requests_total"
    assert delta(requests, route="/v1/{stage}/things", status="200") == 4
    assert delta(requests, route="/boom", status="500") == 1
    errors = "breastdx_http_errors_total"
    assert delta(errors, type="not_found", status="404") == 1
    assert delta(errors, type="refused_for_test", status="422") == 1
    assert delta(errors, type="internal_error", status="500") == 1
    assert delta(errors, type="validation_error", status="422") == 1
    assert delta("breastdx_job_duration_seconds_count", stage="ultrasound", state="succeeded") == 1
    inference = "breastdx_inference_duration_seconds_count"
    assert delta(inference, stage="ultrasound", model="us-tiny@1") == 1
    assert "process_cpu_seconds_total" in after
    assert "breastdx_queue_depth" not in response.text  # no Redis configured
    assert "/metrics" not in client.get("/openapi.json").text


def test_json_log_lines_have_the_fields_and_no_patient_data(
    client: TestClient, json_log: io.StringIO
) -> None:
    upload = {"file": (PATIENT_FILE, b"\x89PNG fake", "application/dicom")}
    response = client.post("/v1/ultrasound/uploads", files=upload, headers={"X-Request-ID": "r1"})
    assert response.status_code == 200
    client.get("/boom", headers={"X-Request-ID": "r2"})
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and all(set(line) >= LOG_KEYS for line in lines)
    text = json_log.getvalue()
    for secret in (PATIENT_FILE, PATIENT_UID, "DOE_JANE", "19700101"):
        assert secret not in text
    mine = [line for line in lines if line["logger"] == "tests.observability"]
    assert [line["request_id"] for line in mine] == ["r1", "r1"]
    assert (mine[1]["job_id"], mine[1]["model"]) == ("job-123", "us-tiny@1")
    assert mine[0]["job_id"] is None and "upload" not in mine[0]
    access = [line for line in lines if line["logger"] == "service.access"]
    assert {(a["route"], a["status"], a["request_id"]) for a in access} == {
        ("/v1/{stage}/uploads", 200, "r1"),
        ("/boom", 500, "r2"),
    }
    failure = next(line for line in lines if line["level"] == "ERROR")
    assert failure["request_id"] == "r2" and failure["error"] == "RuntimeError"
    assert all(re.fullmatch(r"\w+ \([\w.]+:\d+\)", frame) for frame in failure["stack"])


def test_formatter_keeps_breastdx_messages_and_scrubs_identifiers() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    try:
        raise _RefusedError(f"cannot read /data/{PATIENT_FILE}")
    except _RefusedError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["error"] == "_RefusedError" and line["error_detail"] == "cannot read <file>"
    assert scrub("GET /v1/analyses/ab12/overlay.png?index=0") == (
        "GET /v1/analyses/ab12/overlay.png?index=0"
    )
    assert scrub("saw 1.2.840.10008.5.1.4.1.1.2 in scan.dcm") == "saw <uid> in <file>"


def test_the_service_app_reports_full_route_templates(tmp_path: Path) -> None:
    settings = Settings(
        model_store=tmp_path / "store",
        allow_anonymous=True,
        api_keys_file=tmp_path / "keys.json",
    )
    client = TestClient(create_app(settings))
    response = client.get("/v1/analyses/0123456789abcdef", headers={"X-Request-ID": "q1"})
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "q1"
    assert client.post("/v1/not-a-stage/analyses").status_code == 404
    metrics = _samples(client.get("/metrics").text)
    latency = "breastdx_http_request_duration_seconds_count"
    assert _value(metrics, latency, route="/v1/analyses/{job_id}", stage="none") >= 1
    assert _value(metrics, latency, route="/v1/{stage}/analyses", stage="none") >= 1
    errors = "breastdx_http_errors_total"
    assert _value(metrics, errors, type="job_not_found", status="404") >= 1
    assert _value(metrics, errors, type="unknown_stage", status="404") >= 1
    assert not any("0123456789abcdef" in str(labels) for s in metrics.values() for labels, _ in s)


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.flushdb()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield connection
    connection.flushdb()


@pytest.mark.integration
def test_queue_depth_is_read_from_rq_at_scrape_time(redis_db: redis.Redis) -> None:
    names = {"ultrasound": "test-us", "mammography": "test-mg"}
    queue = Queue("test-us", connection=redis_db)
    for _ in range(3):
        queue.enqueue("builtins.print", "never run")
    collector = QueueDepthCollector(REDIS_URL, queue_names=lambda: names, namespace="t-obs")
    gauges = {
        m.name: {s.labels.get("stage"): s.value for s in m.samples} for m in collector.collect()
    }
    assert gauges["breastdx_queue_depth"] == {"ultrasound": 3, "mammography": 0}
    assert gauges["breastdx_queue_up"] == {None: 1}
    down = QueueDepthCollector("redis://127.0.0.1:1/0", lambda: names, namespace="t-obs")
    assert [(m.name, m.samples[0].value) for m in down.collect()] == [("breastdx_queue_up", 0)]


@pytest.mark.integration
def test_durations_recorded_by_workers_in_redis_are_prometheus_histograms(
    redis_db: redis.Redis,
) -> None:
    shared = SharedMetrics(redis_db, "t-obs")
    for seconds in (0.004, 0.02, 0.02, 7.0, 120.0):  # buckets 0.005, 0.025 x2, 10, +Inf
        observe_job("ultrasound", seconds, "succeeded", shared)
    observe_job("not-a-stage", 1.0, "failed", shared)
    observe_inference("ultrasound", "us-tiny@1", 0.0005, shared)
    families = {f.name: f for f in read_shared(redis_db, "t-obs")}
    job = {
        (s.name, s.labels.get("stage"), s.labels.get("le")): s.value
        for s in families["breastdx_job_duration_seconds"].samples
    }
    bucket = "breastdx_job_duration_seconds_bucket"
    assert job[(bucket, "ultrasound", "0.005")] == 1
    assert job[(bucket, "ultrasound", "0.01")] == 1
    assert job[(bucket, "ultrasound", "0.025")] == 3
    assert job[(bucket, "ultrasound", "10.0")] == 4
    assert job[(bucket, "ultrasound", "60.0")] == 4 and job[(bucket, "ultrasound", "+Inf")] == 5
    assert job[("breastdx_job_duration_seconds_count", "ultrasound", None)] == 5
    assert job[("breastdx_job_duration_seconds_sum", "ultrasound", None)] == pytest.approx(127.044)
    assert job[("breastdx_job_duration_seconds_count", "none", None)] == 1  # no new label values
    inference = families["breastdx_inference_duration_seconds"].samples
    first = next(s for s in inference if s.name.endswith("_bucket"))
    assert first.labels == {"stage": "ultrasound", "model": "us-tiny@1", "le": "0.001"}
    assert first.value == 1
    assert sorted(redis_db.scan_iter("t-obs:metrics:*")) == [
        b"t-obs:metrics:breastdx_inference_duration_seconds",
        b"t-obs:metrics:breastdx_job_duration_seconds",
    ]


@pytest.mark.integration
def test_metrics_of_a_queued_app_show_the_stage_queues(
    redis_db: redis.Redis, tmp_path: Path
) -> None:
    from service.jobs.queue import queue_name

    settings = Settings(
        model_store=tmp_path / "store",
        redis_url=REDIS_URL,
        api_keys_file=tmp_path / "keys.json",
    )
    queue = Queue(queue_name(settings, Stage.MAMMOGRAPHY), connection=redis_db)
    for _ in range(2):
        queue.enqueue("builtins.print", "never run")
    metrics = _samples(TestClient(create_app(settings)).get("/metrics").text)
    depth = {labels["stage"]: value for labels, value in metrics["breastdx_queue_depth"]}
    assert depth == {"mammography": 2, "ultrasound": 0, "histopathology": 0}
    assert metrics["breastdx_queue_up"] == [({}, 1.0)]
