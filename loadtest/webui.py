"""A "Canary split" tab in Locust's web UI: the split, the pods and the verdicts, live.

    locust -f loadtest/locustfile.py --host http://127.96.0.2:8095 --expect 75/25
    # open http://localhost:8089, start a run, click the tab "Canary split"

The tab is a table, refreshed every 2 seconds while the run goes: the verdicts on
top (the split if the run stopped now, the split watched live, the canary
endpoint's error rate), then declared vs observed share per version with the
canary's interval, the answers per pod, and the tests behind the verdicts.
``GET /canarylab/live`` answers the same state as JSON, for curl or a script.

How a locustfile adds a tab to Locust's (React) web UI
------------------------------------------------------
Locust's own example, examples/extend_web_ui.py, shows the supported way; nothing
in Locust's bundle is patched:

- ``web_ui.template_args`` is what the page reads when it loads. Its
  ``extended_tabs`` name our tab, ``extended_tables`` give the tab's columns.
- While a run goes, the page asks ``GET /stats/requests`` for the numbers every
  2 seconds. Rows under ``extended_stats`` in that answer,
  ``[{"key": "canary-split", "data": [row, ...]}]``, become the rows of the tab
  with that key. So an ``after_request`` hook adds ours to Locust's answer.
- The page turns every snake_case key into camelCase, in the columns and in the
  rows alike, so our keys match whatever their spelling; the cells are text, and
  React escapes it (pod names come from response headers, which anyone can set).
- The page sorts a table by its rows' ``name`` until a person clicks a column
  header. Our rows carry their place as ``name`` ("000", "001", ...), a key no
  column shows, so the verdicts stay on top.

Looking while the traffic runs, honestly
----------------------------------------
The locustfile's verdict (``verify`` at the end of the run) is a fixed-size test:
honest at the size planned before the run. Watching it and stopping the first
time it says "verified" is optional stopping, which verifies wrong splits far
more often than its 5% (loadtest/verifier.py, part 3). So the tab shows it as
"if the run stopped now", and next to it the split "watched live": the verifier's
``SequentialVerifier``, whose verdict stays valid however often it is looked at
(part 4). That is the one to stop on.

Cheap to poll
-------------
The page polls every 2 seconds, in every open browser. ``live_state`` recomputes
only when the counts or the options changed since the last call; otherwise the
last state is served again. (A verdict on 20,000 answers in 1,800 windows took
1-2 ms here; the canary analysis of 20,000 latencies per version about 10 ms.)
"""

from __future__ import annotations

import json
import logging
import sys
from types import ModuleType

from flask import Blueprint, jsonify, request
from locust import events

from loadtest.verifier import SequentialVerifier, verify

log = logging.getLogger("canarylab.webui")

TAB = "canary-split"  # the tab's key: in the page's URL as ?tab=canary-split
COLUMNS = [("part", "Part"), ("what", "What"), ("declared", "Declared"),
           ("observed", "Observed"), ("interval", "Interval"), ("answers", "Answers"),
           ("result", "Result"), ("note", "Why")]
LIVE_PATH = "/canarylab/live"
STATS_ENDPOINT = "locust.request_stats"  # Locust's GET /stats/requests, which the page polls


# --------------------------------------------------------------------------- the state


class _Live:
    """What one process keeps between two polls: the last state and the live verifier."""

    def __init__(self) -> None:
        self.locustfile: ModuleType | None = None
        self.reset()

    def reset(self) -> None:
        self.key: tuple | None = None
        self.state: dict | None = None
        self.sequential: SequentialVerifier | None = None
        self.config: tuple | None = None  # (analysis file, its AnalysisConfig)
        self.sequential_for: tuple = ()  # the split and margin it checks
        self.sequential_counts: dict[str, int] = {}  # what it was last given


_live = _Live()


