"""Request ids, JSON log lines and Prometheus metrics for the API and the queue workers.

``install_observability(app, settings)`` adds one ASGI middleware (``X-Request-ID`` in and out,
request metrics, one access log line per request) and ``GET /metrics``. ``configure_logging`` is
for entry points: one JSON object per line with the request id, job id and model@version taken
from context variables (:func:`log_context` binds them in workers). Log lines carry a fixed set
of fields, never ``extra`` values at large, and messages are scrubbed of DICOM UIDs and image
file names, so patient identifiers do not reach the logs even where a caller slips.

Request metrics live in this process; with ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's
multiprocess mode) ``/metrics`` sums what the uvicorn workers of the host recorded. Job and
inference durations are recorded where the job runs: in process, in this process's histograms;
in queued mode, by the RQ workers into Redis (``record_shared``: per-bucket counters in one hash
per metric, any host), which every API process's ``/metrics`` reads at scrape time
(:class:`SharedHistogramCollector`), so one scrape of any API replica shows every worker's jobs.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any, Final

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breastdx.errors import BreastdxError
from models_registry.card import Stage
from service.config import Settings
from service.problems import PROBLEM_MEDIA_TYPE, TYPE_PREFIX

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_UID_RE = re.compile(r"\b[0-2](?:\.(?:0|[1-9][0-9]*)){3,}\b")
_FILE_RE = re.compile(  # a path (spaces allowed after a slash) or a bare name, image suffix
    r"(?:/[^\n\"'<>|]*?)?[^\s\"'<>|=/]*\.(?:dcm|dicom|png|jpe?g|tiff?|pgm|bmp|svs|ndpi)\b",
    re.IGNORECASE,
)
_API_FILES: Final = ("/mask.png", "/overlay.png")
_STAGES: Final = frozenset(stage.value for stage in Stage)
_MAX_PROBLEM_BYTES: Final = 64 * 1024
_MAX_FRAMES: Final = 12
NO_STAGE: Final = "none"
UNMATCHED: Final = "<unmatched>"

_request_id: ContextVar[str | None] = ContextVar("breastdx_request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("breastdx_job_id", default=None)
_model: ContextVar[str | None] = ContextVar("breastdx_model", default=None)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_LATENCY = Histogram(
    "breastdx_http_request_duration_seconds",
    "HTTP request latency by route template and stage",
    ["method", "route", "stage"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
REQUESTS = Counter(
    "breastdx_http_requests",
    "HTTP requests by status",
    ["method", "route", "status"],
    registry=None,
)
ERRORS = Counter(
    "breastdx_http_errors", "Problem documents returned, by type", ["type", "status"], registry=None
)
_JOB_DOC: Final = "Analysis job duration from start to end, by stage and final state"
_INFERENCE_DOC: Final = "Model run time (ONNX Runtime) per batch, by stage and model@version"
JOB_DURATION = Histogram(
    "breastdx_job_duration_seconds",
    _JOB_DOC,
    ["stage", "state"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
INFERENCE_DURATION = Histogram(
    "breastdx_inference_duration_seconds",
    _INFERENCE_DOC,
    ["stage", "model"],
    buckets=(0.001, 0.0025, *_LATENCY_BUCKETS),
    registry=None,
)
_OWN_METRICS: Final = (REQUEST_LATENCY, REQUESTS, ERRORS)
_JOB_METRICS: Final = (JOB_DURATION, INFERENCE_DURATION)


@dataclass(frozen=True)
class SharedHistogram:
    """A histogram the queue workers record into Redis and every API process exposes."""

    name: str
    documentation: str
    labels: tuple[str, str]
    buckets: tuple[float, ...]


SHARED_HISTOGRAMS: Final = {
    h.name: h
    for h in (
        SharedHistogram(
            "breastdx_job_duration_seconds",
            _JOB_DOC,
            ("stage", "state"),
            _LATENCY_BUCKETS,
        ),
        SharedHistogram(
            "breastdx_inference_duration_seconds",
            _INFERENCE_DOC,
            ("stage", "model"),
            (0.001, 0.0025, *_LATENCY_BUCKETS),
        ),
    )
}
_SEP: Final = "\x1f"  # label values and the bucket index in a hash field; not in any label


def shared_metrics_key(namespace: str, name: str) -> str:
    return f"{namespace}:metrics:{name}"


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


@contextmanager
def log_context(*, job_id: str | None = None, model: str | None = None) -> Iterator[None]:
    """Bind ``job_id`` and ``model`` (name@version) to every log line inside the block."""
    tokens = [(var, var.set(value)) for var, value in ((_job_id, job_id), (_model, model)) if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _is_ipv4(text: str) -> bool:
    """Four dotted numbers up to 255 (``0.0.0.0``): an address, not a DICOM UID (PS3.5 9.1
    roots are registered and longer)."""
    parts = text.split(".")
    return len(parts) == 4 and all(int(part) <= 255 for part in parts)


def scrub(text: str) -> str:
    """Replace DICOM UIDs and image file names in ``text`` (best effort, defence in depth);
    IPv4 addresses stay."""
    text = _FILE_RE.sub(lambda m: m[0] if m[0].endswith(_API_FILES) else "<file>", text)
    return _UID_RE.sub(lambda m: m[0] if _is_ipv4(m[0]) else "<uid>", text)


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    """Type, message (breastdx errors only: theirs never hold identifiers), code locations."""
    exc_type, exc, tb = exc_info
    frames = [  # the innermost frames as "function (file.py:line)": no paths, no locals
        f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in traceback.extract_tb(tb)
    ][-_MAX_FRAMES:]
    fields: dict[str, Any] = {"error": getattr(exc_type, "__name__", "Exception"), "stack": frames}
    if isinstance(exc, BreastdxError):
        fields["error_detail"] = scrub(exc.message)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, job_id, model."""

    EXTRA_FIELDS: Final = (
        *("stage", "state", "code", "attempt", "attempts", "inputs", "bytes", "input_index"),
        *("method", "route", "status", "duration_ms", "alias"),
    )

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``; ``extra`` values outside ``EXTRA_FIELDS`` are dropped."""
        created = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
            "job_id": getattr(record, "job_id", None) or _job_id.get(),
            "model": getattr(record, "model", None) or _model.get(),
        }
        for key in self.EXTRA_FIELDS:
            value = getattr(record, key, None)
            if isinstance(value, str | int | float | bool):
                payload[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            payload |= _exception_fields(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log record as a JSON line to ``stream`` (stderr); for entry points only.

    Replaces the root handlers; uvicorn's and RQ's loggers are made to propagate to root so
    that their lines are JSON too. Calling it again replaces the handler it installed.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq", "rq.worker"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True


def observe_job(
    stage: Stage | str, seconds: float, state: str, shared: SharedMetrics | None = None
) -> None:
    """Record one job's duration (``state``: its final state, e.g. succeeded or failed), in
    this process or, given ``shared``, in Redis for every API process to expose."""
    labels = (_stage_label(str(stage)), str(state))
    if shared is not None:
        shared.record("breastdx_job_duration_seconds", labels, seconds)
    else:
        JOB_DURATION.labels(*labels).observe(max(0.0, seconds))


def observe_inference(
    stage: Stage | str, model: str, seconds: float, shared: SharedMetrics | None = None
) -> None:
    """Record one model run (``model``: name@version), here or in Redis (``shared``)."""
    labels = (_stage_label(str(stage)), model)
    if shared is not None:
        shared.record("breastdx_inference_duration_seconds", labels, seconds)
    else:
        INFERENCE_DURATION.labels(*labels).observe(max(0.0, seconds))


@dataclass(frozen=True)
class SharedMetrics:
    """Where queue workers record job and inference durations: Redis hashes under
    ``<namespace>:metrics:<name>``, one counter per label set and bucket, plus the sum."""

    client: Any  # redis.Redis
    namespace: str

    def record(self, name: str, labels: tuple[str, str], seconds: float) -> None:
        """Count one observation; a Redis error is logged, never raised (a metric must not
        fail a job)."""
        import redis

        histogram = SHARED_HISTOGRAMS[name]
        seconds = max(0.0, seconds)
        bucket = bisect.bisect_left(histogram.buckets, seconds)  # len(buckets): +Inf only
        field = _SEP.join(labels)
        key = shared_metrics_key(self.namespace, name)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, f"{field}{_SEP}{bucket}", 1)
                pipe.hincrbyfloat(key, f"{field}{_SEP}sum", seconds)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("metric %s not recorded: %s", name, type(exc).__name__)


def read_shared(client: Any, namespace: str) -> list[HistogramMetricFamily]:
    """The shared histograms as Prometheus families (cumulative buckets), read from Redis."""
    families = []
    for histogram in SHARED_HISTOGRAMS.values():
        raw = client.hgetall(shared_metrics_key(namespace, histogram.name))
        series: dict[tuple[str, ...], tuple[list[int], float]] = {}
        for field, value in raw.items():
            *labels, part = (field.decode() if isinstance(field, bytes) else field).split(_SEP)
            if len(labels) != len(histogram.labels):
                continue  # not ours
            counts, total = series.setdefault(
                tuple(labels), ([0] * (len(histogram.buckets) + 1), 0.0)
            )
            if part == "sum":
                series[tuple(labels)] = (counts, float(value))
            elif part.isdigit() and int(part) <= len(histogram.buckets):
                counts[int(part)] += int(value)
        family = HistogramMetricFamily(
            histogram.name, histogram.documentation, labels=list(histogram.labels)
        )
        for labels, (counts, total) in sorted(series.items()):
            cumulative = list(itertools.accumulate(counts))
            bounds = [*(floatToGoString(b) for b in histogram.buckets), "+Inf"]
            family.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
        families.append(family)
    return families


def _stage_label(value: str | None) -> str:
    """A known stage or ``none``: request input must not create label values."""
    return value if value in _STAGES else NO_STAGE


QueueNames = Callable[[], Mapping[str, str]]


def stage_queue_names(settings: Settings) -> dict[str, str]:
    """Stage -> RQ queue name, as the job code names its queues."""
    from service.jobs.queue import queue_name

    return {stage.value: queue_name(settings, stage) for stage in Stage}


class QueueDepthCollector(Collector):
    """Jobs waiting and running per stage, read from RQ at scrape time."""

    def __init__(self, redis_url: str, queue_names: QueueNames, namespace: str) -> None:
        self.redis_url = redis_url
        self.queue_names = queue_names
        self.namespace = namespace
        self._connection: Any = None  # redis.Redis, made on the first scrape

    def collect(self) -> Iterable[Metric]:
        """Gauges ``breastdx_queue_depth{stage}``, ``breastdx_queue_started{stage}``, ``_up``,
        and the job and inference duration histograms the workers recorded in Redis."""
        import redis
        from rq import Queue

        depth = GaugeMetricFamily(
            "breastdx_queue_depth", "Jobs waiting in the queue, per stage", labels=["stage"]
        )
        started = GaugeMetricFamily(
            "breastdx_queue_started", "Jobs being run by a worker, per stage", labels=["stage"]
        )
        up = GaugeMetricFamily("breastdx_queue_up", "1 when Redis answered this scrape")
        try:
            if self._connection is None:
                self._connection = redis.Redis.from_url(
                    self.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5
                )
            for stage, name in self.queue_names().items():
                queue = Queue(name, connection=self._connection)
                depth.add_metric([stage], queue.count)
                started.add_metric([stage], queue.started_job_registry.count)
            shared = read_shared(self._connection, self.namespace)
            up.add_metric([], 1.0)
        except (redis.RedisError, OSError) as exc:
            logger.warning("queue metrics unavailable: %s", type(exc).__name__)
            up.add_metric([], 0.0)
            return [up]
        return [depth, started, up, *shared]


def metrics_registry(settings: Settings) -> CollectorRegistry:
    """This process's metrics (or every process's, in multiprocess mode) and the queue gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for metric in _OWN_METRICS:
            registry.register(metric)
        if not settings.redis_url:  # in process: the jobs ran here
            for metric in _JOB_METRICS:
                registry.register(metric)
        registry.register(ProcessCollector(registry=None))
    if settings.redis_url:
        names = partial(stage_queue_names, settings)
        registry.register(QueueDepthCollector(settings.redis_url, names, settings.namespace))
    return registry


