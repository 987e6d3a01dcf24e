"""AWS X-Ray tracing: the ONLY module that imports the X-Ray SDK.

The SDK is in maintenance (end of support 2027-02-25; OpenTelemetry/ADOT is the
successor), so every tracing call in canarylab goes through the small API below:
``init_tracing`` per app, and ``subsegment``, ``trace_headers`` and
``current_trace_id`` for the code that handles requests. Moving to OpenTelemetry
means rewriting this file and nothing else.

What a request produces:
- a *segment* per incoming request, named ``AWS_XRAY_TRACING_NAME``, continuing
  the trace of the incoming ``X-Amzn-Trace-Id`` header, so a request that crosses
  user-management and notification is ONE trace;
- *subsegments* for the work inside it (the notification call, SQL, SMTP);
- the trace header on every outgoing call and on the response.

Which parts of the SDK, and why. The documents sent are the SDK's own: its
``Segment`` and ``Subsegment`` objects and their ``to_dict``, written as JSON
(by orjson, see ``_segment_json``) and sent by (a subclass of) its UDP emitter,
in the daemon's protocol. What is left out is the SDK's *recorder*, the object
that keeps "the current segment" per thread and decides sampling: counted with
callgrind (bench/README.md), its bookkeeping cost as much as the segments
themselves, and importing it pulls in botocore (about 13 MB per process, for a
sampling API canarylab never calls). A request already has a natural home for
"the current segment": a ``ContextVar`` set while the app handles it, which is
what ``_RequestTrace`` below is. On the canary chain, tracing went from 29% of
the instructions a request costs to 13% (bench/README.md has the steps).

Sampling: a request whose incoming header says ``Sampled=0`` or ``Sampled=1``
keeps that decision (a trace is never cut in half); otherwise one Bernoulli draw
at ``XRAY_SAMPLING_RATE``. An unsampled request still has a trace id, passed on
with ``Sampled=0`` so the next hop does not trace it either.

Probe paths are left out, and a missing daemon never fails a request: segments
go out over UDP and a failed send is logged at most once a minute.
"""

import atexit
import functools
import importlib.util
import logging
import platform
import random
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import orjson
from flask import Flask, has_request_context


def _import_sdk_without_its_recorder() -> None:
    """Make ``aws_xray_sdk.core.*`` importable without running ``core/__init__.py``.

    That ``__init__`` builds the SDK's global recorder at import time, and the
    recorder's default sampler imports botocore. The models and the emitter we
    use need none of it. Python runs a package's ``__init__`` before any of its
    submodules, so we register the package ourselves, unexecuted; if anything
    else in the process later asks it for a name (``from aws_xray_sdk.core
    import xray_recorder``), its ``__init__`` runs then, once, and answers.
    """
    name = "aws_xray_sdk.core"
    if name in sys.modules:
        return  # imported for real already (a test, a script): nothing to save
    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)

    def load_the_rest(attribute: str):  # PEP 562: called for a name not found
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, attribute)

    package.__getattr__ = load_the_rest
    sys.modules[name] = package
    sys.modules["aws_xray_sdk"].core = package


_import_sdk_without_its_recorder()

from aws_xray_sdk.core.emitters.udp_emitter import (  # noqa: E402 (after the line above)
    PROTOCOL_DELIMITER,
    PROTOCOL_HEADER,
    UDPEmitter,
)
from aws_xray_sdk.core.exceptions.exceptions import SegmentNotFoundException  # noqa: E402
from aws_xray_sdk.core.models import http  # noqa: E402
from aws_xray_sdk.core.models.segment import Segment  # noqa: E402
from aws_xray_sdk.core.models.subsegment import Subsegment  # noqa: E402
from aws_xray_sdk.core.models.trace_header import TraceHeader  # noqa: E402
from aws_xray_sdk.core.models.traceid import TraceId  # noqa: E402
from aws_xray_sdk.core.utils import stacktrace  # noqa: E402
from aws_xray_sdk.version import VERSION as _SDK_VERSION  # noqa: E402

log = logging.getLogger(__name__)

TRACE_HEADER = http.XRAY_HEADER  # "X-Amzn-Trace-Id"
_TRACE_HEADER_ENVIRON = "HTTP_X_AMZN_TRACE_ID"

# What the SDK's recorder writes into every segment: which SDK, which runtime.
_SERVICE_INFO = {"runtime": platform.python_implementation(),
                 "runtime_version": platform.python_version()}


# The daemon protocol: this header line, then one segment document per datagram.
_DATAGRAM_HEADER = (PROTOCOL_HEADER + PROTOCOL_DELIMITER).encode()


