"""Configuration: defaults, then the environment, then what a test passes in.

Each service declares its settings once, as a dict of defaults. The type of a
default decides how the environment's string is read (``"false"`` becomes
``False`` for a bool default), so a typo in a number fails at start-up with the
variable's name instead of deep inside a request.
"""

import os
import socket
from collections.abc import Mapping
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting from the environment could not be read."""


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{name}={raw!r}: expected a number ({kind})") from None
    return raw


def load_config(
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the settings: ``defaults`` <- environment <- ``overrides``.

    Only names present in ``defaults`` are read from the environment, so the
    table of defaults is also the complete list of what a service understands.
    """
    environ = os.environ if environ is None else environ
    config = dict(defaults)
    for name, default in defaults.items():
        if name in environ:
            config[name] = _parse(name, environ[name], default)
    config.update(overrides or {})
    if not config.get("POD_NAME"):
        config["POD_NAME"] = socket.gethostname()
    return config


# Settings every service has; each service adds its own on top.
COMMON_DEFAULTS: dict[str, Any] = {
    "POD_NAME": "",
    "SERVICE_VERSION": "v1",
    "APP_VERSION": "1.0.0",
    "LOG_LEVEL": "info",
    "AWS_XRAY_TRACING_NAME": "",
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    "AWS_XRAY_SDK_ENABLED": True,
    "XRAY_SAMPLING_RATE": 1.0,
}
