"""AWS X-Ray tracing: the ONLY module that imports the X-Ray SDK.

The SDK is in maintenance (end of support 2027-02-25; OpenTelemetry/ADOT is the
successor), so every tracing call in canarylab goes through the small API below:
``Tracer`` per app, and ``subsegment``, ``trace_headers`` and
``current_trace_id`` for the code that handles requests. Moving to OpenTelemetry
means rewriting this file and nothing else.

What a request produces:
- a *segment* per incoming request, named ``AWS_XRAY_TRACING_NAME``, continuing
  the trace of the incoming ``X-Amzn-Trace-Id`` header, so a request that crosses
  user-management and notification is ONE trace;
- *subsegments* for the work inside it (the notification call, SQL, SMTP);
- the trace header on every outgoing call and on the response.

Why our own request hooks rather than the SDK's ``XRayMiddleware``: they do the
same begin/end of a segment, but sample with one Bernoulli draw at
``XRAY_SAMPLING_RATE`` instead of matching sampling rules per request, leave out
probe paths, and build the segment's URL without werkzeug's re-quoting (profiled
as a third of the hook). What tracing still costs, and why, is in bench/README.md.
A missing daemon never fails a request: segments go out over UDP and a failed
send is logged at most once a minute.
"""

import atexit
import functools
import logging
import random
import time
from contextlib import contextmanager, nullcontext

from aws_xray_sdk.core import AWSXRayRecorder, xray_recorder
from aws_xray_sdk.core.context import Context
from aws_xray_sdk.core.emitters.udp_emitter import PROTOCOL_DELIMITER, PROTOCOL_HEADER, UDPEmitter
from aws_xray_sdk.core.models import http
from aws_xray_sdk.core.models.trace_header import TraceHeader
from aws_xray_sdk.core.sampling.local.sampler import LocalSampler
from aws_xray_sdk.core.utils import stacktrace
from flask import Flask, current_app, g, has_request_context, request

log = logging.getLogger(__name__)

TRACE_HEADER = http.XRAY_HEADER  # "X-Amzn-Trace-Id"


class _QuietEmitter(UDPEmitter):
    """The SDK's UDP emitter, minus two costs we measured and do not want.

    The stock ``send_entity`` formats a debug message holding the whole segment
    on every send, even with debug logging off, and logs a full traceback for
    every failed send (so a stopped daemon floods the log). This one formats only
    what it sends and reports failures at most once a minute.
    """

    _last_error_log = 0.0

    def __init__(self, daemon_address: str):
        super().__init__(daemon_address)
        atexit.register(self._socket.close)

    def send_entity(self, entity):
        message = PROTOCOL_HEADER + PROTOCOL_DELIMITER + entity.serialize()
        try:
            self._send_data(message)
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.warning("cannot send trace segments to the X-Ray daemon at %s:%s: %s",
                            self.ip, self.port, exc)


@functools.cache
def _emitter_for(daemon_address: str) -> _QuietEmitter:
    """One UDP socket per daemon address per process, however many apps it builds."""
    return _QuietEmitter(daemon_address)


def _configure_recorder(daemon_address: str, context_missing: str) -> AWSXRayRecorder:
    """The SDK's process-wide recorder, set up for canarylab.

    One per process, as the SDK intends: it keeps the current segment per thread,
    and building another would cost ~0.2 s and two botocore clients for X-Ray's
    sampling API, which canarylab never calls (the sampling decision is ours).
    """
    replaced = xray_recorder.emitter
    xray_recorder.configure(
        sampling=False,  # trace every segment we begin as sampled
        sampler=LocalSampler(),  # never consulted; the default one builds botocore clients
        plugins=(),
        context=Context(context_missing=context_missing),
        emitter=_emitter_for(daemon_address),
        stream_sql=False,  # SQL subsegments carry the statement, never its parameters
    )
    if not isinstance(replaced, _QuietEmitter):
        replaced._socket.close()  # the SDK's default emitter has no close() of its own
    return xray_recorder


