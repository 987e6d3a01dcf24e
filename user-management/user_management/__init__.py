"""user-management: users in a database, a welcome mail through notification.

Built by ``create_app`` (the Flask application-factory pattern): nothing happens
at import, and tests build as many apps as they like with their own settings.
"""

from dataclasses import dataclass

from servicekit.app import create_service_app
from servicekit.errors import ApiError, error_response
from user_management.db import Database, DatabaseUnavailable
from user_management.notification_client import NotificationClient

DEFAULTS = {
    "DB_HOSTNAME": "",
    "DB_PORT": 3306,
    "DB_NAME": "usermgmt",
    "DB_USERNAME": "root",
    "DB_PASSWORD": "",
    "DB_TIMEOUT": 5,
    "SQLITE_PATH": "usermgmt.db",
    "BCRYPT_ROUNDS": 12,
    "NOTIFICATION_SERVICE_HOST": "127.0.0.1",
    "NOTIFICATION_SERVICE_PORT": 8096,
    "NOTIFICATION_KEEPALIVE": False,
    "NOTIFICATION_CONNECT_TIMEOUT": 2.0,
    "NOTIFICATION_READ_TIMEOUT": 5.0,
}


@dataclass(frozen=True)
class UserManagementState:
    database: Database
    notification: NotificationClient


def create_app(config: dict | None = None):
    """Build the user-management app; ``config`` overrides defaults and environment."""
    app = create_service_app(
        __name__,
        service="user-management",
        url_prefix="/usermgmt",
        defaults=DEFAULTS,
        overrides=config,
        title="canarylab user-management",
        tracing_name="user-management",
    )
    settings = app.config
    app.extensions["usermgmt"] = UserManagementState(
        database=Database(settings),
        notification=NotificationClient(
            settings["NOTIFICATION_SERVICE_HOST"],
            settings["NOTIFICATION_SERVICE_PORT"],
            keepalive=settings["NOTIFICATION_KEEPALIVE"],
            connect_timeout=settings["NOTIFICATION_CONNECT_TIMEOUT"],
            read_timeout=settings["NOTIFICATION_READ_TIMEOUT"],
        ),
    )

    @app.errorhandler(DatabaseUnavailable)
    def _database_down(exc):
        return error_response(ApiError(503, "the database is unavailable",
                                       code="database_unavailable"))

    from user_management import probes, users

    app.register_blueprint(users.bp)
    app.register_blueprint(probes.bp)
    return app
