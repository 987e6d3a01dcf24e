"""JSON errors with one stable shape, and never a stack trace to a client.

Every error body looks like::

    {"error": {"status": 400, "code": "validation_failed",
               "message": "...", "fields": {"email": "Not a valid email address."}},
     "service": "user-management", "version": "v1", "pod": "..."}

``fields`` is present only when specific input fields are to blame.
"""

import logging

from flask import Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException

from servicekit import tracing

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a handler wants the client to see, with its HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 fields: dict[str, str] | None = None, extra: dict | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _default_code(status)
        self.fields = fields
        self.extra = extra or {}
        self.headers = headers or {}


def _default_code(status: int) -> str:
    return {
        400: "bad_request", 404: "not_found", 405: "method_not_allowed",
        409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
        500: "internal_error", 502: "bad_gateway", 503: "service_unavailable",
        504: "gateway_timeout",
    }.get(status, "error")


def error_response(error: ApiError):
    body = {"status": error.status, "code": error.code, "message": error.message}
    if error.fields:
        body["fields"] = error.fields
    payload = {"error": body, **error.extra, **current_app.extensions["identity"].fields()}
    return jsonify(payload), error.status, error.headers


def _flatten_fields(messages) -> dict[str, str]:
    """marshmallow's ``{"json": {"toEmails": {0: ["msg"]}}}`` -> ``{"toEmails.0": "msg"}``."""
    fields: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                name = "body" if key == "_schema" else str(key)
                walk(f"{prefix}.{name}" if prefix else name, inner)
        else:
            fields[prefix] = " ".join(value) if isinstance(value, list) else str(value)

    for location_messages in (messages or {}).values():  # one level per location: json, query
        walk("", location_messages)
    return fields


def register_error_handlers(app: Flask) -> None:
    """Turn every error, expected or not, into the JSON shape above."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] // 1024
            return error_response(ApiError(413, f"the body is larger than {limit} KiB"))
        return error_response(ApiError(status, error.description or error.name))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        # Logged with its traceback for the operator, and put on the request's
        # X-Ray segment as its cause; the client gets no details.
        log.exception("unhandled error")
        tracing.record_exception(error)
        return error_response(ApiError(500, "internal error"))

    # APIFlask routes input-validation failures through its error processor.
    if hasattr(app, "error_processor"):

        @app.error_processor
        def _validation_error(error):
            fields = _flatten_fields(error.detail) if error.status_code == 400 else None
            message = "invalid input" if fields else error.message
            code = "validation_failed" if fields else None
            return error_response(ApiError(error.status_code, message, code, fields,
                                           headers=error.headers))
