"""Drive canarylab through user-management and check the v1/v2 split that comes back.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8095 \\
        -u 8 -r 8 -t 20s --expect 75/25 --report-dir reports/locust

Or just `locust --config loadtest/locust.conf`. What it does:

- ``CanaryUser`` sends a realistic mix: mostly the canary endpoint
  (GET /usermgmt/notification-xray), plus the user CRUD calls and the other two
  notification endpoints. Each user deletes the users it created when it stops.
- Every response that reached notification names who answered it
  (X-Notification-Version / X-Notification-Pod). The stats entry is renamed per
  version, "/usermgmt/notification-xray [v2]", so the stats table and the CSV show
  one row per version per endpoint, and that survives distributed runs because
  Locust merges stats by name.
- The canary endpoint's answers are also counted per version, per pod and per
  2-second window (``SplitCounts``). In a distributed run each worker sends its
  counts to the master with its regular stats report; the master adds them up.
- When Locust quits, the master (or the single process of a local run) hands the
  counts to ``loadtest.verifier.verify``, prints the verdict, writes verdict.json
  into ``--report-dir`` and sets the exit code: 0 verified, 1 mismatch or an
  unhealthy canary endpoint, 2 inconclusive (too few answers to tell).
- ``--replicas 3/1`` declares the pod counts instead of a percentage: the split
  follows from them, and the per-pod check also notices a pod that never
  answered. ``--max-requests N`` ends the run after N canary-endpoint calls
  (``-t`` stays the ceiling), so a run can stop as soon as the plan is reached.
- ``--analysis [FILE]`` also judges the canary against the baseline from the same
  answers: error rates and latency per version (loadtest/analysis.py, settings in
  loadtest/analysis.yaml or FILE). Its decision, promote / hold / rollback, joins
  the exit code (rollback 1, hold 2) and the reports.
- ``--sequential`` looks at the counts every second with the verifier's
  anytime-valid ``SequentialVerifier`` and ends the run at its first decision:
  a grossly wrong split is caught after a fraction of the plan, and looking all
  the time does not raise the error rates (loadtest/verifier.py, part 4).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, tag, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from loadtest import analysis as canary_analysis
from loadtest import webui  # noqa: F401 (the web UI's "Canary split" tab, loadtest/webui.py)
from loadtest.analysis_report import analysis_html
from loadtest.junit import analysis_junit, junit_document, verdict_junit
from loadtest.report import write_html
from loadtest.verifier import Expectation, SequentialVerifier, render, verify, worst_exit_code

log = logging.getLogger("canarylab.locust")

CANARY_PATH = "/usermgmt/notification-xray"
WINDOW_SECONDS = 2  # per-window counts feed the verifier's stickiness check
MAX_ERROR_RATE = 0.01  # more failed canary-endpoint calls than this fails the run
NO_VERSION = "no version"  # the stats label of an answer that names no version
REPORT_KEY = "canarylab_split"  # our key in the worker -> master stats message
LOOK_SECONDS = 1.0  # how often --sequential looks at the counts
MAX_SAMPLES = 20_000  # latencies kept per version for the canary analysis (a reservoir)


class Reservoir:
    """A uniform random sample of at most ``size`` of the values added so far.

    Algorithm R (Vitter 1985, "Random sampling with a reservoir", ACM TOMS 11:37):
    the n-th value replaces a random kept one with probability size / n. Memory
    stays bounded however long Locust runs, and every value seen had the same chance
    to be kept, so the analysis's latency tests see an unbiased sample.
    """

    def __init__(self, size: int = MAX_SAMPLES) -> None:
        self.size, self.seen, self.values = size, 0, []

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value


class SplitCounts:
    """Canary-endpoint answers per version, per pod and per time window, in one process.

    Windows are keyed by wall-clock time (``int(time.time()) // WINDOW_SECONDS``),
    not by the start of the run, so the windows of different workers line up and
    the master can add them without knowing when each worker started.

    For the canary analysis it also keeps, per version, the answers that were errors
    (HTTP status not 2xx) and a reservoir of response times. A worker sends the
    latencies of one report interval (a few seconds: far fewer than MAX_SAMPLES), so
    the master sees every one of them and its own reservoir stays uniform.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.versions: Counter[str] = Counter()
        self.pods: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.windows: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.requests = 0  # every canary-endpoint call, answered by a version or not
        self.failures = 0
        self.reused = 0  # answers that came over a connection user-management kept alive
        self.errors: Counter[str] = Counter()  # per version: answers that were not 2xx
        self.latencies: defaultdict[str, Reservoir] = defaultdict(Reservoir)

    def count(self, version: str | None, pod: str | None, failed: bool,
              reused: bool = False, latency_ms: float | None = None) -> None:
        self.requests += 1
        self.failures += failed
        self.reused += reused
        if version:
            self.errors[version] += failed
            if latency_ms is not None:
                self.latencies[version].add(latency_ms)
            self.versions[version] += 1
            self.pods[version][pod or "unknown"] += 1
            self.windows[int(time.time()) // WINDOW_SECONDS][version] += 1

    def to_message(self) -> dict:
        """Plain dicts with string keys: what Locust's msgpack transport can carry."""
        return {"versions": dict(self.versions),
                "pods": {version: dict(pods) for version, pods in self.pods.items()},
                "windows": {str(window): dict(c) for window, c in self.windows.items()},
                "requests": self.requests, "failures": self.failures, "reused": self.reused,
                "errors": dict(self.errors),
                "latencies": {v: r.values for v, r in self.latencies.items()}}

    def merge(self, message: dict) -> None:
        self.versions.update(message["versions"])
        for version, pods in message["pods"].items():
            self.pods[version].update(pods)
        for window, counts in message["windows"].items():
            self.windows[int(window)].update(counts)
        self.requests += message["requests"]
        self.failures += message["failures"]
        self.reused += message["reused"]
        self.errors.update(message["errors"])
        for version, values in message["latencies"].items():
            for value in values:
                self.latencies[version].add(value)


# One per process: a worker's users count into it, the master adds up the workers'.
split = SplitCounts()


def _attribute(response, endpoint: str) -> tuple[str | None, str | None]:
    """Rename the stats entry after the version that answered; return (version, pod).

    Only for calls that reach notification: user-management relays who answered as
    X-Notification-Version / X-Notification-Pod.
    """
    headers = response.headers or {}  # None when the connection itself failed
    version, pod = headers.get("X-Notification-Version"), headers.get("X-Notification-Pod")
    response.request_meta["name"] = f"{endpoint} [{version or NO_VERSION}]"
    return version, pod


class CanaryUser(FastHttpUser):
    """One person using the app; most of what they do goes through the canary endpoint.

    FastHttpUser keeps its connection to user-management alive, which is fine: the
    split is decided one hop further, where user-management opens a new connection
    to the notification Service for every call (README, "Why user-management opens
    a NEW connection").
    """

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        # A random prefix per user: names stay unique across users, workers and runs.
        self.prefix = f"lt-{uuid.uuid4().hex[:8]}"
        self.serial = itertools.count()
        self.created: list[str] = []
        self.creating: str | None = None  # the create in flight, if any

    def on_stop(self) -> None:
        # Leave the database as we found it: delete every user this user created...
        for username in self.created:
            self._delete(username)
        self.created.clear()
        # ...and the one whose create the stop cut off: the server may still be
        # finishing it (bcrypt takes a while), so its delete is retried briefly.
        deadline = time.monotonic() + 3
        while self.creating and time.monotonic() < deadline:
            if self._delete(self.creating, missing_ok=True) == 404:
                time.sleep(0.2)  # not created yet, or never will be: look again
            else:
                self.creating = None

    def _delete(self, username: str, missing_ok: bool = False) -> int:
        with self.client.delete(f"/usermgmt/user/{username}", name="/usermgmt/user/[username]",
                                catch_response=True) as response:
            if missing_ok and response.status_code == 404:
                response.success()
            return response.status_code

    # Tags pick a part of the mix: `--tags canary` sends only the canary endpoint (the
    # fastest way to enough answers for a verdict), `--exclude-tags users` skips the
    # user calls, whose bcrypt hashing makes them the slowest calls here.
    @tag("canary")
    @task(10)
    def canary(self) -> None:
        with self.client.get(CANARY_PATH, catch_response=True) as response:
            version, pod = _attribute(response, CANARY_PATH)
            if not version:
                response.failure(f"no X-Notification-Version (HTTP {response.status_code})")
            failed = not version or not 200 <= response.status_code < 300
            reused = (response.headers or {}).get("X-Notification-Connection") == "reused"
            split.count(version, pod, failed, reused, response.request_meta["response_time"])
        _stop_at_limit(self.environment)

    @tag("notification")
    @task(1)
    def service_info(self) -> None:
        self._notification_get("/usermgmt/notification-service-info")

    @tag("notification")
    @task(1)
    def notification_health(self) -> None:
        self._notification_get("/usermgmt/notification-health-status")

    @tag("users")
    @task(1)
    def create_user(self) -> None:
        username = f"{self.prefix}-{next(self.serial)}"
        body = {"username": username, "email": f"{username}@example.com",
                "password": "Pass@1234", "firstname": "Load", "lastname": "Test",
                "role": "ROLE_USER", "enabled": True}
        self.creating = username
        with self.client.post("/usermgmt/user", json=body, catch_response=True) as response:
            _attribute(response, "/usermgmt/user")
            if response.status_code == 201:
                self.created.append(username)
        self.creating = None

    @tag("users")
    @task(2)
    def read_user(self) -> None:
        if self.created:
            self.client.get(f"/usermgmt/user/{random.choice(self.created)}",
                            name="/usermgmt/user/[username]")

    @tag("users")
    @task(1)
    def list_users(self) -> None:
        self.client.get("/usermgmt/users")

    @tag("users")
    @task(1)
    def update_user(self) -> None:
        # No new password: bcrypt would make this the slowest call of all.
        if self.created:
            self.client.put("/usermgmt/user", json={"username": random.choice(self.created),
                                                    "lastname": "Updated"})

    @tag("users")
    @task(1)
    def delete_user(self) -> None:
        if len(self.created) > 2:  # keep a few around to read and update
            self._delete(self.created.pop(0))

    def _notification_get(self, path: str) -> None:
        with self.client.get(path, catch_response=True) as response:
            _attribute(response, path)


# --------------------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument("--expect", type=str, default=os.environ.get("CANARYLAB_EXPECT", "75/25"),
                        help="declared split v1/v2, like 75/25 (default: $CANARYLAB_EXPECT, "
                             "else 75/25)")
    parser.add_argument("--margin", type=float, default=5.0,
                        help="equivalence margin in percentage points (default 5)")
    parser.add_argument("--report-dir", type=str, default="",
                        help="write verdict.json into this directory")
    parser.add_argument("--replicas", type=str, default="",
                        help="declared pods v1/v2, like 3/1: the split follows from them "
                             "(instead of --expect) and a silent pod shows in the per-pod check")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="stop after this many canary-endpoint calls (default 0: only -t "
                             "stops the run)")
    parser.add_argument("--analysis", nargs="?", const=str(canary_analysis.DEFAULT_CONFIG),
                        default=os.environ.get("CANARYLAB_ANALYSIS", ""),
                        help="also judge v2 against v1 (errors, latency): promote, hold or "
                             "rollback; optionally with an analysis file (default "
                             "loadtest/analysis.yaml)")
    parser.add_argument("--sequential", action="store_true",
                        default=os.environ.get("CANARYLAB_SEQUENTIAL", "") == "1",
                        help="look at the split every second and stop at the first decision "
                             "of the anytime-valid sequential test")


