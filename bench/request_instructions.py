"""Instructions per request of each service, counted by valgrind: repeatable on a busy machine.

    make bench-instructions     # or: .venv/bin/python bench/request_instructions.py

Wall-clock benchmarks (chain_bench.py) scatter by 30% and more when other work
shares the machine. Instruction counts do not: callgrind counts the user-space
instructions a process executes, whatever else runs. This script builds each
service's app in a process of its own under ``valgrind --tool=callgrind`` and
sends it --requests canary requests straight through its WSGI callable (no
gunicorn, no listening socket), once with 0 requests and once with N, and
divides the difference by N:

- notification ``GET /notification/xray``;
- user-management ``GET /usermgmt/notification-xray``, which calls a real
  notification server (gunicorn, started here, not counted) over a new
  connection, as in production;

each with X-Ray on (100% sampled, segments sent to a UDP port nobody reads) and
off. The kernel's work (TCP, UDP) and gunicorn's are not in these counts; what
tracing costs in them is the first thing they show. Needs valgrind (Debian:
apt-get install valgrind); about 30 s per count. Everything binds to 127.0.0.1.
"""

import argparse
import gc
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = {"notification": "/notification/xray", "user-management": "/usermgmt/notification-xray"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(service: str, requests: int) -> None:
    """Inside valgrind: build the app, warm it up, then answer ``requests`` requests."""
    if service == "notification":
        from notification_service import create_app
    else:
        from user_management import create_app
    app = create_app()
    gc.freeze()  # as gunicorn's master does before it forks (servicekit.gunicorn_conf)
    path = PATHS[service]

    def one() -> None:
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1", "HTTP_USER_AGENT": "bench", "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }
        status = []
        body = app(environ, lambda s, headers, exc_info=None: status.append(s))
        b"".join(body)
        body.close()
        if not status[0].startswith("200"):
            raise SystemExit(f"{path} answered {status[0]}")

    for _ in range(20):  # warm-up, the same in every count: caches, first connections
        one()
    for _ in range(requests):
        one()


def count(service: str, tracing: bool, requests: int, env: dict) -> int:
    """Instructions of one process that serves ``requests`` requests (and the warm-up)."""
    with tempfile.TemporaryDirectory(prefix="canarylab-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--serve", service, "--requests", str(requests)],
            env={**env, "AWS_XRAY_SDK_ENABLED": str(tracing).lower()},
            capture_output=True, text=True, timeout=900)
        found = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or not found:
            raise RuntimeError(f"valgrind run failed:\n{result.stderr[-2000:]}")
        return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install valgrind", file=sys.stderr)
        return 2

    port = free_port()
    release = dict(line.split("=", 1) for line in
                   (ROOT / "notification-v1/release.env").read_text().split())
    server_env = {**os.environ, **release, "GUNICORN_BIND": f"127.0.0.1:{port}",
                  "AWS_XRAY_SDK_ENABLED": "false", "LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c",
         str(ROOT / "notification/gunicorn.conf.py"), "notification_service:create_app()",
         "--access-logfile", os.devnull],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/notification/xray",
                                       timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the notification server did not start") from None
                time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="canarylab-instructions-") as tmp:
            env = {**os.environ, **release, "LOG_LEVEL": "warning",
                   "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{free_port()}",
                   "NOTIFICATION_SERVICE_PORT": str(port),
                   "SQLITE_PATH": str(Path(tmp) / "users.db")}
            print(f"instructions per request (callgrind, {args.requests} requests - 0)")
            per_request = {}
            for service in PATHS:
                for tracing in (True, False):
                    base = count(service, tracing, 0, env)
                    loaded = count(service, tracing, args.requests, env)
                    per_request[service, tracing] = (loaded - base) / args.requests
                    print(f"  {service:16} tracing {'on ' if tracing else 'off'}  "
                          f"{per_request[service, tracing] / 1000:7.0f} k", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for service in PATHS:
        on, off = per_request[service, True], per_request[service, False]
        print(f"{service}: tracing adds {(on - off) / 1000:.0f} k instructions per request "
              f"({on / off - 1:.0%} of the untraced request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
