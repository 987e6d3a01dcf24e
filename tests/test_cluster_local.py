"""The local cluster, driven through the `canarylab` command as a user drives it.

One cluster (k8s/overlays/75-25) is shared by the tests of this module, in order:
what `up` starts, traffic through the Services, scaling and splitting live, a pod
killed and restarted, the trace map, and last `down` leaving no process behind.
Every test leaves the cluster at 3 v1 + 1 v2 for the next one.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import time
from ipaddress import ip_address, ip_network

import pytest
from cluster_fixtures import (
    OVERLAYS,
    LocalCluster,
    environ,
    get,
    get_many,
    pods_of,
    post_json,
    service,
    wait_for,
)

from canarylab.cluster import pid_alive
from loadtest.verifier import Expectation, srm_test

NOTIFICATION = "notification-clusterip-service"
USERMGMT = "usermgmt-restapp-service"
NAME_CHARS = "[bcdfghjklmnpqrstvwxz2456789]"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("canarylab-home"))
    started = time.monotonic()
    cluster.up_output = cluster.ok("up", str(OVERLAYS / "75-25"))
    cluster.up_seconds = time.monotonic() - started
    yield cluster
    cluster.down()


def test_up_starts_every_replica_ready_on_its_own_address(cluster):
    status = cluster.status()
    desired = {d["name"]: (d["desired"], d["ready"]) for d in status["deployments"]}
    assert desired == {"notification-v1": (3, 3), "notification-v2": (1, 1),
                       "user-management": (1, 1)}
    pod_network = ip_network(cluster.env["CANARYLAB_POD_NETWORK"])
    assert len({p["ip"] for p in status["pods"]}) == 5
    for pod in status["pods"]:
        assert ip_address(pod["ip"]) in pod_network
        assert pod["ready"] and pod["restarts"] == 0 and pod["status"] == "Running"
        # <deployment>-<pod-template-hash>-<5 random>, as a ReplicaSet names pods
        assert re.fullmatch(rf"{pod['deployment']}-{NAME_CHARS}{{1,10}}-{NAME_CHARS}{{5}}",
                            pod["name"])
    # One template, one hash: all pods of a Deployment share the middle part.
    assert len({p["name"].rsplit("-", 1)[0] for p in pods_of(status, "notification-v1")}) == 1
    assert status["usermgmt_url"] in cluster.up_output
    print(f"\nup: all ready after {cluster.up_seconds:.1f} s")


def test_services_select_ready_pods_by_label(cluster):
    status = cluster.status()
    service_network = ip_network(cluster.env["CANARYLAB_SERVICE_NETWORK"])
    notification = service(status, NOTIFICATION)
    assert ip_address(notification["address"].split(":")[0]) in service_network
    # The selector is app=notification-restapp only: v1 AND v2 pods are endpoints.
    expected = {f"{p['ip']}:8096" for p in status["pods"]
                if p["deployment"].startswith("notification-")}
    assert set(notification["endpoints"]) == expected
    assert service(status, USERMGMT)["endpoints"] == [
        f"{pods_of(status, 'user-management')[0]['ip']}:8095"]


def test_user_management_calls_both_versions_through_the_service(cluster):
    status = cluster.status()
    url = status["usermgmt_url"]
    address = url.removeprefix("http://").split("/")[0]
    answered = collections.Counter()
    for _ in range(40):
        code, headers, _ = get(address, "/usermgmt/notification-xray")
        assert code == 200
        answered[(headers["X-Notification-Version"], headers["X-Notification-Pod"])] += 1
    assert {version for version, _ in answered} == {"v1", "v2"}
    notification_pods = {p["name"] for p in status["pods"] if p["deployment"] != "user-management"}
    assert {pod for _, pod in answered} <= notification_pods


def test_pods_get_the_manifest_env_translated_for_this_machine(cluster):
    status = cluster.status()
    notification_ip = service(status, NOTIFICATION)["address"].split(":")[0]
    usermgmt = pods_of(status, "user-management")[0]
    env = environ(usermgmt["pid"])
    assert env["POD_NAME"] == usermgmt["name"]  # the downward API
    assert env["GUNICORN_BIND"] == f"{usermgmt['ip']}:8095"  # was 0.0.0.0:8095
    assert env["GUNICORN_WORKERS"] == "2"  # from the ConfigMap, as the manifest says
    assert env["NOTIFICATION_SERVICE_HOST"] == notification_ip  # cluster DNS
    assert env["AWS_XRAY_DAEMON_ADDRESS"] == cluster.env["CANARYLAB_XRAY_ADDRESS"]
    # SQLITE_PATH=/data/usermgmt.db, /data an emptyDir: the file is in the pod's directory.
    data = cluster.home.resolve() / "pods" / usermgmt["name"] / "volumes" / "data"
    assert env["SQLITE_PATH"] == str(data / "usermgmt.db")
    assert (data / "usermgmt.db").is_file()

    v2 = environ(pods_of(status, "notification-v2")[0]["pid"])
    assert (v2["SERVICE_VERSION"], v2["APP_VERSION"]) == ("v2", "4.0.0")  # the image's ENV
    smtp_host, smtp_port = cluster.env["CANARYLAB_SMTP_ADDRESS"].split(":")
    assert (v2["AWS_MAIL_SERVER_HOST"], v2["AWS_MAIL_SERVER_PORT"]) == (smtp_host, smtp_port)


def test_service_split_matches_the_replica_ratio(cluster):
    address = service(cluster.status(), NOTIFICATION)["address"]
    answers = get_many(address, "/notification/info", count=3000, seconds=40)
    assert len(answers) >= 1000, "too few answers to judge the split"
    assert all(code == 200 for code, _ in answers)
    versions = collections.Counter(headers["X-Service-Version"] for _, headers in answers)
    pods = collections.Counter(headers["X-Pod-Name"] for _, headers in answers)
    # 1 v2 pod of 4: each new connection picks v2 with probability 1/4.
    srm = srm_test(versions, Expectation.from_replicas({"v1": 3, "v2": 1}))
    assert not srm.mismatch, f"{versions} of {len(answers)}: p = {srm.p_value:.2g}"
    assert len(pods) == 4  # every pod took its share


def test_scale_adds_and_removes_endpoints_live(cluster):
    output = cluster.ok("scale", "notification-v2", "2")
    assert "deployment.apps/notification-v2 scaled to 2" in output
    status = cluster.status()
    assert len(pods_of(status, "notification-v2")) == 2
    assert len(service(status, NOTIFICATION)["endpoints"]) == 5
    cluster.ok("scale", "notification-v2", "1")
    status = cluster.status()
    assert len(pods_of(status, "notification-v2")) == 1
    assert len(service(status, NOTIFICATION)["endpoints"]) == 4


def test_scale_refuses_an_unknown_deployment(cluster):
    result = cluster.run("scale", "notification-v3", "1")
    assert result.returncode != 0
    assert "no Deployment named notification-v3" in result.stderr


def test_split_states_the_rounding_and_applies_it(cluster):
    output = cluster.ok("split", "41", "--total", "6")
    assert "41% of 6 pods is 4/2 = 33.3%" in output
    assert ("replicas:\n  - name: notification-v1\n    count: 4\n"
            "  - name: notification-v2\n    count: 2") in output
    status = cluster.status()
    assert {d["name"]: d["ready"] for d in status["deployments"]
            if d["name"] != "user-management"} == {"notification-v1": 4, "notification-v2": 2}
    assert len(service(status, NOTIFICATION)["endpoints"]) == 6
    assert "25% of 4 pods is 3/1 = 25%" in cluster.ok("split", "25")


def test_killed_pod_leaves_the_endpoints_and_is_restarted(cluster):
    before = cluster.status()
    victim = pods_of(before, "notification-v1")[0]
    address = service(before, NOTIFICATION)["address"]
    os.kill(victim["pid"], signal.SIGKILL)  # the gunicorn master: the "container" dies

    def out_of_endpoints():
        status = cluster.status()
        pod = next(p for p in status["pods"] if p["name"] == victim["name"])
        gone = f"{victim['ip']}:8096" not in service(status, NOTIFICATION)["endpoints"]
        return not pod["ready"] and gone
    wait_for(out_of_endpoints, timeout=5)
    # Meanwhile the Service keeps answering, from the other pods only.
    answers = get_many(address, "/notification/info", count=100, seconds=10)
    assert all(code == 200 for code, _ in answers)
    assert victim["name"] not in {headers["X-Pod-Name"] for _, headers in answers}

    def restarted():
        status = cluster.status()
        pod = next(p for p in status["pods"] if p["name"] == victim["name"])
        endpoints = service(status, NOTIFICATION)["endpoints"]
        return pod if pod["ready"] and f"{victim['ip']}:8096" in endpoints else None
    pod = wait_for(restarted, timeout=30, interval=0.2)
    # Same pod (name, address), new process, one restart counted.
    assert pod["restarts"] == 1 and pod["ip"] == victim["ip"] and pod["pid"] != victim["pid"]


def test_traces_show_user_management_calling_both_versions(cluster):
    address = cluster.status()["usermgmt_url"].removeprefix("http://").split("/")[0]
    for _ in range(20):
        get(address, "/usermgmt/notification-xray")

    def both_versions_traced():
        graph = json.loads(cluster.ok("traces", "--json"))
        targets = {e["target"] for e in graph["edges"] if e["source"] == "user-management"}
        return {"notification-v1", "notification-v2"} <= targets
    wait_for(both_versions_traced, timeout=10, interval=0.2)
    assert "user-management -> notification-v2" in cluster.ok("traces")


def test_new_user_gets_a_welcome_mail_in_the_local_mail_server(cluster):
    address = cluster.status()["usermgmt_url"].removeprefix("http://").split("/")[0]
    user = {"username": "trainee1", "email": "trainee1@example.com", "password": "Pass@123",
            "firstname": "Tess", "lastname": "Trainee", "role": "ROLE_USER"}
    code, _, body = post_json(address, "/usermgmt/user", user)
    assert code == 201 and json.loads(body)["notification"]["sent"] is True

    mail = json.loads(cluster.ok("mail", "--json"))
    welcome = [m for m in mail["messages"] if m["to"] == ["trainee1@example.com"]]
    assert len(welcome) == 1 and welcome[0]["subject"] == "Welcome to canarylab"
    assert "trainee1" in cluster.ok("mail")


def test_down_leaves_no_process(cluster):
    pids = [p["pid"] for p in cluster.status()["pods"]]
    assert cluster.processes()
    output = cluster.ok("down")
    assert "no process left" in output
    assert cluster.processes() == []
    assert not any(pid_alive(pid) for pid in pids)
    again = cluster.run("down")
    assert again.returncode == 0 and "no local cluster is running" in again.stdout
