"""What our locustfile costs the load generator, against a bare FastHttpUser, side by side.

    .venv/bin/python bench/locust_cost.py                 # 3 rounds each, -u 8 -r 8 -t 8s
    .venv/bin/python bench/locust_cost.py --rounds 5 --run-time 10s

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

Per round: the locust process's CPU time (user + sys, from getrusage(RUSAGE_CHILDREN)
deltas: everything it did, from interpreter start to exit) divided by the requests it
made (the Aggregated row of its --csv stats). That total includes starting up
(importing locust, gevent and, for ours, numpy/scipy for the verifier) and the verdict
at the end, which a short run spreads over few requests. So a second, steady-state
figure is printed too, not the gate: CPU sampled from /proc/<pid>/stat while running,
between the first and last one-second rows of the --csv stats history that have
requests, divided by the requests counted between those rows.

Exit 1 when the total ratio (median over rounds) misses the target, or a run fails.
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
CLK_TCK = os.sysconf("SC_CLK_TCK")
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


def start_server() -> tuple[ThreadingHTTPServer, int]:
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 64  # 5 drops SYNs when 8 users connect at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


def proc_cpu(pid: int) -> float | None:
    """utime + stime of one process, in seconds, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def aggregated(path: Path) -> dict:
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return row
    raise RuntimeError(f"no Aggregated row in {path}")


def steady(samples: list[tuple[float, float]], history: Path) -> float | None:
    """CPU seconds per request between the first and last history rows with requests."""
    rows = []
    with history.open() as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated" and int(row["Total Request Count"]) > 0:
                rows.append((int(row["Timestamp"]), int(row["Total Request Count"])))
    if len(rows) < 3:
        return None
    (t0, n0), (t1, n1) = rows[0], rows[-2]  # the last row may be written while quitting

    def cpu_at(t: float) -> float:  # the sample nearest to t
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    return (cpu_at(t1) - cpu_at(t0)) / (n1 - n0) if n1 > n0 else None


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
    samples = []
    deadline = time.monotonic() + args.timeout
    while proc.poll() is None:
        cpu = proc_cpu(proc.pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
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
            "per_request": cpu / requests,
            "steady": steady(samples, Path(f"{prefix}_stats_history.csv"))}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", "-u", type=int, default=8)
    parser.add_argument("--spawn-rate", "-r", type=float, default=8)
    parser.add_argument("--run-time", "-t", default="8s")
    parser.add_argument("--timeout", type=float, default=60, help="kill a run after this long")
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
              f"-r {args.spawn_rate:g} -t {args.run_time}; {args.rounds} rounds each")
        print(f"{'round':>5} {'locustfile':>10} {'requests':>8} {'(csv)':>6} {'CPU s':>6} "
              f"{'CPU/req':>9} {'steady/req':>10}")
        for i in range(args.rounds):
            order = ("ours", "bare") if i % 2 == 0 else ("bare", "ours")
            for kind in order:
                r = run(kind, LOCUSTFILE if kind == "ours" else bare, port, args, workdir)
                results[kind].append(r)
                steady_us = f"{r['steady'] * us:7.0f} us" if r["steady"] else "       n/a"
                print(f"{i + 1:>5} {kind:>10} {r['requests']:>8} {r['csv']:>6} {r['cpu']:>6.2f} "
                      f"{r['per_request'] * us:>6.0f} us {steady_us}", flush=True)
    server.shutdown()

    def median(kind: str, key: str) -> float | None:
        values = [r[key] for r in results[kind] if r[key]]
        return statistics.median(values) if values else None

    ours, bare_ = median("ours", "per_request"), median("bare", "per_request")
    ratios = [o["per_request"] / b["per_request"]
              for o, b in zip(results["ours"], results["bare"], strict=True)]
    ratio = ours / bare_
    print(f"\nmedian CPU per request: ours {ours * us:.0f} us, bare {bare_ * us:.0f} us")
    print(f"per-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    so, sb = median("ours", "steady"), median("bare", "steady")
    if so and sb:
        print(f"steady state (startup and quit left out, not the gate): ours {so * us:.0f} us, "
              f"bare {sb * us:.0f} us, ratio {so / sb:.2f}")
    ok = ratio <= TARGET
    print(f"ratio ours / bare (medians): {ratio:.2f}, target <= {TARGET}: "
          f"{'MET' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
