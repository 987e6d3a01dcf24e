"""The local cluster: the k8s/ manifests run on this machine, without Kubernetes.

One supervisor process (``python -m canarylab.cluster STATE_DIR``, started detached
by ``canarylab up``) plays every part of Kubernetes the manifests rely on, in one
asyncio loop:

- a pod and its IP: a gunicorn process on a loopback address of its own, from
  the pod network (all of 127.0.0.0/8 is loopback on Linux);
- the container runtime: the image's command (canarylab.images) in a new process
  group; killing the group is killing the container;
- the ReplicaSet controller: `Cluster.reconcile` starts or deletes pods until a
  Deployment has its replicas; pods are named
  ``<deployment>-<template hash>-<5 random>``;
- the kubelet's probes: httpGet probes with the manifest's thresholds; periods,
  delays and grace periods are multiplied by TIME_SCALE;
- restartPolicy Always and CrashLoopBackOff: a process that exits leaves the
  endpoints, and is restarted after 10 s, 20 s, 40 s ... at most 300 s (times
  TIME_SCALE); restarts are counted;
- a Service and kube-proxy: a canarylab.proxy.ServiceProxy on the Service's own
  address; its endpoints are the READY pods whose labels the selector matches
  (never their names). Where iptables can be used (root, the iptables command),
  the connections do not even reach that proxy: as kube-proxy's iptables mode
  does, NAT rules in a chain of this cluster's own (canarylab.proxy.IptablesServices)
  send each new connection to a random ready endpoint in the kernel, and the
  proxy only answers a Service with no ready endpoint. ``CANARYLAB_PROXY_MODE``
  (``auto``, the default; ``iptables``; ``userspace``) chooses; `canarylab status`
  says which mode runs;
- cluster DNS: resolved once, when a container starts: settings that hold a host
  name (images.HOST_SETTINGS) naming a Service get the Service's address;
- emptyDir volumes: a directory per pod that survives restarts but not the pod; a
  setting under the mountPath (SQLITE_PATH=/data/usermgmt.db) is rewritten into it;
- the X-Ray daemon and an SMTP server: canarylab.xray.XRayCollector and
  canarylab.mail.MailSink answer for ``xray-service`` and ``smtp-service``.

The control channel is a Unix socket in the state directory; each request is one
JSON line ``{"op": ...}`` and gets one JSON line back (see `Cluster.handle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from canarylab import images, manifests
from canarylab.mail import MailSink
from canarylab.proxy import IptablesServices, IptablesUnavailable, ServiceProxy
from canarylab.xray import XRayCollector, write_segments

# Every probe period and delay, grace period and restart back-off of the manifests
# is multiplied by this, so that `up` and restarts take seconds, not minutes.
# Probe timeouts are not scaled: a busy laptop still needs them whole.
TIME_SCALE = 0.2

# The kubelet's restart back-off: doubles from 10 s up to 300 s, and is forgotten
# once a container has run 10 minutes (times TIME_SCALE).
BACKOFF_START = 10 * TIME_SCALE
BACKOFF_LIMIT = 300 * TIME_SCALE
BACKOFF_RESET = 600 * TIME_SCALE

# The defaults mirror kind's pod (10.244.0.0/16) and Service (10.96.0.0/16) ranges.
DEFAULT_POD_NETWORK = "127.244.0.0/24"
DEFAULT_SERVICE_NETWORK = "127.96.0.0/24"
DEFAULT_XRAY_ADDRESS = "127.0.0.1:2000"
DEFAULT_SMTP_ADDRESS = "127.0.0.1:1025"

# Set in every process of a cluster, so `down` can find what is left of it.
MARKER = "CANARYLAB_CLUSTER"

# How Services reach their pods: "auto" (iptables where it can, else userspace),
# "iptables" (fail if it cannot) or "userspace" (the Python proxy only).
PROXY_MODE_SETTING = "CANARYLAB_PROXY_MODE"
PROXY_MODES = ("auto", "iptables", "userspace")

log = logging.getLogger("canarylab.cluster")


# -- the state directory, shared with the command line ------------------------------


@dataclass
class Settings:
    """What `up` decided; the supervisor reads it from the state directory."""

    overlay: str
    pod_network: str = DEFAULT_POD_NETWORK
    service_network: str = DEFAULT_SERVICE_NETWORK
    # Where pods send X-Ray segments, and whether the supervisor collects them there
    # (not when AWS_XRAY_DAEMON_ADDRESS named a daemon of the user's own).
    xray_address: str = DEFAULT_XRAY_ADDRESS
    collect_xray: bool = True
    smtp_address: str = DEFAULT_SMTP_ADDRESS


class StateDir:
    """$CANARYLAB_HOME: the files through which `canarylab` and the supervisor meet."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        self.socket = self.path / "control.sock"
        self.pid_file = self.path / "supervisor.pid"
        self.log = self.path / "supervisor.log"
        self.settings_file = self.path / "settings.json"
        self.manifests = self.path / "manifests.yaml"
        self.pods = self.path / "pods"
        self.logs = self.path / "logs"
        self.segments = self.path / "segments.jsonl"

    def save(self, settings: Settings, rendered: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")
        self.manifests.write_text(rendered)

    def load(self) -> tuple[Settings, manifests.Manifests]:
        settings = Settings(**json.loads(self.settings_file.read_text()))
        return settings, manifests.parse(self.manifests.read_text())

    def supervisor_pid(self) -> int | None:
        """The supervisor's pid if it is still running."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid in marked_processes(self) else None


def pid_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (exited, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def marked_processes(state: StateDir) -> list[int]:
    """Pids of every process that carries this cluster's MARKER (Linux /proc)."""
    needle = f"{MARKER}={state.path}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def loopback_network(cidr: str) -> ipaddress.IPv4Network:
    """A network inside 127.0.0.0/8: nothing of the cluster listens beyond loopback."""
    network = ipaddress.ip_network(cidr, strict=False)
    if not network.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
        raise ValueError(f"{cidr} is not inside 127.0.0.0/8 (the cluster binds loopback only)")
    return network


# -- pods ---------------------------------------------------------------------------


class Pod:
    """One replica: a name, an address, a directory, and one process at a time."""

    def __init__(self, name: str, deployment: manifests.Deployment, ip: str, state: StateDir):
        self.name = name
        self.deployment = deployment
        self.ip = ip
        self.directory = state.pods / name
        self.log_path = state.logs / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0
        self.phase = "Pending"
        self.deleting = False
        self.task: asyncio.Task | None = None

    @property
    def labels(self) -> dict[str, str]:
        return self.deployment.pod_labels

    def volume_dir(self, volume: str) -> Path:
        return self.directory / "volumes" / volume

    def status(self) -> dict:
        return {
            "name": self.name,
            "deployment": self.deployment.name,
            "version": self.labels.get("version"),
            "ip": self.ip,
            "ready": self.ready,
            "restarts": self.restarts,
            "status": self.phase,
            "pid": self.process.pid if self.process else None,
        }


@dataclass(frozen=True)
class StandIn:
    """A process of the supervisor answering for a name the manifests use."""

    host: str
    port: int
    # The setting that carries the port when the host setting holds only a name.
    port_setting: str | None = None


def localize(env: dict[str, str], pod: Pod, dns: dict[str, str],
             stand_ins: dict[str, StandIn]) -> dict[str, str]:
    """Make a pod's Kubernetes environment work for a process on this machine.

    - 0.0.0.0:PORT means "every interface of the pod's own network namespace":
      here that is the pod's address.
    - A host-name setting naming a Service gets the Service's address; one naming
      a stand-in gets the stand-in's address (and port).
    - A process sees no mounts: a setting under a volume's mountPath (such as
      SQLITE_PATH=/data/usermgmt.db) is rewritten into the pod's directory for
      that volume, and a volume on /tmp becomes TMPDIR.
    """
    env = dict(env)
    mounts = sorted(pod.deployment.mounts.items(), key=lambda item: -len(item[0]))
    for key, value in list(env.items()):
        if value.startswith("0.0.0.0:"):
            env[key] = pod.ip + value[len("0.0.0.0"):]
        for mount_path, volume in mounts:
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                env[key] = str(pod.volume_dir(volume)) + value[len(mount_path.rstrip("/")):]
                break
    for key in images.HOST_SETTINGS & env.keys():
        host, colon, port = env[key].partition(":")
        name = manifests.service_name(host, [*dns, *stand_ins])
        if name in dns:
            env[key] = dns[name] + colon + port
        elif name in stand_ins:
            stand_in = stand_ins[name]
            env[key] = f"{stand_in.host}:{stand_in.port}" if colon else stand_in.host
            if stand_in.port_setting and not colon:
                env[stand_in.port_setting] = str(stand_in.port)
    if "/tmp" in pod.deployment.mounts:
        env["TMPDIR"] = str(pod.volume_dir(pod.deployment.mounts["/tmp"]))
    return env


# Where probes come from, as the kubelet probes from the node's own address.
# Not 127.0.0.1, which every pod's calls to a Service come from: the pod closes
# each probe connection first, and its TIME_WAIT socket for (pod, 127.0.0.1:port)
# could meet a later Service connection that iptables mode rewrote to the same
# four addresses and ports, whose SYN the pod's kernel may then drop (a stall of
# a second, the SYN's retry). A source of their own keeps probes out of the way.
PROBE_SOURCE = "127.0.0.2"


async def http_probe(host: str, port: int, path: str, timeout: float) -> bool:
    """The kubelet's httpGet probe: success is a status from 200 to 399."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port,
                                                           local_addr=(PROBE_SOURCE, 0))
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                         "User-Agent: kube-probe/1.37\r\n\r\n".encode())
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


class StartError(Exception):
    """Something of the cluster could not listen where it should."""


async def listen(component, what: str, hint: str) -> None:
    """Start a proxy or stand-in; a busy address becomes a StartError that says what to do."""
    try:
        await component.start()
    except OSError as error:
        raise StartError(f"{what} cannot listen: {error.strerror or error}; {hint}") from None


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group, as the runtime kills a container's cgroup."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# -- the cluster --------------------------------------------------------------------


class Cluster:
    """Deployments, their pods, the Services in front of them, and the stand-ins."""

    def __init__(self, state: StateDir, settings: Settings, spec: manifests.Manifests):
        self.state = state
        self.settings = settings
        self.spec = spec
        self.replicas = {name: d.replicas for name, d in spec.deployments.items()}
        self.pods: list[Pod] = []
        self.free_ips = [str(ip) for ip in loopback_network(settings.pod_network).hosts()]
        service_ips = loopback_network(settings.service_network).hosts()
        self.service_ips = {name: str(next(service_ips)) for name in sorted(spec.services)}
        self.proxies: dict[str, ServiceProxy] = {}
        self.proxy_mode = "userspace"
        self.iptables: IptablesServices | None = None
        self.janitor: subprocess.Popen | None = None
        self.collector: XRayCollector | None = None
        self.mail_sink: MailSink | None = None
        self.stopped = asyncio.Event()
        self.rng = random.Random()

    # -- start and stop --

    async def start(self) -> None:
        """Stand-ins first, then Services, then pods: what pods call is there first."""
        if self.settings.collect_xray:
            self.collector = XRayCollector(*split_address(self.settings.xray_address))
            await listen(self.collector, f"the X-Ray collector (udp {self.settings.xray_address})",
                         "move it with --xray-address, or set AWS_XRAY_DAEMON_ADDRESS to "
                         "send segments to the daemon already there")
        self.mail_sink = MailSink(*split_address(self.settings.smtp_address))
        await listen(self.mail_sink, f"the mail sink ({self.settings.smtp_address})",
                     "move it with --smtp-address")
        for name, service in self.spec.services.items():
            proxy = ServiceProxy(self.service_ips[name], service.ports[0].port)
            self.proxies[name] = proxy
            await listen(proxy, f"Service {name} ({proxy.host}:{proxy.port})",
                         "is another cluster on that network? see --service-network")
        self.start_iptables(os.environ.get(PROXY_MODE_SETTING, "auto"))
        for name in self.spec.deployments:
            self.reconcile(name)

    def start_iptables(self, wanted: str) -> None:
        """Move the Services into the kernel, as kube-proxy's iptables mode, if asked and able."""
        if wanted not in PROXY_MODES:
            raise StartError(f"{PROXY_MODE_SETTING}={wanted}: expected one of "
                             f"{', '.join(PROXY_MODES)}")
        if wanted == "userspace":
            return
        network = str(loopback_network(self.settings.service_network))
        iptables = IptablesServices(iptables_chain(self.state), network)
        try:
            iptables.check()
            iptables.install()
        except IptablesUnavailable as error:
            iptables.remove()  # an install cut short may have made the chain already
            if wanted == "iptables":
                raise StartError(f"iptables mode is not possible here: {error}") from None
            log.info("Services run as userspace proxies (iptables: %s)", error)
            return
        self.iptables, self.proxy_mode = iptables, "iptables"
        self.janitor = start_janitor(iptables)
        log.info("Services run as iptables rules in chain %s", iptables.chain)
        self.sync_endpoints()

    def stop_iptables(self) -> None:
        if self.iptables is None:
            return
        self.iptables.remove()
        self.iptables = None
        if self.janitor is not None:
            self.janitor.kill()  # its work is done; killed, it does nothing more
            self.janitor.wait()
            self.janitor.stdin.close()

    async def stop(self) -> None:
        """Delete every pod, then close Services and stand-ins."""
        for name in self.replicas:
            self.replicas[name] = 0
        await asyncio.gather(*(self.delete_pod(pod) for pod in list(self.pods)))
        self.stop_iptables()
        for proxy in self.proxies.values():
            await proxy.stop()
        if self.collector:
            await self.collector.stop()
        if self.mail_sink:
            await self.mail_sink.stop()
        self.stopped.set()

    # -- the ReplicaSet controller --

    def reconcile(self, deployment: str) -> None:
        """Start or delete pods until the Deployment has its desired replicas."""
        spec = self.spec.deployments[deployment]
        live = [p for p in self.pods if p.deployment.name == deployment and not p.deleting]
        missing = self.replicas[deployment] - len(live)
        for _ in range(missing):
            self.create_pod(spec)
        # Like the ReplicaSet controller: unready pods go first, then the youngest.
        candidates = sorted(live, key=lambda p: (p.ready, -self.pods.index(p)))
        for pod in candidates[:max(0, -missing)]:
            asyncio.get_running_loop().create_task(self.delete_pod(pod))

    def create_pod(self, deployment: manifests.Deployment) -> Pod:
        pod = Pod(deployment.new_pod_name(self.rng), deployment, self.free_ips.pop(0),
                  self.state)
        for volume in deployment.volumes:
            pod.volume_dir(volume).mkdir(parents=True, exist_ok=True)
        self._fill_configmap_volumes(pod)
        self.pods.append(pod)
        pod.task = asyncio.get_running_loop().create_task(self.run_pod(pod))
        log.info("pod %s created on %s", pod.name, pod.ip)
        return pod

    def _fill_configmap_volumes(self, pod: Pod) -> None:
        """A configMap volume: one file per key, as the kubelet writes them."""
        for name, volume in pod.deployment.volumes.items():
            if "configMap" in volume:
                data = self.spec.configmaps[volume["configMap"]["name"]]
                for key, value in data.items():
                    (pod.volume_dir(name) / key).write_text(value)

    async def delete_pod(self, pod: Pod) -> None:
        """Out of the endpoints first, then SIGTERM, the grace period, SIGKILL."""
        if pod.deleting:
            return
        pod.deleting = True
        pod.phase = "Terminating"
        self.set_ready(pod, False)
        pod.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pod.task
        if pod.process is not None:
            await self.stop_container(pod, pod.deployment.grace_seconds * TIME_SCALE)
        self.pods.remove(pod)
        self.free_ips.append(pod.ip)
        self.free_ips.sort(key=ipaddress.ip_address)
        shutil.rmtree(pod.directory, ignore_errors=True)
        log.info("pod %s deleted", pod.name)

    # -- the kubelet --

    async def run_pod(self, pod: Pod) -> None:
        """Start the container, probe it, restart it with back-off when it exits.

        `delete_pod` cancels this task and then stops the container itself.
        """
        backoff = BACKOFF_START
        while True:
            started = time.monotonic()
            await self.start_container(pod)
            code = await self.watch_container(pod)
            # The main process is gone; its workers must not outlive the "container".
            kill_group(pod.process.pid)
            pod.process = None
            self.set_ready(pod, False)
            if time.monotonic() - started >= BACKOFF_RESET:
                backoff = BACKOFF_START
            pod.restarts += 1
            pod.phase = "CrashLoopBackOff"
            log.warning("pod %s exited with %s; restart %d in %.1f s",
                        pod.name, code, pod.restarts, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_LIMIT)

    async def watch_container(self, pod: Pod) -> int:
        """Run the pod's probes until its main process exits; return the exit code."""
        loop = asyncio.get_running_loop()
        probes = [loop.create_task(coro) for coro in self.probe_loops(pod)]
        try:
            return await pod.process.wait()
        finally:
            for probe in probes:
                probe.cancel()

    async def start_container(self, pod: Pod) -> None:
        env = self.pod_env(pod)
        pod.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(pod.log_path, "ab") as log_file:
            pod.process = await asyncio.create_subprocess_exec(
                *pod.deployment.image.command(), env=env, cwd=pod.directory,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,  # its own process group: the "container"
            )
        pod.phase = "Running"
        log.info("pod %s started: pid %d", pod.name, pod.process.pid)
        if pod.deployment.readiness is None:
            self.set_ready(pod, True)  # no readiness probe: ready once running

    async def stop_container(self, pod: Pod, grace: float) -> None:
        """SIGTERM to the main process (PID 1 of a container), SIGKILL after ``grace``."""
        process = pod.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace)
        kill_group(process.pid)
        await process.wait()

    def pod_env(self, pod: Pod) -> dict[str, str]:
        fields = {"metadata.name": pod.name, "metadata.namespace": manifests.NAMESPACE,
                  "status.podIP": pod.ip}
        env = manifests.container_env(pod.deployment, self.spec.configmaps, fields)
        env = localize(env, pod, self.dns(), self.stand_ins())
        # What a container has without asking: a PATH, a home of its own. It
        # inherits nothing else from whoever ran `canarylab up`.
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        env.setdefault("HOME", str(pod.directory))
        env[MARKER] = str(self.state.path)
        return env

    def dns(self) -> dict[str, str]:
        return dict(self.service_ips)

    def stand_ins(self) -> dict[str, StandIn]:
        xray_host, xray_port = split_address(self.settings.xray_address)
        smtp_host, smtp_port = split_address(self.settings.smtp_address)
        return {
            "xray-service": StandIn(xray_host, xray_port),
            "smtp-service": StandIn(smtp_host, smtp_port, port_setting="AWS_MAIL_SERVER_PORT"),
        }

    def probe_loops(self, pod: Pod) -> list:
        loops = []
        if pod.deployment.readiness:
            loops.append(self.probe_loop(pod, pod.deployment.readiness, self.on_readiness))
        if pod.deployment.liveness:
            loops.append(self.probe_loop(pod, pod.deployment.liveness, self.on_liveness))
        return loops

    async def probe_loop(self, pod: Pod, probe: manifests.Probe, act) -> None:
        """Probe every period; ``act`` sees the runs of successes and failures."""
        await asyncio.sleep(probe.initial_delay * TIME_SCALE)
        successes = failures = 0
        while True:
            if await http_probe(pod.ip, probe.port, probe.path, probe.timeout):
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
            await act(pod, probe, successes, failures)
            await asyncio.sleep(probe.period * TIME_SCALE)

    async def on_readiness(self, pod: Pod, probe: manifests.Probe,
                           successes: int, failures: int) -> None:
        if successes >= probe.success_threshold:
            self.set_ready(pod, True)
        elif failures >= probe.failure_threshold:
            self.set_ready(pod, False)

    async def on_liveness(self, pod: Pod, probe: manifests.Probe,
                          successes: int, failures: int) -> None:
        if failures >= probe.failure_threshold:
            log.warning("pod %s failed its liveness probe %d times: restarting",
                        pod.name, failures)
            # run_pod sees the exit and restarts it; this probe loop is cancelled then.
            await self.stop_container(pod, pod.deployment.grace_seconds * TIME_SCALE)

    # -- Services --

    def set_ready(self, pod: Pod, ready: bool) -> None:
        if pod.ready == ready:
            return
        pod.ready = ready
        log.info("pod %s %s", pod.name, "ready" if ready else "not ready")
        self.sync_endpoints()

    def endpoints(self, name: str) -> list[tuple[str, int]]:
        """What kube-proxy sends a Service's traffic to: ready pods its selector matches."""
        service = self.spec.services[name]
        target = service.ports[0].target
        found = []
        for pod in self.pods:
            if not pod.ready or not manifests.selects(service.selector, pod.labels):
                continue
            with contextlib.suppress(KeyError):  # a pod without the named port is skipped
                found.append((pod.ip, pod.deployment.container_port(target)))
        return found

    def sync_endpoints(self) -> None:
        ready = {name: self.endpoints(name) for name in self.proxies}
        for name, proxy in self.proxies.items():
            proxy.set_endpoints(ready[name])
        if self.iptables is not None:
            try:
                self.iptables.sync({self.proxies[name].address: endpoints
                                    for name, endpoints in ready.items()})
            except IptablesUnavailable as error:  # the rules stay as they were
                log.error("cannot update the Services' iptables rules: %s", error)

    # -- what the command line asks --

    def status(self) -> dict:
        deployments = []
        for name, spec in self.spec.deployments.items():
            pods = [p for p in self.pods if p.deployment.name == name and not p.deleting]
            deployments.append({
                "name": name,
                "version": spec.pod_labels.get("version"),
                "image": spec.image_ref,
                "desired": self.replicas[name],
                "ready": sum(p.ready for p in pods),
            })
        services = [{
            "name": name,
            "address": f"{self.service_ips[name]}:{spec.ports[0].port}",
            "endpoints": [f"{ip}:{port}" for ip, port in self.endpoints(name)],
            "proxy": self.proxy_mode,
        } for name, spec in self.spec.services.items()]
        return {
            "deployments": deployments,
            "pods": [pod.status() for pod in sorted(self.pods, key=lambda p: p.name)],
            "services": services,
            "usermgmt_url": self.usermgmt_url(),
            # How Services reach pods here: "iptables" (kernel NAT rules, as
            # kube-proxy) or "userspace" (canarylab.proxy.ServiceProxy).
            "proxy_mode": self.proxy_mode,
        }

    def usermgmt_url(self) -> str | None:
        """The URL of the Service in front of the user-management image's pods."""
        for deployment in self.spec.deployments.values():
            if deployment.image.repository != "canarylab/user-management":
                continue
            for name, service in self.spec.services.items():
                if manifests.selects(service.selector, deployment.pod_labels):
                    return f"http://{self.service_ips[name]}:{service.ports[0].port}/usermgmt"
        return None

    def scale(self, deployment: str, replicas: int) -> dict:
        if deployment not in self.spec.deployments:
            raise ValueError(f"no Deployment named {deployment} "
                             f"(there are {', '.join(self.spec.deployments)})")
        if replicas < 0:
            raise ValueError("replicas must be 0 or more")
        others = sum(n for name, n in self.replicas.items() if name != deployment)
        if others + replicas > len(self.free_ips) + len(self.pods):
            raise ValueError(f"the pod network {self.settings.pod_network} has room for "
                             f"{len(self.free_ips) + len(self.pods)} pods")
        self.replicas[deployment] = replicas
        self.reconcile(deployment)
        return {"deployment": deployment, "replicas": replicas}

    def traces(self) -> dict:
        """Write the collected segments to the state directory for the command line."""
        if self.collector is None:
            return {"collected": False, "address": self.settings.xray_address}
        segments = self.collector.segments
        write_segments(self.state.segments, segments)
        return {"collected": True, "address": self.settings.xray_address,
                "file": str(self.state.segments), "count": len(segments)}

    def mail(self) -> dict:
        """The mails the local SMTP server received, newest last."""
        messages = self.mail_sink.messages if self.mail_sink else []
        return {"address": self.settings.smtp_address, "messages": [
            {"from": m.mail_from, "to": m.recipients, "subject": m.subject,
             "text": m.text, "html": m.html is not None} for m in messages]}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One control request: a JSON line in, a JSON line out."""
        try:
            request = json.loads(await reader.readline())
            op = request.get("op")
            if op == "status":
                result = self.status()
            elif op == "scale":
                result = self.scale(request["deployment"], int(request["replicas"]))
            elif op == "traces":
                result = self.traces()
            elif op == "mail":
                result = self.mail()
            elif op == "shutdown":
                asyncio.get_running_loop().create_task(self.stop())
                result = {"pid": os.getpid()}
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = {"ok": True, "result": result}
        except (ValueError, KeyError, TypeError) as error:
            answer = {"ok": False, "error": str(error)}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


# -- the supervisor process ---------------------------------------------------------


async def supervise(state: StateDir) -> None:
    settings, spec = state.load()
    cluster = Cluster(state, settings, spec)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: loop.create_task(cluster.stop()))
    try:
        try:
            await cluster.start()
        except StartError as error:
            log.error("%s", error)
            await cluster.stop()
            raise SystemExit(1) from None
        server = await asyncio.start_unix_server(cluster.handle, path=str(state.socket))
        state.pid_file.write_text(f"{os.getpid()}\n")
        log.info("cluster running; control socket %s", state.socket)
        await cluster.stopped.wait()
        server.close()
    finally:
        cluster.stop_iptables()  # whatever ended the supervisor: no rule outlives it
    state.socket.unlink(missing_ok=True)
    state.pid_file.unlink(missing_ok=True)
    log.info("cluster stopped")


# -- iptables rules that outlive nothing --------------------------------------------


def iptables_chain(state: StateDir) -> str:
    """The cluster's own chain: named after its state directory, so clusters of
    parallel test runs never share one (iptables allows 28 characters)."""
    return "CANARYLAB-" + hashlib.sha256(str(state.path).encode()).hexdigest()[:16].upper()


def start_janitor(iptables: IptablesServices) -> subprocess.Popen:
    """A small process that removes the rules once the supervisor is gone, however.

    It waits for the end of a pipe whose other end only the supervisor holds:
    the kernel closes that end when the supervisor exits for any reason, even
    SIGKILL, when no code of its own can run. It carries no cluster MARKER, so
    `down` leaves it alone; on a clean stop the supervisor removes the rules and
    kills it.
    """
    env = {key: value for key, value in os.environ.items() if key != MARKER}
    return subprocess.Popen(
        [sys.executable, "-m", "canarylab.cluster", "--janitor", iptables.chain,
         iptables.network],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True)


def janitor(chain: str, network: str) -> None:
    sys.stdin.buffer.read()  # returns when the supervisor's end of the pipe closes
    IptablesServices(chain, network).remove()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--janitor"]:
        janitor(*argv[1:3])
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(supervise(StateDir(Path(argv[0]))))


if __name__ == "__main__":
    main(sys.argv[1:])
