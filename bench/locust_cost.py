"""What our locustfile costs the load generator, against a bare FastHttpUser, side by side.

    .venv/bin/python bench/locust_cost.py                 # 3 rounds, -u 8 -r 8, 5 s and 20 s runs
    .venv/bin/python bench/locust_cost.py --rounds 5 --long 30

Target from the issue: CPU per request of the locustfile / a bare FastHttpUser hitting
the same endpoint <= 1.15, in the same run.

A small threaded HTTP server (a thread of this process, HTTP/1.1 keep-alive, so the
load generator is what is being measured) answers GET /usermgmt/notification-xray on
127.0.0.1 with 200, a small JSON body, X-Notification-Version v1 or v2 at random (3:1)
and X-Notification-Pod. Then, in alternating rounds, `locust --headless` runs as a
subprocess with (a) loadtest/locustfile.py --tags canary --expect 75/25 and (b) a bare
locustfile written to a temp dir: one FastHttpUser, one task GETting the same path,
the same wait_time as CanaryUser (read from our locustfile's source). Same users,
spawn rate and run time.

Per run: the locust process's CPU time (user + sys, from getrusage(RUSAGE_CHILDREN)
deltas: everything it did, from interpreter start to exit) and the requests it made
(the Aggregated row of its final summary). A run's CPU is a fixed part (starting
Python, importing locust and gevent and, for ours, numpy/scipy for the verifier;
the verdict at the end) plus a part per request. Each locustfile runs twice per
round, --short and --long seconds; the difference, (CPU_long - CPU_short) /
(requests_long - requests_short), is the CPU per request with the fixed part
cancelled out, which is what the target is about. The whole-run figure and the
fixed part (in seconds) are printed too, so nothing is hidden.

Exit 1 when the per-request ratio (medians over rounds) misses the target, or a run
fails.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
PATH = "/usermgmt/notification-xray"
TARGET = 1.15
SUMMARY = re.compile(r"^\s+Aggregated\s+(?P<requests>\d+)\s+(?P<failures>\d+)\(", re.M)


# --------------------------------------------------------------------------- the target


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like user-management's gunicorn is not: cheap

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != PATH:
            self.send_error(404)
            return
        version = "v1" if random.random() < 0.75 else "v2"
        body = json.dumps({"service": "notification", "version": version,
                           "message": "hello"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Notification-Version", version)
        self.send_header("X-Notification-Pod", f"notification-{version}-{random.randrange(3)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # 5 drops SYNs when 8 users connect at once

    def handle_error(self, request, client_address) -> None:
        # Locust drops its connections when a run ends: a reset then is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start_server() -> tuple[ThreadingHTTPServer, int]:
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# --------------------------------------------------------------------------- the locustfiles


def our_wait_time() -> str:
    """The source of CanaryUser's `wait_time = ...`, e.g. "between(0.05, 0.2)"."""
    source = LOCUSTFILE.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "CanaryUser":
            for item in node.body:
                if (isinstance(item, ast.Assign) and len(item.targets) == 1
                        and getattr(item.targets[0], "id", None) == "wait_time"):
                    return ast.get_source_segment(source, item.value)
    raise SystemExit(f"no CanaryUser.wait_time in {LOCUSTFILE}")


BARE = '''\
from locust import FastHttpUser, task
from locust import between, constant, constant_pacing, constant_throughput  # noqa: F401


class BareUser(FastHttpUser):
    wait_time = {wait_time}

    @task
    def canary(self):
        self.client.get("{path}")
'''


# --------------------------------------------------------------------------- one run


def aggregated(path: Path) -> dict:
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return row
    raise RuntimeError(f"no Aggregated row in {path}")


