"""Overlays that patch the pod spec: probes, and a configMap volume.

The overlay is k8s/overlays/75-25 with:

- notification-v2's readiness probe pointed at a path that answers 404: its
  process runs and stays alive, but it must never get traffic;
- user-management's liveness probe pointed there too: it is ready until the
  probe has failed failureThreshold times, and then its process is restarted;
- user-management given a configMap volume on /etc/canarylab and a setting that
  names a file in it, as a container would read its config.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster_fixtures import (
    OVERLAYS,
    LocalCluster,
    environ,
    get_many,
    pods_of,
    service,
    wait_for,
)

PATCHES = """\
resources:
  - {base}
patches:
  - target: {{kind: Deployment, name: notification-v2}}
    patch: |
      - op: replace
        path: /spec/template/spec/containers/0/readinessProbe/httpGet/path
        value: /notification/no-such-path
  - target: {{kind: Deployment, name: user-management}}
    patch: |
      - op: replace
        path: /spec/template/spec/containers/0/livenessProbe/httpGet/path
        value: /usermgmt/no-such-path
      - op: add
        path: /spec/template/spec/volumes/-
        value: {{name: config, configMap: {{name: user-management-config}}}}
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/-
        value: {{name: config, mountPath: /etc/canarylab}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: WORKERS_FILE, value: /etc/canarylab/GUNICORN_WORKERS}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    overlay = tmp_path_factory.mktemp("patched-overlay")
    base = os.path.relpath(OVERLAYS / "75-25", overlay)
    (overlay / "kustomization.yaml").write_text(PATCHES.format(base=base))
    cluster = LocalCluster(tmp_path_factory.mktemp("canarylab-home"))
    cluster.up_result = cluster.run("up", str(overlay), "--timeout", "8")
    yield cluster
    cluster.down()


def test_up_names_the_pod_that_never_became_ready(cluster):
    assert cluster.up_result.returncode == 1
    v2 = pods_of(cluster.status(), "notification-v2")[0]
    assert "not ready: " in cluster.up_result.stderr
    assert v2["name"] in cluster.up_result.stderr.split("not ready: ")[1]


def test_unready_pod_runs_but_gets_no_traffic(cluster):
    status = cluster.status()
    v2 = pods_of(status, "notification-v2")[0]
    assert v2["status"] == "Running" and not v2["ready"] and v2["restarts"] == 0
    notification = service(status, "notification-clusterip-service")
    assert f"{v2['ip']}:8096" not in notification["endpoints"]
    assert len(notification["endpoints"]) == 3
    answers = get_many(notification["address"], "/notification/info", count=300, seconds=20)
    assert len(answers) == 300 and all(code == 200 for code, _ in answers)
    assert {headers["X-Service-Version"] for _, headers in answers} == {"v1"}


def test_failing_liveness_probe_restarts_the_process(cluster):
    def restarted():
        pod = pods_of(cluster.status(), "user-management")[0]
        return pod if pod["restarts"] >= 1 else None
    pod = wait_for(restarted, timeout=30, interval=0.2)
    assert pod["name"] in cluster.supervisor_log()
    assert "failed its liveness probe 3 times" in cluster.supervisor_log()


def test_configmap_volume_files_are_where_the_setting_points(cluster):
    def pod_and_env():
        pod = pods_of(cluster.status(), "user-management")[0]
        try:
            return pod, environ(pod["pid"])
        except OSError:  # between two restarts: no process, or it just exited
            return None
    pod, env = wait_for(pod_and_env, timeout=15)
    # The ConfigMap's keys are files of the volume, and the path is rewritten into it.
    assert env["WORKERS_FILE"].startswith(str(cluster.home.resolve() / "pods" / pod["name"]))
    assert Path(env["WORKERS_FILE"]).read_text() == "2"
