"""The app factory every service starts from.

``create_service_app`` builds an APIFlask app (Flask plus an OpenAPI document
generated from the routes) with what every canarylab service has: settings from
``servicekit.config``, JSON errors, the "who answered" headers, metrics, JSON
logs and X-Ray tracing. The service then adds its blueprints.
"""

from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask
from flask import request

from servicekit import tracing
from servicekit.config import COMMON_DEFAULTS, load_config
from servicekit.errors import ApiError, register_error_handlers
from servicekit.identity import Identity
from servicekit.logs import configure_logging
from servicekit.metrics import init_metrics

MAX_BODY_BYTES = 64 * 1024
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class ServiceApp(APIFlask):
    """APIFlask that remembers which of its handlers are plain functions.

    On every request Flask passes each hook and the view through
    ``ensure_sync``, which asks ``inspect.iscoroutinefunction`` again each time
    (about eight times per request here: a measurable part of a small request).
    Handlers do not change once the app serves, so the answer is kept.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync_handlers: dict = {}

    def ensure_sync(self, func):
        try:
            return self._sync_handlers[func]
        except KeyError:
            handler = self._sync_handlers[func] = super().ensure_sync(func)
            return handler


def create_service_app(
    import_name: str,
    *,
    service: str,
    url_prefix: str,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    title: str,
    tracing_name: str,
) -> APIFlask:
    """Build the app for ``service``; its routes live under ``url_prefix``.

    ``tracing_name`` is the default segment name and may use settings, as in
    ``"notification-{SERVICE_VERSION}"``; ``AWS_XRAY_TRACING_NAME`` overrides it.
    """
    config = load_config({**COMMON_DEFAULTS, **defaults}, overrides)
    app = ServiceApp(
        import_name,
        title=title,
        version=config["APP_VERSION"],
        spec_path=f"{url_prefix}/openapi.json",
        docs_path=f"{url_prefix}/docs",
    )
    app.config.update(config)
    app.json.sort_keys = False  # bodies read in the order the code builds them
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        VALIDATION_ERROR_STATUS_CODE=400,
        SYNC_LOCAL_SPEC=False,
    )
    identity = Identity(
        service=service,
        version=config["SERVICE_VERSION"],
        app_version=config["APP_VERSION"],
        pod=config["POD_NAME"],
    )
    app.extensions["identity"] = identity

    configure_logging(config["LOG_LEVEL"])
    register_error_handlers(app)
    # Order matters: requests are timed and traced before their body is judged,
    # so a rejected request still shows up in metrics and traces.
    init_metrics(app, service, identity.version)
    tracing.init_tracing(
        app,
        name=config["AWS_XRAY_TRACING_NAME"] or tracing_name.format(**config),
        config=config,
        annotations={"version": identity.version, "pod": identity.pod},
        untraced_paths={f"{url_prefix}/health-status", "/metrics"},
    )
    _require_json_bodies(app)
    headers = identity.headers()

    @app.after_request
    def _say_who_answered(response):
        response.headers.update(headers)
        return response

    return app


def _require_json_bodies(app: APIFlask) -> None:
    """415 for a body that is not JSON, 400 for JSON that does not parse.

    Checked before validation so a client learns what is wrong with the request
    as a whole before being told about its fields.
    """

    @app.before_request
    def _check_body():
        if request.method not in _BODY_METHODS:
            return
        if not request.is_json:
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
        if request.get_json(silent=True) is None:
            raise ApiError(400, "the body is not valid JSON", code="malformed_json")
