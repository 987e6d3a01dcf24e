"""Helpers for the tests that drive `canarylab` as a user does: as a subprocess.

Every `LocalCluster` has its own CANARYLAB_HOME, its own pod and Service networks
(random /24s inside 127.0.0.0/8, away from the defaults a running demo uses) and
its own X-Ray and SMTP ports, so a test can never touch a cluster someone started
by hand.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "k8s" / "overlays"
MARKER = "CANARYLAB_CLUSTER"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_network(rng: random.Random) -> str:
    """A /24 in 127.100.0.0-127.199.255.0: the defaults (127.244, 127.96) stay free."""
    return f"127.{rng.randint(100, 199)}.{rng.randint(0, 255)}.0/24"


class LocalCluster:
    """A `canarylab` of its own: run commands, read status, find its processes."""

    def __init__(self, home: Path):
        rng = random.Random()
        self.home = home
        pod_network = random_network(rng)
        service_network = random_network(rng)
        while service_network == pod_network:
            service_network = random_network(rng)
        self.env = {key: value for key, value in os.environ.items()
                    if key != "AWS_XRAY_DAEMON_ADDRESS"}
        self.env.update({
            "CANARYLAB_HOME": str(home),
            "CANARYLAB_POD_NETWORK": pod_network,
            "CANARYLAB_SERVICE_NETWORK": service_network,
            "CANARYLAB_XRAY_ADDRESS": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "CANARYLAB_SMTP_ADDRESS": f"127.0.0.1:{free_port()}",
        })

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """`canarylab ARGS...` as a subprocess; never raises on a non-zero exit."""
        return subprocess.run([sys.executable, "-m", "canarylab", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, *args: str, timeout: float = 90) -> str:
        """`canarylab ARGS...`, which must succeed; returns its stdout."""
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"canarylab {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"supervisor log:\n{self.supervisor_log()}")
        return result.stdout

    def status(self) -> dict:
        return json.loads(self.ok("status", "--json"))

    def supervisor_log(self) -> str:
        path = self.home / "supervisor.log"
        return path.read_text()[-3000:] if path.exists() else "(none)"

    def processes(self) -> list[int]:
        """Pids of every live process that belongs to this cluster (its marker)."""
        needle = f"{MARKER}={self.home.resolve()}".encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def down(self) -> None:
        """Best effort, for fixture teardown: a test failed maybe, clean up anyway."""
        self.run("down", timeout=60)


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def service(status: dict, name: str) -> dict:
    return next(s for s in status["services"] if s["name"] == name)


def pods_of(status: dict, deployment: str) -> list[dict]:
    return [p for p in status["pods"] if p["deployment"] == deployment]


def wait_for(condition, timeout: float = 5.0, interval: float = 0.05, what: str | None = None):
    """Poll until ``condition()`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s: "
                         f"{what or condition.__doc__ or condition}")


def get(address: str, path: str, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One GET over a NEW connection (what makes kube-proxy pick a pod again)."""
    return _request(address, "GET", path, None, timeout)


def post_json(address: str, path: str, payload: dict,
              timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    return _request(address, "POST", path, json.dumps(payload).encode(), timeout)


def _request(address: str, method: str, path: str, body: bytes | None, timeout: float):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Connection": "close"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_many(address: str, path: str, count: int, seconds: float,
             threads: int = 4) -> list[tuple[int, dict[str, str]]]:
    """Up to ``count`` GETs, each on a new connection, stopping after ``seconds``."""
    deadline = time.monotonic() + seconds

    def one(_: int):
        if time.monotonic() > deadline:
            return None
        status, headers, _body = get(address, path)
        return status, headers

    with ThreadPoolExecutor(threads) as pool:
        return [result for result in pool.map(one, range(count)) if result is not None]


# -- a fake kubectl, for `--context` (no real cluster here) ---------------------------

FAKE_KUBECTL = """\
#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
if "fail" in (here / "mode").read_text():
    sys.exit("error: context was not found")
if "get" in sys.argv:
    print((here / "objects.json").read_text())
"""


def deployment(name: str, version: str, replicas: int, ready: int) -> dict:
    labels = {"app": "notification-restapp", "version": version}
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": name, "image": f"canarylab/{name}:1.0.0",
                      "ports": [{"name": "http", "containerPort": 8096}]}]}}},
        "status": {"replicas": replicas, "readyReplicas": ready} if ready else {},
    }


def pod(name: str, version: str, ip: str, ready: bool, restarts: int = 0,
        waiting: str | None = None) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "notification-restapp",
                                               "version": version,
                                               "pod-template-hash": "5d59d67564"}},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http",
                                                          "containerPort": 8096}]}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"restartCount": restarts, "state": state}]},
    }
