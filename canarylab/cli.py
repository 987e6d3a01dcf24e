"""The `canarylab` command: run the k8s/ manifests locally, look at them, change the split.

    canarylab up [OVERLAY]          render the overlay with kustomize and run it here
    canarylab status [--json]       Deployments, pods, Services (and endpoints)
    canarylab scale DEPLOYMENT N    like kubectl scale, live
    canarylab split PERCENT         the v2 share as replica counts, applied live
    canarylab traces [--json]       the service map from the collected X-Ray segments
    canarylab mail [--json]         the mails the local SMTP server received
    canarylab demo [OVERLAY]        up, traffic, observed vs declared split, traces, down
    canarylab plan --expect 75/25   requests a split check needs
    canarylab verify                the Locust suite against the cluster: verdict as exit code
    canarylab listen                SMTP and X-Ray stand-ins in the foreground (services by hand)
    canarylab down                  stop everything `up` started

`up` starts a detached supervisor (canarylab.cluster) and returns once every pod is
ready; the other commands talk to it over a Unix socket in $CANARYLAB_HOME
(default ~/.canarylab). With ``--context NAME``, status, scale and split act on a
real cluster through kubectl instead, and print the same tables and JSON.

Settings read from the environment (each has a matching option of `up`):

| variable                  | default        | meaning                                  |
|---------------------------|----------------|------------------------------------------|
| CANARYLAB_HOME            | ~/.canarylab   | state: control socket, logs, pod dirs    |
| CANARYLAB_POD_NETWORK     | 127.244.0.0/24 | pod addresses                            |
| CANARYLAB_SERVICE_NETWORK | 127.96.0.0/24  | Service addresses                        |
| CANARYLAB_XRAY_ADDRESS    | 127.0.0.1:2000 | the local X-Ray collector (UDP)          |
| CANARYLAB_SMTP_ADDRESS    | 127.0.0.1:1025 | the local mail sink                      |
| AWS_XRAY_DAEMON_ADDRESS   | unset          | if set, segments go there, not collected |
| CANARYLAB_KUBECTL         | venv's kubectl | the kubectl that --context uses          |
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from canarylab import manifests, xray
from canarylab.cluster import (
    DEFAULT_POD_NETWORK,
    DEFAULT_SERVICE_NETWORK,
    DEFAULT_SMTP_ADDRESS,
    DEFAULT_XRAY_ADDRESS,
    Settings,
    StateDir,
    loopback_network,
    marked_processes,
    pid_alive,
    split_address,
)
from canarylab.images import REPO_ROOT

DEFAULT_OVERLAY = REPO_ROOT / "k8s" / "overlays" / "75-25"
# The two Deployments behind the one notification Service: the stable version and
# the canary. `split` moves replicas between them.
STABLE, CANARY = "notification-v1", "notification-v2"
SPLIT_TOTAL = 4
READY_TIMEOUT = 60.0


class CommandError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def state_dir() -> StateDir:
    home = os.environ.get("CANARYLAB_HOME") or Path.home() / ".canarylab"
    return StateDir(Path(home))


# -- talking to the supervisor ------------------------------------------------------


def control(state: StateDir, op: str, **fields) -> dict:
    """Send one request to the supervisor and return its result."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(state.socket))
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline() or b"null")
    except (FileNotFoundError, ConnectionRefusedError):
        raise CommandError(f"no local cluster is running (CANARYLAB_HOME={state.path}); "
                           "start one with `canarylab up`") from None
    if not answer or not answer.get("ok"):
        raise CommandError((answer or {}).get("error", "the supervisor gave no answer"), 2)
    return answer["result"]


