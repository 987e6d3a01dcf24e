"""`canarylab demo`: the whole idea in one command.

Starts the local cluster from an overlay (75-25 by default), sends traffic to
user-management's canary endpoint, counts which notification version and pod
answered each call, and asks `loadtest.verifier` whether the observed split is
the one the manifests declare: "verified" (within ±5 points, by an equivalence
test on at least the planned number of calls), "mismatch" or "inconclusive".
Then it shows the X-Ray service map, writes a report and stops the cluster.

``--scenario NAME`` runs the same with a fault scenario on the v2 pods (the
kustomize components in k8s/components/faults: ``errors``, ``slow``, ``subtle``;
``healthy`` adds none) and judges the canary as well: ``loadtest.analysis``
compares v2's errors and latency with v1's and says promote, hold or rollback.
A scenario sends more calls (8,000 at most, 30 s at most): promoting a healthy
canary needs evidence about its p99, which takes about a thousand v2 answers.

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
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from canarylab import xray
from loadtest import analysis as canary_analysis
from loadtest.analysis_report import analysis_html
from loadtest.junit import analysis_junit, junit_document, verdict_junit
from loadtest.report import write_html
from loadtest.verifier import Expectation, Verdict, render, verify, worst_exit_code

VERSION_HEADER, POD_HEADER = "X-Notification-Version", "X-Notification-Pod"
CANARY_PATH = "/notification-xray"
WINDOW_SECONDS = 1.0  # the stickiness check compares the split between these windows
FAULTS = Path(__file__).resolve().parent.parent / "k8s" / "components" / "faults"
SCENARIOS = ("healthy", "errors", "slow", "subtle")
SCENARIO_REQUESTS, SCENARIO_SECONDS = 8000, 30.0
DEFAULT_REQUESTS, DEFAULT_SECONDS = 2000, 60.0


@dataclass
class Tally:
    """What the traffic saw: answers per version, per pod and per time window; per
    version also the answers that were errors (not 2xx) and every latency in ms."""

    versions: Counter = field(default_factory=Counter)
    pods: defaultdict = field(default_factory=lambda: defaultdict(Counter))  # version -> pod
    windows: list[Counter] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    latencies: defaultdict = field(default_factory=lambda: defaultdict(list))
    failures: Counter = field(default_factory=Counter)  # calls that named no version
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.versions.values())

    def add(self, more: Tally) -> None:
        """Add the calls of a later batch (its windows come after these)."""
        self.versions.update(more.versions)
        self.errors.update(more.errors)
        self.failures.update(more.failures)
        for version, pods in more.pods.items():
            self.pods[version].update(pods)
        for version, values in more.latencies.items():
            self.latencies[version].extend(values)
        self.windows.extend(more.windows)
        self.seconds += more.seconds

    def sample(self, version: str) -> canary_analysis.VersionSample:
        """One version's calls as the canary analysis takes them."""
        return canary_analysis.VersionSample(version, self.versions[version],
                                             self.errors[version], self.latencies[version])

    def record(self, version: str, pod: str, window: int, status: int = 200,
               latency_ms: float = 0.0) -> None:
        self.versions[version] += 1
        self.errors[version] += not 200 <= status < 300
        self.latencies[version].append(latency_ms)
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
            begun = time.perf_counter()
            version, pod, status, failure = _call(parts.hostname, parts.port, parts.path)
            latency_ms = 1000 * (time.perf_counter() - begun)
            window = int((time.monotonic() - started) / WINDOW_SECONDS)
            with lock:
                if failure:
                    tally.failures[failure] += 1
                else:
                    tally.record(version, pod, window, status, latency_ms)
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


def _call(host: str, port: int,
          path: str) -> tuple[str | None, str | None, int | None, str | None]:
    """(version, pod, HTTP status, failure): an answer that names its version counts,
    errors included (the canary analysis weighs them); one that does not is a failure."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        version = response.getheader(VERSION_HEADER)
        if not version:
            return None, None, response.status, f"HTTP {response.status}, no {VERSION_HEADER}"
        return version, response.getheader(POD_HEADER), response.status, None
    except (OSError, http.client.HTTPException) as error:
        return None, None, None, type(error).__name__
    finally:
        connection.close()


def judge(replicas: dict[str, int], tally: Tally, source: str) -> Verdict:
    """The verifier's verdict on the calls, against the declared replica counts."""
    return verify(tally.versions, Expectation.from_replicas(replicas, source=source),
                  pods=tally.pods, windows=tally.windows)


def analyse(verdict: Verdict, tally: Tally, config=None):
    """The canary analysis on the same calls: (analysis, (baseline, canary) samples)."""
    baseline = next(v for v in verdict.declared if v != verdict.canary)
    samples = (tally.sample(baseline), tally.sample(verdict.canary))
    return canary_analysis.analyze(*samples, config), samples


def summary(verdict: Verdict, tally: Tally, analysis=None) -> str:
    rate = tally.answered / tally.seconds if tally.seconds else 0.0
    lines = [render(verdict), "",
             f"{tally.answered} answered calls in {tally.seconds:.1f} s ({rate:.0f}/s)"]
    if analysis is not None:
        lines += ["", canary_analysis.render(analysis)]
    elif sum(tally.errors.values()):
        lines.append(f"{sum(tally.errors.values())} answers were ERRORS: {dict(tally.errors)} "
                     "(the demo fails: a split on a failing stack is no success)")
    if tally.failures:
        lines.append(f"{sum(tally.failures.values())} calls FAILED: {dict(tally.failures)} "
                     "(the demo fails: a split on a failing stack is no success)")
    return "\n".join(lines)


