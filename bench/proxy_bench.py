"""How much throughput does the local cluster's Service proxy cost?

Runs one gunicorn "pod" on its own loopback address and measures it with wrk
three ways, alternating round by round so that machine noise hits all alike:

- direct:   wrk -> pod
- proxy:    wrk -> canarylab.proxy.ServiceProxy -> pod
- streams:  wrk -> a plain asyncio-streams proxy -> pod (the naive baseline)
- iptables: wrk -> a Service address that canarylab.proxy.IptablesServices
            DNATs in the kernel to a second pod of the same app (kube-proxy's
            iptables mode, what the local cluster uses when it runs as root);
            left out where iptables cannot be used

It reports each proxy's throughput as a ratio of direct, and the proxy process's
own CPU time per request (user + system, from /proc), the steadier number on a
shared machine.

Requests go over a new connection each (``Connection: close``): that is what
user-management does, and what kube-proxy balances. With ``--worker-class
gthread`` they are also measured over kept-alive connections; gunicorn's sync
workers (the services' setting) close every connection after one response, so
keep-alive cannot be measured against them.

Needs: wrk on the PATH (Debian: ``apt-get install -y wrk``) and the venv from
``make install``; ``--loop uvloop`` also needs ``pip install uvloop``. It
installs nothing itself.

    .venv/bin/python bench/proxy_bench.py                          # hello app, 2 sync workers
    .venv/bin/python bench/proxy_bench.py --app notification       # the real notification app
    .venv/bin/python bench/proxy_bench.py --worker-class gthread   # plus keep-alive
    .venv/bin/python bench/proxy_bench.py --loop uvloop            # proxies on uvloop

Everything listens on 127.0.0.0/8 and every wrk run is bounded by --duration.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POD_ADDRESS = "127.0.0.11"
# The iptables target's own pod, the same app: wrk's connections rewritten to
# POD_ADDRESS would meet the TIME_WAIT sockets its direct rounds leave behind
# (same four addresses and ports, other TCP timestamps), and the pod's kernel
# drops such SYNs: stalls of a second that are the benchmark's, not the mode's.
IPTABLES_POD_ADDRESS = "127.0.0.12"
PROXY_ADDRESS = "127.0.0.21"
TARGETS = ("direct", "proxy", "streams", "iptables")
IPTABLES_ADDRESS = "127.0.0.23"
IPTABLES_CHAIN = f"CANARYLAB-BENCH-{os.getpid()}"


# -- the pod ----------------------------------------------------------------------------

def create_app():
    """A bare Flask hello app: the cheapest backend, so the proxy's cost shows most."""
    from flask import Flask

    app = Flask("hello")

    @app.get("/notification/health-status")
    def health():
        return {"status": "UP", "version": "v1", "pod": "bench-pod"}

    return app


def pod_command(args, port: int, address: str = POD_ADDRESS) -> tuple[list[str], dict]:
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    bind = f"{address}:{port}"
    if args.app == "notification":
        # The real app with its real gunicorn settings and tracing on; segments go
        # to a loopback port where nothing listens, as with no daemon running.
        env = dict(os.environ, **release_env("v1"), GUNICORN_BIND=bind, LOG_LEVEL="warning",
                   GUNICORN_WORKERS=str(args.workers),
                   AWS_XRAY_DAEMON_ADDRESS=f"127.0.0.1:{free_port('127.0.0.1')}")
        return [gunicorn, "-c", "python:servicekit.gunicorn_conf",
                "notification_service:create_app()"], env
    # gunicorn turns "sync" with --threads > 1 into gthread: pass threads only there.
    threads = ["--threads", "4"] if args.worker_class == "gthread" else []
    return [gunicorn, "--chdir", str(HERE), "-b", bind, "-w", str(args.workers),
            "-k", args.worker_class, *threads, "--log-level", "warning",
            "proxy_bench:create_app()"], dict(os.environ)