@events.init.add_listener
def _check_options(environment, **_) -> None:
    # Fail at the start, not after a whole run, when the expected split is unreadable.
    global _master
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    if isinstance(environment.runner, MasterRunner):
        _master = environment
    try:
        expectation(options)
        if options.max_requests < 0:
            raise ValueError(f"--max-requests {options.max_requests} must be 0 (no limit) or more")
        if not 0 < options.margin < 100:
            raise ValueError(f"--margin {options.margin:g} must be between 0 and 100 points")
        if options.analysis:
            canary_analysis.load_config(options.analysis)  # a bad file stops the run now
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(2)


def expectation(options) -> Expectation:
    """The split to verify: from --replicas when given (it knows the pods), else --expect."""
    if not options.replicas:
        return Expectation.parse(options.expect, source="--expect")
    parts = options.replicas.split("/")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"--replicas {options.replicas!r}: give two pod counts, v1/v2, like 3/1")
    v1, v2 = (int(part) for part in parts)
    return Expectation.from_replicas({"v1": v1, "v2": v2},
                                     source=f"--replicas {v1}/{v2}, v1/v2 pods")


_stopping = False
_master = None  # the master's Environment: worker_report, which feeds it, does not pass it
_sequential: SequentialVerifier | None = None  # with --sequential, on the counting process
_run = 0  # counts the runs (the web UI can start several): an old run's greenlet ends


