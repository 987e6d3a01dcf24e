"""canarylab.weights and `canarylab split PERCENT --mode weights`: the mesh documents
for a percentage are exactly what the k8s/istio and k8s/gateway-api entry points
apply for that split, and bad input is a one-line error, never a stack trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_render import SPLITS, find

from canarylab import weights

CANARYLAB = Path(sys.executable).parent / "canarylab"


def as_applied(doc: dict) -> dict:
    """A rendered document without what kustomize adds: the namespace and part-of label."""
    doc = {**doc, "metadata": dict(doc["metadata"])}
    doc["metadata"].pop("namespace", None)
    doc["metadata"]["labels"] = {k: v for k, v in doc["metadata"]["labels"].items()
                                 if k != "app.kubernetes.io/part-of"}
    return doc


@pytest.mark.parametrize(("percent", "expected"), [
    (0, (100, 0)), (25, (75, 25)), ("50", (50, 50)), (75, (25, 75)), (100, (0, 100))])
def test_weights_are_the_stable_and_canary_shares(percent, expected):
    assert weights.weights(percent) == expected


@pytest.mark.parametrize("percent", ["12.5", "101", "-1", "abc", "1/0"])
def test_weights_refuse_what_is_not_a_whole_percentage(percent):
    with pytest.raises(ValueError, match="percentage"):
        weights.weights(percent)


@pytest.mark.parametrize("split", SPLITS)
def test_documents_are_what_the_mesh_entry_points_apply(split):
    canary = int(split.split("-")[1])
    assert weights.virtual_service(canary) == as_applied(
        find(f"istio/{split}", "VirtualService", "notification"))
    assert weights.destination_rule() == as_applied(
        find(f"istio/{split}", "DestinationRule", "notification"))
    assert weights.http_route(canary) == as_applied(
        find(f"gateway-api/{split}", "HTTPRoute", "notification"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CANARYLAB, "split", *args], capture_output=True, text=True,
                          timeout=30)


def test_split_in_weights_mode_prints_the_documents_of_both_meshes():
    result = run("25", "--mode", "weights")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService", "HTTPRoute"]
    assert {d["metadata"]["namespace"] for d in docs} == {"canarylab"}
    route = docs[1]["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [75, 25]
    assert [b["weight"] for b in docs[2]["spec"]["rules"][0]["backendRefs"]] == [75, 25]


def test_split_in_weights_mode_refuses_a_fraction_in_one_line():
    result = run("12.5", "--mode", "weights", "--mesh", "istio")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "canarylab: 12.5: weights are whole percentages from 0 to 100\n"


def test_split_in_weights_mode_reports_a_failed_apply_with_kubectls_words():
    # The real kubectl of the venv, asked for a context that does not exist.
    result = run("25", "--mode", "weights", "--mesh", "gateway-api", "--context", "no-such")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert 'context "no-such" does not exist' in result.stderr
