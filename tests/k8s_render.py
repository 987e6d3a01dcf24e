"""Render the production entry points under k8s/ once per test session.

The entry points (k8s/kind/<split>, k8s/eks/<split>, k8s/istio/<split>,
k8s/gateway-api/<split>) generate Secrets from git-ignored env files, which a fresh
clone does not have. So the tests render a copy of k8s/ and loadtest/ in a
temporary folder, with every env file made from its committed .example and test
values filled in: the working tree (and any real env file in it) is never touched.
"""

from __future__ import annotations

import atexit
import functools
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"

SPLITS = ["100-0", "75-25", "50-50", "25-75", "0-100"]
PLATFORMS = ["kind", "eks"]  # replica-count splits; kind also serves minikube
MESHES = ["istio", "gateway-api"]  # exact weights, built on k8s/kind/50-50
ENTRY_POINTS = [f"{group}/{split}" for group in PLATFORMS + MESHES for split in SPLITS]

# What a user would put into the env files; recognisable, so a leak would show. The
# passwords are new each session: a secret value of a render that is also in a
# git-tracked file can then only be one the manifests hard-code (the scan in
# test_production_manifests.py), never these test values written down here.
TEST_VALUES = {
    "DB_PASSWORD": f"test-db-password-{secrets.token_hex(4)}",
    "AWS_MAIL_SERVER_PASSWORD": f"test-smtp-password-{secrets.token_hex(4)}",
    "AWS_MAIL_SERVER_USERNAME": "test-smtp-user",
    "AWS_MAIL_SERVER_FROM_ADDRESS": "canary@example.com",
    "RDS_ENDPOINT": "usermgmtdb.abcdefghij.us-east-1.rds.amazonaws.com",
    "XRAY_ROLE_ARN": "arn:aws:iam::123456789012:role/canarylab-xray-daemon",
}


@functools.cache
def workspace() -> Path:
    """A copy of k8s/ and loadtest/ with every env file made from its example."""
    folder = Path(tempfile.mkdtemp(prefix="canarylab-k8s-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    ignore = shutil.ignore_patterns("*.env", "__pycache__")
    shutil.copytree(K8S, folder / "k8s", ignore=ignore)
    shutil.copytree(ROOT / "loadtest", folder / "loadtest", ignore=ignore)
    for example in (folder / "k8s").rglob("*.env.example"):
        lines = []
        for line in example.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#") and not value:
                value = TEST_VALUES[key]
            lines.append(f"{key}{sep}{value}" if sep else line)
        example.with_name(example.name.removesuffix(".example")).write_text("\n".join(lines))
    return folder


@functools.cache
def render_text(entry_point: str) -> str:
    """`kubectl kustomize k8s/<entry_point>`, as `kubectl apply -k` would build it."""
    result = subprocess.run([KUBECTL, "kustomize", workspace() / "k8s" / entry_point],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{entry_point}: {result.stderr}"
    return result.stdout


@functools.cache
def rendered(entry_point: str) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(render_text(entry_point)) if doc)


def find(entry_point: str, kind: str, name: str) -> dict:
    matches = [d for d in rendered(entry_point)
               if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in {entry_point}"
    return matches[0]


def split_of(entry_point: str) -> tuple[int, int]:
    """"kind/75-25" -> (75, 25)."""
    v1, v2 = (int(p) for p in entry_point.split("/")[1].split("-"))
    return v1, v2


def env_value(container: dict, name: str) -> str:
    values = [e.get("value") for e in container.get("env", []) if e["name"] == name]
    assert len(values) == 1, f"{container['name']}: {name} set {len(values)} times"
    return values[0]


def container(workload: dict, name: str) -> dict:
    spec = workload["spec"]["template"]["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]
