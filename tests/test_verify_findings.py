"""`canarylab verify` explains a split that looks wrong: sticky connections, an unready pod.

Each test brings up its own local cluster from a small overlay written here on
top of k8s/overlays/75-25, changes one thing the way a user could on a real
cluster, and checks that the verdict names the cause.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cluster_fixtures import OVERLAYS, LocalCluster, wait_for

from loadtest.verifier import plan_requests

CALLS = str(plan_requests(0.25))  # the plan: enough to see either problem clearly


def overlay(folder: Path, extra: str) -> Path:
    """A kustomization in ``folder``: k8s/overlays/75-25 plus ``extra``."""
    folder.mkdir(parents=True)
    base = os.path.relpath(OVERLAYS / "75-25", folder)  # kustomize takes relative paths only
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n{extra}")
    return folder


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(tmp_path / "home")
    yield cluster
    cluster.down()


def verify(cluster: LocalCluster, reports: Path, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                      dict]:
    result = cluster.run("verify", "--reports", str(reports), "--max-requests", CALLS, *args,
                         timeout=90)
    found = sorted(reports.glob("*/verdict.json"))
    assert found, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(found[-1].read_text())


def test_keep_alive_in_user_management_is_reported_as_sticky_traffic(cluster, tmp_path):
    # The change a user might make: user-management keeps its connections to the
    # notification Service alive, and notification (threaded workers) keeps them open.
    cluster.ok("up", str(overlay(tmp_path / "keepalive", """configMapGenerator:
  - name: user-management-config
    behavior: merge
    literals: [NOTIFICATION_KEEPALIVE=true]
  - name: notification-config
    behavior: merge
    literals: [GUNICORN_THREADS=2]
""")))
    result, verdict = verify(cluster, tmp_path / "reports")
    # Two user-management workers, two pinned connections: not the declared split.
    assert result.returncode == 1, result.stdout[-3000:]
    assert verdict["stickiness"]["sticky"]
    assert "kept alive (X-Notification-Connection: reused): traffic is sticky" in result.stdout
    assert "Set NOTIFICATION_KEEPALIVE=false" in result.stdout


def test_an_unready_v1_pod_shows_in_the_per_pod_check(cluster, tmp_path):
    # Without a liveness probe the kubelet leaves a hung pod alone: it stays, unready,
    # out of the Service's endpoints. (With one it would be restarted after 3 failures.)
    cluster.ok("up", str(overlay(tmp_path / "no-liveness", """patches:
  - target: {kind: Deployment, name: notification-v1}
    patch: |-
      - op: remove
        path: /spec/template/spec/containers/0/livenessProbe
""")))
    victim = next(p for p in cluster.status()["pods"] if p["deployment"] == "notification-v1")
    hung = [victim["pid"], *children(victim["pid"])]  # the gunicorn master and its worker
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not pod(cluster, victim["name"])["ready"], timeout=20,
                 what=f"{victim['name']} to fail its readiness probe")
        result, verdict = verify(cluster, tmp_path / "reports")
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
    assert "notification-v1 has 2/3 pods ready" in result.stderr
    assert result.returncode == 1, result.stdout[-3000:]
    v1 = next(f for f in verdict["pods"] if f["version"] == "v1")
    assert v1["problem"] and "(silent pod 1)" in v1["pods"] and v1["pods"]["(silent pod 1)"] == 0
    assert victim["name"] not in v1["pods"]
    assert "3 replicas are declared but only 2 pods answered" in result.stdout
    assert "not ready, or missing from the Service's endpoints" in result.stdout


def pod(cluster: LocalCluster, name: str) -> dict:
    return next(p for p in cluster.status()["pods"] if p["name"] == name)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]