def wait_until_ready(state: StateDir, timeout: float, supervisor=None,
                     progress: bool = False) -> dict:
    """Poll status until every Deployment has exactly its desired ready pods."""
    started = time.monotonic()
    shown = None
    while True:
        if supervisor is not None and supervisor.poll() is not None:
            raise CommandError(f"the supervisor exited ({supervisor.returncode}):\n"
                               + tail(state.log))
        try:
            status = control(state, "status")
        except CommandError:
            if supervisor is None:
                raise
            status = None  # still starting: no control socket yet
        if status is not None:
            ready, desired = ready_counts(status)
            if progress and (ready, desired) != shown:
                shown = (ready, desired)
                print(f"  {ready}/{desired} pods ready ({time.monotonic() - started:.1f} s)",
                      file=sys.stderr, flush=True)
            if ready == desired and len(status["pods"]) == desired:
                return status
        if time.monotonic() - started > timeout:
            waiting = [p["name"] for p in (status or {}).get("pods", []) if not p["ready"]]
            raise CommandError(f"not every pod is ready after {timeout:.0f} s (not ready: "
                               f"{', '.join(waiting) or 'none started'}); the cluster keeps "
                               f"trying: see `canarylab status`, the logs in {state.logs}, "
                               "and `canarylab down` to stop it")
        time.sleep(0.1)


def ready_counts(status: dict) -> tuple[int, int]:
    deployments = status["deployments"]
    return sum(d["ready"] for d in deployments), sum(d["desired"] for d in deployments)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- up and down --------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> None:
    state = state_dir()
    if state.supervisor_pid():
        raise CommandError(f"a local cluster is already running (CANARYLAB_HOME={state.path}); "
                           "`canarylab down` first")
    started = time.monotonic()
    overlay = Path(args.overlay)
    try:
        rendered = manifests.render(overlay)
        spec = manifests.parse(rendered)
        check_networks(args.pod_network, args.service_network)
    except ValueError as error:  # manifests.Unsupported is a ValueError
        raise CommandError(f"refused: {error}", 2) from None
    for notice in spec.notices:
        print(f"note: {notice}")
    settings = make_settings(args, overlay)
    stop_leftovers(state)
    prepare(state, settings, rendered)
    supervisor = start_supervisor(state)
    print(f"starting {sum(d.replicas for d in spec.deployments.values())} pods "
          f"from {overlay} ...", file=sys.stderr, flush=True)
    status = wait_until_ready(state, args.timeout, supervisor, progress=True)
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    print(f"user-management: {status['usermgmt_url']}")
    for service in status["services"]:
        print(f"service {service['name']}: {service['address']} "
              f"({len(service['endpoints'])} endpoints)")
    xray = (f"X-Ray segments: udp {settings.xray_address}"
            + (" (collected: `canarylab traces`)" if settings.collect_xray else
               " (AWS_XRAY_DAEMON_ADDRESS; not collected here)"))
    print(xray)
    print(f"mail: smtp {settings.smtp_address}")
    print("stop it with `canarylab down`")


def check_networks(pod_network: str, service_network: str) -> None:
    """Both inside 127.0.0.0/8, apart, and clear of 127.0.0.1 and 127.0.0.2: in iptables
    mode every connection to the Service network is rewritten, so it must hold nothing
    else the machine talks to (127.0.0.1 is everybody's; 127.0.0.2 is the probes')."""
    pods, services = loopback_network(pod_network), loopback_network(service_network)
    if pods.overlaps(services):
        raise ValueError(f"the pod network {pods} and the Service network {services} overlap")
    for network in (pods, services):
        for taken in ("127.0.0.1", "127.0.0.2"):
            if ipaddress.ip_address(taken) in network:
                raise ValueError(f"{network} holds {taken}, which is not the cluster's to use: "
                                 "pick a network such as 127.244.0.0/24")


def make_settings(args: argparse.Namespace, overlay: Path) -> Settings:
    daemon = os.environ.get("AWS_XRAY_DAEMON_ADDRESS")
    for address in (args.xray_address, args.smtp_address, daemon):
        if address:
            try:
                split_address(address)
            except ValueError:
                raise CommandError(f"{address}: expected HOST:PORT", 2) from None
    return Settings(
        overlay=str(overlay),
        pod_network=args.pod_network,
        service_network=args.service_network,
        xray_address=daemon or args.xray_address,
        collect_xray=not daemon,
        smtp_address=args.smtp_address,
    )


def prepare(state: StateDir, settings: Settings, rendered: str) -> None:
    """A clean state directory: last run's pods and logs go, the new spec is written."""
    if len(str(state.socket).encode()) > 107:  # sun_path's size on Linux, minus the NUL
        raise CommandError(f"CANARYLAB_HOME={state.path} is too long for a Unix socket path")
    for directory in (state.pods, state.logs):
        shutil.rmtree(directory, ignore_errors=True)
    state.save(settings, rendered)


