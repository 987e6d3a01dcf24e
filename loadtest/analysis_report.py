"""The canary analysis as an HTML fragment for report.html: the decision and why.

``analysis_html(analysis, baseline, canary)`` returns one ``<section>`` to put into
the page that ``loadtest/report.py`` writes. Like the rest of the report it is
inline SVG, no JavaScript, no external files, and every string from the data is
HTML-escaped (versions and reasons can carry whatever a response header said).
From the top:

- the decision (PROMOTE / HOLD / ROLLBACK), colour-coded, and the reasons;
- latency by percentile, v1 and v2 on one chart (``_percentile_chart``);
- the error rates with their intervals against the limits (``_error_chart``);
- every check: what it saw, its limit, its p-values or interval, its result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from loadtest.analysis import FAIL, NO_DATA, Analysis, VersionSample, check_rows, wilson
from loadtest.report import (
    BASELINE_COLOURS,
    CANARY_COLOUR,
    WIDTH,
    esc,
    legend,
    line,
    nothing_to_draw,
    points,
    rect,
    svg,
    text,
)

DECISION_COLOURS = {"promote": "#1a7f37", "hold": "#9a6700", "rollback": "#cf222e"}
STATUS_COLOURS = {"pass": "#1a7f37", NO_DATA: "#9a6700", FAIL: "#cf222e"}
MARKS = (0.5, 0.95, 0.99)  # the percentiles labelled on the latency chart
INTERVAL_Z = 1.96  # the error-rate bars: two-sided 95% Wilson intervals


def _colours(analysis: Analysis) -> dict[str, str]:
    return {analysis.baseline.version: BASELINE_COLOURS[0], analysis.canary.version: CANARY_COLOUR}


def _pct(share: float) -> str:
    return f"{100 * share:.2f}%"


def _nines(t: float) -> str:
    """A position on the percentile axis as a percentile: 1 -> 90%, 2 -> 99%, 3 -> 99.9%."""
    return f"{100 * (1 - 10 ** -t):.{max(0, math.ceil(t) - 2)}f}%"


# --------------------------------------------------------------------------- latency


def _percentile_chart(analysis: Analysis, samples: Sequence[VersionSample]) -> str:
    """Latency by percentile: where do the two versions part?

    Each line is one version's latency (up, on a log scale) at each percentile
    (across, spread so that 90%, 99% and 99.9% get equal room: the tail is where a
    slow canary shows first). The dots mark p50, p95 and p99 with their values.
    Lines on top of each other are versions that answer alike; a canary line that
    lifts away only at the right is a tail problem the median cannot see. A line
    ends where its samples run out: n samples say nothing beyond the 1 - 1/n
    percentile.
    """
    colours = _colours(analysis)
    series = [(s.version, np.sort(np.asarray(s.latencies_ms, dtype=float))) for s in samples]
    series = [(v, x[x > 0]) for v, x in series if len(x[x > 0]) >= 2]
    label = "latency by percentile"
    if not series:
        return nothing_to_draw("Not enough latency samples to draw.", label)
    left, right, top, bottom, height = 70, 30, 30, 48, 320
    t_end = max(math.log10(len(x)) for _, x in series)
    low = min(float(x[0]) for _, x in series)
    high = max(float(x[-1]) for _, x in series)
    gate = analysis.config.latency_gate
    show_gate = gate.enabled and gate.max_ms <= 3 * high
    if show_gate:
        high = max(high, gate.max_ms)
    y_low, y_high = math.log10(low) - 0.05, math.log10(high) + 0.05

    def x_at(t: float) -> float:
        return left + (WIDTH - left - right) * t / t_end

    def y_at(ms: float) -> float:
        return top + (height - top - bottom) * (y_high - math.log10(ms)) / (y_high - y_low)

    body = _percentile_axes(x_at, y_at, t_end, y_low, y_high, left, right, height - bottom)
    if show_gate:
        body += [line(left, y_at(gate.max_ms), WIDTH - right, y_at(gate.max_ms), "#cf222e",
                      stroke_dasharray="6 4"),
                 text(WIDTH - right - 4, y_at(gate.max_ms) - 6,
                      f"gate: p{100 * gate.quantile:g} <= {gate.max_ms:g} ms", "end",
                      fill="#cf222e")]
    for version, x in series:
        ts = np.linspace(0.0, math.log10(len(x)), 160)
        ms = np.quantile(x, 1.0 - 10.0 ** -ts)
        path = [(x_at(t), y_at(value)) for t, value in zip(ts, ms, strict=True)]
        body.append(f'<polyline points="{points(path)}" fill="none" '
                    f'stroke="{colours.get(version, "#6e7781")}" stroke-width="2.2"/>')
    for row, (version, x) in enumerate(series):
        for mark in MARKS:
            t = -math.log10(1 - mark)
            if t > math.log10(len(x)):
                continue
            value = float(np.quantile(x, mark))
            colour = colours.get(version, "#6e7781")
            body += [f'<circle cx="{x_at(t):.1f}" cy="{y_at(value):.1f}" r="4" '
                     f'fill="{colour}"/>',
                     text(x_at(t) + 6, y_at(value) + (14 if row else -6),
                          f"{value:.3g} ms", fill=colour)]
    body += legend(left, 16, [(f"{version} ({len(x)} samples)", colours.get(version, "#6e7781"),
                               1) for version, x in series])
    return svg(height, body, label)


def _percentile_axes(x_at, y_at, t_end: float, y_low: float, y_high: float, left: float,
                     right: float, baseline: float) -> list[str]:
    body = [line(left, baseline, WIDTH - right, baseline, "#8c959f")]
    for exponent in range(math.floor(y_low), math.ceil(y_high) + 1):
        for step in (1, 2, 5):
            ms = step * 10.0 ** exponent
            if y_low <= math.log10(ms) <= y_high:
                body += [line(left, y_at(ms), WIDTH - right, y_at(ms), "#d1d9e0"),
                         text(left - 6, y_at(ms) + 4, f"{ms:g} ms", "end")]
    ticks = [0.0, math.log10(2)] + [float(t) for t in range(1, math.floor(t_end) + 1)]
    for t in ticks:
        body += [line(x_at(t), baseline, x_at(t), baseline + 5, "#8c959f"),
                 text(x_at(t), baseline + 18, "0%" if t == 0 else _nines(t), "middle")]
    body.append(text((left + WIDTH - right) / 2, baseline + 36, "percentile of requests",
                     "middle", fill="#59636e"))
    return body


# --------------------------------------------------------------------------- error rates


def _error_chart(analysis: Analysis) -> str:
    """Error rates with their intervals: is the canary's above the limits?

    Each version's observed error rate is a dot, its 95% Wilson interval the bar:
    where the real rate may lie. The red line is the gate (the most the canary may
    fail), the dashed one the baseline's rate plus the tolerance. A canary bar
    wholly right of a line is evidence against it; a bar that crosses a line is
    not enough data yet.
    """
    colours = _colours(analysis)
    rows = [(s.version, s.errors, s.requests) for s in (analysis.baseline, analysis.canary)
            if s.requests]
    label = "error rates"
    if not rows:
        return nothing_to_draw("No requests counted.", label)
    cfg = analysis.config
    lines_at = []
    if cfg.success_gate.enabled:
        lines_at.append((1.0 - cfg.success_gate.min, "#cf222e", "",
                         f"gate {_pct(1.0 - cfg.success_gate.min)}"))
    base = analysis.baseline
    if cfg.error_rate.enabled and base.requests:
        lines_at.append((base.errors / base.requests + cfg.error_rate.tolerance, "#59636e",
                         "5 4", f"{base.version} + {100 * cfg.error_rate.tolerance:g} points"))
    bounds = [wilson(e, n, INTERVAL_Z) for _, e, n in rows]
    x_end = 1.15 * max([high for _, high in bounds] + [at for at, *_ in lines_at] + [0.01])
    left, right, top, row_height = 150, 30, 30 + 16 * len(lines_at), 34
    height = top + row_height * len(rows) + 40

    def x_at(rate: float) -> float:
        return left + (WIDTH - left - right) * rate / x_end

    body = [line(left, top + row_height * len(rows), WIDTH - right, top + row_height * len(rows),
                 "#8c959f")]
    for i in range(6):
        rate = x_end * i / 5
        body += [line(x_at(rate), top - 6, x_at(rate), top + row_height * len(rows), "#d1d9e0"),
                 text(x_at(rate), top + row_height * len(rows) + 18, _pct(rate), "middle")]
    for i, (at, colour, dash, words) in enumerate(lines_at):  # labels stacked, not overlapping
        extra = {"stroke_dasharray": dash} if dash else {}
        label_y = top - 12 - 16 * (len(lines_at) - 1 - i)
        body += [line(x_at(at), label_y + 4, x_at(at), top + row_height * len(rows), colour,
                      stroke_width=2, **extra),
                 text(x_at(at) + 4, label_y, words, fill=colour)]
    for i, ((version, errors, n), (low, high)) in enumerate(zip(rows, bounds, strict=True)):
        y = top + row_height * i + row_height / 2
        colour = colours.get(version, "#6e7781")
        body += [text(left - 8, y + 4, f"{version}: {errors} of {n}", "end"),
                 rect(x_at(low), y - 4, x_at(high) - x_at(low), 8, colour, opacity=0.35),
                 f'<circle cx="{x_at(errors / n):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>',
                 _value_label(x_at(low), x_at(high), y,
                              f"{_pct(errors / n)} ({_pct(low)}-{_pct(high)})")]
    return svg(height, body, label)


def _value_label(start: float, end: float, y: float, words: str) -> str:
    """Right of the bar, or left of it when it would run off the chart."""
    if end + 6 + 7 * len(words) <= WIDTH:
        return text(end + 6, y + 4, words)
    return text(start - 6, y + 4, words, "end")


# --------------------------------------------------------------------------- the section


def _checks_table(analysis: Analysis) -> str:
    header = ("check", "kind", "observed", "threshold", "p worse / p ok", "interval", "result")
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for check, row in zip(analysis.checks, check_rows(analysis), strict=True):
        colour = STATUS_COLOURS.get(check.status, "#1f2328")
        cells = "".join(f"<td>{esc(value)}</td>" for value in row[:-1])
        body.append(f'<tr>{cells}<td style="color:{colour};font-weight:bold">'
                    f"{esc(row[-1])}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _why(chart) -> str:
    """A chart's docstring, how to read it, as its caption."""
    how_to_read = chart.__doc__.split("\n\n", 1)[-1]
    return f'<p class="why">{esc(" ".join(how_to_read.split()))}</p>'


