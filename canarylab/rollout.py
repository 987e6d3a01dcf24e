"""`canarylab rollout`: move traffic to v2 step by step, and only as far as the evidence goes.

    canarylab rollout                              25, 50, 75, then 100% to v2
    canarylab rollout --steps 10,50,100 --analysis my-checks.yaml
    canarylab rollout --scenario errors            watch a bad canary get rolled back

What a step does, on the running local cluster (``canarylab up`` first; with
``--scenario`` the rollout starts one of its own):

1. ``split PERCENT``: move replicas from notification-v1 to notification-v2 so
   that v2 has PERCENT of the pods, and wait until they are ready.
2. Drive traffic: ``--calls`` calls to the canary endpoint, each on a new
   connection (canarylab.demo.drive), counting who answered, the errors and the
   latency of every call.
3. Verify the split against the replica counts (loadtest.verifier): traffic that
   does not follow the declared split means the canary is not being tested the
   way the manifests say, so a mismatch stops the rollout.
4. Analyse the canary against the baseline on ALL the calls of this step
   (loadtest.analysis): promote -> next step; rollback -> back to 100-0; hold ->
   another batch of calls, up to ``--looks`` batches. How many: what the analysis
   says would settle its open checks (its "needed"), at least ``--calls`` and at
   most ``--max-calls`` per batch. A p99 needs the most: a healthy canary at 25%
   of the pods is typically settled after 10,000-15,000 calls.

The analysis of one step may look up to ``--looks`` times at a growing sample,
so each look is judged at alpha / looks (the analysis file's ``looks``,
Bonferroni), and the split by the verifier's anytime-valid sequential test:
looking again raises neither the chance of rolling back a good canary nor that
of calling a correct split wrong. A step that is still "hold" after its last look
ends the rollout at 100-0 too: a canary is promoted on evidence, not for lack of it.

The last step, 100, gives v2 every pod: that is the promotion. No v1 is left to
compare with, so that step checks the split and v2's own gates (success rate,
p99) only; v1's calls of the step before stand in as the baseline the analysis
reports (and counts towards its minimum of samples), not as something compared.

Whatever happens, the cluster is left in a known state: 0-100 when every step
passed, 100-0 otherwise. One report for the whole rollout goes to
``reports/<timestamp>/``: rollout.html (a timeline of the steps, each with its
split check and its analysis), rollout.json and junit.xml.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from canarylab import cli, demo
from loadtest import analysis as canary_analysis
from loadtest.analysis_report import analysis_html
from loadtest.junit import junit_document
from loadtest.report import CSS
from loadtest.verifier import Expectation, SequentialVerifier, verify

DEFAULT_STEPS = "25,50,75,100"
DEFAULT_CALLS = 2000
DEFAULT_LOOKS = 4
DEFAULT_MAX_CALLS = 12000  # per look
BASE_OVERLAY = cli.REPO_ROOT / "k8s" / "overlays" / "100-0"


@dataclass
class Step:
    """One step of the rollout and what was found there."""

    percent: int
    replicas: dict[str, int] = field(default_factory=dict)
    looks: int = 0
    calls: int = 0
    split: str = ""  # verified | mismatch | inconclusive
    decision: str = ""  # promote | hold | rollback
    reasons: list[str] = field(default_factory=list)
    verdict: dict | None = None
    analysis: dict | None = None
    html: str = ""  # the analysis's report section
    seconds: float = 0.0


# -- the command ---------------------------------------------------------------------


def cmd_rollout(args: argparse.Namespace) -> int:
    steps = parse_steps(args.steps)
    try:
        config = canary_analysis.load_config(args.analysis)
    except (canary_analysis.ConfigError, OSError) as error:
        raise cli.CommandError(str(error), 2) from None
    if args.looks < 1 or args.calls < 1 or args.max_calls < args.calls:
        raise cli.CommandError("--looks and --calls must be at least 1, --max-calls at least "
                               "--calls", 2)
    # Each step may look up to --looks times at its growing sample (module docstring).
    config = dataclasses.replace(config, looks=config.looks * args.looks)

    started_here = False
    running = cluster_running()
    if running and args.scenario:
        raise cli.CommandError("a local cluster is running already; `canarylab down` first, "
                               "or drop --scenario to roll out on it", 2)
    if not running:
        overlay = BASE_OVERLAY
        with tempfile.TemporaryDirectory(prefix="canarylab-rollout-") as folder:
            if args.scenario:
                overlay = demo.scenario_overlay(str(BASE_OVERLAY), args.scenario, Path(folder))
                fault = ("no fault" if args.scenario == "healthy"
                         else f"k8s/components/faults/{args.scenario}")
                print(f"scenario {args.scenario}: 100-0 with {fault}")
            code = cli.main(["up", str(overlay)])
        if code:
            return code
        started_here = True

    total = sum(cli.current_replicas(None)[name] for name in (cli.STABLE, cli.CANARY))
    timeline: list[Step] = []
    try:
        outcome = run_steps(steps, total, args, config, timeline)
        report = write_report(Path(args.reports) / time.strftime("%Y%m%d-%H%M%S"), timeline,
                              outcome, steps)
        print(f"\nrollout {outcome.upper()}: {final_words(outcome, timeline)}")
        print(f"report: {report}/rollout.html (and rollout.json, junit.xml)")
    finally:
        if started_here and not args.keep:
            cli.main(["down"])
    return {"promoted": 0, "rolled back": 1}[outcome]


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise cli.CommandError(f"--steps {text}: give percentages, like 25,50,75,100", 2) from None
    if not steps or steps != sorted(set(steps)) or steps[0] <= 0 or steps[-1] != 100:
        raise cli.CommandError(f"--steps {text}: rising percentages above 0 that end at 100", 2)
    return steps


def cluster_running() -> bool:
    try:
        cli.control(cli.state_dir(), "status")
    except cli.CommandError:
        return False
    return True


def run_steps(steps: list[int], total: int, args, config, timeline: list[Step]) -> str:
    """Every step in turn; "promoted" or "rolled back" (the cluster is left that way)."""
    baseline = None  # v1's calls of the last step that had any
    for number, percent in enumerate(steps, 1):
        step = Step(percent)
        timeline.append(step)
        print(f"\n== step {number}/{len(steps)}: {percent}% of the pods to {cli.CANARY}",
              flush=True)
        baseline = run_step(step, total, args, config, baseline)
        if step.decision != "promote":
            print(f"   {step.decision.upper()}: rolling back to 100-0", flush=True)
            set_split(0, total, quiet=False)
            return "rolled back"
    return "promoted"


def run_step(step: Step, total: int, args, config, baseline):
    """Run one step into ``step``; return v1's calls of it (or ``baseline`` if none)."""
    begun = time.monotonic()
    step.replicas = set_split(step.percent, total)
    status = cli.control(cli.state_dir(), "status")
    url = status["usermgmt_url"] + demo.CANARY_PATH
    replicas = {"v1": step.replicas[cli.STABLE], "v2": step.replicas[cli.CANARY]}
    expectation = Expectation.from_replicas(
        replicas, source=f"rollout step {step.percent}%, v1 {replicas['v1']} / v2 {replicas['v2']}")
    tally = demo.Tally()
    # The split is looked at after every batch, so it is judged by the anytime-valid
    # sequential test, like the analysis by alpha / looks: looking again is free.
    checker = SequentialVerifier(expectation)
    calls = args.calls
    for look in range(1, args.looks + 1):
        more = demo.drive(url, calls, args.concurrency, args.max_seconds)
        tally.add(more)
        step.looks, step.calls = look, tally.answered + sum(tally.failures.values())
        verdict = verify(tally.versions, expectation, pods=tally.pods, windows=tally.windows,
                         sequential=checker)
        step.split, step.verdict = verdict.status, verdict.to_dict()
        decision, reasons, analysed = judge_step(step, verdict, tally, config, baseline)
        step.decision, step.reasons = decision, reasons
        print(progress_line(step, verdict, look, args.looks), flush=True)
        if decision != "hold" or look == args.looks:
            break
        calls = more_calls(analysed, step.calls, args)
        print(f"   hold: not enough evidence yet; {calls} more calls", flush=True)
    if analysed is not None:
        analysis, samples = analysed
        step.analysis, step.html = analysis.to_dict(), analysis_html(analysis, *samples)
    if step.decision == "hold":
        step.reasons.append(f"Still hold after {step.looks} looks ({step.calls} calls): a canary "
                            "is promoted on evidence, not for lack of it.")
    step.seconds = time.monotonic() - begun
    for reason in step.reasons[:3]:
        print(f"   - {reason}")
    return tally.sample("v1") if tally.versions["v1"] else baseline