def start_supervisor(state: StateDir) -> subprocess.Popen:
    """The detached supervisor: its own session, so it outlives this command."""
    env = {**os.environ, "CANARYLAB_CLUSTER": str(state.path)}
    with open(state.log, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "canarylab.cluster", str(state.path)],
            cwd=state.path, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )


def cmd_down(args: argparse.Namespace) -> None:
    state = state_dir()
    pid = state.supervisor_pid()
    if pid is None and not marked_processes(state):
        print(f"no local cluster is running (CANARYLAB_HOME={state.path})")
        return
    pods = 0
    if pid is not None:
        pods = len(control(state, "status")["pods"])
        control(state, "shutdown")
        if not wait_for_exit([pid], timeout=30):
            print(f"the supervisor (pid {pid}) did not stop; killing it", file=sys.stderr)
    left = stop_leftovers(state)
    print(f"cluster stopped: {pods} pods deleted"
          + (f", {left} stray processes killed" if left else "") + "; no process left")


def stop_leftovers(state: StateDir) -> int:
    """SIGKILL every process group still marked as this cluster's; verify none is left."""
    pids = marked_processes(state)
    for pid in pids:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if not wait_for_exit(pids, timeout=5) or marked_processes(state):
        raise CommandError(f"processes of the cluster are still running: {marked_processes(state)}")
    state.socket.unlink(missing_ok=True)
    state.pid_file.unlink(missing_ok=True)
    return len(pids)


