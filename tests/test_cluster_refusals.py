"""`canarylab up` refuses, by name, what the local cluster does not emulate.

Each case is k8s/overlays/75-25 plus one kustomize patch; none may start anything.
"""

from __future__ import annotations

import os

import pytest
from cluster_fixtures import OVERLAYS, LocalCluster

V2 = "{kind: Deployment, name: notification-v2}"
CASES = {
    "matchExpressions": (V2, """
      - op: add
        path: /spec/selector/matchExpressions
        value: [{key: tier, operator: In, values: [web]}]""",
                         "Deployment/notification-v2: spec.selector.matchExpressions"),
    "hostNetwork": (V2, """
      - op: add
        path: /spec/template/spec/hostNetwork
        value: true""", "Deployment/notification-v2: spec.template.spec.hostNetwork"),
    "hostPath volume": (V2, """
      - op: add
        path: /spec/template/spec/volumes/-
        value: {name: host, hostPath: {path: /var/log}}""",
                        "spec.template.spec.volumes[1].hostPath"),
    "exec probe": (V2, """
      - op: replace
        path: /spec/template/spec/containers/0/livenessProbe
        value: {exec: {command: [cat, /tmp/healthy]}}""", "livenessProbe"),
    "unknown image tag": (V2, """
      - op: replace
        path: /spec/template/spec/containers/0/image
        value: canarylab/notification-v2:9.9.9""",
                          "this working tree builds tag 4.0.0"),
    "Service sessionAffinity": ("{kind: Service, name: notification-clusterip-service}", """
      - op: add
        path: /spec/sessionAffinity
        value: ClientIP""", "Service/notification-clusterip-service: spec.sessionAffinity"),
}
EXTRA_KIND = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""


def overlay(directory, patch_target: str | None = None, patch: str | None = None,
            extra: str | None = None):
    base = os.path.relpath(OVERLAYS / "75-25", directory)
    text = f"resources:\n  - {base}\n"
    if extra:
        (directory / "extra.yaml").write_text(extra)
        text += "  - extra.yaml\n"
    if patch:
        text += f"patches:\n  - target: {patch_target}\n    patch: |{patch}\n"
    (directory / "kustomization.yaml").write_text(text)
    return directory


@pytest.fixture
def cluster(tmp_path):
    return LocalCluster(tmp_path / "home")


@pytest.mark.parametrize("case", list(CASES))
def test_up_refuses_what_it_does_not_emulate(case, cluster, tmp_path):
    target, patch, message = CASES[case]
    result = cluster.run("up", str(overlay(tmp_path, target, patch)))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "not supported by the local cluster" in result.stderr or "tag" in result.stderr
    assert not (cluster.home / "supervisor.pid").exists() and cluster.processes() == []


def test_up_refuses_an_unknown_kind(cluster, tmp_path):
    result = cluster.run("up", str(overlay(tmp_path, extra=EXTRA_KIND)))
    assert result.returncode == 2
    assert "PersistentVolumeClaim/data: kind PersistentVolumeClaim is not supported" \
        in result.stderr


def test_commands_say_when_no_cluster_runs(cluster):
    down = cluster.run("down")
    assert down.returncode == 0 and "no local cluster is running" in down.stdout
    status = cluster.run("status")
    assert status.returncode == 1 and "no local cluster is running" in status.stderr


@pytest.mark.parametrize(("pods", "services", "message"), [
    ("127.244.0.0/24", "127.0.0.0/24", "holds 127.0.0.1"),  # iptables would catch 127.0.0.1
    ("127.0.0.0/30", "127.96.0.0/24", "holds 127.0.0.1"),
    ("127.244.0.0/16", "127.244.5.0/24", "overlap"),
    ("127.244.0.0/24", "10.0.0.0/24", "not inside 127.0.0.0/8"),
])
def test_up_refuses_networks_that_would_catch_other_traffic(cluster, pods, services, message):
    result = cluster.run("up", "--pod-network", pods, "--service-network", services)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (cluster.home / "supervisor.pid").exists() and cluster.processes() == []