def live_state(environment) -> dict:
    """The split as it stands now, from the locustfile's counts (``split``), as JSON-ready data.

    - ``verdict``: ``verify`` on the counts so far, the verdict the run would print if
      it stopped now (``Verdict.to_dict()``);
    - ``sequential``: the anytime-valid look (``SequentialLook.to_dict()``), safe to
      act on however often the page asks;
    - ``health``: failed canary-endpoint calls against the locustfile's limit;
    - ``analysis``: the canary analysis, see ``_analysis``.

    Raises ValueError when the options do not say a split (--expect and --replicas
    can be typed into the web UI's start form, wrong).
    """
    locustfile = _live.locustfile or _find_locustfile(environment)
    _live.locustfile = locustfile
    split, options = locustfile.split, environment.parsed_options
    runner = environment.runner
    # Everything the state is made of (the analysis reads ``split`` too).
    key = (split.requests, split.failures, sum(split.versions.values()),
           runner.state if runner else None, options.expect, options.replicas, options.margin,
           options.analysis)
    if key == _live.key and _live.state is not None:
        return _live.state

    expected = locustfile.expectation(options)
    margin = options.margin / 100
    counts = dict(split.versions)
    pods = {version: dict(per_pod) for version, per_pod in split.pods.items()}
    windows = [dict(split.windows[w]) for w in sorted(split.windows)]
    verdict = verify(counts, expected, margin=margin, pods=pods, windows=windows)
    error_rate = split.failures / split.requests if split.requests else 0.0
    state = {
        "state": runner.state if runner else None,
        "expected": expected.label, "source": expected.source, "canary": expected.canary,
        "replicas": expected.replicas, "margin": margin,
        "requests": split.requests, "failures": split.failures,
        "health": {"error_rate": error_rate, "max_error_rate": locustfile.MAX_ERROR_RATE,
                   "healthy": error_rate <= locustfile.MAX_ERROR_RATE},
        "verdict": verdict.to_dict(),
        "sequential": _look(expected, margin, counts),
        "analysis": _analysis(locustfile, options, expected),
    }
    _live.key, _live.state = key, state
    return state


def _look(expected, margin: float, counts: dict[str, int]) -> dict:
    """The sequential verifier's look at the cumulative counts: one verifier per run.

    Its first decision is final (that is what makes it safe to stop on), so it lives
    as long as the run's counts grow and the split it checks stays the same; counts
    that went down mean a new run.
    """
    checks = (expected.label, expected.replicas, margin)
    went_down = any(counts.get(v, 0) < c for v, c in _live.sequential_counts.items())
    if _live.sequential is None or went_down or checks != _live.sequential_for:
        _live.sequential = SequentialVerifier(expected, margin=margin)
        _live.sequential_for = checks
    _live.sequential_counts = counts
    return _live.sequential.update(counts).to_dict()


def _analysis(locustfile, options, expected) -> dict | None:
    """The canary analysis of the answers so far (loadtest/analysis.py): v2 against v1.

    With ``--analysis`` (or ``$CANARYLAB_ANALYSIS``) its file, else the default one.
    A preview, like the split "if the run stopped now": the decision that counts is
    the one the locustfile makes when the run ends. None before any answer came.
    """
    if not locustfile.split.versions:
        return None
    path = options.analysis or None
    if _live.config is None or _live.config[0] != path:  # read the file once, not every poll
        _live.config = (path, locustfile.canary_analysis.load_config(path))
    return locustfile.canary_analysis.analyze(*locustfile.version_samples(expected),
                                              _live.config[1]).to_dict()


def _find_locustfile(environment) -> ModuleType:
    """The locustfile's module, as Locust loaded it.

    Locust imports ``-f loadtest/locustfile.py`` under the name "locustfile", not
    "loadtest.locustfile". Importing it here by its package name would load a second
    copy: a second ``split`` that nothing counts into, and every event listener
    registered twice. So take the module that defines the running user classes.
    """
    classes = [*(environment.user_classes or []),
               *(environment.available_user_classes or {}).values()]  # --class-picker
    for user_class in classes:
        module = sys.modules.get(user_class.__module__)
        if module is not None and hasattr(module, "split") and hasattr(module, "expectation"):
            return module
    raise LookupError("no user class of this run comes from loadtest/locustfile.py")


