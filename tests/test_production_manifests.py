"""The production entry points under k8s/ (kind, minikube, EKS, Istio, Gateway API):
every one the README tells users to apply renders with the real kustomize, passes
strict schema validation and checkov, runs the split its name declares, keeps every
pod within the restricted Pod Security Standard, and keeps every secret out of git.

Each entry point is rendered once (tests/k8s_render.py); the schema check runs once
over the distinct documents of all of them, checkov once over one split per group
(the splits of a group are shown to differ only in counts and weights).
"""

from __future__ import annotations

import base64
import copy
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from k8s_render import (
    ENTRY_POINTS,
    K8S,
    MESHES,
    PLATFORMS,
    ROOT,
    SPLITS,
    TEST_VALUES,
    container,
    env_value,
    find,
    render_text,
    rendered,
    split_of,
    workspace,
)

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
KUBERNETES_VERSION = "1.37.0"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# checkov scans this split of each group; the others differ only in what the test
# below blanks out, which no checkov check reads.
CHECKOV_SPLIT = "75-25"
NAMESPACE = "canarylab"
# No schema for these in kubernetes-validate, and no PyPI package ships one for the
# Gateway API; test_weights.py checks their content instead.
CUSTOM_KINDS = {"VirtualService", "DestinationRule", "HTTPRoute"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CLUSTER_SCOPED = {"Namespace"}
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}

entry_points = pytest.mark.parametrize("entry_point", ENTRY_POINTS)


def workloads(entry_point: str) -> list[dict]:
    return [d for d in rendered(entry_point) if d["kind"] in WORKLOAD_KINDS]


def pod_containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def unique_documents() -> list[dict]:
    """Every distinct document of every entry point (most are shared by all)."""
    seen: dict[str, dict] = {}
    for entry_point in ENTRY_POINTS:
        for doc in rendered(entry_point):
            seen.setdefault(json.dumps(doc, sort_keys=True), doc)
    return list(seen.values())


def test_there_is_one_entry_point_per_platform_and_split():
    on_disk = sorted(str(p.parent.relative_to(K8S))
                     for group in PLATFORMS + MESHES
                     for p in (K8S / group).glob("*/kustomization.yaml"))
    assert on_disk == sorted(ENTRY_POINTS)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("split", SPLITS)
