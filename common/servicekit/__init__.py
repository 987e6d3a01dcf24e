"""What every canarylab service shares.

One place for the runtime pieces both services need — configuration, tracing,
JSON errors, "who answered" headers, metrics, logging and gunicorn settings — so
that swapping the X-Ray SDK for OpenTelemetry one day changes one module
(`servicekit.tracing`), not two services.
"""

from servicekit.app import create_service_app
from servicekit.errors import ApiError

__all__ = ["ApiError", "create_service_app"]