def judge_step(step: Step, verdict, tally: demo.Tally, config, baseline):
    """(decision, reasons, (analysis, samples) or None) for one look at a step."""
    if tally.failures:
        return "rollback", [f"{sum(tally.failures.values())} calls failed without an answer "
                            f"from notification: {dict(tally.failures)}."], None
    if verdict.status == "mismatch":
        return "rollback", ["The traffic does not follow the declared split, so the canary is "
                            "not being tested as the manifests say:", *verdict.reasons], None
    if step.percent == 100:
        # No baseline left: the promotion step checks v2's own gates.
        analysis, samples = gates_only(tally, config, baseline)
    else:
        analysis, samples = demo.analyse(verdict, tally, config)
    reasons = list(analysis.reasons)
    decision = analysis.decision
    if verdict.status == "inconclusive" and decision == "promote":
        decision = "hold"
        reasons.insert(0, "The canary looks good, but the split is not verified yet: "
                       + " ".join(verdict.reasons))
    return decision, reasons, (analysis, samples)


def more_calls(analysed, have: int, args) -> int:
    """The next batch: what the analysis says would settle it (plus 10%), within bounds."""
    needed = analysed[0].needed if analysed else None
    wanted = int(1.1 * sum(needed.values())) - have if needed else args.calls
    return max(args.calls, min(wanted, args.max_calls))