class Tracer:
    """X-Ray for one Flask app: a segment per request, helpers for the rest."""

    def __init__(self, name: str, config: dict, annotations: dict[str, str],
                 untraced_paths: frozenset[str]):
        self.name = name
        self.untraced_paths = untraced_paths
        self.sampling_rate = float(config["XRAY_SAMPLING_RATE"])
        self.annotations = annotations
        self.recorder = _configure_recorder(config["AWS_XRAY_DAEMON_ADDRESS"],
                                            config["AWS_XRAY_CONTEXT_MISSING"])

    # -- incoming requests ---------------------------------------------------

    def install(self, app: Flask) -> None:
        app.before_request(self._begin_request)
        app.after_request(self._finish_response)
        app.teardown_request(self._end_request)

    def _sampling_decision(self, header: TraceHeader) -> int:
        # An upstream decision is always respected, so a trace is never cut in half.
        if header.sampled in (0, 1):
            return header.sampled
        return 1 if random.random() < self.sampling_rate else 0

    def _begin_request(self) -> None:
        if request.path in self.untraced_paths:
            return
        header = TraceHeader.from_header_str(request.headers.get(TRACE_HEADER))
        segment = self.recorder.begin_segment(
            name=self.name,
            traceid=header.root,
            parent_id=header.parent,
            sampling=self._sampling_decision(header),
        )
        segment.save_origin_trace_header(header)
        # Built by hand: werkzeug's request.base_url re-quotes the URL, which
        # measured as a third of this hook's cost.
        segment.put_http_meta(http.URL, f"{request.scheme}://{request.host}{request.path}")
        segment.put_http_meta(http.METHOD, request.method)
        segment.put_http_meta(http.USER_AGENT, request.headers.get("User-Agent", ""))
        segment.put_http_meta(http.CLIENT_IP, request.remote_addr)
        for key, value in self.annotations.items():
            segment.put_annotation(key, value)
        g.xray_segment = segment

    def _finish_response(self, response):
        segment = g.get("xray_segment")
        if segment is not None:
            segment.put_http_meta(http.STATUS, response.status_code)
            response.headers[TRACE_HEADER] = _response_header(segment)
        return response

    def _end_request(self, exc: BaseException | None) -> None:
        segment = g.pop("xray_segment", None)
        if segment is None:
            return
        if exc is not None:
            segment.put_http_meta(http.STATUS, 500)
            segment.add_exception(exc, stacktrace.get_stacktrace(limit=10))
        self.recorder.end_segment()

    # -- work inside a request -----------------------------------------------

    @contextmanager
    def subsegment(self, name: str, namespace: str = "local"):
        """Time a piece of work as a subsegment; yields it (or None if untraced)."""
        if g.get("xray_segment") is None:
            yield None
            return
        subsegment = self.recorder.begin_subsegment(name, namespace)
        try:
            yield subsegment
        except BaseException as exc:
            if subsegment is not None:
                subsegment.add_exception(exc, stacktrace.get_stacktrace(limit=10),
                                         remote=namespace == "remote")
            raise
        finally:
            self.recorder.end_subsegment()

    def current_entity(self):
        if g.get("xray_segment") is None:
            return None
        return self.recorder.current_subsegment() or self.recorder.current_segment()


def _response_header(segment) -> str:
    return TraceHeader(root=segment.trace_id, sampled=int(segment.sampled)).to_header_str()


def _tracer() -> Tracer | None:
    return current_app.extensions.get("tracer")


# -- the API the services use ---------------------------------------------------

def init_tracing(app: Flask, name: str, config: dict, annotations: dict[str, str],
                 untraced_paths=()) -> None:
    """Trace the requests of ``app`` unless ``AWS_XRAY_SDK_ENABLED`` is false.

    ``untraced_paths`` are left out: probes and metrics scrapes arrive every few
    seconds from every pod and would drown the service map.
    """
    if not config["AWS_XRAY_SDK_ENABLED"]:
        app.extensions["tracer"] = None
        return
    tracer = Tracer(name, config, annotations, frozenset(untraced_paths))
    tracer.install(app)
    app.extensions["tracer"] = tracer


def subsegment(name: str, namespace: str = "local"):
    """``with subsegment("notification", "remote") as sub:`` — a no-op when untraced."""
    tracer = _tracer()
    return tracer.subsegment(name, namespace) if tracer else nullcontext()


def record_http(sub, method: str, url: str, status: int | None) -> None:
    """Describe an outgoing HTTP call on its subsegment (X-Ray draws the edge from it)."""
    if sub is None:
        return
    sub.put_http_meta(http.METHOD, method)
    sub.put_http_meta(http.URL, url)
    if status is not None:
        sub.put_http_meta(http.STATUS, status)


def record_sql(sub, url: str, database_type: str, statement: str) -> None:
    """Describe a SQL call; the statement has placeholders, never parameter values."""
    if sub is not None:
        sub.set_sql({"url": url, "database_type": database_type, "sanitized_query": statement})


def trace_headers() -> dict[str, str]:
    """The header that makes the next hop part of this trace (empty when untraced)."""
    tracer = _tracer()
    entity = tracer.current_entity() if tracer else None
    if entity is None:
        return {}
    segment = g.xray_segment
    header = TraceHeader(root=segment.trace_id, parent=entity.id, sampled=int(segment.sampled))
    return {TRACE_HEADER: header.to_header_str()}


def current_trace_id() -> str | None:
    """The trace id of the request being handled, for logs."""
    segment = g.get("xray_segment") if has_request_context() else None
    return getattr(segment, "trace_id", None)


def instrument_sqlalchemy(engine, url: str, database_type: str) -> None:
    """A subsegment per SQL statement: the statement with placeholders, never values."""
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def _begin(conn, cursor, statement, parameters, context, executemany):
        tracer = _tracer() if has_request_context() else None
        if tracer is None or g.get("xray_segment") is None:
            return
        sub = tracer.recorder.begin_subsegment(database_type, "remote")
        record_sql(sub, url, database_type, statement)
        conn.info.setdefault("xray_subsegments", []).append(tracer)

    def _end(conn, failed: bool = False):
        pending = conn.info.get("xray_subsegments")
        if pending:
            recorder = pending.pop().recorder
            if failed:
                recorder.current_subsegment().add_fault_flag()
            recorder.end_subsegment()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, *_):
        _end(conn)

    @event.listens_for(engine, "handle_error")
    def _failed(context):
        if context.connection is not None:
            _end(context.connection, failed=True)