# --------------------------------------------------------------------------- the table


def tab_rows(state: dict) -> list[dict]:
    """The state as the tab's rows: one dict per row, keyed like ``COLUMNS``, text cells."""
    verdict, look = state["verdict"], state["sequential"]
    rows = [_verdict_row(state, verdict), _sequential_row(state, look), _health_row(state)]
    if state.get("analysis"):
        rows.append(_analysis_row(state["analysis"]))
    rows += [_row("warning", "warning", note=warning) for warning in verdict["warnings"]]
    rows += _version_rows(state, verdict)
    rows += _pod_rows(state, verdict)
    rows += [_row("test", name, f"threshold {threshold}", f"statistic {statistic}, p {p}",
                  result=result) for name, statistic, p, threshold, result in verdict["tests"]]
    # The analysis's checks, in the shape of loadtest.analysis.check_rows.
    rows += [_row("analysis", f"{check} ({kind})", f"threshold {threshold}",
                  f"{observed}; p worse / ok {p}", interval, result=result)
             for check, kind, observed, threshold, p, interval, result
             in (state.get("analysis") or {}).get("rows", [])]
    return [{**row, "name": f"{place:03d}"} for place, row in enumerate(rows)]


def _row(part: str, what: str, declared: str = "", observed: str = "", interval: str = "",
         answers: str = "", result: str = "", note: str = "") -> dict:
    return {"part": part, "what": what, "declared": declared, "observed": observed,
            "interval": interval, "answers": answers, "result": result, "note": note}


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _span(pair, level: str) -> str:
    return "" if not pair else f"{_pct(pair[0])}-{_pct(pair[1])} ({level})"


def _declared(state: dict) -> str:
    share, margin = state["verdict"]["declared"][state["canary"]], state["margin"]
    return (f"{state['expected']}: {state['canary']} {_pct(max(share - margin, 0))}-"
            f"{_pct(min(share + margin, 1))} (±{100 * margin:g} pts)")


def _verdict_row(state: dict, verdict: dict) -> dict:
    canary = state["canary"]
    return _row("verdict", "split, if the run stopped now", _declared(state),
                f"{canary} {_pct(verdict['canary_share'])}",
                _span(verdict["interval"], f"{100 * verdict['interval_level']:g}%"),
                f"{verdict['n']} (plan {verdict['planned_n']})", verdict["status"].upper(),
                " ".join(verdict["reasons"] + ["Stopping the first time this says verified "
                                               "is optional stopping: stop on the live row."]))


def _sequential_row(state: dict, look: dict) -> dict:
    result = "KEEP GOING" if look["status"] == "inconclusive" else look["status"].upper()
    return _row("verdict", "split, watched live (anytime-valid)", _declared(state),
                f"{state['canary']} {_pct(look['canary_share'])}",
                _span(look["sequence"], "95% sequence"), str(look["n"]), result,
                " ".join(look["reasons"]))


def _health_row(state: dict) -> dict:
    health = state["health"]
    return _row("verdict", "canary endpoint errors", f"≤ {100 * health['max_error_rate']:g}%",
                f"{100 * health['error_rate']:.2f}%", "",
                f"{state['failures']} of {state['requests']} failed",
                "HEALTHY" if health["healthy"] else "UNHEALTHY")


def _analysis_row(analysis: dict) -> dict:
    reasons = analysis.get("reasons") or []
    # Like the split "if the run stopped now": each poll is one more look, so stopping at
    # the first PROMOTE seen here would raise the error rates the analysis promises.
    return _row("verdict", "canary analysis, if the run stopped now",
                result=str(analysis.get("decision", "")).upper(),
                note=" ".join(map(str, reasons)) + " (A preview: the decision that counts "
                "is the one at the end of the run.)")


