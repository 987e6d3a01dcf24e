"""`canarylab demo`: the whole idea in one command.

Starts the local cluster from an overlay (75-25 by default), sends traffic to
user-management's canary endpoint, counts which notification version and pod
answered each call, and asks `loadtest.verifier` whether the observed split is
the one the manifests declare: "verified" (within ±5 points, by an equivalence
test on at least the planned number of calls), "mismatch" or "inconclusive".
Then it shows the X-Ray service map, writes a report and stops the cluster.

Each call opens a NEW connection, as user-management does towards notification:
the Service proxy picks a pod per connection (kube-proxy's rule), so every call
is an independent draw. A call that fails, or comes back without the
``X-Notification-Version`` header, is reported: a split can only be counted on
calls that say who answered.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from canarylab import xray
from loadtest.junit import verdict_junit
from loadtest.report import write_html
from loadtest.verifier import Expectation, Verdict, render, verify

VERSION_HEADER, POD_HEADER = "X-Notification-Version", "X-Notification-Pod"
CANARY_PATH = "/notification-xray"
WINDOW_SECONDS = 1.0  # the stickiness check compares the split between these windows


@dataclass
class Tally:
    """What the traffic saw: answers per version, per pod and per time window."""

    versions: Counter = field(default_factory=Counter)
    pods: defaultdict = field(default_factory=lambda: defaultdict(Counter))  # version -> pod
    windows: list[Counter] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.versions.values())

    def record(self, version: str, pod: str, window: int) -> None:
        self.versions[version] += 1
        self.pods[version][pod] += 1
        while len(self.windows) <= window:
            self.windows.append(Counter())
        self.windows[window][version] += 1


def drive(url: str, requests: int, concurrency: int, max_seconds: float,
          progress=None) -> Tally:
    """GET ``url`` ``requests`` times from ``concurrency`` threads, each call on a
    fresh connection; stop early after ``max_seconds``."""
    parts = urlsplit(url)
    tally, lock = Tally(), threading.Lock()
    remaining = [requests]
    started = time.monotonic()
    deadline = started + max_seconds

    def take() -> bool:
        with lock:
            if remaining[0] <= 0 or time.monotonic() > deadline:
                return False
            remaining[0] -= 1
            return True

    def worker() -> None:
        while take():
            version, pod, failure = _call(parts.hostname, parts.port, parts.path)
            window = int((time.monotonic() - started) / WINDOW_SECONDS)
            with lock:
                if failure:
                    tally.failures[failure] += 1
                else:
                    tally.record(version, pod, window)
                done = tally.answered + sum(tally.failures.values())
            if progress and done % 200 == 0:
                progress(done, requests)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.seconds = time.monotonic() - started
    return tally


def _call(host: str, port: int, path: str) -> tuple[str | None, str | None, str | None]:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        version = response.getheader(VERSION_HEADER)
        if response.status != 200:
            return None, None, f"HTTP {response.status}"
        if not version:
            return None, None, f"no {VERSION_HEADER} header"
        return version, response.getheader(POD_HEADER), None
    except (OSError, http.client.HTTPException) as error:
        return None, None, type(error).__name__
    finally:
        connection.close()


def judge(replicas: dict[str, int], tally: Tally, source: str) -> Verdict:
    """The verifier's verdict on the calls, against the declared replica counts."""
    return verify(tally.versions, Expectation.from_replicas(replicas, source=source),
                  pods=tally.pods, windows=tally.windows)


def summary(verdict: Verdict, tally: Tally) -> str:
    rate = tally.answered / tally.seconds if tally.seconds else 0.0
    lines = [render(verdict), "",
             f"{tally.answered} answered calls in {tally.seconds:.1f} s ({rate:.0f}/s)"]
    if tally.failures:
        lines.append(f"{sum(tally.failures.values())} calls FAILED: {dict(tally.failures)} "
                     "(the demo fails: a split on a failing stack is no success)")
    return "\n".join(lines)


def write_report(directory: Path, verdict: Verdict, tally: Tally, overlay: str,
                 service_map: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "verdict.json").write_text(json.dumps({
        "overlay": overlay,
        "verdict": verdict.to_dict(),
        "calls": {"versions": dict(tally.versions),
                  "pods": {version: dict(pods) for version, pods in tally.pods.items()},
                  "failures": dict(tally.failures), "seconds": round(tally.seconds, 3)},
    }, indent=2) + "\n")
    failed = sum(tally.failures.values())
    health = (not failed, f"{failed} of {tally.answered + failed} calls failed")
    (directory / "junit.xml").write_text(verdict_junit(verdict, health))
    (directory / "report.txt").write_text(f"overlay {overlay}\n\n{text}\n\n"
                                          f"X-Ray service map:\n{service_map}\n")
    write_html(directory / "report.html", verdict.to_dict(),
               [dict(window) for window in tally.windows], WINDOW_SECONDS)
    return directory


# -- the command ---------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from canarylab import cli

    code = cli.main(["up", args.overlay])  # prints its progress, or why it failed
    if code:
        return code
    state = cli.state_dir()
    try:
        status = cli.control(state, "status")
        replicas = {d["version"]: d["desired"] for d in status["deployments"]
                    if d["name"].startswith("notification-")}
        url = status["usermgmt_url"] + CANARY_PATH
        print(f"\nsending {args.requests} calls to {url}, each on a new connection ...",
              flush=True)
        tally = drive(url, args.requests, args.concurrency, args.max_seconds,
                      progress=lambda done, total: print(f"  {done}/{total}", file=sys.stderr,
                                                         flush=True))
        verdict = judge(replicas, tally, source=f"overlay {args.overlay}")
        text = summary(verdict, tally)
        time.sleep(0.5)  # the last segments are still on their way to the collector
        traces = cli.control(state, "traces")
        service_map = (xray.render_service_map(xray.service_map(
            xray.read_segments(traces["file"]))) if traces["collected"]
            else "(segments went to AWS_XRAY_DAEMON_ADDRESS; no service map here)")
        print(f"\n{text}\n\nX-Ray service map:\n{service_map}")
        report = write_report(Path(args.reports) / time.strftime("%Y%m%d-%H%M%S"), verdict,
                              tally, args.overlay, service_map, text)
        print(f"\nreport: {report}/report.txt (and report.html, verdict.json, junit.xml)")
    finally:
        if not args.keep:
            cli.main(["down"])
    # Failed calls fail the demo whatever the split: the stack is not healthy.
    return 1 if tally.failures else verdict.exit_code