def gates_only(tally: demo.Tally, config, baseline):
    """The analysis of v2 alone: its gates, with the comparisons switched off; v1's calls
    of an earlier step (``baseline``) stand in as the baseline, uncompared."""
    off = {name: dataclasses.replace(getattr(config, name), enabled=False)
           for name in ("latency", "tail_latency", "error_rate")}
    config = dataclasses.replace(config, **off)
    canary, baseline = tally.sample("v2"), baseline or tally.sample("v1")
    return canary_analysis.analyze(baseline, canary, config), (baseline, canary)


def set_split(percent: int, total: int, quiet: bool = True) -> dict[str, int]:
    """Apply ``percent`` as replica counts, live; the replicas it became."""
    stable, canary = cli.split_replicas(Fraction(percent), total)
    if not quiet:
        print(f"   {cli.describe_split(Fraction(percent), total)}")
    cli.apply_replicas({cli.STABLE: stable, cli.CANARY: canary}, None, cli.READY_TIMEOUT)
    return {cli.STABLE: stable, cli.CANARY: canary}


def progress_line(step: Step, verdict, look: int, looks: int) -> str:
    share = verdict.canary_share
    observed = "-" if share is None else f"{100 * share:.1f}%"
    return (f"   look {look}/{looks}: {step.calls} calls; v2 share {observed} "
            f"(declared {100 * verdict.declared.get('v2', 0):.0f}%, split {verdict.status}); "
            f"analysis: {step.decision}")


def final_words(outcome: str, timeline: list[Step]) -> str:
    if outcome == "promoted":
        return f"every step passed; {cli.CANARY} now has all the pods (0-100)"
    last = timeline[-1]
    return (f"step {last.percent}% said {last.decision}; back at 100-0, every pod on "
            f"{cli.STABLE}")


# -- the report ----------------------------------------------------------------------


def write_report(directory: Path, timeline: list[Step], outcome: str,
                 steps: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"outcome": outcome, "steps": steps,
            "timeline": [{k: v for k, v in dataclasses.asdict(step).items() if k != "html"}
                         for step in timeline]}
    (directory / "rollout.json").write_text(json.dumps(data, indent=2) + "\n")
    (directory / "rollout.html").write_text(render_html(timeline, outcome), encoding="utf-8")
    (directory / "junit.xml").write_text(rollout_junit(timeline))
    return directory


def rollout_junit(timeline: list[Step]) -> str:
    return junit_document(*(step_junit(step) for step in timeline))


