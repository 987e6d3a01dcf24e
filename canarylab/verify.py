"""`canarylab plan` and `canarylab verify`: how many calls a split check needs, and the check.

    canarylab plan --expect 75/25              817 requests to tell 75/25 from 5 points off
    canarylab verify                           the live local cluster against its own replicas
    canarylab verify --expect 50/50            ... against a split you name
    canarylab verify --host URL --expect 75/25 any user-management, anywhere
    canarylab verify --sequential              look all along, stop at the first decision
    canarylab analyze                          ... and judge v2 against v1: promote, hold,
                                               rollback (loadtest/analysis.py)

`verify` is a thin driver of the Locust suite (loadtest/locustfile.py): it runs
`locust --headless` as a subprocess with `--tags canary`, so every call goes to
the canary endpoint and the plan is reached quickly, and exits with Locust's exit
code, which the locustfile sets from the verifier's verdict (0 verified,
1 mismatch or an unhealthy canary endpoint, 2 inconclusive). Everything the
verdict says comes from the locustfile; this module only chooses the arguments.

How long it runs: the locustfile stops at ``--max-requests`` canary calls,
1.3 times the plan by default. The plan counts ANSWERS, and ``verify`` never says
"verified" below it; the 30% over it leaves room for the calls that fail or name
no version (up to 1% before the run fails anyway) and for a plan that, being
discrete, saw-tooths. ``--seconds`` is only the ceiling for a slow target.

With ``--sequential`` the locustfile looks at the counts every second and stops
at the first decision of the anytime-valid test: a wrong split typically after a
fraction of the plan, a correct one after about 1.2 times it (bench/README.md).
Its ceiling is 3 times the plan: a run that gets there is inconclusive.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from canarylab import cli
from canarylab.images import REPO_ROOT
from loadtest.verifier import ALPHA, POWER, Expectation, plan_requests

LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
HEADROOM = 1.3  # canary calls per planned answer (module docstring)
SEQUENTIAL_CEILING = 3.0  # with --sequential: the most calls, in plans (module docstring)
ANALYSIS_CALLS = 4000  # `analyze`: a healthy canary's p99 needs about 1,000 v2 answers
GRACE_SECONDS = 30  # after --seconds: Locust stops its users, verifies, writes its files
PROGRESS_SECONDS = 2.0


def check_margin(margin: float) -> None:
    # Checked here, like --expect, so a typo is one line, not a Locust start-up error.
    if not 0 < margin < 100:
        raise cli.CommandError(f"--margin {margin:g} must be between 0 and 100 points", 2)


def expectation_from(text: str, margin: float) -> Expectation:
    """The split named by --expect (75/25 or 75-25), or a one-line error."""
    check_margin(margin)
    try:
        return Expectation.parse(text, source="--expect")
    except ValueError as error:
        raise cli.CommandError(str(error), 2) from None


# -- plan -------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    expected = expectation_from(args.expect, args.margin)
    if not 0 < args.power < 1:
        raise cli.CommandError(f"--power {args.power:g} must be between 0 and 1", 2)
    needed = plan_requests(expected.canary_share, args.margin / 100, ALPHA, args.power)
    print(f"{needed} requests to tell a {expected.label} split from one {args.margin:g} points "
          f"off, at {100 * (1 - ALPHA):g}% with power {args.power:g}")
    print(f"(a correct split verifies in {100 * args.power:g}% of runs of that size; "
          f"`canarylab verify` sends about {math.ceil(HEADROOM * needed)})")
    return 0


# -- verify -----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    if getattr(args, "analyze", False):
        from loadtest.analysis import ConfigError, load_config

        try:
            load_config(args.analysis)  # a bad file is one line now, not a Locust error later
        except (ConfigError, OSError) as error:
            raise cli.CommandError(str(error), 2) from None
    host, expected, replicas = target(args)
    planned = plan_requests(expected.canary_share, args.margin / 100, ALPHA, POWER)
    headroom = SEQUENTIAL_CEILING if args.sequential else HEADROOM
    limit = math.ceil(headroom * planned) if args.max_requests is None else args.max_requests
    analyzing = getattr(args, "analyze", False)
    if analyzing and args.max_requests is None:
        limit = max(limit, ANALYSIS_CALLS)
    if limit < 0 or args.users < 1 or args.seconds <= 0:
        raise cli.CommandError("--max-requests must be >= 0, --users >= 1, --seconds > 0", 2)
    # Absolute, because Locust runs in the repository (see locust_command).
    report = (Path(args.reports) / time.strftime("%Y%m%d-%H%M%S")).resolve()
    report.mkdir(parents=True, exist_ok=True)
    command = locust_command(args, host, expected, replicas, limit, report)

    stop = f"{limit} canary calls or {args.seconds:g} s" if limit else f"{args.seconds:g} s"
    if args.sequential:
        stop = f"the sequential test decides, at most {stop}"
    what = "verifying and analysing" if analyzing else "verifying"
    print(f"{what} {expected.label} ({expected.source}) at {host}: plan {planned} answers; "
          f"{args.users} users until {stop} ...", flush=True)
    code = run(command, report, args.seconds + GRACE_SECONDS)
    if (report / "verdict.json").exists():
        print(f"\nreport: {report}/verdict.json (and stats_*.csv)")
    else:
        print(f"\nlocust exited {code} without a verdict: its output above says why",
              file=sys.stderr)
    return code


def target(args: argparse.Namespace) -> tuple[str, Expectation, dict[str, int] | None]:
    """(host, expectation, replicas or None): where to send the calls, and what to expect.

    The replicas are returned only for --expect auto: then the split IS the replica
    counts, and passing them lets the per-pod check notice a pod that never answered.
    They come from the local cluster, or with ``--context`` from a real one through
    kubectl (its user-management then needs --host: an ingress, or a port-forward).
    """
    host = None
    if args.host:
        parts = urlsplit(args.host)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise cli.CommandError(f"--host {args.host}: give user-management's base URL, like "
                                   "http://127.96.0.2:8095 (no /usermgmt: the paths carry it)", 2)
        host = args.host.rstrip("/")
    if args.context:
        if not host:
            raise cli.CommandError(
                f"--context {args.context}: also give --host, user-management's URL as reachable "
                "from here (the ingress, or `kubectl port-forward "
                "service/usermgmt-restapp-service 8095` and http://127.0.0.1:8095)", 2)
        if args.expect != "auto":
            return host, expectation_from(args.expect, args.margin), None
        status, where = cli.kube_status(args.context), f"context {args.context}"
    elif host:
        if args.expect == "auto":
            raise cli.CommandError(
                "--expect auto reads the split from the LOCAL cluster's replica counts, which "
                f"say nothing about {args.host}: name the split that target declares, e.g. "
                "--expect 75/25, or give --context for a real cluster's replica counts", 2)
        return host, expectation_from(args.expect, args.margin), None
    else:
        status, where = cli.control(cli.state_dir(), "status"), "the live cluster"
        if not status["usermgmt_url"]:
            raise cli.CommandError("the local cluster's user-management has no address "
                                   "reachable from here; see `canarylab status`")
        host = status["usermgmt_url"].removesuffix("/usermgmt")
        if args.expect != "auto":
            return host, expectation_from(args.expect, args.margin), None
    return host, *replicas_from(status, where, args.margin)


def replicas_from(status: dict, where: str, margin: float) -> tuple[Expectation, dict[str, int]]:
    """--expect auto: the split the notification-v1/v2 replica counts declare."""
    deployments = {d["name"]: d for d in status["deployments"]}
    missing = [name for name in (cli.STABLE, cli.CANARY) if name not in deployments]
    if missing:
        raise cli.CommandError(f"--expect auto needs the Deployments {cli.STABLE} and "
                               f"{cli.CANARY}; {where} has no {', '.join(missing)}", 2)
    replicas = {deployments[name]["version"]: deployments[name]["desired"]
                for name in (cli.STABLE, cli.CANARY)}
    for name in (cli.STABLE, cli.CANARY):
        d = deployments[name]
        if d["ready"] != d["desired"]:
            # Not a refusal: a pod that is not ready gets no traffic, and the per-pod
            # check is there to say so. Warned here so the verdict is no surprise.
            print(f"note: {name} has {d['ready']}/{d['desired']} pods ready", file=sys.stderr)
    check_margin(margin)
    try:
        expected = Expectation.from_replicas(
            replicas, source=f"{where}'s replicas, v1 {replicas.get('v1')} / "
                             f"v2 {replicas.get('v2')}")
    except ValueError as error:
        raise cli.CommandError(f"--expect auto: {error}", 2) from None
    return expected, replicas


def locust_command(args: argparse.Namespace, host: str, expected: Expectation,
                   replicas: dict[str, int] | None, limit: int, report: Path) -> list[str]:
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE),
               "--headless", "--host", host, "--tags", "canary",
               "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds:g}s",
               "--expect", expected.label, "--margin", f"{args.margin:g}",
               "--max-requests", str(limit),
               "--report-dir", str(report), "--csv", str(report / "stats"),
               # The verdict table is the output that matters: no stats every 2 s, no
               # INFO lines. The final stats table still comes, at the end.
               "--only-summary", "--loglevel", "WARNING"]
    if replicas:
        command += ["--replicas", f"{replicas['v1']}/{replicas['v2']}"]
    if args.sequential:
        command.append("--sequential")
    if getattr(args, "analyze", False):
        # Absolute: Locust runs in the repository, the user named the file from here.
        command += ["--analysis", str(Path(args.analysis).resolve())] if args.analysis \
            else ["--analysis"]
    return command


def run(command: list[str], report: Path, timeout: float) -> int:
    """Run Locust with our stdout and stderr; show progress from its stats CSV meanwhile."""
    # cwd: the repository, which has no locust.conf, so a locust.conf in the user's
    # current directory (Locust reads ./locust.conf by default) cannot change the run.
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    shown = -1
    while True:
        try:
            return process.wait(timeout=PROGRESS_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            # Ctrl-C reached Locust too (same process group): it stops, verifies what it
            # counted and exits. Wait for that, rather than leave it behind.
            return process.wait()
        seconds = time.monotonic() - started
        calls = calls_so_far(report / "stats_stats.csv")
        if calls is not None and calls != shown:
            shown = calls
            print(f"  {calls} calls ({seconds:.0f} s)", file=sys.stderr, flush=True)
        if seconds > timeout:
            process.kill()
            process.wait()
            raise cli.CommandError(f"locust did not finish within {timeout:.0f} s; killed it")


def calls_so_far(path: Path) -> int | None:
    """The Aggregated request count of Locust's stats CSV, rewritten once a second."""
    try:
        with path.open(newline="") as rows:
            for row in csv.DictReader(rows):
                if row["Name"] == "Aggregated":
                    return int(row["Request Count"])
    except (OSError, KeyError, ValueError):
        return None  # not written yet, or caught mid-rewrite: try again next time
    return None
