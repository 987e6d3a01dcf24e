"""How much memory one replica of each service takes, as the local cluster runs it.

    make bench-memory           # or: .venv/bin/python bench/memory_bench.py

A replica is a gunicorn master and its workers (the k8s/ base sets 2 workers for
user-management and 1 for notification; ``--um-workers``/``--nm-workers`` change
that). Each is started with its shipped gunicorn.conf.py on 127.0.0.1, warmed
with --requests canary calls (user-management -> notification) and one created
user, and then measured from /proc/<pid>/smaps_rollup:

- RSS: the pages a process has in memory, counting pages it shares with its
  master (forked, copy-on-write) in full, in every process;
- PSS: the same with each shared page divided among the processes sharing it.
  Summed over a replica's processes, PSS is what the replica costs the machine,
  and close to what a container's memory cgroup would be charged.

Target (local-cluster issue): memory per replica <= 60 MB. It prints both, per
process and summed, and the modules that weigh most are for ``-X importtime``.
Installs nothing; Linux only (smaps_rollup).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def release_env(version: str) -> dict[str, str]:
    lines = (ROOT / f"notification-{version}" / "release.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def start(service: str, app: str, env: dict, health: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [GUNICORN, "-c", str(ROOT / service / "gunicorn.conf.py"), app],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(health, timeout=1).read()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{service} did not start") from None
            time.sleep(0.1)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def smaps(pid: int) -> dict[str, int]:
    """The totals of /proc/PID/smaps_rollup, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return fields


def memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, private) of one process in bytes; private = pages no other process maps."""
    fields = smaps(pid)
    return fields["Rss"], fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def report(name: str, master: int) -> dict:
    rows = [("master", master), *((f"worker {n}", pid)
                                  for n, pid in enumerate(children(master), 1))]
    total_rss = total_pss = 0
    print(f"{name}:")
    for role, pid in rows:
        rss, pss, private = memory(pid)
        total_rss, total_pss = total_rss + rss, total_pss + pss
        print(f"  {role:9} pid {pid:7}  RSS {rss / MB:6.1f} MB  PSS {pss / MB:6.1f} MB  "
              f"private {private / MB:6.1f} MB")
    print(f"  {'replica':9} {len(rows)} processes  RSS {total_rss / MB:6.1f} MB (sum)  "
          f"PSS {total_pss / MB:6.1f} MB (sum)")
    return {"rss": total_rss, "pss": total_pss,
            "max_rss": max(memory(pid)[0] for _, pid in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--um-workers", type=int, default=2)
    parser.add_argument("--nm-workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    nm_port, um_port = free_port(), free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the X-Ray segments
    sink.bind(("127.0.0.1", 0))
    daemon = f"127.0.0.1:{sink.getsockname()[1]}"
    common = {"LOG_LEVEL": "warning", "AWS_XRAY_DAEMON_ADDRESS": daemon}
    processes = []
    with tempfile.TemporaryDirectory(prefix="canarylab-memory-") as tmp, sink:
        try:
            processes.append(start(
                "notification", "notification_service:create_app()",
                {**release_env("v1"), **common, "GUNICORN_BIND": f"127.0.0.1:{nm_port}",
                 "GUNICORN_WORKERS": str(args.nm_workers),
                 # Where no mail server listens: sends fail fast, as the warm-up wants.
                 "AWS_MAIL_SERVER_PORT": str(free_port())},
                f"http://127.0.0.1:{nm_port}/notification/health-status"))
            processes.append(start(
                "user-management", "user_management:create_app()",
                {**common, "GUNICORN_BIND": f"127.0.0.1:{um_port}",
                 "GUNICORN_WORKERS": str(args.um_workers), "BCRYPT_ROUNDS": "4",
                 "NOTIFICATION_SERVICE_PORT": str(nm_port),
                 "SQLITE_PATH": str(Path(tmp) / "users.db")},
                f"http://127.0.0.1:{um_port}/usermgmt/health-status"))
            base = f"http://127.0.0.1:{um_port}/usermgmt"
            for _ in range(args.requests):
                urllib.request.urlopen(f"{base}/notification-xray", timeout=10).read()
            body = (b'{"username":"ada","email":"ada@example.com","password":"Pass@1234-x",'
                    b'"firstname":"Ada","lastname":"L","role":"ROLE_ADMIN","enabled":true}')
            create = urllib.request.Request(f"{base}/user", data=body, method="POST",
                                            headers={"Content-Type": "application/json"})
            urllib.request.urlopen(create, timeout=10).read()
            urllib.request.urlopen(f"{base}/users", timeout=10).read()
            print(f"after {args.requests} canary calls and one created user "
                  f"(user-management {args.um_workers} workers, notification "
                  f"{args.nm_workers}):")
            results = {"notification": report("notification", processes[0].pid),
                       "user-management": report("user-management", processes[1].pid)}
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    print("\ntarget: <= 60 MB per replica")
    for name, result in results.items():
        verdict = "met" if result["pss"] <= 60 * MB else "NOT met"
        print(f"  {name:16} PSS {result['pss'] / MB:5.1f} MB ({verdict}), largest process "
              f"RSS {result['max_rss'] / MB:5.1f} MB, RSS summed {result['rss'] / MB:5.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
