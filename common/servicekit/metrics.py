"""Prometheus metrics: requests by path, status and version, and latency.

gunicorn runs several worker processes, so each keeps its counters in
prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set up by
``servicekit.gunicorn_conf``) and ``/metrics`` adds them up across workers. Run
without gunicorn (tests, ``flask run``), the counters live in the process.
"""

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LABELS = ("service", "version", "method", "path", "status")

REQUESTS = Counter("http_requests_total", "HTTP requests handled", LABELS)
LATENCY = Histogram(
    "http_request_duration_seconds", "Time to handle an HTTP request", LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def _registry():
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def init_metrics(app: Flask, service: str, version: str) -> None:
    """Count and time every request of ``app``; serve them at ``/metrics``."""

    @app.before_request
    def _start_timer():
        g.metrics_start = time.perf_counter()

    # The counter and histogram of each label set, looked up once: prometheus
    # takes a lock and builds a key for every .labels() call.
    series: dict[tuple, tuple] = {}

    @app.after_request
    def _observe(response):
        start = g.get("metrics_start")
        if start is not None:
            # The route's pattern, not the raw path, keeps the label set small.
            rule = request.url_rule.rule if request.url_rule else "unmatched"
            labels = (service, version, request.method, rule, str(response.status_code))
            counter, histogram = series.get(labels) or series.setdefault(
                labels, (REQUESTS.labels(*labels), LATENCY.labels(*labels)))
            counter.inc()
            histogram.observe(time.perf_counter() - start)
        return response

    @app.get("/metrics")
    @app.doc(hide=True)
    def metrics():
        return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