def _segment_json(entity) -> bytes:
    """The SDK's document for ``entity`` (its ``to_dict``), as JSON.

    The SDK's own ``serialize`` is ``json.dumps(to_dict(), default=str)``; orjson
    writes the same document in about a tenth of the CPU (callgrind: ~9k
    instructions against ~90k for a notification segment, most of json's in
    building its encoder and printing the two timestamps). Same keys and
    values, without the spaces after ``:`` and ``,``.
    """
    try:
        return orjson.dumps(entity.to_dict(), default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # what only json can write (an integer over 64 bits)
        return entity.serialize().encode()


class _QuietEmitter(UDPEmitter):
    """The SDK's UDP emitter, minus three costs we measured and do not want.

    The stock ``send_entity`` formats a debug message holding the whole segment
    on every send, even with debug logging off, serializes with the slow
    ``json.dumps``, and logs a full traceback for every failed send (so a
    stopped daemon floods the log). This one builds only the datagram it sends
    and reports failures at most once a minute.
    """

    _last_error_log = 0.0

    def __init__(self, daemon_address: str):
        super().__init__(daemon_address)
        atexit.register(self._socket.close)

    def send_entity(self, entity):
        # Everything inside the try, as in the SDK's: this runs in the request's
        # ``finally``, where an exception would replace the response being sent.
        try:
            message = _DATAGRAM_HEADER + _segment_json(entity)
            self._socket.sendto(message, (self._ip, self._port))
        except Exception as exc:  # noqa: BLE001 (a lost segment must not fail a request)
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.warning("cannot send trace segments to the X-Ray daemon at %s:%s: %s",
                            self.ip, self.port, exc)


@functools.cache
def _emitter_for(daemon_address: str) -> _QuietEmitter:
    """One UDP socket per daemon address per process, however many apps it builds."""
    return _QuietEmitter(daemon_address)


@dataclass(slots=True)
class _RequestTrace:
    """The trace of the request being handled: what the SDK's recorder would keep."""

    trace_id: str
    segment: Segment | None  # None when the request is not sampled
    emitter: _QuietEmitter
    open: list = field(default_factory=list)  # subsegments in progress, innermost last

    def entity(self):
        """Where a new subsegment goes, and whose id the next hop names as its parent."""
        return self.open[-1] if self.open else self.segment


# The request being handled in this thread (gunicorn's sync and gthread workers
# run one request per thread at a time); None between requests.
_current: ContextVar[_RequestTrace | None] = ContextVar("canarylab_xray_trace", default=None)
# What AWS_XRAY_CONTEXT_MISSING asked for, as the SDK keeps it: one per process
# (None until an app turns tracing on).
_context_missing: list[str | None] = [None]


class Tracer:
    """X-Ray for one Flask app: a segment per request.

    It wraps the app's WSGI callable (``app.wsgi_app``, Flask's documented place
    for middleware) rather than adding Flask hooks: the segment is begun from
    the WSGI environ before Flask sees the request, its status and the response
    header are taken at ``start_response``, and it is ended and sent when the
    app returns. Three Flask hooks per request cost more than this (measured
    with callgrind, bench/README.md). The segment ends when Flask has built the
    response, before gunicorn sends its body: the services answer with small
    JSON bodies built in the view, never with streams.
    """

    def __init__(self, name: str, config: dict, annotations: dict[str, str],
                 untraced_paths: frozenset[str]):
        self.name = name
        self.untraced_paths = untraced_paths
        self.sampling_rate = float(config["XRAY_SAMPLING_RATE"])
        self.annotations = _checked_annotations(annotations)
        self.emitter = _emitter_for(config["AWS_XRAY_DAEMON_ADDRESS"])
        _context_missing[0] = config["AWS_XRAY_CONTEXT_MISSING"]

    def install(self, app: Flask) -> None:
        wrapped = app.wsgi_app

        def traced_app(environ, start_response):
            return self.handle(wrapped, environ, start_response)

        app.wsgi_app = traced_app

    def _sampled(self, header: TraceHeader) -> bool:
        # An upstream decision is always respected, so a trace is never cut in half.
        if header.sampled in (0, 1):
            return header.sampled == 1
        return random.random() < self.sampling_rate

    def begin(self, environ: dict) -> _RequestTrace | None:
        """The trace of a new request (None for a path left untraced)."""
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if path in self.untraced_paths:
            return None
        header = TraceHeader.from_header_str(environ.get(_TRACE_HEADER_ENVIRON))
        if not self._sampled(header):
            return _RequestTrace(header.root or TraceId().to_id(), None, self.emitter)
        segment = Segment(self.name, traceid=header.root, parent_id=header.parent)
        segment.set_aws({"xray": {"sdk": "X-Ray for Python", "sdk_version": _SDK_VERSION}})
        segment.set_service(_SERVICE_INFO)
        # The document's "http.request" as put_http_meta would build it, key by
        # key (its checks are for keys, and these are the four it knows).
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        segment.http = {"request": {
            http.URL: f"{environ['wsgi.url_scheme']}://{host}{path}",
            http.METHOD: environ["REQUEST_METHOD"],
            http.USER_AGENT: environ.get("HTTP_USER_AGENT", ""),
            http.CLIENT_IP: environ.get("REMOTE_ADDR"),
        }}
        segment.annotations = dict(self.annotations)  # checked once, in __init__
        return _RequestTrace(segment.trace_id, segment, self.emitter)

    def handle(self, app, environ: dict, start_response):
        """Run the WSGI ``app`` for one request inside its trace."""
        trace = self.begin(environ)
        if trace is None:
            return app(environ, start_response)
        segment = trace.segment
        sampled = 1 if segment is not None else 0
        trace_header = (TRACE_HEADER, f"Root={trace.trace_id};Sampled={sampled}")

        def start_traced_response(status: str, headers: list, exc_info=None):
            if segment is not None:
                segment.put_http_meta(http.STATUS, int(status[:3]))
            headers.append(trace_header)
            return start_response(status, headers, exc_info)

        token = _current.set(trace)
        try:
            return app(environ, start_traced_response)
        except BaseException as exc:  # Flask answers errors itself; this is what escaped it
            if segment is not None:
                segment.put_http_meta(http.STATUS, 500)
                segment.add_exception(exc, stacktrace.get_stacktrace(limit=10))
            raise
        finally:
            _current.reset(token)
            if segment is not None:
                segment.close()
                if segment.ready_to_send():  # no subsegment left open (as the SDK checks)
                    self.emitter.send_entity(segment)


def _checked_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """The annotations the SDK would keep: put_annotation checks each key's characters
    and the value's type (and drops what fails), once here rather than per request."""
    probe = Segment("annotations")
    for key, value in annotations.items():
        probe.put_annotation(key, value)
    return dict(probe.annotations)


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


def _open_subsegment(trace: _RequestTrace, name: str, namespace: str) -> Subsegment:
    sub = Subsegment(name, namespace, trace.segment)
    trace.entity().add_subsegment(sub)
    trace.open.append(sub)
    return sub


def _close_subsegment(trace: _RequestTrace, sub: Subsegment) -> None:
    trace.open.remove(sub)
    sub.close()


def _missing_context(name: str) -> None:
    """A subsegment asked for outside any request: what AWS_XRAY_CONTEXT_MISSING says."""
    message = f"cannot find the current segment to begin subsegment {name!r}"
    if _context_missing[0] == "RUNTIME_ERROR":
        raise SegmentNotFoundException(message)
    if _context_missing[0] == "LOG_ERROR":
        log.error(message)


@contextmanager
def subsegment(name: str, namespace: str = "local"):
    """``with subsegment("notification", "remote") as sub:`` times a piece of work.

    Yields the subsegment, or None when the request is not traced (tracing off,
    a probe path, or not sampled): callers check before describing it.
    """
    trace = _current.get()
    if trace is None or trace.segment is None:
        if trace is None and not has_request_context():
            _missing_context(name)
        yield None
        return
    sub = _open_subsegment(trace, name, namespace)
    try:
        yield sub
    except BaseException as exc:
        sub.add_exception(exc, stacktrace.get_stacktrace(limit=10), remote=namespace == "remote")
        raise
    finally:
        _close_subsegment(trace, sub)


def record_exception(exc: BaseException) -> None:
    """Put an error the app answered with a 500 on the request's segment (its "cause")."""
    trace = _current.get()
    if trace is not None and trace.segment is not None:
        trace.segment.add_exception(exc, stacktrace.get_stacktrace(limit=10))


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
    trace = _current.get()
    if trace is None:
        return {}
    if trace.segment is None:
        return {TRACE_HEADER: f"Root={trace.trace_id};Sampled=0"}
    return {TRACE_HEADER: f"Root={trace.trace_id};Parent={trace.entity().id};Sampled=1"}


def current_trace_id() -> str | None:
    """The trace id of the request being handled, for logs."""
    trace = _current.get()
    return trace.trace_id if trace is not None else None


def instrument_sqlalchemy(engine, url: str, database_type: str) -> None:
    """A subsegment per SQL statement: the statement with placeholders, never values."""
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def _begin(conn, cursor, statement, parameters, context, executemany):
        trace = _current.get()
        if trace is None or trace.segment is None:
            return  # untraced, or outside a request (creating the tables at start-up)
        sub = _open_subsegment(trace, database_type, "remote")
        record_sql(sub, url, database_type, statement)
        conn.info.setdefault("xray_subsegments", []).append((trace, sub))

    def _end(conn, failed: bool = False):
        pending = conn.info.get("xray_subsegments")
        if pending:
            trace, sub = pending.pop()
            if failed:
                sub.add_fault_flag()
            _close_subsegment(trace, sub)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, *_):
        _end(conn)

    @event.listens_for(engine, "handle_error")
    def _failed(context):
        if context.connection is not None:
            _end(context.connection, failed=True)
