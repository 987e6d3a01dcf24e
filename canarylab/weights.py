"""The v1/v2 split as exact weights, for a service mesh instead of replica counts.

With one Service in front of both versions, kube-proxy picks a pod per connection,
so a version's share is its share of the pods: 25% needs 3 + 1 pods, 10% needs 9 + 1.
A mesh routes each REQUEST by weight instead, whatever the pod counts. The same
split can be written two ways, and this module writes both (the manifests under
k8s/components/istio and k8s/components/gateway-api are the same documents at
100/0; tests/test_weights.py holds the two to each other):

- Istio: a DestinationRule names the subsets v1 and v2 by the pods' ``version``
  label, and a VirtualService on the shared Service sends ``weight`` percent of the
  requests to each subset.
- Gateway API for a mesh (GAMMA): an HTTPRoute attached to the shared Service sends
  requests to one Service per version (``notification-v1``, ``notification-v2``),
  by ``weight``.

Everything here is a pure function of the canary's percentage: no cluster, no
kubectl. ``canarylab split PERCENT --mode weights`` prints `render` and, given a
kubectl context, applies it.
"""

from __future__ import annotations

from fractions import Fraction

import yaml

SERVICE = "notification-clusterip-service"  # the one Service both versions sit behind
PORT = 8096
APP = "notification-restapp"
ROUTE_NAME = "notification"
STABLE, CANARY = "v1", "v2"
VERSION_SERVICES = {STABLE: "notification-v1", CANARY: "notification-v2"}
MESHES = ("istio", "gateway-api")


def weights(percent: Fraction | int | str) -> tuple[int, int]:
    """(v1, v2) weights for the canary's percentage: 25 -> (75, 25).

    Whole percentages only: both APIs take integer weights, and a weight that was
    silently rounded would make the verifier check a split nobody declared.
    """
    try:
        value = Fraction(percent)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{percent}: expected a percentage such as 25") from None
    if value.denominator != 1 or not 0 <= value <= 100:
        raise ValueError(f"{percent}: weights are whole percentages from 0 to 100")
    canary = int(value)
    return 100 - canary, canary


def destination_rule() -> dict:
    """The Istio subsets v1 and v2: the notification pods, told apart by `version`."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": ROUTE_NAME, "labels": {"app": APP}},
        "spec": {
            "host": SERVICE,
            "subsets": [{"name": v, "labels": {"version": v}} for v in (STABLE, CANARY)],
        },
    }


def virtual_service(percent) -> dict:
    """Istio: requests to the shared Service go to subset v1 or v2 by weight."""
    stable, canary = weights(percent)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": ROUTE_NAME, "labels": {"app": APP}},
        "spec": {
            "hosts": [SERVICE],
            "http": [{"route": [
                {"destination": {"host": SERVICE, "subset": STABLE}, "weight": stable},
                {"destination": {"host": SERVICE, "subset": CANARY}, "weight": canary},
            ]}],
        },
    }


def http_route(percent) -> dict:
    """Gateway API (GAMMA): requests to the shared Service go to a per-version Service."""
    stable, canary = weights(percent)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE_NAME, "labels": {"app": APP}},
        "spec": {
            # A Service as the parent: the route applies to calls made to it (GAMMA).
            "parentRefs": [{"group": "", "kind": "Service", "name": SERVICE, "port": PORT}],
            "rules": [{"backendRefs": [
                {"name": VERSION_SERVICES[STABLE], "port": PORT, "weight": stable},
                {"name": VERSION_SERVICES[CANARY], "port": PORT, "weight": canary},
            ]}],
        },
    }


def documents(percent, mesh: str = "both", namespace: str | None = None) -> list[dict]:
    """The documents that set the split for one mesh ("istio", "gateway-api") or both.

    The per-version Services an HTTPRoute needs come with the gateway-api component
    (k8s/components/gateway-api); they never change with the split, so they are not
    repeated here.
    """
    if mesh not in (*MESHES, "both"):
        raise ValueError(f"mesh {mesh!r}: expected istio, gateway-api or both")
    docs = []
    if mesh in ("istio", "both"):
        docs += [destination_rule(), virtual_service(percent)]
    if mesh in ("gateway-api", "both"):
        docs.append(http_route(percent))
    if namespace:
        for doc in docs:
            doc["metadata"]["namespace"] = namespace
    return docs


def render(percent, mesh: str = "both", namespace: str | None = None) -> str:
    """`documents` as one multi-document YAML stream, for `kubectl apply -f -`."""
    return yaml.safe_dump_all(documents(percent, mesh, namespace), sort_keys=False)
