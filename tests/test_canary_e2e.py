"""The canary analysis end to end: fault scenarios, `analyze` through Locust, `rollout`.

Every test runs `canarylab` as a user does, against a local cluster of its own
whose v2 pods carry a fault from k8s/components/faults (or none). What must come
out: a canary that fails 5% of its calls or adds 200 ms is rolled back, a healthy
one is promoted step by step, and too little data is "not enough data", never a
verdict either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_fixtures import OVERLAYS, LocalCluster

from canarylab.demo import scenario_overlay


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(tmp_path / "home")
    yield cluster
    cluster.down()


def report_of(reports: Path, name: str) -> dict:
    found = sorted(reports.glob(f"*/{name}"))
    assert found, f"no {name} under {reports}"
    return json.loads(found[-1].read_text())


def test_a_canary_that_fails_five_percent_of_its_calls_is_caught_and_rolled_back(
        cluster, tmp_path):
    result = cluster.run("demo", "--scenario", "errors", "--reports", str(tmp_path),
                         "--requests", "3000", timeout=120)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Canary analysis: ROLLBACK (exit 1)" in result.stdout
    assert "rolling back: every notification call to v1" in result.stdout
    assert "deployment.apps/notification-v2 scaled to 0" in result.stdout
    report = report_of(tmp_path, "verdict.json")
    failed = {c["name"] for c in report["analysis"]["checks"] if c["status"] == "fail"}
    assert "error rate v2 vs v1" in failed
    assert report["calls"]["errors"]["v2"] > 0 and report["calls"]["errors"].get("v1", 0) == 0
    html = next(tmp_path.glob("*/report.html")).read_text()
    assert "ROLLBACK" in html.upper() and "error rate v2 vs v1" in html
    junit = next(tmp_path.glob("*/junit.xml")).read_text()
    assert "<testsuites>" in junit and 'name="canary analysis"' in junit


def test_a_canary_that_adds_200_ms_is_rolled_back(cluster, tmp_path):
    result = cluster.run("demo", "--scenario", "slow", "--reports", str(tmp_path),
                         "--requests", "600", "--concurrency", "8", timeout=120)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Canary analysis: ROLLBACK (exit 1)" in result.stdout
    checks = {c["name"]: c["status"]
              for c in report_of(tmp_path, "verdict.json")["analysis"]["checks"]}
    assert checks["latency v2 vs v1 (Mann-Whitney)"] == "fail"


def test_too_few_calls_is_not_enough_data_never_a_verdict(cluster, tmp_path):
    result = cluster.run("demo", "--scenario", "healthy", "--reports", str(tmp_path),
                         "--requests", "120", timeout=120)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Canary analysis: HOLD (exit 2)" in result.stdout
    analysis = report_of(tmp_path, "verdict.json")["analysis"]
    assert analysis["decision"] == "hold"
    assert all(c["status"] == "not enough data" for c in analysis["checks"])


def test_analyze_runs_locust_and_its_exit_code_is_the_rollback(cluster, tmp_path):
    overlay = scenario_overlay(str(OVERLAYS / "75-25"), "errors", tmp_path / "overlay")
    cluster.ok("up", str(overlay))
    result = cluster.run("analyze", "--reports", str(tmp_path / "reports"),
                         "--max-requests", "2000", timeout=120)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verifying and analysing 75/25" in result.stdout
    assert "Canary analysis: ROLLBACK" in result.stdout
    report = report_of(tmp_path / "reports", "verdict.json")
    assert report["status"] == "verified"  # the split is fine: the canary is not
    assert report["analysis"]["decision"] == "rollback"
    assert report["process_exit_code"] == 1


def test_analyze_refuses_a_bad_analysis_file_in_one_line(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 2\n")
    result = cluster.run("analyze", "--analysis", str(bad), "--host", "http://127.0.0.1:9",
                         "--expect", "75/25")
    assert result.returncode == 2
    assert "alpha" in result.stderr and "Traceback" not in result.stderr


def test_a_rollout_of_a_bad_canary_ends_at_100_0(cluster, tmp_path):
    result = cluster.run("rollout", "--scenario", "errors", "--reports", str(tmp_path),
                         "--keep", timeout=180)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rollout ROLLED BACK" in result.stdout
    desired = {d["name"]: d["desired"] for d in cluster.status()["deployments"]}
    assert desired["notification-v1"] == 4 and desired["notification-v2"] == 0
    rollout = report_of(tmp_path, "rollout.json")
    assert rollout["outcome"] == "rolled back"
    assert rollout["timeline"][-1]["decision"] == "rollback"


def test_a_rollout_of_a_healthy_canary_ends_at_0_100(cluster, tmp_path):
    # Two steps keep the test short; the default four run the same code.
    result = cluster.run("rollout", "--scenario", "healthy", "--steps", "50,100", "--reports",
                         str(tmp_path), "--keep", timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "rollout PROMOTED" in result.stdout
    desired = {d["name"]: d["desired"] for d in cluster.status()["deployments"]}
    assert desired["notification-v1"] == 0 and desired["notification-v2"] == 4
    rollout = report_of(tmp_path, "rollout.json")
    assert [step["percent"] for step in rollout["timeline"]] == [50, 100]
    assert all(step["decision"] == "promote" for step in rollout["timeline"])
    # The last step judges v2's gates alone: the comparisons have no v1 left.
    assert {c["kind"] for c in rollout["timeline"][-1]["analysis"]["checks"]} == {"gate"}
    html = next(tmp_path.glob("*/rollout.html")).read_text()
    assert "Timeline" in html and html.count("PROMOTE") >= 2


def test_a_canary_slower_only_in_its_tail_is_held_with_the_sample_size_that_would_tell(
        cluster, tmp_path):
    # 20 ms more on 2% of v2's calls: its p99 moves, its median does not. On a few
    # thousand calls that is neither shown nor ruled out, and the analysis says so.
    result = cluster.run("demo", "--scenario", "subtle", "--reports", str(tmp_path),
                         "--requests", "4000", timeout=120)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Canary analysis: HOLD (exit 2)" in result.stdout
    analysis = report_of(tmp_path, "verdict.json")["analysis"]
    tail = next(c for c in analysis["checks"] if c["name"].startswith("p99 v2 vs v1"))
    assert tail["status"] == "not enough data" and tail["needed"]["v2"] > 1000
    assert "would settle" in result.stdout
