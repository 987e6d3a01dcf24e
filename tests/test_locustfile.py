"""The Locust suite, run as a user runs it: real `locust` processes against a real cluster.

One local cluster from k8s/overlays/75-25 serves the whole module. The verdict runs
send only the canary endpoint (`--tags canary`) with 32 users: about 200 calls/s
here, so 8 seconds give roughly twice the 817 answers the verifier's plan asks for
on 75/25 +-5 points, and a correct split verifies with room to spare.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
from cluster_fixtures import OVERLAYS, LocalCluster, get

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
CANARY = "/usermgmt/notification-xray"
VERDICT_RUN = ["--tags", "canary", "-u", "32", "-r", "32", "-t", "8s"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("canarylab-home"))
    cluster.ok("up", str(OVERLAYS / "75-25"))
    status = cluster.status()
    # Locust's --host is user-management's address; the paths carry /usermgmt.
    cluster.host = status["usermgmt_url"].removesuffix("/usermgmt")
    yield cluster
    cluster.down()


class Run:
    """One finished `locust` process: its exit code, output, verdict.json and stats CSV."""

    def __init__(self, result: subprocess.CompletedProcess, folder: Path, seconds: float):
        self.returncode, self.seconds, self.folder = result.returncode, seconds, folder
        self.output = result.stdout + result.stderr
        verdict = folder / "verdict.json"
        self.verdict = json.loads(verdict.read_text()) if verdict.exists() else None
        junit = folder / "junit.xml"
        self.junit = ElementTree.parse(junit).getroot() if junit.exists() else None
        stats = folder / "stats_stats.csv"
        self.rows = []
        if stats.exists():
            with stats.open(newline="") as rows:
                self.rows = list(csv.DictReader(rows))

    def requests(self, name: str) -> int:
        return sum(int(row["Request Count"]) for row in self.rows if row["Name"] == name)


def run_locust(host: str, folder: Path, *args: str, timeout: float = 60) -> Run:
    """Plain headless `locust -f loadtest/locustfile.py`, as the README shows it."""
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--only-summary", "--report-dir", str(folder), "--csv", str(folder / "stats"),
               *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            check=False, cwd=folder.parent)
    return Run(result, folder, time.monotonic() - started)


@pytest.fixture(scope="module")
def run_75_25(cluster, tmp_path_factory):
    return run_locust(cluster.host, tmp_path_factory.mktemp("run-75-25"), *VERDICT_RUN,
                      "--expect", "75/25")


def test_a_75_25_cluster_verifies_against_75_25(run_75_25):
    assert run_75_25.returncode == 0, run_75_25.output[-3000:]
    verdict = run_75_25.verdict
    assert verdict["status"] == "verified"
    assert verdict["n"] >= verdict["planned_n"]
    assert verdict["health"]["healthy"] and verdict["health"]["failures"] == 0
    # Every pod of the overlay answered: 3 of v1, 1 of v2.
    assert {f["version"]: len(f["pods"]) for f in verdict["pods"]} == {"v1": 3, "v2": 1}
    assert "Split check: VERIFIED (exit 0)" in run_75_25.output
    # The HTML report: the share over time, the pods, and latency per version from
    # Locust's own per-version stats rows.
    report = run_75_25.folder.joinpath("report.html").read_text()
    assert report.count("<svg") == 3 and "VERIFIED" in report
    # The same verdict for a CI page: every check a passing JUnit test case.
    assert run_75_25.junit.get("failures") == "0" and int(run_75_25.junit.get("tests")) >= 5


def test_the_stats_csv_has_one_canary_row_per_version(run_75_25):
    names = {row["Name"] for row in run_75_25.rows}
    assert {f"{CANARY} [v1]", f"{CANARY} [v2]"} <= names
    assert f"{CANARY} [no version]" not in names
    counts = run_75_25.verdict["counts"]
    assert run_75_25.requests(f"{CANARY} [v1]") == counts["v1"]
    assert run_75_25.requests(f"{CANARY} [v2]") == counts["v2"]


def test_a_75_25_cluster_is_a_mismatch_against_50_50(cluster, tmp_path):
    run = run_locust(cluster.host, tmp_path / "run", "--tags", "canary", "-u", "16", "-r", "16",
                     "-t", "4s", "--expect", "50/50")
    assert run.returncode == 1, run.output[-3000:]
    assert run.verdict["status"] == "mismatch"
    assert run.verdict["expected"] == "50/50"
    failed = [case.get("name") for case in run.junit.iter("testcase")
              if case.find("failure") is not None]
    assert "sample-ratio mismatch" in failed


def test_two_worker_processes_count_every_canary_answer_once(cluster, tmp_path):
    run = run_locust(cluster.host, tmp_path / "run", *VERDICT_RUN, "--processes", "2",
                     "--expect", "75/25")
    assert run.returncode == 0, run.output[-3000:]
    assert run.verdict["status"] == "verified"
    # The master's verdict holds what both workers counted, no more and no less.
    in_csv = run.requests(f"{CANARY} [v1]") + run.requests(f"{CANARY} [v2]")
    assert run.verdict["n"] == in_csv == run.verdict["health"]["requests"]
    assert sum(sum(window.values()) for window in run.verdict["windows"]) == in_csv


def test_the_full_mix_renames_each_notification_call_and_cleans_up_its_users(cluster,
                                                                              tmp_path):
    run = run_locust(cluster.host, tmp_path / "run", "-u", "8", "-r", "8", "-t", "5s")
    # 5 s of the whole mix is too few canary answers for a verdict: inconclusive.
    assert run.returncode == 2, run.output[-3000:]
    names = {row["Name"] for row in run.rows}
    for endpoint in (CANARY, "/usermgmt/notification-service-info", "/usermgmt/user"):
        assert names & {f"{endpoint} [v1]", f"{endpoint} [v2]"}, (endpoint, names)
    assert run.requests("/usermgmt/users") > 0
    failed = [row for row in run.rows if row["Name"] != "Aggregated" and int(row["Failure Count"])]
    assert not failed, (failed, run.output[-3000:])
    # on_stop deleted every user the run created.
    address = cluster.host.removeprefix("http://")
    status, _headers, body = get(address, "/usermgmt/users")
    assert status == 200 and json.loads(body)["count"] == 0


def test_a_canary_endpoint_without_a_version_header_fails_the_run(cluster, tmp_path):
    # notification's own address answers /usermgmt/... with a 404 and no
    # X-Notification-Version: every canary call is a failure, the run exit 1.
    notification = next(s for s in cluster.status()["services"]
                        if s["name"] == "notification-clusterip-service")
    host = f"http://{notification['address']}"
    run = run_locust(host, tmp_path / "run", "--tags", "canary", "-u", "2", "-r", "2", "-t", "2s")
    assert run.returncode == 1, run.output[-3000:]
    assert run.verdict["health"]["healthy"] is False
    assert f"{CANARY} [no version]" in {row["Name"] for row in run.rows}


def test_an_unreadable_expected_split_stops_locust_before_it_starts(cluster, tmp_path):
    run = run_locust(cluster.host, tmp_path / "run", "-t", "5s", "--expect", "70/20", timeout=20)
    assert run.returncode == 2
    assert "adds up to 90, not 100" in run.output
    assert run.verdict is None
