"""`--context NAME`: status, scale and split on a real cluster, through kubectl.

No cluster exists here, so CANARYLAB_KUBECTL points at a fake kubectl that logs
its arguments and answers `get` with a recorded-style object list. What is
proven: the kubectl command lines canarylab builds, and the reshaping of
`kubectl get deploy,pods,svc -o json` into the local status JSON. What is not:
a real API server's answers beyond that sample.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from cluster_fixtures import FAKE_KUBECTL, LocalCluster, deployment, pod

CONTEXT = "kind-canarylab"
OBJECTS = {"apiVersion": "v1", "kind": "List", "items": [
    deployment("notification-v1", "v1", 3, 3),
    deployment("notification-v2", "v2", 1, 0),
    pod("notification-v1-5d59d67564-abcde", "v1", "10.244.0.5", True),
    pod("notification-v1-5d59d67564-fghjk", "v1", "10.244.0.6", True),
    pod("notification-v1-5d59d67564-lmnpq", "v1", "10.244.0.7", True),
    pod("notification-v2-7c8d9f6b45-rstvw", "v2", "10.244.0.8", False, 4, "CrashLoopBackOff"),
    {"kind": "Service", "metadata": {"name": "notification-clusterip-service"},
     "spec": {"clusterIP": "10.96.12.34", "selector": {"app": "notification-restapp"},
              "ports": [{"port": 8096, "targetPort": "http"}]}},
]}


@pytest.fixture
def kubectl(tmp_path):
    """The fake kubectl; ``kubectl.calls()`` lists the argument lists it got."""
    directory = tmp_path / "kubectl"
    directory.mkdir()
    script = directory / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (directory / "objects.json").write_text(json.dumps(OBJECTS))
    (directory / "mode").write_text("ok")

    class Fake:
        path = script

        @staticmethod
        def calls() -> list[list[str]]:
            log = directory / "calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] \
                if log.exists() else []

        @staticmethod
        def fail() -> None:
            (directory / "mode").write_text("fail")
    return Fake


@pytest.fixture
def cli(tmp_path, kubectl):
    cluster = LocalCluster(tmp_path / "home")
    cluster.env["CANARYLAB_KUBECTL"] = str(kubectl.path)
    return cluster


def test_status_reshapes_kubectl_get_into_the_status_contract(cli, kubectl):
    status = json.loads(cli.ok("status", "--json", "--context", CONTEXT))
    assert kubectl.calls() == [["--context", CONTEXT, "get", "deploy,pods,svc", "-o", "json"]]
    assert set(status) == {"deployments", "pods", "services", "usermgmt_url"}
    assert status["deployments"][1] == {"name": "notification-v2", "version": "v2",
                                        "image": "canarylab/notification-v2:1.0.0",
                                        "desired": 1, "ready": 0}
    crashing = status["pods"][3]
    assert crashing["deployment"] == "notification-v2"
    assert (crashing["ready"], crashing["restarts"], crashing["status"]) == \
        (False, 4, "CrashLoopBackOff")
    # Endpoints: the ready pods the selector matches, on the named targetPort.
    assert status["services"] == [{"name": "notification-clusterip-service",
                                   "address": "10.96.12.34:8096",
                                   "endpoints": ["10.244.0.5:8096", "10.244.0.6:8096",
                                                 "10.244.0.7:8096"]}]
    assert status["usermgmt_url"] is None


def test_split_scales_the_growing_deployment_first(cli, kubectl):
    output = cli.ok("split", "50", "--context", CONTEXT)
    assert "50% of 4 pods is 2/2 = 50%" in output
    assert kubectl.calls()[1:] == [
        ["--context", CONTEXT, "scale", "deployment/notification-v2", "--replicas=2"],
        ["--context", CONTEXT, "rollout", "status", "deployment/notification-v2",
         "--timeout=60s"],
        ["--context", CONTEXT, "scale", "deployment/notification-v1", "--replicas=2"],
        ["--context", CONTEXT, "rollout", "status", "deployment/notification-v1",
         "--timeout=60s"],
    ]


def test_scale_runs_kubectl_scale(cli, kubectl):
    cli.ok("scale", "notification-v1", "5", "--context", CONTEXT)
    assert ["--context", CONTEXT, "scale", "deployment/notification-v1", "--replicas=5"] \
        in kubectl.calls()


def test_kubectl_errors_are_reported(cli, kubectl):
    kubectl.fail()
    result = cli.run("status", "--context", CONTEXT)
    assert result.returncode == 1
    assert "context was not found" in result.stderr
    assert os.path.basename(str(kubectl.path)) in result.stderr