def run(kind: str, locustfile: Path, port: int, args, workdir: Path) -> dict:
    prefix = workdir / f"{kind}-{time.monotonic_ns()}"
    cmd = [str(ROOT / ".venv" / "bin" / "locust"), "-f", str(locustfile), "--headless",
           "--host", f"http://127.0.0.1:{port}", "-u", str(args.users), "-r", str(args.spawn_rate),
           "-t", args.run_time, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    if kind == "ours":
        cmd += ["--tags", "canary", "--expect", "75/25"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + args.timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    output = proc.stdout.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ours exits 0/1/2 with the verdict (2 = too few answers, normal for a short run)
    summary = SUMMARY.search(output)
    if proc.returncode not in (0, 1, 2) or not summary:
        raise SystemExit(f"{kind}: locust exited {proc.returncode}\n{output[-3000:]}")
    # The count: the Aggregated row of the final summary Locust prints. Its --csv
    # file can miss the last second: the CSV writer rewrites the file once a second
    # and not when it closes (our locustfile waits for one more pass; a bare one
    # does not), so the CSV is only the cross-check and the history.
    requests, failures = int(summary["requests"]), int(summary["failures"])
    csv_requests = int(aggregated(Path(f"{prefix}_stats.csv"))["Request Count"])
    if requests == 0 or failures > requests * 0.01:
        raise SystemExit(f"{kind}: {requests} requests, {failures} failed\n{output[-3000:]}")
    return {"cpu": cpu, "requests": requests, "failures": failures, "csv": csv_requests,
            "per_request": cpu / requests}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", "-u", type=int, default=8)
    parser.add_argument("--spawn-rate", "-r", type=float, default=8)
    parser.add_argument("--short", type=float, default=5, help="the short run, seconds")
    parser.add_argument("--long", type=float, default=20, help="the long run, seconds")
    parser.add_argument("--timeout", type=float, default=90, help="kill a run after this long")
    args = parser.parse_args()

    wait_time = our_wait_time()
    server, port = start_server()
    us = 1e6
    results: dict[str, list[dict]] = {"ours": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="locust-cost-") as tmp:
        workdir = Path(tmp)
        bare = workdir / "bare_locustfile.py"
        bare.write_text(BARE.format(wait_time=wait_time, path=PATH))
        print(f"target http://127.0.0.1:{port}{PATH}; wait_time = {wait_time}; -u {args.users} "
              f"-r {args.spawn_rate:g}; runs of {args.short:g} s and {args.long:g} s; "
              f"{args.rounds} rounds each")
        print(f"{'round':>5} {'locustfile':>10} {'run':>5} {'requests':>8} {'CPU s':>6} "
              f"{'CPU/req':>9}")
        for i in range(args.rounds):
            order = ("ours", "bare") if i % 2 == 0 else ("bare", "ours")
            for kind in order:
                runs = {}
                for length in (args.short, args.long):
                    args.run_time = f"{length:g}s"
                    r = run(kind, LOCUSTFILE if kind == "ours" else bare, port, args, workdir)
                    runs[length] = r
                    print(f"{i + 1:>5} {kind:>10} {length:>4g}s {r['requests']:>8} "
                          f"{r['cpu']:>6.2f} {r['per_request'] * us:>6.0f} us", flush=True)
                short, long_ = runs[args.short], runs[args.long]
                results[kind].append({
                    "total": long_["per_request"],
                    # What one more request costs: the fixed costs of a run (start-up,
                    # imports, the verdict) are in both runs and cancel out.
                    "marginal": (long_["cpu"] - short["cpu"])
                    / (long_["requests"] - short["requests"]),
                    "fixed": short["cpu"] - short["requests"] * (long_["cpu"] - short["cpu"])
                    / (long_["requests"] - short["requests"]),
                })
    server.shutdown()

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    print()
    for key, words in (("marginal", "CPU per request (long run - short run)"),
                       ("total", f"CPU per request, whole {args.long:g} s run")):
        ours, bare_ = median("ours", key), median("bare", key)
        ratios = [o[key] / b[key] for o, b in zip(results["ours"], results["bare"], strict=True)]
        print(f"{words}: ours {ours * us:.0f} us, bare {bare_ * us:.0f} us; ratio "
              f"{ours / bare_:.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"fixed cost per run (start-up, imports, verdict): ours {median('ours', 'fixed'):.2f} s, "
          f"bare {median('bare', 'fixed'):.2f} s")
    ratio = median("ours", "marginal") / median("bare", "marginal")
    ok = ratio <= TARGET
    print(f"ratio of CPU per request, ours / bare (medians): {ratio:.2f}, target <= {TARGET}: "
          f"{'MET' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