def wait_for_exit(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- status, scale, split -----------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> None:
    status = kube_status(args.context) if args.context else control(state_dir(), "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return
    print(table(["DEPLOYMENT", "VERSION", "READY", "IMAGE"],
                [[d["name"], d["version"] or "-", f"{d['ready']}/{d['desired']}", d["image"]]
                 for d in status["deployments"]]))
    print()
    print(table(["POD", "READY", "STATUS", "RESTARTS", "IP"],
                [[p["name"], "yes" if p["ready"] else "no", p["status"], p["restarts"],
                  p["ip"] or "-"] for p in status["pods"]]))
    print()
    # PROXY: how the local cluster sends a Service's traffic to its pods: "iptables" (in
    # the kernel, like kube-proxy; needs root) or "userspace" (canarylab/proxy.py).
    print(table(["SERVICE", "ADDRESS", "ENDPOINTS", "PROXY"],
                [[s["name"], s["address"], ", ".join(s["endpoints"]) or "(none ready)",
                  s.get("proxy", "kube-proxy" if args.context else "userspace")]
                 for s in status["services"]]))
    print()
    print(f"user-management: {status['usermgmt_url'] or '(no address reachable from here)'}")


def table(headers: list[str], rows: list[list]) -> str:
    """Columns aligned to their widest cell, like kubectl's tables."""
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in cells)


def cmd_scale(args: argparse.Namespace) -> None:
    apply_replicas({args.deployment: args.replicas}, args.context, args.timeout)


def apply_replicas(changes: dict[str, int], context: str | None, timeout: float) -> None:
    """Set replica counts: growing Deployments first, so capacity never dips."""
    current = current_replicas(context)
    for name in changes:
        if name not in current:
            raise CommandError(f"no Deployment named {name} (there are {', '.join(current)})", 2)
    growing = {n: r for n, r in changes.items() if r >= current[n]}
    shrinking = {n: r for n, r in changes.items() if r < current[n]}
    for step in (growing, shrinking):
        for name, replicas in step.items():
            scale(name, replicas, context)
            print(f"deployment.apps/{name} scaled to {replicas}")
        if step:
            wait_scaled(list(step), context, timeout)


def current_replicas(context: str | None) -> dict[str, int]:
    status = kube_status(context) if context else control(state_dir(), "status")
    return {d["name"]: d["desired"] for d in status["deployments"]}


def scale(name: str, replicas: int, context: str | None) -> None:
    if context:
        kubectl(context, "scale", f"deployment/{name}", f"--replicas={replicas}")
    else:
        control(state_dir(), "scale", deployment=name, replicas=replicas)


def wait_scaled(names: list[str], context: str | None, timeout: float) -> None:
    """Wait until those Deployments run exactly their replicas, all ready."""
    if context:
        for name in names:
            kubectl(context, "rollout", "status", f"deployment/{name}", f"--timeout={timeout:.0f}s")
        return
    deadline = time.monotonic() + timeout
    while True:
        status = control(state_dir(), "status")
        if all(scaled(status, name) for name in names):
            return
        if time.monotonic() > deadline:
            raise CommandError(f"{', '.join(names)} not ready after {timeout:.0f} s; "
                               "see `canarylab status`")
        time.sleep(0.1)


def scaled(status: dict, name: str) -> bool:
    deployment = next(d for d in status["deployments"] if d["name"] == name)
    pods = [p for p in status["pods"] if p["deployment"] == name]
    return deployment["ready"] == deployment["desired"] == len(pods)


def split_replicas(percent: Fraction, total: int) -> tuple[int, int]:
    """(stable, canary) pods for a canary share: the nearest whole pod, ties to stable."""
    exact = percent * total / 100
    canary = int(exact) if exact - int(exact) <= Fraction(1, 2) else int(exact) + 1
    return total - canary, canary


def percent_text(value: Fraction) -> str:
    return f"{float(value):.0f}%" if value.denominator == 1 else f"{float(value):.1f}%"


def describe_split(percent: Fraction, total: int) -> str:
    """What a split becomes in whole pods: '41% of 6 pods is 4/2 = 33.3% to ...'."""
    stable, canary = split_replicas(percent, total)
    achieved = Fraction(100 * canary, total)
    text = (f"{percent_text(percent)} of {total} pods is {stable}/{canary} = "
            f"{percent_text(achieved)} to {CANARY}")
    if achieved != percent:
        tie = (percent * total / 100).denominator == 2
        text += (" (rounded to the nearest whole pod"
                 + (f"; a tie goes to {STABLE}" if tie else "") + ")")
    if 0 < percent < 100 and canary in (0, total):
        text += f"\nwarning: {CANARY if canary == 0 else STABLE} gets no pod; use a larger --total"
    return text


def cmd_split(args: argparse.Namespace) -> None:
    if args.mode == "weights":
        return split_weights(args)
    try:
        percent = Fraction(args.percent)
    except ValueError:
        raise CommandError(f"{args.percent}: expected a percentage such as 25", 2) from None
    if not 0 <= percent <= 100 or args.total < 1:
        raise CommandError("PERCENT must be 0 to 100 and --total at least 1", 2)
    stable, canary = split_replicas(percent, args.total)
    print(describe_split(percent, args.total))
    apply_replicas({STABLE: stable, CANARY: canary}, args.context, args.timeout)
    print("\nfor a real cluster, in the overlay's kustomization.yaml:")
    print(replicas_patch(stable, canary))


def split_weights(args: argparse.Namespace) -> None:
    """--mode weights: the mesh documents for PERCENT (canarylab.weights), printed, and
    applied with kubectl when --context names a cluster."""
    from canarylab import weights

    try:
        text = weights.render(args.percent, args.mesh, args.namespace)
    except ValueError as error:
        raise CommandError(str(error), 2) from None
    print(text, end="")
    if not args.context:
        return
    command = [kubectl_path(), "--context", args.context, "apply", "-f", "-"]
    result = subprocess.run(command, input=text, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CommandError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    print(result.stdout, end="")


def replicas_patch(stable: int, canary: int) -> str:
    return (f"replicas:\n  - name: {STABLE}\n    count: {stable}\n"
            f"  - name: {CANARY}\n    count: {canary}")


# -- a real cluster through kubectl -------------------------------------------------


def kubectl_path() -> str:
    return os.environ.get("CANARYLAB_KUBECTL") or str(manifests.kubectl())


def kubectl(context: str, *args: str) -> str:
    command = [kubectl_path(), "--context", context, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CommandError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    return result.stdout


def kube_status(context: str) -> dict:
    """`kubectl get deploy,pods,svc -o json`, reshaped to the local status JSON."""
    items = json.loads(kubectl(context, "get", "deploy,pods,svc", "-o", "json"))["items"]
    return reshape(items)


def reshape(items: list[dict]) -> dict:
    by_kind: dict[str, list[dict]] = {"Deployment": [], "Pod": [], "Service": []}
    for item in items:
        by_kind.setdefault(item["kind"], []).append(item)
    deployments = [{
        "name": d["metadata"]["name"],
        "version": d["spec"]["template"]["metadata"].get("labels", {}).get("version"),
        "image": d["spec"]["template"]["spec"]["containers"][0]["image"],
        "desired": d["spec"].get("replicas", 1),
        "ready": d.get("status", {}).get("readyReplicas", 0),
    } for d in by_kind["Deployment"]]
    pods = [kube_pod(p, by_kind["Deployment"]) for p in by_kind["Pod"]]
    services = [kube_service(s, by_kind["Pod"]) for s in by_kind["Service"]]
    return {"deployments": deployments, "pods": pods, "services": services,
            "usermgmt_url": kube_usermgmt_url(by_kind["Service"], by_kind["Deployment"])}


def kube_pod(pod: dict, deployments: list[dict]) -> dict:
    labels = pod["metadata"].get("labels", {})
    owner = next((d["metadata"]["name"] for d in deployments
                  if manifests.selects(d["spec"]["selector"].get("matchLabels", {}), labels)),
                 None)
    status = pod.get("status", {})
    containers = status.get("containerStatuses", [])
    waiting = [c["state"]["waiting"].get("reason") for c in containers
               if "waiting" in c.get("state", {})]
    return {
        "name": pod["metadata"]["name"],
        "deployment": owner,
        "version": labels.get("version"),
        "ip": status.get("podIP"),
        "ready": kube_ready(pod),
        "restarts": sum(c.get("restartCount", 0) for c in containers),
        "status": "Terminating" if pod["metadata"].get("deletionTimestamp")
        else (waiting[0] if waiting and waiting[0] else status.get("phase", "Unknown")),
        "pid": None,
    }


def kube_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def kube_service(service: dict, pods: list[dict]) -> dict:
    """A Service and its endpoints: ready pods its selector matches (as kube-proxy sees)."""
    spec = service["spec"]
    port = spec["ports"][0]
    target = port.get("targetPort", port["port"])
    endpoints = []
    for pod in pods:
        if not spec.get("selector") or not kube_ready(pod):
            continue
        if not manifests.selects(spec["selector"], pod["metadata"].get("labels", {})):
            continue
        container_port = target if isinstance(target, int) else next(
            (p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
             if p.get("name") == target), None)
        if container_port is not None:
            endpoints.append(f"{pod['status']['podIP']}:{container_port}")
    return {"name": service["metadata"]["name"],
            "address": f"{spec.get('clusterIP')}:{port['port']}", "endpoints": endpoints}


def kube_usermgmt_url(services: list[dict], deployments: list[dict]) -> str | None:
    """The user-management Service's external address, if it has one (LoadBalancer)."""
    labels = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments
              if "user-management" in d["spec"]["template"]["spec"]["containers"][0]["image"]]
    for service in services:
        selector = service["spec"].get("selector") or {}
        if not any(selector and manifests.selects(selector, lab) for lab in labels):
            continue
        for ingress in service.get("status", {}).get("loadBalancer", {}).get("ingress", []):
            host = ingress.get("ip") or ingress.get("hostname")
            return f"http://{host}:{service['spec']['ports'][0]['port']}/usermgmt"
    return None


# -- traces ---------------------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> None:
    traces = control(state_dir(), "traces")
    if not traces["collected"]:
        raise CommandError(f"segments go to {traces['address']} (AWS_XRAY_DAEMON_ADDRESS was "
                           "set at `up`); the local cluster collected none")
    graph = xray.service_map(xray.read_segments(traces["file"]))
    if args.json:
        print(json.dumps(dataclasses.asdict(graph), indent=2))
    else:
        print(xray.render_service_map(graph))


# -- mail ------------------------------------------------------------------------------


def cmd_mail(args: argparse.Namespace) -> None:
    mail = control(state_dir(), "mail")
    if args.json:
        print(json.dumps(mail, indent=2))
        return
    if not mail["messages"]:
        print(f"no mail yet at smtp {mail['address']}")
    for message in mail["messages"]:
        parts = "text + html" if message["html"] else "text"
        print(f"From {message['from']} to {', '.join(message['to'])}: "
              f"{message['subject']} ({parts})")
        for line in (message["text"] or "").strip().splitlines():
            print(f"    {line}")


# -- the parser -----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="canarylab", description="Run and steer canarylab's k8s/ manifests, locally "
        "(no Docker, no Kubernetes) or on a real cluster (--context).")
    commands = top.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run an overlay on this machine")
    up.add_argument("overlay", nargs="?", default=str(DEFAULT_OVERLAY),
                    help=f"kustomize overlay (default {DEFAULT_OVERLAY.relative_to(REPO_ROOT)})")
    env = os.environ.get
    up.add_argument("--pod-network",
                    default=env("CANARYLAB_POD_NETWORK", DEFAULT_POD_NETWORK))
    up.add_argument("--service-network",
                    default=env("CANARYLAB_SERVICE_NETWORK", DEFAULT_SERVICE_NETWORK))
    up.add_argument("--xray-address", help="UDP address of the local X-Ray collector",
                    default=env("CANARYLAB_XRAY_ADDRESS", DEFAULT_XRAY_ADDRESS))
    up.add_argument("--smtp-address", help="address of the local mail sink",
                    default=env("CANARYLAB_SMTP_ADDRESS", DEFAULT_SMTP_ADDRESS))
    up.add_argument("--timeout", type=float, default=READY_TIMEOUT,
                    help="seconds to wait for every pod to be ready")
    up.set_defaults(run=cmd_up)

    down = commands.add_parser("down", help="stop the local cluster, leave no process")
    down.set_defaults(run=cmd_down)

    status = commands.add_parser("status", help="Deployments, pods, Services")
    status.add_argument("--json", action="store_true")
    status.add_argument("--context", help="a kubectl context: a real cluster")
    status.set_defaults(run=cmd_status)

    scale_ = commands.add_parser("scale", help="set a Deployment's replicas, live")
    scale_.add_argument("deployment")
    scale_.add_argument("replicas", type=int)
    scale_.add_argument("--context", help="a kubectl context: a real cluster")
    scale_.add_argument("--timeout", type=float, default=READY_TIMEOUT)
    scale_.set_defaults(run=cmd_scale)

    split = commands.add_parser("split", help=f"send PERCENT of calls to {CANARY}")
    split.add_argument("percent", help="the canary's share, 0 to 100")
    split.add_argument("--total", type=int, default=SPLIT_TOTAL,
                       help=f"notification pods in all (default {SPLIT_TOTAL})")
    split.add_argument("--context", help="a kubectl context: a real cluster")
    split.add_argument("--timeout", type=float, default=READY_TIMEOUT)
    split.add_argument("--mode", choices=["replicas", "weights"], default="replicas",
                       help="replicas (default): pod counts; weights: Istio / Gateway API "
                            "weights for a mesh (k8s/components/istio, gateway-api)")
    split.add_argument("--mesh", choices=["istio", "gateway-api", "both"], default="both",
                       help="with --mode weights: which documents (default both)")
    split.add_argument("--namespace", default="canarylab",
                       help="with --mode weights: their namespace (default canarylab)")
    split.set_defaults(run=cmd_split)

    traces = commands.add_parser("traces", help="service map of the collected X-Ray segments")
    traces.add_argument("--json", action="store_true")
    traces.set_defaults(run=cmd_traces)

    mail = commands.add_parser("mail", help="the mails the local SMTP server received")
    mail.add_argument("--json", action="store_true")
    mail.set_defaults(run=cmd_mail)

    listen = commands.add_parser(
        "listen", help="an SMTP server and an X-Ray daemon stand-in, printing what arrives")
    listen.add_argument("--smtp-address", default=DEFAULT_SMTP_ADDRESS)
    listen.add_argument("--xray-address", default=DEFAULT_XRAY_ADDRESS)
    listen.set_defaults(run=listen_command)

    demo = commands.add_parser("demo", help="up, traffic, the observed split, traces, down")
    demo.add_argument("overlay", nargs="?", default=str(DEFAULT_OVERLAY))
    demo.add_argument("--scenario", choices=["healthy", "errors", "slow", "subtle"],
                      help="faults on the v2 pods (k8s/components/faults) and a canary "
                           "analysis: promote, hold or rollback")
    demo.add_argument("--requests", type=int, default=None,
                      help="calls to send (default 2000; 8000 with --scenario)")
    demo.add_argument("--concurrency", type=int, default=4)
    demo.add_argument("--max-seconds", type=float, default=None,
                      help="stop sending after this long, whatever the count (default 60; "
                           "30 with --scenario)")
    demo.add_argument("--reports", default="reports", help="where the report folder goes")
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.set_defaults(run=demo_command)

    plan = commands.add_parser("plan", help="requests a split check needs (fixed-n plan)")
    plan.add_argument("--expect", required=True, help="declared split v1/v2, like 75/25")
    plan.add_argument("--margin", type=float, default=5.0,
                      help="equivalence margin in percentage points (default 5)")
    plan.add_argument("--power", type=float, default=0.9,
                      help="chance that a correct split verifies (default 0.9, what verify uses)")
    plan.set_defaults(run=plan_command)

    verify = commands.add_parser(
        "verify", help="run the Locust suite headless; exit 0 verified, 1 mismatch, 2 inconclusive")
    analyze = commands.add_parser(
        "analyze", help="verify the split AND judge v2 against v1 (errors, latency): exit 0 "
                        "promote, 1 rollback or mismatch, 2 hold")
    for command, calls, seconds in ((verify, "1.3x the plan", 30.0),
                                    (analyze, "the larger of 4000 and 1.3x the plan", 60.0)):
        command.add_argument("--expect", default="auto",
                             help="declared split v1/v2, like 75/25; auto (default): the local "
                                  "cluster's notification-v1/v2 replica counts")
        command.add_argument("--margin", type=float, default=5.0,
                             help="equivalence margin in percentage points (default 5)")
        command.add_argument("--users", type=int, default=32, help="Locust users (default 32)")
        command.add_argument("--max-requests", type=int, default=None,
                             help=f"stop after this many canary calls (default {calls}; "
                                  "0: only --seconds stops the run)")
        command.add_argument("--seconds", type=float, default=seconds,
                             help=f"stop after this long, whatever the count (default "
                                  f"{seconds:g})")
        command.add_argument("--host",
                             help="user-management's base URL (default: the local cluster's)")
        command.add_argument("--context",
                             help="a kubectl context: --expect auto reads that cluster's "
                                  "replica counts (give --host too)")
        command.add_argument("--reports", default="reports",
                             help="where the report folder goes")
    from canarylab import rollout

    rollout.add_parser(commands)
    # Not for analyze: the split is decided after about a thousand calls, long before the
    # canary's p99 can be judged, so stopping there would end nearly every run in "hold".
    verify.add_argument("--sequential", action="store_true",
                        help="look all along and stop at the first decision of the "
                             "anytime-valid split test (ceiling: 3x the plan)")
    verify.set_defaults(analysis=None)
    analyze.set_defaults(sequential=False)
    analyze.add_argument("--analysis", default=None, metavar="FILE",
                         help="the checks and thresholds (default loadtest/analysis.yaml)")
    analyze.set_defaults(run=verify_command, analyze=True)
    verify.set_defaults(run=verify_command)
    return top


def listen_command(args: argparse.Namespace) -> int:
    from canarylab.listen import cmd_listen

    return cmd_listen(args)


def demo_command(args: argparse.Namespace) -> int:
    from canarylab.demo import cmd_demo

    return cmd_demo(args)


def plan_command(args: argparse.Namespace) -> int:
    from canarylab.verify import cmd_plan

    return cmd_plan(args)


def verify_command(args: argparse.Namespace) -> int:
    from canarylab.verify import cmd_verify

    return cmd_verify(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CommandError as error:
        print(f"canarylab: {error}", file=sys.stderr)
        return error.code
    except BrokenPipeError:  # `canarylab status | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