def release_env(version: str) -> dict[str, str]:
    lines = (ROOT / f"notification-{version}" / "release.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# -- the proxies, each in a process of its own, as the supervisor would run one -----------

async def serve_service_proxy(listen: tuple[str, int], pod: tuple[str, int]) -> None:
    from canarylab.proxy import ServiceProxy

    proxy = ServiceProxy(*listen, [pod])
    await proxy.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await proxy.stop()


async def serve_streams_proxy(listen: tuple[str, int], pod: tuple[str, int]) -> None:
    """The naive baseline: two coroutines per connection, copying through streams."""

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        pod_reader, pod_writer = await asyncio.open_connection(*pod)
        await asyncio.gather(pipe(client_reader, pod_writer), pipe(pod_reader, client_writer),
                             return_exceptions=True)

    await asyncio.start_server(handle, *listen, backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGTERM ends the process


def run_proxy_process(impl: str, listen: str, pod: str, loop: str) -> None:
    serve = serve_service_proxy if impl == "proxy" else serve_streams_proxy
    coro = serve(address(listen), address(pod))
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


# -- measuring ------------------------------------------------------------------------------

def wrk(url: str, duration: int, connections: int, keepalive: bool) -> tuple[float, int]:
    """Requests per second and number of requests of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url]
    if not keepalive:
        command[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         timeout=duration + 30).stdout
    errors = re.search(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", out)
    if errors:
        print(f"    wrk reported: {errors.group()}", file=sys.stderr)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, int(re.search(r"(\d+) requests in", out).group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(targets: dict, modes: list[str], args) -> dict:
    """Each round runs every mode against every target; per run: req/s, proxy µs/request."""
    results: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            for name, (url, pid) in targets.items():
                before = cpu_seconds(pid) if pid else 0.0
                rate, count = wrk(url, args.duration, args.connections, mode == "keep-alive")
                cost = (cpu_seconds(pid) - before) / max(count, 1) * 1e6 if pid else None
                results.setdefault((mode, name), []).append((rate, cost))
                shown = f"{cost:5.0f} us/request in the proxy" if pid else ""
                print(f"  round {round_no}  {mode:10} {name:8} {rate:7.0f} req/s  {shown}",
                      flush=True)
    return results


def report(results: dict, modes: list[str], args) -> None:
    print(f"\napp={args.app} workers={args.workers} worker-class={args.worker_class} "
          f"proxy loop={args.loop}; wrk -t1 -c{args.connections} -d{args.duration}s; "
          f"median of {args.rounds} rounds (min-max); {os.cpu_count()} cores")
    print(f"{'mode':11}{'target':9}{'req/s':>7}{'ratio':>7}  {'ratio range':12}{'proxy CPU':>11}")
    for mode in modes:
        directs = [rate for rate, _ in results[(mode, "direct")]]
        for name in TARGETS:
            if (mode, name) not in results:
                continue
            runs = results[(mode, name)]
            rates = [rate for rate, _ in runs]
            # Ratios pair each run with the direct run of the same round.
            ratios = [rate / direct for rate, direct in zip(rates, directs, strict=True)]
            spread = cost = ""
            if name != "direct":
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            if runs[0][1] is not None:  # a proxy process of its own (not the kernel)
                cost = f"{statistics.median(c for _, c in runs):6.0f} us/req"
            print(f"{mode:11}{name:9}{statistics.median(rates):7.0f}"
                  f"{statistics.median(ratios):7.2f}  {spread:12}{cost:>11}")


# -- processes --------------------------------------------------------------------------------

def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_listening(where: tuple[str, int], process: subprocess.Popen, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(where) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {where[0]}:{where[1]} (exit code {process.poll()})")


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("hello", "notification"), default="hello")
    parser.add_argument("--path", default="/notification/health-status")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default="sync")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", choices=("proxy", "streams"), help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parser.add_argument("--pod", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        run_proxy_process(args.serve, args.listen, args.pod, args.loop)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk (Debian) or brew install wrk", file=sys.stderr)
        return 2
    if args.app == "notification" and args.worker_class != "sync":
        parser.error("the notification app runs with its own gunicorn settings (sync workers)")

    modes = ["new conn"] + (["keep-alive"] if args.worker_class == "gthread" else [])
    pod = (POD_ADDRESS, free_port(POD_ADDRESS))
    processes = [start(*pod_command(args, pod[1]))]
    iptables = None
    try:
        wait_listening(pod, processes[0])
        targets = {"direct": (f"http://{pod[0]}:{pod[1]}{args.path}", None)}
        for impl in ("proxy", "streams"):
            listen = (PROXY_ADDRESS, free_port(PROXY_ADDRESS))
            process = start([sys.executable, __file__, "--serve", impl, "--loop", args.loop,
                             "--listen", f"{listen[0]}:{listen[1]}", "--pod", f"{pod[0]}:{pod[1]}"])
            processes.append(process)
            wait_listening(listen, process)
            targets[impl] = (f"http://{listen[0]}:{listen[1]}{args.path}", process.pid)
        kernel_pod = (IPTABLES_POD_ADDRESS, pod[1])
        processes.append(start(*pod_command(args, pod[1], IPTABLES_POD_ADDRESS)))
        wait_listening(kernel_pod, processes[-1])
        iptables = kernel_service(kernel_pod)
        if iptables is not None:
            targets["iptables"] = (f"http://{IPTABLES_ADDRESS}:{pod[1]}{args.path}", None)
        for url, _ in targets.values():  # warm up: workers import lazily, caches fill
            wrk(url, 1, args.connections, keepalive=False)
        report(measure(targets, modes, args), modes, args)
    finally:
        if iptables is not None:
            iptables.remove()
        for process in reversed(processes):
            stop(process)
    return 0


def kernel_service(pod: tuple[str, int]):
    """The pod behind a Service address in the kernel, as the local cluster does as root."""
    from canarylab.proxy import IptablesServices, IptablesUnavailable

    iptables = IptablesServices(IPTABLES_CHAIN, f"{IPTABLES_ADDRESS}/32")
    try:
        iptables.check()
        iptables.install()
        iptables.sync({(IPTABLES_ADDRESS, pod[1]): [pod]})
    except IptablesUnavailable as error:
        iptables.remove()
        print(f"(no iptables target: {error})", file=sys.stderr)
        return None
    return iptables


if __name__ == "__main__":
    sys.exit(main())
