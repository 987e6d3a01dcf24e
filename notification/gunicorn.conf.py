"""gunicorn settings for notification: the shared ones, on port 8096 with 2 workers."""

from servicekit.gunicorn_conf import *  # noqa: F403
from servicekit.gunicorn_conf import service_defaults

globals().update(service_defaults(port=8096, workers=2))