def _stop_at_limit(environment) -> None:
    """End the run once --max-requests canary calls are counted, in the process that counts
    them all: a local run's, or the master's (a worker only sees its share)."""
    limit = environment.parsed_options and environment.parsed_options.max_requests
    if not limit or split.requests < limit:
        return
    if isinstance(environment.runner, WorkerRunner):
        return
    _quit(environment)


def _quit(environment) -> None:
    """End the run: headless, quit (the verdict follows at ``quitting``); under the web UI,
    stop the users and leave Locust running for the next run."""
    global _stopping
    if not _stopping:
        _stopping = True
        end = environment.runner.stop if environment.web_ui else environment.runner.quit
        # In a greenlet of its own: it stops every user, maybe the caller among them.
        gevent.spawn(end)


@events.test_start.add_listener
def _start_looking(environment, **_) -> None:
    """A new run (the web UI can start several): not stopping yet; with --sequential, look
    at the counts every second on the counting process."""
    global _sequential, _stopping, _run
    _stopping, _sequential, _run = False, None, _run + 1
    options = environment.parsed_options
    if options is None or not options.sequential or isinstance(environment.runner,
                                                               WorkerRunner):
        return
    _sequential = SequentialVerifier(expectation(options), margin=options.margin / 100)
    gevent.spawn(_look, environment, _run)