def write_report(directory: Path, verdict: Verdict, tally: Tally, overlay: str,
                 service_map: str, text: str, analysed=None) -> Path:
    """verdict.json, junit.xml, report.txt and report.html; ``analysed`` is
    (analysis, samples) when the canary was analysed too."""
    analysis, samples = analysed or (None, None)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "verdict.json").write_text(json.dumps({
        "overlay": overlay,
        "verdict": verdict.to_dict(),
        "analysis": analysis.to_dict() if analysis else None,
        "calls": {"versions": dict(tally.versions), "errors": dict(tally.errors),
                  "pods": {version: dict(pods) for version, pods in tally.pods.items()},
                  "failures": dict(tally.failures), "seconds": round(tally.seconds, 3)},
    }, indent=2) + "\n")
    failed = sum(tally.failures.values()) + (0 if analysis else sum(tally.errors.values()))
    health = (not failed, f"{failed} of {tally.answered + sum(tally.failures.values())} "
                          "calls failed")
    suites = [verdict_junit(verdict, health)]
    if analysis is not None:
        suites.append(analysis_junit(analysis))
    (directory / "junit.xml").write_text(junit_document(*suites))
    (directory / "report.txt").write_text(f"overlay {overlay}\n\n{text}\n\n"
                                          f"X-Ray service map:\n{service_map}\n")
    latency = {version: {f"{100 * q:g}": float(np.percentile(values, 100 * q))
                         for q in (0.5, 0.95, 0.99)}
               for version, values in tally.latencies.items() if values}
    write_html(directory / "report.html", verdict.to_dict(),
               [dict(window) for window in tally.windows], WINDOW_SECONDS, latency,
               [analysis_html(analysis, *samples)] if analysis else [])
    return directory


def scenario_overlay(overlay: str, scenario: str, folder: Path) -> Path:
    """A kustomization in ``folder``: ``overlay`` plus the scenario's fault component."""
    if scenario not in SCENARIOS:
        raise ValueError(f"--scenario {scenario}: choose one of {', '.join(SCENARIOS)}")
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    components = ""
    if scenario != "healthy":  # kustomize takes relative paths only
        components = f"components:\n  - {os.path.relpath(FAULTS / scenario, folder)}\n"
    base = os.path.relpath(Path(overlay).resolve(), folder)
    (folder / "kustomization.yaml").write_text(
        f"# canarylab demo --scenario {scenario}: {overlay} with k8s/components/faults/"
        f"{scenario}\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n{components}")
    return folder


# -- the command ---------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from canarylab import cli

    scenario = args.scenario
    requests = args.requests if args.requests is not None else (
        SCENARIO_REQUESTS if scenario else DEFAULT_REQUESTS)
    max_seconds = args.max_seconds if args.max_seconds is not None else (
        SCENARIO_SECONDS if scenario else DEFAULT_SECONDS)
    with tempfile.TemporaryDirectory(prefix="canarylab-scenario-") as folder:
        overlay = args.overlay
        if scenario:
            try:
                overlay = str(scenario_overlay(args.overlay, scenario, Path(folder)))
            except ValueError as error:
                raise cli.CommandError(str(error), 2) from None
            print(f"scenario {scenario}: {args.overlay} + "
                  f"{'no fault' if scenario == 'healthy' else f'k8s/components/faults/{scenario}'}")
        code = cli.main(["up", overlay])  # prints its progress, or why it failed
    if code:
        return code
    state = cli.state_dir()
    try:
        status = cli.control(state, "status")
        replicas = {d["version"]: d["desired"] for d in status["deployments"]
                    if d["name"].startswith("notification-")}
        url = status["usermgmt_url"] + CANARY_PATH
        print(f"\nsending {requests} calls (at most {max_seconds:g} s) to {url}, each on a new "
              "connection ...", flush=True)
        tally = drive(url, requests, args.concurrency, max_seconds,
                      progress=lambda done, total: print(f"  {done}/{total}", file=sys.stderr,
                                                         flush=True))
        verdict = judge(replicas, tally, source=f"overlay {args.overlay}")
        analysed = analyse(verdict, tally) if scenario else None
        analysis = analysed[0] if analysed else None
        text = summary(verdict, tally, analysis)
        time.sleep(0.5)  # the last segments are still on their way to the collector
        traces = cli.control(state, "traces")
        service_map = (xray.render_service_map(xray.service_map(
            xray.read_segments(traces["file"]))) if traces["collected"]
            else "(segments went to AWS_XRAY_DAEMON_ADDRESS; no service map here)")
        print(f"\n{text}\n\nX-Ray service map:\n{service_map}")
        if analysis is not None and analysis.decision == "rollback":
            print("\nrolling back: every notification call to v1 ...", flush=True)
            if cli.main(["split", "0"]):
                print("the rollback did not complete: see above", file=sys.stderr)
        report = write_report(Path(args.reports) / time.strftime("%Y%m%d-%H%M%S"), verdict,
                              tally, args.overlay, service_map, text, analysed)
        print(f"\nreport: {report}/report.txt (and report.html, verdict.json, junit.xml)")
    finally:
        if not args.keep:
            cli.main(["down"])
    if analysis is not None:
        # The scenario's answer: promote 0, rollback 1, hold 2 (and the split's own).
        return 1 if tally.failures else worst_exit_code(verdict.exit_code, analysis.exit_code)
    # Failed calls fail the demo whatever the split: the stack is not healthy.
    return 1 if tally.failures or sum(tally.errors.values()) else verdict.exit_code
