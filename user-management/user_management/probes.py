"""Health of user-management, and the calls that only relay notification.

``/usermgmt/notification-xray`` is the canary endpoint: each call opens a new
connection to the notification Service, so each call is a fresh draw of which
pod (and so which version) answers. The reply says who answered, in the
``X-Notification-Version`` / ``X-Notification-Pod`` headers and in the body.
"""

from apiflask import APIBlueprint
from flask import current_app

from servicekit.errors import ApiError
from user_management.db import DatabaseUnavailable
from user_management.notification_client import NotificationUnavailable

bp = APIBlueprint("probes", __name__, url_prefix="/usermgmt")


@bp.get("/health-status")
def health_status():
    """Readiness and liveness: the database answers. Notification is not checked:
    its outage must not take user-management out of its Service."""
    state = current_app.extensions["usermgmt"]
    who = current_app.extensions["identity"].fields()
    try:
        state.database.ping()
    except DatabaseUnavailable as exc:
        raise ApiError(503, f"the database is unavailable ({exc})", code="database_unavailable",
                       extra={"status": "DOWN", "database": state.database.kind}) from None
    return {"status": "UP", "database": state.database.kind, **who}


def _relay(path: str):
    """GET ``path`` on notification; answer with its body and who answered."""
    try:
        reply = current_app.extensions["usermgmt"].notification.get(path)
    except NotificationUnavailable as exc:
        raise ApiError(503, f"notification unavailable: {exc}",
                       code="notification_unavailable") from None
    relayed = reply.relay_headers()
    if reply.status >= 500:
        # Notification answered but failed: a gateway error that still names the
        # version and pod, so a canary analysis can blame the right one.
        raise ApiError(502, f"notification answered {reply.status}", code="notification_error",
                       extra={"notification": {"status": reply.status, "version": reply.version,
                                               "pod": reply.pod}},
                       headers=relayed) from None
    return reply.body or {}, reply.status, relayed


@bp.get("/notification-health-status")
def notification_health_status():
    return _relay("/notification/health-status")


@bp.get("/notification-service-info")
def notification_service_info():
    return _relay("/notification/info")


@bp.get("/notification-xray")
def notification_xray():
    """The canary endpoint: which notification version answered this call?"""
    return _relay("/notification/xray")