def test_platform_entry_point_is_its_overlay_plus_its_component(platform, split):
    kustomization = yaml.safe_load((K8S / platform / split / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [f"../../overlays/{split}"]
    assert kustomization["components"] == [f"../../components/{platform}"]
    assert kustomization["namespace"] == NAMESPACE


# -- schemas and checkov --------------------------------------------------------------


def test_every_rendered_resource_passes_strict_schema_validation():
    docs = [d for d in unique_documents() if d["kind"] not in CUSTOM_KINDS]
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", KUBERNETES_VERSION, "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    problems = "\n".join(line for line in lines if not line.startswith("INFO"))
    assert result.returncode == 0, problems
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    assert len(passed) == len(docs), problems


def normalized(entry_point: str) -> list[dict]:
    """The render with what a split changes blanked out: the two notification replica
    counts, the split the Locust pods check, the mesh weights."""
    docs = copy.deepcopy(list(rendered(entry_point)))
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Deployment" and name in ("notification-v1", "notification-v2"):
            doc["spec"]["replicas"] = "N"
        if doc["kind"] in WORKLOAD_KINDS:
            for c in pod_containers(doc):
                for var in c.get("env", []):
                    if var["name"] in ("CANARYLAB_REPLICAS", "CANARYLAB_EXPECT"):
                        var["value"] = "SPLIT"
        if doc["kind"] == "VirtualService":
            for route in doc["spec"]["http"][0]["route"]:
                route["weight"] = "W"
        if doc["kind"] == "HTTPRoute":
            for backend in doc["spec"]["rules"][0]["backendRefs"]:
                backend["weight"] = "W"
    return docs


@pytest.mark.parametrize("group", PLATFORMS + MESHES)
def test_the_splits_of_a_group_differ_only_in_counts_and_weights(group):
    # So checkov, which looks at none of these, needs to scan one split per group.
    reference = normalized(f"{group}/{CHECKOV_SPLIT}")
    for split in SPLITS:
        assert normalized(f"{group}/{split}") == reference, f"{group}/{split}"


@functools.cache
def checkov_results() -> list[dict]:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make checkov` builds it (`make test` does)"
    folder = workspace() / "rendered"
    folder.mkdir(exist_ok=True)
    for group in PLATFORMS + MESHES:
        entry_point = f"{group}/{CHECKOV_SPLIT}"
        (folder / (entry_point.replace("/", "_") + ".yaml")).write_text(render_text(entry_point))
    # --skip-download: no network, no guideline lookups; the checks ship with checkov.
    result = subprocess.run(
        [CHECKOV, "--directory", folder, "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300)
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_no_failed_check():
    reports = checkov_results()
    failed = [f"{f['check_id']} {f['resource']} ({f['file_path']})"
              for report in reports for f in report["results"]["failed_checks"]]
    assert failed == []
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0
    # It really looked: every resource of one split per group, dozens of checks each.
    assert summary["resource_count"] >= len(PLATFORMS + MESHES) * 30
    assert summary["passed"] > 1000


def test_every_checkov_skip_carries_its_reason():
    skipped = [f for report in checkov_results() for f in report["results"]["skipped_checks"]]
    assert skipped, "the manifests declare skips; checkov should report them"
    for finding in skipped:
        reason = (finding.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 5, f"{finding['check_id']} on {finding['resource']}"


# -- the split --------------------------------------------------------------------------


@entry_points
def test_entry_point_declares_the_split_its_name_says(entry_point):
    v1, v2 = split_of(entry_point)
    replicas = {name: find(entry_point, "Deployment", name)["spec"]["replicas"]
                for name in ("notification-v1", "notification-v2")}
    job = find(entry_point, "Job", "canarylab-verify")
    master = find(entry_point, "Deployment", "locust-master")
    checks = [container(job, "locust"), container(job, "wait-for-pods"),
              container(master, "locust-master")]
    if entry_point.split("/")[0] in PLATFORMS:
        # Four pods in all, as in the overlays; the split check gets the pod counts.
        assert replicas == {"notification-v1": v1 * 4 // 100, "notification-v2": v2 * 4 // 100}
        for c in checks:
            assert env_value(c, "CANARYLAB_REPLICAS") == f"{v1 * 4 // 100}/{v2 * 4 // 100}"
    else:
        # Both versions keep capacity; the weights set the split, and are what is checked.
        assert replicas == {"notification-v1": 2, "notification-v2": 2}
        for c in checks:
            assert env_value(c, "CANARYLAB_REPLICAS") == ""
            assert env_value(c, "CANARYLAB_EXPECT") == f"{v1}/{v2}"


@pytest.mark.parametrize("split", SPLITS)
def test_mesh_entry_points_route_by_the_weights_of_their_split(split):
    v1, v2 = (int(p) for p in split.split("-"))
    route = find(f"istio/{split}", "VirtualService", "notification")["spec"]["http"][0]["route"]
    assert [(r["destination"]["subset"], r["weight"]) for r in route] == [("v1", v1), ("v2", v2)]
    backends = find(f"gateway-api/{split}", "HTTPRoute", "notification")["spec"]["rules"][0]
    assert [(b["name"], b["weight"]) for b in backends["backendRefs"]] == [
        ("notification-v1", v1), ("notification-v2", v2)]
    # Each per-version Service selects its version only; the shared one both.
    for version in ("v1", "v2"):
        service = find(f"gateway-api/{split}", "Service", f"notification-{version}")
        assert service["spec"]["selector"] == {"app": "notification-restapp", "version": version}
    shared = find(f"gateway-api/{split}", "Service", "notification-clusterip-service")
    assert shared["spec"]["selector"] == {"app": "notification-restapp"}


# -- restricted Pod Security Standard and house rules ---------------------------------------


@entry_points
def test_every_pod_meets_the_restricted_pod_security_standard(entry_point):
    for workload in workloads(entry_point):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        for volume in pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{name}: volume {volume['name']} {kinds}"
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, name
        for c in pod_containers(workload):
            where = f"{name}/{c['name']}"
            security = c.get("securityContext", {})
            effective = {**pod_security, **security}.get
            assert effective("runAsNonRoot") is True, where
            assert isinstance(effective("runAsUser"), int) and effective("runAsUser") > 0, where
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert not security.get("privileged"), where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert all(not p.get("hostPort") for p in c.get("ports", [])), where
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) >= {"cpu", "memory"}, f"{where} {bound}"


@entry_points
def test_everything_lands_in_the_restricted_namespace(entry_point):
    namespace = find(entry_point, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in rendered(entry_point):
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


@entry_points
def test_third_party_images_are_pinned_and_locust_matches_the_lock(entry_point):
    lock = (ROOT / "requirements.txt").read_text()
    pins = dict(re.findall(r"^(locust|numpy|scipy|pyyaml)==(\S+)", lock, flags=re.MULTILINE))
    for workload in workloads(entry_point):
        for c in pod_containers(workload):
            image, _, tag = c["image"].rpartition(":")
            assert image and tag and tag != "latest", c["image"]
            if image == "locustio/locust":
                # The image must run the Locust the suite is tested with.
                assert tag == pins["locust"], c["image"]
            if c["name"] == "install-statistics":
                # What the suite imports that the locustio/locust image lacks.
                for package in ("numpy", "scipy", "pyyaml"):
                    assert f"{package}=={pins[package]}" in c["command"], package


# -- the pieces are wired to each other ------------------------------------------------------


def config(entry_point: str, prefix: str) -> dict:
    maps = [d for d in rendered(entry_point)
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    return maps[0]["data"]


def selects(entry_point: str, service_name: str) -> set[str]:
    """Names of the workloads whose pods the Service selects."""
    selector = find(entry_point, "Service", service_name)["spec"]["selector"]
    return {w["metadata"]["name"] for w in workloads(entry_point)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()}


@entry_points
def test_services_point_at_the_daemon_the_database_and_the_mail_server(entry_point):
    platform = entry_point.split("/")[0]
    for prefix in ("user-management-config", "notification-config"):
        assert config(entry_point, prefix)["AWS_XRAY_DAEMON_ADDRESS"] == "xray-service:2000"
    assert selects(entry_point, "xray-service") == {"xray-daemon"}
    assert config(entry_point, "user-management-config")["DB_HOSTNAME"] == "mysql"
    mysql = find(entry_point, "Service", "mysql")
    if platform == "eks":
        assert mysql["spec"] == {"type": "ExternalName",
                                 "externalName": TEST_VALUES["RDS_ENDPOINT"]}
        account = find(entry_point, "ServiceAccount", "xray-daemon")
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == \
            TEST_VALUES["XRAY_ROLE_ARN"]
        # The settings ConfigMap is local-only: read by the replacements, never applied.
        assert not [d for d in rendered(entry_point) if d["metadata"]["name"] == "eks-settings"]
    else:
        assert selects(entry_point, "mysql") == {"mysql"}
        assert selects(entry_point, "smtp-service") == {"mailpit"}
    # Credentials reach the services from generated Secrets that exist in the render.
    secrets = {d["metadata"]["name"] for d in rendered(entry_point) if d["kind"] == "Secret"}
    for name in ("user-management", "notification-v1", "notification-v2"):
        refs = [s["secretRef"]["name"] for s in
                container(find(entry_point, "Deployment", name), name)["envFrom"]
                if "secretRef" in s]
        assert refs and set(refs) <= secrets, name


@entry_points
def test_network_policies_let_only_user_management_call_notification_and_the_database(
        entry_point):
    policies = {d["metadata"]["name"]: d["spec"] for d in rendered(entry_point)
                if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for target, port in (("notification", 8096), ("mysql", 3306)):
        rules = policies[target]["ingress"]
        assert rules == [{"from": [{"podSelector": {"matchLabels": {"app": "usermgmt-restapp"}}}],
                          "ports": [{"protocol": "TCP", "port": port}]}], target
    dns = policies["allow-dns"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_locust_suite_configmap_carries_every_module_the_locustfile_imports():
    listed = set(yaml.safe_load((ROOT / "loadtest" / "kustomization.yaml").read_text())
                 ["configMapGenerator"][0]["files"])
    needed, data, todo = set(), set(), ["locustfile"]
    while todo:
        module = todo.pop()
        if module in needed:
            continue
        needed.add(module)
        source = (ROOT / "loadtest" / f"{module}.py").read_text()
        todo += re.findall(r"^\s*from loadtest(?:\.(\w+))? import (\w+)", source, re.MULTILINE)
        todo = [m if isinstance(m, str) else (m[0] or m[1]) for m in todo]
        # Data files a module reads from beside itself (analysis.yaml).
        data |= set(re.findall(r'with_name\("([\w.]+)"\)', source))
    assert {f"{m}.py" for m in needed} | data | {"__init__.py", "locust.conf"} <= listed


# -- secrets ----------------------------------------------------------------------------------


def tracked_files() -> list[Path]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return [ROOT / name for name in result.stdout.split("\0") if name]


def env_files() -> list[Path]:
    return [p.with_name(p.name.removesuffix(".example")) for p in K8S.rglob("*.env.example")]


def test_secret_env_files_are_git_ignored_and_examples_hold_no_secret():
    for path in env_files():
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} must be git-ignored"
        example = path.with_name(path.name + ".example").read_text()
        for line in example.splitlines():
            key, _, value = line.partition("=")
            if re.search("PASSWORD|SECRET|TOKEN", key) and not line.startswith("#"):
                assert value == "", f"{path.name}.example: {key} must be empty"


def secret_values() -> set[str]:
    """Every secret value a render holds, plus those of real env files on this machine."""
    values = set()
    for entry_point in ENTRY_POINTS:
        for doc in rendered(entry_point):
            if doc["kind"] == "Secret":
                values |= {base64.b64decode(v).decode() for k, v in doc["data"].items()
                           if re.search("PASSWORD|SECRET|TOKEN", k)}
    for path in env_files():
        if path.exists():
            values |= {line.partition("=")[2] for line in path.read_text().splitlines()
                       if re.match(r"\w*(PASSWORD|SECRET|TOKEN)\w*=", line)}
    return {v for v in values if len(v) >= 8}


def test_no_secret_value_is_in_any_git_tracked_file_plain_or_base64():
    values = secret_values()
    assert TEST_VALUES["DB_PASSWORD"] in values  # the scan looks for something real
    needles = {v.encode() for v in values} | {base64.b64encode(v.encode()) for v in values}
    for path in tracked_files():
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"{path.relative_to(ROOT)} holds a secret value"


def test_no_secret_manifest_and_no_literal_credential_in_git():
    for path in tracked_files():
        if path.suffix in (".yaml", ".yml") and path.is_file():
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict):
                    assert doc.get("kind") != "Secret", path
    for entry_point in ENTRY_POINTS:
        for workload in workloads(entry_point):
            for c in pod_containers(workload):
                for var in c.get("env", []):
                    # MYSQL_RANDOM_ROOT_PASSWORD=yes is a switch, not a credential.
                    if (re.search("PASSWORD|USERNAME|SECRET|TOKEN", var["name"])
                            and var["name"] != "MYSQL_RANDOM_ROOT_PASSWORD"):
                        assert "value" not in var, f"{entry_point} {c['name']}: {var['name']}"


# -- the Job's wait for the declared pods, against a real HTTP server --------------------------


class FakeUserManagement(http.server.BaseHTTPRequestHandler):
    """Answers the canary endpoint as user-management would, round robin over pods."""

    pods: list[tuple[str, str]] = []
    calls = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        cls = type(self)
        version, pod = cls.pods[cls.calls % len(cls.pods)]
        cls.calls += 1
        self.send_response(200)
        self.send_header("X-Notification-Version", version)
        self.send_header("X-Notification-Pod", pod)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("pods", "replicas", "ready"), [
    ([("v1", "a"), ("v1", "b"), ("v1", "c"), ("v2", "d")], "3/1", True),
    ([("v1", "a"), ("v1", "b"), ("v2", "d")], "3/1", False),  # one v1 pod still starting
])
def test_split_check_waits_until_every_declared_pod_answers(pods, replicas, ready):
    FakeUserManagement.pods, FakeUserManagement.calls = pods, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeUserManagement)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run(
            [sys.executable, K8S / "components" / "locust-job" / "wait_for_pods.py"],
            env={**os.environ, "USERMGMT_URL": f"http://127.0.0.1:{server.server_port}",
                 "CANARYLAB_REPLICAS": replicas, "WAIT_SECONDS": "1"},
            capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == ready, result.stdout + result.stderr
    assert ("ready: 4 pods answered" in result.stdout) == ready
