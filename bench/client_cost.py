"""What one call to notification costs the caller, per HTTP client, side by side.

    .venv/bin/python bench/client_cost.py

user-management makes one call to notification per canary request, on a new
connection each time (see user_management/notification_client.py for why). This
measures the CPU time the CALLING process spends per such call — connect, send,
read the status line, headers and body, close — with ``requests``, ``urllib3``,
``http.client`` and user-management's own ``NotificationClient`` (a plain socket
and a small HTTP/1.1 parser, what the service uses), against a real notification
server (gunicorn, 2 workers, tracing off) on 127.0.0.1, in interleaved rounds.
CPU time, not wall time: it is what a sync gunicorn worker cannot spend on
anything else. The user and system parts are shown apart: the system part is
the kernel's TCP work (connect, send, receive, close), the same for every client.
"""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import requests
import urllib3

from user_management.notification_client import NotificationClient

ROOT = Path(__file__).resolve().parent.parent
PATH = "/notification/xray"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_http_client(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", PATH, headers={"Connection": "close"})
    response = connection.getresponse()
    response.read()
    response.getheader("X-Service-Version")
    connection.close()


def with_urllib3(port: int) -> None:
    # A pool per call, as a new connection per call needs; retries off like the others.
    with urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False) as pool:
        response = pool.request("GET", PATH, headers={"Connection": "close"})
        response.headers.get("X-Service-Version")


def with_requests(port: int) -> None:
    response = requests.get(f"http://127.0.0.1:{port}{PATH}", timeout=5,
                            headers={"Connection": "close"})
    response.headers.get("X-Service-Version")


def with_notification_client(port: int) -> None:
    # Tracing off in this process: the client's subsegment is a no-op, as when untraced.
    reply = NotificationClient("127.0.0.1", port).get(PATH)
    reply.version  # noqa: B018 (read like the others read their header)


CLIENTS = {"requests": with_requests, "urllib3": with_urllib3, "http.client": with_http_client,
           "NotificationClient": with_notification_client}


def cpu_per_call(call, port: int, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        call(port)
    return (time.process_time() - start) / calls


def main() -> int:
    port = free_port()
    release = dict(line.split("=", 1) for line in
                   (ROOT / "notification-v1/release.env").read_text().split())
    env = {**os.environ, **release, "GUNICORN_BIND": f"127.0.0.1:{port}",
           "AWS_XRAY_SDK_ENABLED": "false", "LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c",
         str(ROOT / "notification/gunicorn.conf.py"), "notification_service:create_app()",
         "--access-logfile", os.devnull],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        results: dict[str, list[float]] = {name: [] for name in CLIENTS}
        for _ in range(3):
            for name, call in CLIENTS.items():
                cpu_per_call(call, port, 100)  # warm up
                results[name].append(cpu_per_call(call, port, 1000))
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = statistics.median(results["http.client"])
    print("client              CPU per call (median of 3 x 1000)   vs http.client")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:18s}  {median * 1e6:8.0f} us                     {median / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