def _look(environment, run: int) -> None:
    """Look every second while this run lasts; ``_sequential`` may be replaced meanwhile
    (counts reset: a new test from zero), so it is read again at every look."""
    while run == _run and not _stopping:
        gevent.sleep(LOOK_SECONDS)
        checker = _sequential
        if run != _run or checker is None or checker.decision is not None:
            continue
        look = checker.update(dict(split.versions))
        if look.status != "inconclusive":
            print(f"sequential check: {look.status} after {look.n} answers "
                  f"(the fixed plan is {look.planned_n}); stopping the run", flush=True)
            _quit(environment)


# --------------------------------------------------------------------------- distributed runs


@events.report_to_master.add_listener
def _send_counts(client_id, data, **_) -> None:
    # Like Locust's own stats: send what was counted since the last report, then
    # start again from zero, so the master can simply add every report up.
    data[REPORT_KEY] = split.to_message()
    split.reset()


@events.worker_report.add_listener
def _receive_counts(client_id, data, **_) -> None:
    if REPORT_KEY in data:
        split.merge(data[REPORT_KEY])
        if _master is not None:  # the master's counts grow here: check the limit here
            _stop_at_limit(_master)


@events.reset_stats.add_listener
def _reset_counts(**_) -> None:
    global _sequential
    split.reset()
    if _sequential is not None:  # the counts start again from zero, so does the test
        _sequential = SequentialVerifier(_sequential.expectation, margin=_sequential.margin)