def _version_rows(state: dict, verdict: dict) -> list[dict]:
    rows = []
    for version, count in verdict["counts"].items():
        is_canary = version == state["canary"]
        rows.append(_row(
            "version", f"{version} (canary)" if is_canary else version,
            _pct(verdict["declared"].get(version, 0.0)), _pct(verdict["observed"].get(version)),
            _span(verdict["interval"], f"{100 * verdict['interval_level']:g}%")
            if is_canary else "", str(count)))
    return rows


def _pod_rows(state: dict, verdict: dict) -> list[dict]:
    """Each pod's share of its version's answers against an even one, version by version.

    The verifier's pods include the silent ones (declared by --replicas, never heard
    from, 0 answers); its message for the version goes with the version's first pod.
    """
    rows = []
    for finding in sorted(verdict["pods"], key=lambda finding: finding["version"]):
        version, pods = finding["version"], finding["pods"]
        total = sum(pods.values())
        result = "UNEVEN" if finding["problem"] else ("even" if finding["p_value"] is not None
                                                     else "not tested")
        for place, (pod, count) in enumerate(sorted(pods.items())):
            rows.append(_row("pod", f"{version} {pod}", f"{_pct(1 / len(pods))} of {version}",
                             f"{_pct(count / total if total else None)} of {version}",
                             answers=str(count), result=result,
                             note=finding["message"] if place == 0 else ""))
    return rows


# --------------------------------------------------------------------------- wiring


@events.init.add_listener
def _add_tab(environment, web_ui=None, **_) -> None:
    """Register the tab, its rows in Locust's stats answer, and the JSON route, when there
    is a web UI (a headless run or a worker has none)."""
    if web_ui is None or environment.parsed_options is None:
        return
    try:
        _live.locustfile = _find_locustfile(environment)
    except LookupError as exc:
        log.warning("no canary split tab: %s", exc)
        return
    web_ui.template_args["extended_tabs"] = [{"title": "Canary split", "key": TAB}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}]

    @web_ui.app.after_request
    def _add_rows(response):
        if request.endpoint != STATS_ENDPOINT or response.status_code != 200:
            return response
        try:
            rows = tab_rows(live_state(environment))
        except ValueError as exc:  # a split typed wrong into the start form
            rows = [_row("error", "no split to check", result="ERROR", note=str(exc))]
        except Exception as exc:  # never break Locust's own stats for a tab
            log.exception("canary split tab")
            rows = [_row("error", "the canary split tab failed", result="ERROR",
                         note=f"{type(exc).__name__}: {exc}")]
        report = response.get_json()
        report["extended_stats"] = [{"key": TAB, "data": rows}]
        response.set_data(json.dumps(report))
        return response

    routes = Blueprint("canarylab", __name__,
                       url_prefix=getattr(environment.parsed_options, "web_base_path", None)
                       or None)

    @routes.route(LIVE_PATH)
    @web_ui.auth_required_if_enabled
    def _live_json():
        try:
            return jsonify(live_state(environment))
        except ValueError as exc:  # a split typed wrong into the start form
            return _error(400, "bad_split", str(exc))
        except Exception as exc:
            log.exception("GET %s", LIVE_PATH)
            return _error(500, "live_state_failed", f"{type(exc).__name__}: {exc}")

    web_ui.app.register_blueprint(routes)


def _error(status: int, code: str, message: str):
    """The project's JSON error shape."""
    return jsonify({"error": {"status": status, "code": code, "message": message}}), status


@events.test_start.add_listener
def _new_run(environment, **_) -> None:
    # A run started again from the web UI begins from zero, as Locust's own stats do
    # (they are cleared at every start; the locustfile clears its counts only on
    # "Reset stats"). Only where a web UI is: a worker's counts are its own business.
    if environment.web_ui is not None and _live.locustfile is not None:
        _live.locustfile.split.reset()
    _live.reset()


@events.reset_stats.add_listener
def _stats_reset(**_) -> None:
    _live.reset()
