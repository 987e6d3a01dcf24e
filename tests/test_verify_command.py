"""`canarylab plan` and `canarylab verify`, run as a user runs them, against a real 75-25 cluster.

One local cluster serves the module. `verify` stops at 1.3x the plan by default,
where a correct split verifies in about 96% of runs: fine for a person, a flaky
test twice in a file. The runs that must verify send twice the plan (1,634 calls
for 75/25, power 0.997, about 7 s here); the mismatch run sends fewer, since a 25%
canary declared 50/50 is caught long before its plan.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import FAKE_KUBECTL, OVERLAYS, LocalCluster, deployment

from loadtest.verifier import plan_requests

TWICE_THE_PLAN = ["--max-requests", str(2 * plan_requests(0.25))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("canarylab-home"))
    cluster.ok("up", str(OVERLAYS / "75-25"))
    cluster.host = cluster.status()["usermgmt_url"].removesuffix("/usermgmt")
    yield cluster
    cluster.down()


def verify(cluster: LocalCluster, reports: Path, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                      dict | None]:
    """`canarylab verify ARGS --reports REPORTS`: the result and its verdict.json, if any."""
    result = cluster.run("verify", "--reports", str(reports), *args, timeout=60)
    found = sorted(reports.glob("*/verdict.json"))
    return result, json.loads(found[-1].read_text()) if found else None


def test_plan_says_how_many_requests_a_75_25_check_needs(tmp_path):
    result = LocalCluster(tmp_path).run("plan", "--expect", "75/25")
    assert result.returncode == 0, result.stderr
    assert f"{plan_requests(0.25)} requests to tell a 75/25 split from one 5 points off" \
        in result.stdout


def test_plan_refuses_a_split_that_does_not_add_up(tmp_path):
    result = LocalCluster(tmp_path).run("plan", "--expect", "70/20")
    assert result.returncode == 2
    assert "adds up to 90, not 100" in result.stderr


def test_verify_reads_the_split_from_the_live_cluster_and_verifies_it(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, *TWICE_THE_PLAN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verifying 75/25 (the live cluster's replicas, v1 3 / v2 1)" in result.stdout
    assert "Split check: VERIFIED (exit 0)" in result.stdout
    assert verdict["status"] == "verified" and verdict["expected"] == "75/25"
    assert verdict["n"] >= verdict["planned_n"]
    # --max-requests stopped it, not the 30 s ceiling (calls in flight may add a few).
    assert 2 * verdict["planned_n"] <= verdict["health"]["requests"] < 2 * verdict["planned_n"] + 64
    # The replica counts reached the per-pod check: 3 v1 pods, 1 v2 pod.
    assert {f["version"]: len(f["pods"]) for f in verdict["pods"]} == {"v1": 3, "v2": 1}
    assert f"report: {tmp_path}" in result.stdout


def test_verify_against_a_wrong_split_is_a_mismatch_that_says_why(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, "--expect", "50/50", "--max-requests", "400")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert verdict["status"] == "mismatch"
    assert "Split check: MISMATCH (exit 1)" in result.stdout
    # The verdict's reason, in words: what v2 got, and what 50/50 gives it.
    assert "where 50/50 (--expect) gives it 50.0%" in result.stdout


def test_verify_with_host_checks_that_url_against_the_named_split(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, "--host", cluster.host, "--expect", "75/25",
                             *TWICE_THE_PLAN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert verdict["status"] == "verified" and verdict["source"] == "--expect"


def test_verify_with_context_reads_a_real_clusters_replicas_through_kubectl(cluster, tmp_path):
    # No real cluster here: a fake kubectl answers `get` with Deployments of 3 and 1 pods,
    # and the calls go to the local cluster's user-management, standing in for the real
    # one's ingress or port-forward.
    fake = tmp_path / "kubectl"
    fake.mkdir()
    (fake / "kubectl").write_text(FAKE_KUBECTL.format(python=sys.executable))
    (fake / "kubectl").chmod(0o755 | stat.S_IXUSR)
    (fake / "mode").write_text("ok")
    (fake / "objects.json").write_text(json.dumps({"kind": "List", "items": [
        deployment("notification-v1", "v1", 3, 3), deployment("notification-v2", "v2", 1, 1)]}))
    env = dict(cluster.env, CANARYLAB_KUBECTL=str(fake / "kubectl"))
    result = subprocess.run([sys.executable, "-m", "canarylab", "verify", "--context", "kind-x",
                             "--host", cluster.host, "--reports", str(tmp_path / "reports"),
                             *TWICE_THE_PLAN], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verifying 75/25 (context kind-x's replicas, v1 3 / v2 1)" in result.stdout
    assert json.loads((fake / "calls.jsonl").read_text().splitlines()[0]) == [
        "--context", "kind-x", "get", "deploy,pods,svc", "-o", "json"]


def test_verify_with_context_needs_the_host_to_reach(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, "--context", "kind-x")
    assert result.returncode == 2 and verdict is None
    assert "also give --host" in result.stderr


def test_verify_with_host_needs_a_named_split(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, "--host", cluster.host)
    assert result.returncode == 2
    assert "--expect auto reads the split from the LOCAL cluster" in result.stderr
    assert verdict is None


def test_sequential_verify_stops_a_wrong_split_early(cluster, tmp_path):
    # Declared 50/50, really 75/25: the sequential test sees it long before the plan
    # (1,092 for 50/50) and ends the run there, without the ceiling being reached.
    result, verdict = verify(cluster, tmp_path, "--expect", "50/50", "--sequential")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sequential check: mismatch after" in result.stdout
    assert verdict["status"] == "mismatch" and verdict["sequential"]["status"] == "mismatch"
    assert verdict["n"] < verdict["planned_n"] / 2
    assert "evidence against the declared split" in verdict["reasons"][0]


def test_sequential_verify_verifies_a_correct_split(cluster, tmp_path):
    result, verdict = verify(cluster, tmp_path, "--sequential")
    # A correct split verifies in >= 99.9% of sequential runs before the 3x ceiling.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sequential check: verified after" in result.stdout
    assert verdict["sequential"]["status"] == "verified"
    assert {f["version"]: len(f["pods"]) for f in verdict["pods"]} == {"v1": 3, "v2": 1}
