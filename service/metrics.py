"""Prometheus metrics of the API and the queue workers.

Request metrics live in the API process; with ``PROMETHEUS_MULTIPROC_DIR`` set
(prometheus_client's multiprocess mode) ``/metrics`` sums what the uvicorn workers of the host
recorded. Job and inference durations are recorded where the job runs: in process, in this
process's histograms; in queued mode, by the RQ workers into Redis (:class:`SharedMetrics`:
per-bucket counters in one hash per metric, any host), which every API process's ``/metrics``
reads at scrape time (:class:`QueueDepthCollector`), so one scrape of any API replica shows
every worker's jobs. No web framework is imported here: the queue worker uses this module.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import partial
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from models_registry.card import Stage
from service.config import Settings

logger = logging.getLogger(__name__)

_STAGES: Final = frozenset(stage.value for stage in Stage)
NO_STAGE: Final = "none"

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


def observe_job(
    stage: Stage | str, seconds: float, state: str, shared: SharedMetrics | None = None
) -> None:
    """Record one job's duration (``state``: its final state, e.g. succeeded or failed), in
    this process or, given ``shared``, in Redis for every API process to expose."""
    labels = (stage_label(str(stage)), str(state))
    if shared is not None:
        shared.record("breastdx_job_duration_seconds", labels, seconds)
    else:
        JOB_DURATION.labels(*labels).observe(max(0.0, seconds))


def observe_inference(
    stage: Stage | str, model: str, seconds: float, shared: SharedMetrics | None = None
) -> None:
    """Record one model run (``model``: name@version), here or in Redis (``shared``)."""
    labels = (stage_label(str(stage)), model)
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
        self._send([(name, labels, seconds)])

    @contextmanager
    def batch(self) -> Iterator[SharedMetrics]:
        """Observations recorded inside (``observe_job(..., shared)`` etc.) go to Redis in one
        round trip at the end."""
        pending = _PendingMetrics(self.client, self.namespace)
        yield pending
        self._send(pending.observations)

    def _send(self, observations: list[tuple[str, tuple[str, str], float]]) -> None:
        import redis

        if not observations:
            return
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for name, labels, seconds in observations:
                    histogram = SHARED_HISTOGRAMS[name]
                    seconds = max(0.0, seconds)
                    bucket = bisect.bisect_left(histogram.buckets, seconds)  # +Inf: len(buckets)
                    series = _SEP.join(labels)
                    key = shared_metrics_key(self.namespace, name)
                    pipe.hincrby(key, f"{series}{_SEP}{bucket}", 1)
                    pipe.hincrbyfloat(key, f"{series}{_SEP}sum", seconds)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            names = ", ".join(sorted({name for name, _, _ in observations}))
            logger.warning("metric %s not recorded: %s", names, type(exc).__name__)


@dataclass(frozen=True)
class _PendingMetrics(SharedMetrics):
    """:meth:`SharedMetrics.batch`'s collector: records are kept until the batch ends."""

    observations: list[tuple[str, tuple[str, str], float]] = dataclass_field(default_factory=list)

    def record(self, name: str, labels: tuple[str, str], seconds: float) -> None:
        self.observations.append((name, labels, seconds))


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


def stage_label(value: str | None) -> str:
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