class ObservabilityMiddleware:
    """Pure ASGI: request id in and out, latency, status and problem-type metrics, access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request; websocket and lifespan pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = _request_id.set(request_id)
        tracker = _ResponseTracker(send, request_id)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, tracker.send)
        except Exception:
            # The app's 500 handler runs outside user middleware, still in this context:
            # the request id stays bound for its log line (see install_observability).
            _record(scope, 500, f"{TYPE_PREFIX}internal_error", time.perf_counter() - start)
            raise
        _record(scope, tracker.status, tracker.problem_type(), time.perf_counter() - start)
        _request_id.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID`` when it is a safe token (else a new one is made)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


class _ResponseTracker:
    """Wraps ``send``: adds the request id header, notes the status and problem bodies."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        self.status = 500
        self._problem: bytearray | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = [(k, v) for k, v in message.get("headers", []) if k != self._header[0]]
            message = {**message, "headers": [*headers, self._header]}
            content_type = dict(headers).get(b"content-type", b"")
            if content_type.startswith(PROBLEM_MEDIA_TYPE.encode()):
                self._problem = bytearray()
        elif message["type"] == "http.response.body" and self._problem is not None:
            self._problem += message.get("body", b"")[: _MAX_PROBLEM_BYTES - len(self._problem)]
        await self._send(message)

    def problem_type(self) -> str | None:
        """The ``type`` of the problem document sent, if one was."""
        if self._problem is None:
            return None
        try:
            value = json.loads(bytes(self._problem)).get("type")
        except (ValueError, AttributeError):
            return f"{TYPE_PREFIX}unparsable"
        return value if isinstance(value, str) else None


