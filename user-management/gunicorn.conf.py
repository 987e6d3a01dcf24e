"""gunicorn settings for user-management: the shared ones, on port 8095 with 4 workers.

More workers than notification because a sync worker waits, idle, while its
call to notification is in flight.
"""

from servicekit.gunicorn_conf import *  # noqa: F403
from servicekit.gunicorn_conf import service_defaults

globals().update(service_defaults(port=8095, workers=4))