# --------------------------------------------------------------------------- the verdict


def version_samples(expected: Expectation) -> tuple[canary_analysis.VersionSample, ...]:
    """(baseline, canary) as the analysis takes them, from what ``split`` counted."""
    return tuple(canary_analysis.VersionSample(
        version, requests=split.versions[version], errors=split.errors[version],
        latencies_ms=split.latencies[version].values)
        for version in (expected.baseline, expected.canary))


@events.quitting.add_listener
def _verdict(environment, **_) -> None:
    """Verify the split on the process that holds all the counts: the master, or a local run.

    ``quitting`` rather than ``test_stop``: on a master the workers' last reports
    (sent when they quit) arrive after ``test_stop``.
    """
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    expected = expectation(options)
    windows = [dict(split.windows[w]) for w in sorted(split.windows)]
    verdict = verify(dict(split.versions), expected, margin=options.margin / 100,
                     pods={v: dict(p) for v, p in split.pods.items()}, windows=windows,
                     sequential=_sequential if options.sequential else None,
                     reused=split.reused)
    analysis = samples = None
    failures = split.failures
    if options.analysis:
        # The analysis weighs each version's errors against the other's, so the blunt
        # limit is left for the calls that named no version: nobody's errors to weigh.
        failures -= sum(split.errors.values())
        samples = version_samples(expected)
        analysis = canary_analysis.analyze(*samples,
                                           canary_analysis.load_config(options.analysis))
    error_rate = failures / split.requests if split.requests else 0.0
    healthy = error_rate <= MAX_ERROR_RATE
    exit_code = verdict.exit_code if healthy else 1
    if analysis is not None:
        exit_code = worst_exit_code(exit_code, analysis.exit_code)

    print(render(verdict))
    if analysis is not None:
        print(f"\n{canary_analysis.render(analysis)}")
    failed = "calls named no version" if analysis is not None else "failed"
    print(f"\ncanary endpoint: {split.requests} calls, {failures} {failed} "
          f"({100 * error_rate:.2f}%, limit {100 * MAX_ERROR_RATE:g}%): "
          f"{'healthy' if healthy else 'UNHEALTHY'}; exit code {exit_code}")
    if options.report_dir:
        report = {**verdict.to_dict(),
                  "analysis": analysis.to_dict() if analysis else None,
                  "health": {"requests": split.requests, "failures": failures,
                             "error_rate": error_rate, "max_error_rate": MAX_ERROR_RATE,
                             "healthy": healthy},
                  "window_seconds": WINDOW_SECONDS, "windows": windows,
                  "process_exit_code": exit_code}
        path = Path(options.report_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "verdict.json").write_text(json.dumps(report, indent=2) + "\n")
        health = (healthy, f"{failures} of {split.requests} canary calls {failed} "
                           f"({100 * error_rate:.2f}%, limit {100 * MAX_ERROR_RATE:g}%)")
        suites = [verdict_junit(verdict, health)]
        if analysis is not None:
            suites.append(analysis_junit(analysis))
        (path / "junit.xml").write_text(junit_document(*suites))
        latency = {entry.name[len(CANARY_PATH) + 2:-1]:
                   {f"{100 * q:g}": entry.get_response_time_percentile(q)
                    for q in (0.5, 0.95, 0.99)}
                   for entry in environment.stats.entries.values()
                   if entry.name.startswith(f"{CANARY_PATH} [") and entry.num_requests
                   and entry.name != f"{CANARY_PATH} [{NO_VERSION}]"}
        sections = [analysis_html(analysis, *samples)] if analysis else []
        write_html(path / "report.html", verdict.to_dict(), windows, WINDOW_SECONDS, latency,
                   sections)
    environment.process_exit_code = exit_code

    if options.csv_prefix:
        # Locust's CSV writer rewrites the files once a second and does not write again
        # when it closes them; give it one more pass so that the CSV and verdict.json
        # describe the same requests (a master's last worker reports arrive late).
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)

