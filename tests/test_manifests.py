"""The kustomize manifests under k8s/: every split overlay renders with the real
kustomize, passes strict schema validation, declares the split its name promises,
and deploys hardened containers behind the one shared notification Service."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"

# The release of the pinned kubectl (1.37); kubernetes-validate ships schemas for
# 1.25 to 1.37 and compares versions as strings, so give it a full x.y.z.
KUBERNETES_VERSION = "1.37.0"

SPLITS = ["100-0", "75-25", "50-50", "25-75", "0-100"]
NOTIFICATION_PODS = 4

NOTIFICATION_SERVICE = "notification-clusterip-service"
USERMGMT_SERVICE = "usermgmt-restapp-service"
NOTIFICATION_APP = "notification-restapp"
USERMGMT_APP = "usermgmt-restapp"
PART_OF = "app.kubernetes.io/part-of"

IMAGES = {
    "user-management": "canarylab/user-management:1.0.0",
    "notification-v1": "canarylab/notification-v1:3.0.0",
    "notification-v2": "canarylab/notification-v2:4.0.0",
}
HEALTH_PATHS = {
    "user-management": "/usermgmt/health-status",
    "notification-v1": "/notification/health-status",
    "notification-v2": "/notification/health-status",
}
PORTS = {"user-management": 8095, "notification-v1": 8096, "notification-v2": 8096}
# Baked into each notification image from notification-vN/release.env.
IMAGE_OWNED_ENV = {"SERVICE_VERSION", "APP_VERSION", "NOTIFICATION_FEATURES"}

overlays = pytest.mark.parametrize("overlay", SPLITS)


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    """The resources `kubectl kustomize` renders for an overlay (once per session)."""
    return tuple(doc for doc in yaml.safe_load_all(render_text(overlay)) if doc)


@functools.cache
def render_text(overlay: str) -> str:
    result = subprocess.run(
        [KUBECTL, "kustomize", K8S / "overlays" / overlay],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def find(overlay: str, kind: str, name: str) -> dict:
    matches = [d for d in rendered(overlay) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in overlay {overlay}"
    return matches[0]


def deployments(overlay: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered(overlay) if d["kind"] == "Deployment"}


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def environment(overlay: str, container: dict) -> dict[str, str]:
    """What the container sees: envFrom ConfigMaps first, then env (which wins).
    A downward-API value shows as `fieldRef:<path>`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: unexpected envFrom {source}"
        env.update(find(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = "fieldRef:" + var["valueFrom"]["fieldRef"]["fieldPath"]
    return env


def expected_counts(overlay: str) -> tuple[int, int]:
    """`75-25` -> (3, 1): the v1 and v2 percentages as pods out of four."""
    v1_percent, v2_percent = (int(p) for p in overlay.split("-"))
    assert v1_percent + v2_percent == 100, overlay
    assert v1_percent * NOTIFICATION_PODS % 100 == 0, f"{overlay} is not a split of 4 pods"
    return v1_percent * NOTIFICATION_PODS // 100, v2_percent * NOTIFICATION_PODS // 100


def test_there_is_one_overlay_per_split():
    on_disk = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    assert on_disk == sorted(SPLITS)


@overlays
def test_overlay_changes_replica_counts_and_nothing_else(overlay):
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources", "replicas"}
    assert kustomization["resources"] == ["../../base"]
    assert sorted(r["name"] for r in kustomization["replicas"]) == [
        "notification-v1",
        "notification-v2",
    ]


@overlays
def test_overlay_runs_the_split_its_name_declares(overlay):
    replicas = {name: d["spec"]["replicas"] for name, d in deployments(overlay).items()}
    v1, v2 = expected_counts(overlay)
    assert (replicas["notification-v1"], replicas["notification-v2"]) == (v1, v2)
    assert replicas["notification-v1"] + replicas["notification-v2"] == NOTIFICATION_PODS
    # SQLite on an emptyDir is per pod: a second user-management pod would split the users.
    assert replicas["user-management"] == 1


@overlays
def test_rendered_overlay_passes_strict_schema_validation(overlay):
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", KUBERNETES_VERSION, "-"],
        input=render_text(overlay),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = "\n".join(line for line in lines if not line.startswith("INFO"))
    assert result.returncode == 0, problems
    # A kind without a schema is only a WARN with exit code 0: every resource must pass.
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    assert len(passed) == len(rendered(overlay)), problems


@overlays
def test_one_service_selects_both_versions_on_app_only(overlay):
    service = find(overlay, "Service", NOTIFICATION_SERVICE)
    assert service["spec"]["selector"] == {"app": NOTIFICATION_APP}
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [8096]
    for version in ("v1", "v2"):
        deployment = deployments(overlay)[f"notification-{version}"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app"] == NOTIFICATION_APP
        assert pod_labels["version"] == version
        assert deployment["metadata"]["labels"]["version"] == version


@overlays
def test_user_management_service_selects_user_management_only(overlay):
    service = find(overlay, "Service", USERMGMT_SERVICE)
    assert service["spec"]["selector"] == {"app": USERMGMT_APP}
    assert [p["port"] for p in service["spec"]["ports"]] == [8095]
    pod_labels = deployments(overlay)["user-management"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app"] == USERMGMT_APP


@overlays
def test_each_deployment_owns_exactly_its_own_pods(overlay):
    expected = {
        "user-management": {"app": USERMGMT_APP},
        "notification-v1": {"app": NOTIFICATION_APP, "version": "v1"},
        "notification-v2": {"app": NOTIFICATION_APP, "version": "v2"},
    }
    found = deployments(overlay)
    assert set(found) == set(expected)
    for name, deployment in found.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == expected[name], name
        for other, other_deployment in found.items():
            pod_labels = other_deployment["spec"]["template"]["metadata"]["labels"]
            selects = selector.items() <= pod_labels.items()
            assert selects == (other == name), f"{name} selector vs {other} pods"


@overlays
def test_services_target_a_named_port_every_backend_has(overlay):
    for service_name, app in (
        (NOTIFICATION_SERVICE, NOTIFICATION_APP),
        (USERMGMT_SERVICE, USERMGMT_APP),
    ):
        service = find(overlay, "Service", service_name)
        backends = [
            d
            for d in deployments(overlay).values()
            if d["spec"]["template"]["metadata"]["labels"]["app"] == app
        ]
        assert backends
        for port in service["spec"]["ports"]:
            for deployment in backends:
                container_ports = {
                    p["name"]: p["containerPort"]
                    for c in containers(deployment)
                    for p in c["ports"]
                }
                assert container_ports.get(port["targetPort"]) == port["port"], (
                    f"{service_name} -> {deployment['metadata']['name']}"
                )


@overlays
def test_every_container_is_probed_limited_and_locked_down(overlay):
    for name, deployment in deployments(overlay).items():
        pod = deployment["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, name
        for container in containers(deployment):
            where = f"{name}/{container['name']}"
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                http = container[probe]["httpGet"]
                assert http["path"] == HEALTH_PATHS[name], f"{where} {probe}"
                assert ports.get(http["port"], http["port"]) == PORTS[name], f"{where} {probe}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{where} {bound}"

            security = container.get("securityContext", {})
            # A container's own setting wins over the pod's.
            effective = {**pod_security, **security}.get
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            assert effective("runAsNonRoot") is True, where
            run_as_user = effective("runAsUser")
            assert isinstance(run_as_user, int) and run_as_user > 0, where
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where


@overlays
def test_every_writable_path_is_an_emptydir(overlay):
    for name, deployment in deployments(overlay).items():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        for container in containers(deployment):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp"
            sqlite_path = environment(overlay, container).get("SQLITE_PATH")
            if name == "user-management":
                assert sqlite_path, "user-management needs SQLITE_PATH on a volume"
            if sqlite_path:
                directory = str(PurePosixPath(sqlite_path).parent)
                assert directory in mounts, f"{name}: {sqlite_path} is on the read-only root"
                assert "emptyDir" in volumes[mounts[directory]], name


@overlays
def test_containers_are_configured_from_configmaps_and_the_downward_api(overlay):
    notification = find(overlay, "Service", NOTIFICATION_SERVICE)
    for name, deployment in deployments(overlay).items():
        for container in containers(deployment):
            env = environment(overlay, container)
            assert env["POD_NAME"] == "fieldRef:metadata.name", name
            assert env["GUNICORN_BIND"] == f"0.0.0.0:{PORTS[name]}", name
            assert env["AWS_XRAY_CONTEXT_MISSING"] == "LOG_ERROR", name
            assert env["XRAY_SAMPLING_RATE"] == "1.0", name
            assert env["AWS_XRAY_DAEMON_ADDRESS"], name
            if name == "user-management":
                assert env["NOTIFICATION_SERVICE_HOST"] == NOTIFICATION_SERVICE
                assert env["NOTIFICATION_SERVICE_PORT"] == str(
                    notification["spec"]["ports"][0]["port"]
                )
                assert env["AWS_XRAY_TRACING_NAME"] == "user-management"
            else:
                assert env["AWS_MAIL_SERVER_HOST"], name
                assert int(env["AWS_MAIL_SERVER_PORT"]) > 0, name
                assert "@" in env["AWS_MAIL_SERVER_FROM_ADDRESS"], name
                # A shared name would merge v1 and v2 in the trace map.
                assert "AWS_XRAY_TRACING_NAME" not in env, name


@overlays
def test_notification_version_comes_from_the_image_not_the_deployment(overlay):
    for name, deployment in deployments(overlay).items():
        for container in containers(deployment):
            assert not IMAGE_OWNED_ENV & set(environment(overlay, container)), name


@overlays
def test_no_credentials_in_settings(overlay):
    for name, deployment in deployments(overlay).items():
        for container in containers(deployment):
            leaked = [
                k
                for k in environment(overlay, container)
                if re.search("PASSWORD|USERNAME|SECRET|TOKEN", k)
            ]
            assert not leaked, f"{name}: {leaked} (credentials come from a secretGenerator)"


@overlays
def test_images_are_named_in_the_base_kustomization_only(overlay):
    for name, deployment in deployments(overlay).items():
        assert [c["image"] for c in containers(deployment)] == [IMAGES[name]], name
        assert [c["name"] for c in containers(deployment)] == [name], name
    # The Deployments themselves carry bare names for `images:` to map.
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                for container in containers(doc):
                    assert container["image"] == container["name"], (
                        f"{path.name}: {container['image']}"
                    )


@overlays
def test_canary_differs_from_stable_only_in_name_version_and_image(overlay):
    def normalized(deployment: dict) -> dict:
        d = copy.deepcopy(deployment)
        d["metadata"]["name"] = "NAME"
        d["spec"].pop("replicas")
        for labels in (
            d["metadata"]["labels"],
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"],
        ):
            labels["version"] = "VERSION"
        for container in containers(d):
            container["name"] = container["image"] = "NAME"
        return d

    found = deployments(overlay)
    assert normalized(found["notification-v1"]) == normalized(found["notification-v2"])


@overlays
def test_everything_is_part_of_canarylab_without_touching_selectors(overlay):
    for doc in rendered(overlay):
        assert doc["metadata"]["labels"][PART_OF] == "canarylab", doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "Service"):
            assert "app" in doc["metadata"]["labels"], doc["metadata"]["name"]
    for deployment in deployments(overlay).values():
        assert PART_OF not in deployment["spec"]["selector"]["matchLabels"]
        assert deployment["spec"]["template"]["metadata"]["labels"][PART_OF] == "canarylab"


def test_every_setting_in_the_manifests_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", readme, flags=re.MULTILINE))
    used = {
        key
        for overlay in SPLITS
        for deployment in deployments(overlay).values()
        for container in containers(deployment)
        for key in environment(overlay, container)
    }
    assert used - documented == set()


# --------------------------------------------------------------------------- fault scenarios

FAULT_KNOBS = {"errors": {"FAULT_ERROR_RATE": "0.05", "FAULT_ERROR_STATUS": "500"},
               "slow": {"FAULT_LATENCY_MS": "200"},
               "subtle": {"FAULT_LATENCY_MS": "20", "FAULT_LATENCY_SHARE": "0.02"}}


@pytest.mark.parametrize("scenario", sorted(FAULT_KNOBS))
def test_a_fault_scenario_sets_knobs_on_the_v2_pods_only(scenario, tmp_path):
    from canarylab.demo import scenario_overlay

    folder = scenario_overlay(str(K8S / "overlays" / "75-25"), scenario, tmp_path)
    result = subprocess.run([KUBECTL, "kustomize", folder], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    plain = [doc for doc in rendered("75-25")]
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    v2_env = {var["name"]: var.get("value") for var in containers(by_name["notification-v2"])[0]
              .get("env", [])}
    assert {k: v2_env.get(k) for k in FAULT_KNOBS[scenario]} == FAULT_KNOBS[scenario]
    assert "POD_NAME" in v2_env  # merged into the list, not replacing it
    # Everything else is the 75-25 overlay as it is: v1, user-management, the Services.
    strip = copy.deepcopy(by_name["notification-v2"])
    containers(strip)[0]["env"] = [var for var in containers(strip)[0]["env"]
                                   if var["name"] not in FAULT_KNOBS[scenario]]
    assert [strip if d is by_name["notification-v2"] else d for d in docs] == list(plain)
