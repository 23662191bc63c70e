"""What ``/healthz`` and ``/metrics`` report: store, index and broker checks; job and queue gauges."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from longrag.services import jobs as J

if TYPE_CHECKING:
    from longrag.services.api.state import ApiState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceCollector:
    """Job counts, queue depth and ingest throughput, read at scrape time from the shared store."""

    def __init__(self, jobs: J.JobStore, dispatcher: J.LocalDispatcher | J.CeleryDispatcher) -> None:
        self.jobs = jobs
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("longrag_jobs", "Jobs by kind and state", labels=["kind", "state"])
        counts = self.jobs.counts()
        for kind in ("ingest", "batch", "query"):
            for state in J.STATES:
                g.add_metric([kind, state], counts.get((kind, state), 0))
        yield g
        q = GaugeMetricFamily("longrag_queue_depth", "Tasks waiting per queue", labels=["queue"])
        try:
            for name, n in self.dispatcher.queue_depth().items():
                q.add_metric([name], n)
        except Exception as exc:  # the broker may be down: report what we can
            log.warning("queue depth unavailable: %s", exc)
        yield q
        docs, nbytes, secs = self.jobs.ingest_totals()
        yield CounterMetricFamily("longrag_ingested_documents", "Documents ingested by jobs", value=docs)
        yield CounterMetricFamily("longrag_ingested_bytes", "Bytes ingested by jobs", value=nbytes)
        yield CounterMetricFamily("longrag_ingest_seconds", "Seconds spent ingesting", value=secs)
        yield GaugeMetricFamily("longrag_ingest_bytes_per_second", "Ingest throughput over all ingest jobs",
                                value=(nbytes / secs) if secs > 0 else 0.0)


def make_metrics(jobs: J.JobStore,
                 dispatcher: J.LocalDispatcher | J.CeleryDispatcher) -> tuple[CollectorRegistry, Histogram]:
    """The registry ``/metrics`` serves (service gauges included) and its request-latency histogram."""
    registry = CollectorRegistry()
    latency = Histogram("longrag_request_seconds", "Request latency", ["method", "route", "status"],
                        registry=registry, buckets=LATENCY_BUCKETS)
    registry.register(ServiceCollector(jobs, dispatcher))
    return registry, latency


def route_template(request: Request) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), so ids do not split the metric."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def index_health(st: ApiState) -> dict[str, Any]:
    """Per vector kind: vectors stored, vectors in the index file, ``ok`` or ``stale``."""
    import faiss

    corpus = st.corpus
    out: dict[str, Any] = {}
    for kind in corpus.vector_builders:
        expected = corpus.store.count_vectors(kind)
        path = corpus._index_path(kind)
        if not path.exists():
            out[kind] = {"status": "ok" if expected == 0 else "stale", "vectors": expected, "indexed": 0}
            continue
        n = faiss.read_index(str(path)).ntotal
        out[kind] = {"status": "ok" if n == expected else "stale", "vectors": expected, "indexed": int(n)}
    return out


def health(st: ApiState) -> dict[str, Any]:
    """The ``/healthz`` body; ``status`` is ``degraded`` when the store, index or broker fails."""
    from longrag.models.registry import loaded_models

    body: dict[str, Any] = {"mode": "celery" if st.settings.broker_url else "embedded"}
    ok = True
    try:
        body["documents"] = len(st.corpus.list())
        body["jobs"] = {f"{k}:{s}": n for (k, s), n in st.jobs.counts().items()}
        body["store"] = "ok"
    except Exception as exc:
        ok, body["store"] = False, f"error: {exc}"
    try:
        body["index"] = index_health(st)  # a stale index is rebuilt on the next search: still ok
    except Exception as exc:
        ok, body["index"] = False, f"error: {exc}"
    if st.settings.broker_url:
        try:
            with st.dispatcher.app.connection_for_read() as conn:
                conn.default_channel.client.ping()
            body["broker"] = "ok"
        except Exception as exc:
            ok, body["broker"] = False, f"error: {exc}"
    else:
        body["broker"] = "embedded (no broker configured)"
    body["models_loaded"] = loaded_models()
    body["status"] = "ok" if ok else "degraded"
    return body