def step_junit(step: Step) -> str:
    """One suite per step: passed when the step promoted, else failed with its reasons."""
    from xml.etree import ElementTree

    suite = ElementTree.Element("testsuite", name=f"rollout step {step.percent}%", tests="1",
                                failures=str(int(step.decision != "promote")))
    case = ElementTree.SubElement(suite, "testcase", classname="canarylab.rollout",
                                  name=f"{step.percent}% to v2: promote")
    if step.decision != "promote":
        message = f"{step.decision}: " + " ".join(step.reasons)
        ElementTree.SubElement(case, "failure", message=message).text = message
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


DECISION_COLOURS = {"promote": "#1a7f37", "hold": "#9a6700", "rollback": "#cf222e"}


def render_html(timeline: list[Step], outcome: str) -> str:
    esc = html.escape
    colour = "#1a7f37" if outcome == "promoted" else "#cf222e"
    rows = []
    for step in timeline:
        shade = DECISION_COLOURS.get(step.decision, "#59636e")
        observed = ""
        if step.verdict and step.verdict.get("canary_share") is not None:
            observed = f"{100 * step.verdict['canary_share']:.1f}%"
        rows.append(
            f"<tr><td>{step.percent}%</td>"
            f"<td>{step.replicas.get(cli.STABLE, '')}/{step.replicas.get(cli.CANARY, '')}</td>"
            f"<td>{esc(observed)}</td><td>{esc(step.split)}</td><td>{step.looks}</td>"
            f"<td>{step.calls}</td><td>{step.seconds:.0f} s</td>"
            f'<td style="color:{shade};font-weight:bold">{esc(step.decision.upper())}</td>'
            f"<td>{esc(headline(step))}</td></tr>")
    details = []
    for step in timeline:
        # The analysis section lists its own reasons; here only what the step adds.
        own = [r for r in step.reasons if r not in (step.analysis or {}).get("reasons", [])]
        reasons = "".join(f"<li>{esc(reason)}</li>" for reason in own)
        details.append(f"<h2>Step {step.percent}%: {esc(step.decision)}</h2>"
                       f'<ul class="reasons">{reasons}</ul>{step.html}')
    return "\n".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Rollout: {esc(outcome)}</title><style>{CSS}</style></head><body>",
        f'<p class="status" style="color:{colour}">{esc(outcome.upper())}</p>',
        f'<p class="sub">{esc(final_words(outcome, timeline))}</p>',
        "<h2>Timeline</h2>",
        "<table><thead><tr><th>step</th><th>pods v1/v2</th><th>v2 share</th><th>split</th>"
        "<th>looks</th><th>calls</th><th>time</th><th>decision</th><th>why</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
        *details, "</body></html>\n"])


def headline(step: Step) -> str:
    """The first reason's first clause: what the timeline shows for a step."""
    first = step.reasons[0] if step.reasons else ""
    return first.split(" (alpha")[0]


def add_parser(commands) -> None:
    rollout = commands.add_parser(
        "rollout", help="move traffic to v2 step by step; promote, or roll back to 100-0")
    rollout.add_argument("--steps", default=DEFAULT_STEPS,
                         help=f"v2's share of the pods at each step (default {DEFAULT_STEPS})")
    rollout.add_argument("--analysis", default=None, metavar="FILE",
                         help="the checks and thresholds (default loadtest/analysis.yaml)")
    rollout.add_argument("--scenario", choices=demo.SCENARIOS,
                         help="start a cluster of its own with this fault on v2 (and stop it "
                              "after)")
    rollout.add_argument("--calls", type=int, default=DEFAULT_CALLS,
                         help=f"calls of a step's first look, and the least of any "
                              f"(default {DEFAULT_CALLS})")
    rollout.add_argument("--max-calls", type=int, default=DEFAULT_MAX_CALLS,
                         help=f"the most calls of one look (default {DEFAULT_MAX_CALLS})")
    rollout.add_argument("--looks", type=int, default=DEFAULT_LOOKS,
                         help=f"looks per step before a hold ends the rollout (default "
                              f"{DEFAULT_LOOKS})")
    rollout.add_argument("--concurrency", type=int, default=4)
    rollout.add_argument("--max-seconds", type=float, default=60.0,
                         help="the longest one look may send for")
    rollout.add_argument("--reports", default="reports", help="where the report folder goes")
    rollout.add_argument("--keep", action="store_true",
                         help="leave a cluster the rollout started running")
    rollout.set_defaults(run=cmd_rollout)
