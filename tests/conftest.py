"""Fixtures: apps built by their factories, and real processes on loopback.

Nothing here is a mock. ``mail_server`` is a real SMTP server, ``xray_daemon`` a
real UDP socket that parses what the X-Ray SDK sends, and ``start_service``
starts real gunicorn processes, each on its own free port of 127.0.0.1.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cluster_fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
STRONG_PASSWORD = "Pass@1234-Secret"
NO_DAEMON = "127.0.0.1:9"  # the discard port: segments sent there go nowhere


def release_env(version: str) -> dict[str, str]:
    """The settings a notification image bakes in, from notification-vN/release.env."""
    lines = (ROOT / f"notification-{version}" / "release.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def new_user(name: str, **changes) -> dict:
    """The course's create-user payload for ``name``, with ``changes`` applied."""
    user = {
        "username": name,
        "email": f"{name}@example.com",
        "password": STRONG_PASSWORD,
        "firstname": "Ada",
        "lastname": "Lovelace",
        "role": "ROLE_ADMIN",
        "enabled": True,
    }
    user.update(changes)
    return user


def assert_database_down(client) -> None:
    """user-management without its database: unhealthy, and 503 (never 500) for users."""
    health = client.get("/usermgmt/health-status")
    assert health.status_code == 503
    assert health.get_json()["status"] == "DOWN"
    created = client.post("/usermgmt/user", json=new_user("ada"))
    assert created.status_code == 503
    assert created.get_json()["error"]["code"] == "database_unavailable"


# -- in-process apps ---------------------------------------------------------------


@pytest.fixture
def usermgmt_app(tmp_path):
    from user_management import create_app

    return create_app({
        "SQLITE_PATH": str(tmp_path / "users.db"),
        "BCRYPT_ROUNDS": 4,  # the minimum: tests check behaviour, not hashing cost
        "NOTIFICATION_SERVICE_PORT": free_port(),  # nothing listens there
        "AWS_XRAY_DAEMON_ADDRESS": NO_DAEMON,
    })


@pytest.fixture
def usermgmt(usermgmt_app):
    return usermgmt_app.test_client()


def notification_app(version: str = "v1", **config):
    from notification_service import create_app

    settings = {**release_env(version), "AWS_MAIL_SERVER_PORT": free_port(),
                "AWS_XRAY_DAEMON_ADDRESS": NO_DAEMON}
    settings.update(config)
    return create_app(settings)


# -- real servers ------------------------------------------------------------------


@pytest.fixture
def mail_server():
    from canarylab.mail import MailSink

    with MailSink.run_in_thread("127.0.0.1", 0) as sink:
        yield sink


@pytest.fixture
def xray_daemon():
    from canarylab.xray import XRayCollector

    with XRayCollector.run_in_thread("127.0.0.1", 0) as collector:
        yield collector


class Service:
    """A gunicorn process of one service, started and stopped by a test."""

    def __init__(self, name: str, conf: str, app: str, env: dict, log_path: Path):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **{k: str(v) for k, v in env.items()},
                    "GUNICORN_BIND": f"127.0.0.1:{self.port}"}
        full_env.setdefault("GUNICORN_WORKERS", "2")
        self._log = open(log_path, "wb")  # noqa: SIM115 (open as long as the process runs)
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", str(ROOT / conf), app],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, health_path: str, timeout: float = 20) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(self.url + health_path, timeout=1).status_code < 500:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s")

    def stop(self) -> None:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._log.close()

    def terminate(self) -> None:
        """Ask gunicorn to stop (SIGTERM: finish requests in flight, then exit)."""
        if self.process.poll() is None:
            self.process.terminate()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def start_service(tmp_path):
    """``start_service("notification", version="v2", **env)`` -> a ready Service."""
    started: list[Service] = []

    def start(kind: str, version: str = "v1", **env) -> Service:
        if kind == "notification":
            env = {**release_env(version), **env}
            service = Service(f"notification-{version}", "notification/gunicorn.conf.py",
                              "notification_service:create_app()", env,
                              tmp_path / f"notification-{version}-{len(started)}.log")
            started.append(service)
            return service.wait_ready("/notification/health-status")
        env.setdefault("SQLITE_PATH", str(tmp_path / "users.db"))
        env.setdefault("BCRYPT_ROUNDS", 4)
        service = Service("user-management", "user-management/gunicorn.conf.py",
                          "user_management:create_app()", env,
                          tmp_path / f"user-management-{len(started)}.log")
        started.append(service)
        return service.wait_ready("/usermgmt/health-status")

    yield start
    for service in started:  # all at once: each takes about a second to stop gracefully
        service.terminate()
    for service in started:
        service.stop()