def analysis_html(analysis: Analysis, baseline: VersionSample, canary: VersionSample) -> str:
    """The analysis as one ``<section>`` of HTML (no page around it)."""
    colour = DECISION_COLOURS.get(analysis.decision, "#59636e")
    summary = (f"{analysis.canary.version} against {analysis.baseline.version}: "
               f"{analysis.baseline.requests} and {analysis.canary.requests} requests; "
               f"analysis file {analysis.config.source}; exit code {analysis.exit_code}")
    bad = [c for c in analysis.checks if c.status != "pass"]
    parts = [
        '<section class="analysis">',
        "<h2>Canary analysis</h2>",
        f'<p class="status" style="color:{colour};font-size:2.4em">'
        f"{esc(analysis.decision.upper())}</p>",
        f'<p class="sub">{esc(summary)}</p>',
        '<ul class="reasons">' + "".join(f"<li>{esc(r)}</li>" for r in analysis.reasons)
        + "</ul>",
        "<h2>Latency by percentile</h2>", _why(_percentile_chart),
        _percentile_chart(analysis, [baseline, canary]),
        "<h2>Error rates</h2>", _why(_error_chart), _error_chart(analysis),
        "<h2>Checks</h2>", _checks_table(analysis),
    ]
    if bad:
        parts.append("<h2>What failed or is undecided, and why</h2><ul class=\"reasons\">"
                     + "".join(f"<li><b>{esc(c.name)}</b> ({esc(c.status)}): {esc(c.reason)}"
                               "</li>" for c in bad) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)