def _route_template(scope: Scope) -> str:
    """The matched route's path template, with the static prefix of an included router."""
    template = getattr(scope.get("route"), "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    try:  # the route knows its path below the include prefix: put the prefix back
        concrete = template.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return template
    path = str(scope.get("path", ""))
    return path.removesuffix(concrete) + template if path.endswith(concrete) else template


def _record(scope: Scope, status: int, problem: str | None, seconds: float) -> None:
    """Metrics and the access log line of one finished request."""
    route, method = _route_template(scope), str(scope.get("method", ""))
    path_stage = scope.get("path_params", {}).get("stage")
    stage = _stage_label(path_stage or scope.get("state", {}).get("stage"))
    REQUEST_LATENCY.labels(method=method, route=route, stage=stage).observe(seconds)
    REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    if problem is not None:
        code = problem.removeprefix(TYPE_PREFIX)
        ERRORS.labels(type=code if _CODE_RE.match(code) else "other", status=str(status)).inc()
    fields = {"method": method, "route": route, "status": status, "stage": stage}
    fields["duration_ms"] = round(seconds * 1000.0, 3)
    access_logger.info("%s %s %d", method, route, status, extra=fields)


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def _with_request_id(handler: ExceptionHandler) -> ExceptionHandler:
    """The app's 500 handler, adding ``X-Request-ID`` (it runs outside user middleware)."""

    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Add the request-id and metrics middleware and ``GET /metrics`` to ``app``.

    Call it after the problem handlers are installed so that 500 responses carry the request
    id too. ``/metrics`` is not in the OpenAPI document and needs no API key: it holds counts
    and durations only; keep it off public networks.
    """
    app.add_middleware(ObservabilityMiddleware)
    for key in (Exception, 500):
        handler = app.exception_handlers.get(key)
        if handler is not None:
            app.exception_handlers[key] = _with_request_id(handler)  # type: ignore[arg-type]
    registry = metrics_registry(settings)

    def metrics() -> Response:
        """Prometheus text exposition of the service's metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
