"""`canarylab demo`: the whole idea in one command.

Starts the local cluster from an overlay (75-25 by default), sends traffic to
user-management's canary endpoint, counts which notification version and pod
answered each call, sets the observed split next to the one the manifests
declare, shows the X-Ray service map, writes a report and stops the cluster.

Each call opens a NEW connection, as user-management does towards notification:
the Service proxy picks a pod per connection (kube-proxy's rule), so every call
is an independent draw and a binomial test is the right yardstick. A call that
fails, or comes back without the ``X-Notification-Version`` header, counts
against the run: a split can only be checked on calls that say who answered.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from canarylab import xray
from canarylab.stats import binomial_p_value, wilson_interval

VERSION_HEADER, POD_HEADER = "X-Notification-Version", "X-Notification-Pod"
CANARY_PATH = "/notification-xray"


@dataclass
class Tally:
    """What the traffic saw: answers per version and per pod, and the failures."""

    versions: Counter = field(default_factory=Counter)
    pods: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.versions.values())


def drive(url: str, requests: int, concurrency: int, max_seconds: float,
          progress=None) -> Tally:
    """GET ``url`` ``requests`` times from ``concurrency`` threads, each call on a
    fresh connection; stop early after ``max_seconds``."""
    parts = urlsplit(url)
    tally, lock = Tally(), threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + max_seconds
    started = time.monotonic()

    def take() -> bool:
        with lock:
            if remaining[0] <= 0 or time.monotonic() > deadline:
                return False
            remaining[0] -= 1
            return True

    def worker() -> None:
        while take():
            version, pod, failure = _call(parts.hostname, parts.port, parts.path)
            with lock:
                if failure:
                    tally.failures[failure] += 1
                else:
                    tally.versions[version] += 1
                    tally.pods[pod] += 1
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


@dataclass
class SplitCheck:
    declared: dict[str, float]  # version -> share the replica counts declare
    observed: dict[str, int]  # version -> answers
    p_value: float  # binomial test of the canary's share against its declared share
    consistent: bool
    canary: str
    interval: tuple[float, float]


def check_split(declared_replicas: dict[str, int], tally: Tally, canary: str = "v2",
                alpha: float = 0.001) -> SplitCheck:
    """Is the canary's observed share consistent with its replica share?

    A sample-ratio-mismatch test at ``alpha`` (0.1%, as A/B-testing tools use):
    a correct split fails it once in a thousand runs. It can say "these counts
    do not fit the declared split"; proving that they DO fit within a margin
    takes an equivalence test and a planned sample size, which is the job of
    `canarylab verify`.
    """
    total_replicas = sum(declared_replicas.values())
    declared = {v: r / total_replicas for v, r in declared_replicas.items()}
    n = tally.answered
    k = tally.versions.get(canary, 0)
    unexpected = set(tally.versions) - set(declared_replicas)
    p_value = 0.0 if unexpected or n == 0 else binomial_p_value(k, n, declared.get(canary, 0.0))
    return SplitCheck(declared=declared, observed=dict(tally.versions), p_value=p_value,
                      consistent=p_value >= alpha and not tally.failures,
                      canary=canary, interval=wilson_interval(k, n))


def render(check: SplitCheck, tally: Tally, replicas: dict[str, int]) -> str:
    n = tally.answered
    lines = [f"{'VERSION':8} {'PODS':>4} {'DECLARED':>9} {'OBSERVED':>9} {'CALLS':>7}"]
    for version in sorted(set(check.declared) | set(check.observed)):
        calls = check.observed.get(version, 0)
        lines.append(f"{version:8} {replicas.get(version, 0):>4} "
                     f"{check.declared.get(version, 0):>9.1%} {calls / max(n, 1):>9.1%} {calls:>7}")
    low, high = check.interval
    rate = n / tally.seconds if tally.seconds else 0.0
    lines.append(f"\n{n} answered calls in {tally.seconds:.1f} s ({rate:.0f}/s)"
                 + (f", {sum(tally.failures.values())} failed: {dict(tally.failures)}"
                    if tally.failures else ""))
    lines.append(f"{check.canary} share {check.observed.get(check.canary, 0) / max(n, 1):.1%}, "
                 f"95% interval {low:.1%} to {high:.1%}; "
                 f"binomial test against {check.declared.get(check.canary, 0):.0%}: "
                 f"p = {check.p_value:.3g}")
    if check.consistent:
        lines.append("consistent with the declared split (no mismatch at the 0.1% level)")
    else:
        lines.append("NOT consistent with the declared split")
    lines.append("\ncalls per pod:")
    for pod, calls in sorted(tally.pods.items()):
        lines.append(f"  {pod:40} {calls:>6}")
    return "\n".join(lines)


def write_report(directory: Path, check: SplitCheck, tally: Tally, replicas: dict[str, int],
                 overlay: str, service_map: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.json").write_text(json.dumps({
        "overlay": overlay,
        "declared_replicas": replicas,
        "check": asdict(check),
        "calls": {"versions": dict(tally.versions), "pods": dict(tally.pods),
                  "failures": dict(tally.failures), "seconds": round(tally.seconds, 3)},
    }, indent=2) + "\n")
    (directory / "demo.txt").write_text(f"overlay {overlay}\n\n{text}\n\n{service_map}\n")
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
        check = check_split(replicas, tally)
        text = render(check, tally, replicas)
        time.sleep(0.5)  # the last segments are still on their way to the collector
        traces = cli.control(state, "traces")
        service_map = (xray.render_service_map(xray.service_map(
            xray.read_segments(traces["file"]))) if traces["collected"]
            else "(segments went to AWS_XRAY_DAEMON_ADDRESS; no service map here)")
        print(f"\n{text}\n\nX-Ray service map:\n{service_map}")
        report = write_report(Path(args.reports) / time.strftime("%Y%m%d-%H%M%S"), check,
                              tally, replicas, args.overlay, service_map, text)
        print(f"\nreport: {report}/demo.txt (and demo.json)")
    finally:
        if not args.keep:
            cli.main(["down"])
    return 0 if check.consistent else 1
