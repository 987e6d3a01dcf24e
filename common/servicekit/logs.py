"""JSON logs, one object per line, each carrying the X-Ray trace id.

A log line can then be joined to its trace: search the logs for the ``trace_id``
the X-Ray console shows. gunicorn's access log uses the same format through
``GunicornLogger``. Request bodies are never logged (they hold passwords).
"""

import json
import logging
import sys
import time

import orjson
from gunicorn.glogging import Logger as _GunicornLogger

from servicekit import tracing


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None) or tracing.current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        for key in ("method", "path", "status", "duration_ms", "remote"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # orjson: one access line per request, and json.dumps measured ten times
        # the instructions (bench/README.md). Same JSON, without optional spaces.
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # what only json can write (a lone surrogate, say)
            return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send the root logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _trace_root(header: str | None) -> str | None:
    # "Root=1-5f...;Parent=...;Sampled=1" -> "1-5f..."
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "Root":
            return value
    return None


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger, writing its error and access logs as JSON lines."""

    def setup(self, cfg):
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        trace_header = next((v for k, v in resp.headers if k.lower() == "x-amzn-trace-id"), None)
        self.access_log.info(
            "%s %s %s", req.method, req.path, resp.status_code,
            extra={
                "method": req.method,
                "path": req.path,
                "status": resp.status_code,
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "remote": environ.get("REMOTE_ADDR"),
                "trace_id": _trace_root(trace_header),
            },
        )
