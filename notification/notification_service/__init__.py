"""The notification service: one codebase, one version per set of named features.

``notification-v1/`` and ``notification-v2/`` hold the settings that make a
version (``release.env``); this package never asks which version it is, only
which features are on (``features.py``).
"""

from dataclasses import dataclass

from notification_service.faults import Faults
from notification_service.features import Features
from notification_service.mailer import MailSettings
from servicekit.app import create_service_app

DEFAULTS = {
    "SERVICE_VERSION": "v1",
    "APP_VERSION": "3.0.0",
    "NOTIFICATION_FEATURES": "",
    "AWS_MAIL_SERVER_HOST": "127.0.0.1",
    "AWS_MAIL_SERVER_PORT": 587,
    "AWS_MAIL_SERVER_USERNAME": "",
    "AWS_MAIL_SERVER_PASSWORD": "",
    "AWS_MAIL_SERVER_FROM_ADDRESS": "noreply@canarylab.local",
    "SMTP_TIMEOUT": 5.0,
    "FAULT_ERROR_RATE": 0.0,
    "FAULT_ERROR_STATUS": 503,
    "FAULT_LATENCY_MS": 0.0,
    "FAULT_LATENCY_JITTER_MS": 0.0,
    "FAULT_LATENCY_SHARE": 1.0,
}


@dataclass(frozen=True)
class NotificationState:
    features: Features
    faults: Faults
    mail: MailSettings


def create_app(config: dict | None = None):
    """Build the notification app; ``config`` overrides defaults and environment."""
    app = create_service_app(
        __name__,
        service="notification",
        url_prefix="/notification",
        defaults=DEFAULTS,
        overrides=config,
        title="canarylab notification",
        tracing_name="notification-{SERVICE_VERSION}",
    )
    state = NotificationState(
        features=Features.parse(app.config["NOTIFICATION_FEATURES"]),
        faults=Faults.from_config(app.config),
        mail=MailSettings.from_config(app.config),
    )
    app.extensions["notification"] = state
    state.faults.install(app)

    from notification_service.routes import bp

    app.register_blueprint(bp)
    return app
