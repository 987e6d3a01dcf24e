"""How the local cluster reads a pod spec: Kubernetes' env rules, then this machine's.

In-process and quick: no pod is started. `manifests` holds the Kubernetes
semantics (envFrom, env, $(VAR), valueFrom, the pod-template-hash);
`cluster.localize` the translation to loopback addresses and pod directories.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from canarylab import manifests
from canarylab.cluster import Pod, StandIn, StateDir, localize

SPEC = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {GREETING: hello, LEVEL: info, BIND: "0.0.0.0:8096"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: notification-v1}
spec:
  replicas: 2
  selector: {matchLabels: {app: notification-restapp, version: v1}}
  template:
    metadata: {labels: {app: notification-restapp, version: v1}}
    spec:
      containers:
        - name: notification-v1
          image: canarylab/notification-v1:3.0.0
          ports: [{name: http, containerPort: 8096}]
          envFrom: [{configMapRef: {name: settings}}]
          env:
            - {name: LEVEL, value: debug}
            - {name: MESSAGE, value: "$(GREETING) from $(POD_NAME) costs $$5"}
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: ONLY_LEVEL, valueFrom: {configMapKeyRef: {name: settings, key: LEVEL}}}
            - {name: GUNICORN_BIND, value: "$(BIND)"}
            - name: NOTIFICATION_SERVICE_HOST
              value: notification-clusterip-service.default.svc.cluster.local
            - {name: AWS_XRAY_DAEMON_ADDRESS, value: "xray-service.default:2000"}
            - {name: AWS_MAIL_SERVER_HOST, value: smtp-service}
            - {name: AWS_XRAY_TRACING_NAME, value: notification-clusterip-service}
            - {name: DB_HOSTNAME, value: mysql.example.com}
            - {name: SQLITE_PATH, value: /data/users.db}
          volumeMounts: [{name: data, mountPath: /data}, {name: tmp, mountPath: /tmp}]
      volumes: [{name: data, emptyDir: {}}, {name: tmp, emptyDir: {sizeLimit: 64Mi}}]
---
apiVersion: v1
kind: Service
metadata: {name: notification-clusterip-service}
spec:
  selector: {app: notification-restapp}
  ports: [{port: 8096, targetPort: http}]
"""


@pytest.fixture
def spec() -> manifests.Manifests:
    return manifests.parse(SPEC)


def kubernetes_env(spec: manifests.Manifests) -> dict[str, str]:
    deployment = spec.deployments["notification-v1"]
    return manifests.container_env(deployment, spec.configmaps,
                                   {"metadata.name": "notification-v1-abc-xyz12"})


def test_env_follows_kubernetes_rules(spec):
    env = kubernetes_env(spec)
    assert env["SERVICE_VERSION"] == "v1"  # the image's ENV (notification-v1/release.env)
    assert env["GREETING"] == "hello"  # envFrom
    assert env["LEVEL"] == "debug"  # env overrides envFrom
    assert env["ONLY_LEVEL"] == "info"  # configMapKeyRef reads the ConfigMap, not env
    # $(VAR) expands names defined before it; POD_NAME comes later, so it stays as is.
    assert env["MESSAGE"] == "hello from $(POD_NAME) costs $5"
    assert env["POD_NAME"] == "notification-v1-abc-xyz12"


def test_localize_gives_addresses_and_directories_of_this_machine(spec, tmp_path):
    deployment = spec.deployments["notification-v1"]
    pod = Pod("notification-v1-abc-xyz12", deployment, "127.244.0.7", StateDir(tmp_path))
    stand_ins = {"xray-service": StandIn("127.0.0.1", 2999),
                 "smtp-service": StandIn("127.0.0.1", 2525, "AWS_MAIL_SERVER_PORT")}
    env = localize(kubernetes_env(spec), pod, {"notification-clusterip-service": "127.96.0.1"},
                   stand_ins)
    assert env["GUNICORN_BIND"] == "127.244.0.7:8096"
    assert env["NOTIFICATION_SERVICE_HOST"] == "127.96.0.1"
    assert env["AWS_XRAY_DAEMON_ADDRESS"] == "127.0.0.1:2999"
    assert (env["AWS_MAIL_SERVER_HOST"], env["AWS_MAIL_SERVER_PORT"]) == ("127.0.0.1", "2525")
    # Only host settings are looked up; names elsewhere, and unknown hosts, stay.
    assert env["AWS_XRAY_TRACING_NAME"] == "notification-clusterip-service"
    assert env["DB_HOSTNAME"] == "mysql.example.com"
    pod_dir = tmp_path.resolve() / "pods" / pod.name / "volumes"
    assert env["SQLITE_PATH"] == str(pod_dir / "data" / "users.db")
    assert env["TMPDIR"] == str(pod_dir / "tmp")


def test_template_hash_names_the_template():
    spec = manifests.parse(SPEC)
    changed = manifests.parse(SPEC.replace("replicas: 2", "replicas: 5"))
    relabelled = manifests.parse(SPEC.replace("{name: LEVEL, value: debug}",
                                              "{name: LEVEL, value: warning}"))
    hash_of = {name: s.deployments["notification-v1"].template_hash
               for name, s in [("spec", spec), ("changed", changed), ("relabelled", relabelled)]}
    assert hash_of["spec"] == hash_of["changed"]  # replicas are not in the template
    assert hash_of["spec"] != hash_of["relabelled"]
    assert 1 <= len(hash_of["spec"]) <= 10


def test_fields_without_local_effect_are_named(spec):
    assert any(notice.startswith("sizeLimit") for notice in spec.notices)


def test_a_missing_configmap_is_refused():
    with pytest.raises(manifests.Unsupported, match="names ConfigMap settings"):
        manifests.parse(SPEC.split("---", 1)[1])


def test_every_overlay_renders_into_something_the_local_cluster_runs():
    for overlay in sorted((Path(__file__).parent.parent / "k8s" / "overlays").iterdir()):
        spec = manifests.parse(manifests.render(overlay))
        assert set(spec.deployments) == {"notification-v1", "notification-v2", "user-management"}
