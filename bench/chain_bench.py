"""What the two-hop chain costs, as ratios measured side by side in one run.

    make bench-chain            # or: .venv/bin/python bench/chain_bench.py --rounds 3

Three servers are measured with wrk, in interleaved rounds so that whatever
else the machine is doing hits all three alike:

- ``hello``: a bare Flask hello-world on ONE sync gunicorn worker (the yardstick);
- ``traced``: ``GET /usermgmt/notification-xray`` through user-management and
  notification, both as shipped (their gunicorn.conf.py, JSON access logs on),
  X-Ray on at 100% sampling, segments sent over UDP to a socket that drains them;
- ``untraced``: the same chain with ``AWS_XRAY_SDK_ENABLED=false``.

It prints requests/s per round, the medians, and the two ratios the services
issue sets targets for: chain ratio = traced / hello (target >= 0.30; the
ceiling of two Flask handlers per request is 0.5) and tracing cost =
1 - traced / untraced (target <= 0.15). Needs wrk (Debian: apt-get install wrk).
Every server binds to 127.0.0.1 and each wrk run lasts --duration seconds.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
HELLO_APP = '''
from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "Hello, World!"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def udp_drain(batch_seconds: float = 0.0):
    """A UDP socket that receives and drops segments: the daemon's side, minus its work.

    With ``batch_seconds`` 0, one blocking ``recv_into`` per datagram: the reading
    thread wakes for every segment, and those wake-ups (two per chain request)
    compete with the workers for the two cores. With ``batch_seconds`` > 0 it
    sleeps that long and then reads everything waiting, as a busy daemon's
    event loop does (the X-Ray daemon reads in a loop until the socket is empty).
    Either way every datagram is received; an empty one from the bench says stop.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    received = [0]
    buffer = bytearray(65535)

    def drain_each():
        while sock.recv_into(buffer):
            received[0] += 1

    def drain_batches():
        sock.setblocking(False)
        while True:
            time.sleep(batch_seconds)
            while True:
                try:
                    if not sock.recv_into(buffer):
                        return
                except BlockingIOError:
                    break
                received[0] += 1

    thread = threading.Thread(target=drain_batches if batch_seconds else drain_each,
                              daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{address[1]}", received
    finally:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stopper:
            stopper.sendto(b"", address)
        thread.join()
        sock.close()


@contextmanager
def gunicorn(args: list[str], env: dict, url: str, cwd: Path | None = None):
    """A gunicorn server for the length of the block; waits until ``url`` answers."""
    process = subprocess.Popen([GUNICORN, *args], env={**os.environ, **env}, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server for {url} did not start") from None
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def wrk(url: str, duration: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors while measuring {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def chain_env(daemon: str, tracing: bool, tmp: Path, um_port: int, nm_port: int):
    common = {"AWS_XRAY_DAEMON_ADDRESS": daemon, "AWS_XRAY_SDK_ENABLED": str(tracing).lower(),
              "LOG_LEVEL": "warning"}
    notification = {**common, "GUNICORN_BIND": f"127.0.0.1:{nm_port}"}
    usermgmt = {**common, "GUNICORN_BIND": f"127.0.0.1:{um_port}",
                "NOTIFICATION_SERVICE_PORT": str(nm_port),
                "SQLITE_PATH": str(tmp / f"users-{tracing}.db")}
    return notification, usermgmt


@contextmanager
def chain(daemon: str, tracing: bool, tmp: Path):
    """notification v1 + user-management, started as shipped; yields the canary URL."""
    um_port, nm_port = free_port(), free_port()
    notification, usermgmt = chain_env(daemon, tracing, tmp, um_port, nm_port)
    release = dict(line.split("=", 1) for line in
                   (ROOT / "notification-v1/release.env").read_text().split())
    with ExitStack() as stack:
        stack.enter_context(gunicorn(
            ["-c", str(ROOT / "notification/gunicorn.conf.py"), "notification_service:create_app()",
             "--access-logfile", str(tmp / "notification-access.log")],
            {**release, **notification}, f"http://127.0.0.1:{nm_port}/notification/health-status"))
        stack.enter_context(gunicorn(
            ["-c", str(ROOT / "user-management/gunicorn.conf.py"), "user_management:create_app()",
             "--access-logfile", str(tmp / "usermgmt-access.log")],
            usermgmt, f"http://127.0.0.1:{um_port}/usermgmt/health-status"))
        yield f"http://127.0.0.1:{um_port}/usermgmt/notification-xray"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--daemon-batch", type=float, default=0.0, metavar="SECONDS",
                        help="the stand-in daemon reads what waits every SECONDS instead of "
                             "waking for each segment (0: each)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    results: dict[str, list[float]] = {"hello": [], "traced": [], "untraced": []}
    with tempfile.TemporaryDirectory(prefix="canarylab-bench-") as tmpdir, \
            udp_drain(args.daemon_batch) as (daemon, segments):
        tmp = Path(tmpdir)
        (tmp / "hello_app.py").write_text(HELLO_APP)
        hello_port = free_port()
        hello_url = f"http://127.0.0.1:{hello_port}/"
        with ExitStack() as servers:
            servers.enter_context(gunicorn(
                ["-b", f"127.0.0.1:{hello_port}", "-w", "1", "--no-control-socket",
                 "hello_app:app"],
                {}, hello_url, cwd=tmp))
            traced = servers.enter_context(chain(daemon, True, tmp))
            untraced = servers.enter_context(chain(daemon, False, tmp))
            urls = {"hello": hello_url, "traced": traced, "untraced": untraced}
            for url in urls.values():  # warm up: imports, first connections, SQLite file
                wrk(url, 1, args.connections)
            for number in range(1, args.rounds + 1):
                for name, url in urls.items():
                    results[name].append(wrk(url, args.duration, args.connections))
                print(f"round {number}: " + "  ".join(
                    f"{name} {values[-1]:7.0f} req/s" for name, values in results.items()))
        sent = segments[0]

    median = {name: statistics.median(values) for name, values in results.items()}
    chain_ratio = median["traced"] / median["hello"]
    tracing_cost = 1 - median["traced"] / median["untraced"]
    print(f"\nmedians: hello {median['hello']:.0f}, chain traced {median['traced']:.0f}, "
          f"chain untraced {median['untraced']:.0f} req/s ({sent} segments received)")
    print(f"chain ratio  (traced chain / bare hello): {chain_ratio:.2f}   target >= 0.30")
    print(f"tracing cost (1 - traced / untraced):     {tracing_cost:.1%}  target <= 15%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
