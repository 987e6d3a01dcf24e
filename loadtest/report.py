"""One self-contained report.html: the split verdict as something to look at.

``write_html`` turns a verdict (``Verdict.to_dict()``), the per-window counts and,
optionally, latency percentiles per version into one HTML file with inline SVG:
no external files, no JavaScript, no network, so it opens from a CI artifact or
an e-mail attachment as it is. From the top:

- the verdict in large type (VERIFIED / MISMATCH / INCONCLUSIVE), colour-coded,
  and the reasons in plain words: the answer first, the evidence after it;
- declared vs observed shares per version;
- the canary share over time (``_share_chart``);
- answers per pod (``_pod_chart``);
- latency per version, when given (``_latency_chart``);
- the tests the verifier ran, with their statistics and p-values.

Every string that comes from the data (pod names, versions, reasons) is
HTML-escaped: pod names come from response headers, which anyone can set.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtest.verifier import clopper_pearson

STATUS_COLOURS = {"verified": "#1a7f37", "mismatch": "#cf222e", "inconclusive": "#9a6700"}
CANARY_COLOUR, BASELINE_COLOURS = "#e36209", ("#0969da", "#6e7781", "#8250df", "#1b7c83")
BAND_LEVEL = 0.95  # the interval drawn around the cumulative canary share
WIDTH = 860  # every chart's width in SVG units; they scale with the page

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1f2328; max-width: 900px;
       margin: 2em auto; padding: 0 1em; }
.status { font-size: 3.2em; font-weight: 800; letter-spacing: .04em; margin: 0; }
.sub { color: #59636e; margin-top: .2em; }
h2 { font-size: 1.15em; margin: 2em 0 .3em; }
p.why { color: #59636e; margin: 0 0 .6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .8em; border-bottom: 1px solid #d1d9e0; text-align: right; }
th:first-child, td:first-child { text-align: left; }
ul.reasons li { margin: .3em 0; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 12px system-ui, sans-serif; }  /* no fill here: it would beat fill="" */
"""


def esc(value: object) -> str:
    """Any value as HTML text (and safe inside an attribute)."""
    return html.escape(str(value), quote=True)


def pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def version_colours(verdict: Mapping) -> dict[str, str]:
    """The canary in orange everywhere, the other versions in blues and greys."""
    others = [v for v in _versions(verdict) if v != verdict.get("canary")]
    colours = {v: BASELINE_COLOURS[i % len(BASELINE_COLOURS)] for i, v in enumerate(others)}
    colours[verdict.get("canary")] = CANARY_COLOUR
    return colours


def _versions(verdict: Mapping) -> list[str]:
    seen = [*verdict.get("declared", {}), *verdict.get("counts", {})]
    return list(dict.fromkeys(seen))


# --------------------------------------------------------------------------- SVG pieces


def svg(height: float, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" '
            f'role="img" aria-label="{esc(label)}">' + "".join(body) + "</svg>")


def text(x: float, y: float, content: object, anchor: str = "start", **attrs: object) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f"{esc(content)}</text>")


def rect(x: float, y: float, w: float, h: float, fill: str, **attrs: object) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}"{extra}/>')


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, **attrs: object) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}"{extra}/>')


def points(xy: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)


def legend(x: float, y: float, items: Sequence[tuple[str, str, float]]) -> list[str]:
    """Swatches in a row: (label, colour, opacity)."""
    body = []
    for label, colour, opacity in items:
        body += [rect(x, y - 10, 14, 12, colour, opacity=opacity), text(x + 19, y, label)]
        x += 30 + 7 * len(label)
    return body


def nothing_to_draw(message: str, label: str) -> str:
    return svg(60, [text(WIDTH / 2, 35, message, "middle", fill="#59636e")], label)


# --------------------------------------------------------------------------- chart 1


def _cumulative_shares(windows: Sequence[Mapping[str, int]], canary: str,
                       window_seconds: float) -> list[tuple[float, int, float, float, float]]:
    """(seconds, answers so far, canary share so far, interval low, interval high)
    at the end of every window that has had an answer."""
    rows, hits, total = [], 0, 0
    for i, window in enumerate(windows):
        hits += window.get(canary, 0)
        total += sum(window.values())
        if total:
            low, high = clopper_pearson(hits, total, BAND_LEVEL)
            rows.append(((i + 1) * window_seconds, total, hits / total, low, high))
    return rows


def _share_chart(verdict: Mapping, windows: Sequence[Mapping[str, int]],
                 window_seconds: float) -> str:
    """The canary share over time: does the observed share settle inside the margin?

    The dark line is the canary's share of all answers so far, the shaded band
    around it its 95% Clopper-Pearson interval: wide after a few answers, narrowing
    as they add up. The dashed line is the declared share and the green band the
    margin around it. A band that ends inside the green is what "verified" looks
    like; a line that drifts away or never settles is a mismatch or sticky
    connections. (The verdict itself uses the 90% interval of the TOST; this band
    is the plainer 95% one.)
    """
    canary = verdict.get("canary", "v2")
    declared = verdict.get("declared", {}).get(canary)
    margin = verdict.get("margin") or 0.0
    rows = _cumulative_shares(windows, canary, window_seconds)
    label = f"{canary} share over time"
    if not rows or declared is None:
        return nothing_to_draw("No answers counted per time window.", label)

    left, right, top, bottom, height = 60, 20, 30, 45, 300
    shares = [r[2] for r in rows] + [declared - margin, declared + margin]
    y_low = max(0.0, min(shares) - max(margin, 0.05))
    y_high = min(1.0, max(shares) + max(margin, 0.05))
    x_end = rows[-1][0]

    def x(seconds: float) -> float:
        return left + (WIDTH - left - right) * seconds / x_end

    def y(share: float) -> float:
        share = min(max(share, y_low), y_high)  # the band may reach past the plot: clip it
        return top + (height - top - bottom) * (y_high - share) / (y_high - y_low)

    body = [rect(left, y(declared + margin), WIDTH - left - right,
                 y(declared - margin) - y(declared + margin), "#1a7f37", opacity=0.13)]
    body += _share_axes(x, y, y_low, y_high, x_end, left, right, height - bottom)
    start = [(left, y(rows[0][3]))] if len(rows) == 1 else []
    upper = start + [(x(r[0]), y(r[4])) for r in rows]
    lower = [(x(r[0]), y(r[3])) for r in rows] + ([(left, y(rows[0][3]))] if start else [])
    body.append(f'<polygon points="{points(upper + lower[::-1])}" fill="{CANARY_COLOUR}" '
                f'opacity="0.25"/>')
    body.append(line(left, y(declared), WIDTH - right, y(declared), "#1a7f37",
                     stroke_width=2, stroke_dasharray="6 4"))
    body.append(f'<polyline points="{points([(x(r[0]), y(r[2])) for r in rows])}" '
                f'fill="none" stroke="{CANARY_COLOUR}" stroke-width="2.5"/>')
    final = rows[-1]
    body.append(text(WIDTH - right - 4, y(final[2]) - 8,
                     f"{pct(final[2])} of {final[1]} answers", "end", font_weight="bold"))
    body += legend(left, 18, [(f"{canary} share so far", CANARY_COLOUR, 1),
                              (f"its {100 * BAND_LEVEL:g}% interval", CANARY_COLOUR, 0.25),
                              (f"declared {pct(declared)}", "#1a7f37", 1),
                              (f"margin ±{100 * margin:g} points", "#1a7f37", 0.13)])
    return svg(height, body, label)


def _share_axes(x, y, y_low: float, y_high: float, x_end: float,
                left: float, right: float, baseline: float) -> list[str]:
    body = [line(left, baseline, WIDTH - right, baseline, "#8c959f")]
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25) if (y_high - y_low) / s <= 8)
    tick = step * int(y_low / step + 1 - 1e-9)
    while tick <= y_high + 1e-9:
        body += [line(left, y(tick), WIDTH - right, y(tick), "#d1d9e0"),
                 text(left - 6, y(tick) + 4, f"{100 * tick:.0f}%", "end")]
        tick += step
    seconds = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
                   if x_end / s <= 10)
    mark = 0.0
    while mark <= x_end + 1e-9:
        body += [line(x(mark), baseline, x(mark), baseline + 5, "#8c959f"),
                 text(x(mark), baseline + 18, f"{mark:g} s", "middle")]
        mark += seconds
    body.append(text((left + WIDTH - right) / 2, baseline + 36, "time since the first answer",
                     "middle", fill="#59636e"))
    return body


# --------------------------------------------------------------------------- chart 2


def _pod_chart(verdict: Mapping) -> str:
    """Answers per pod: does every replica take its part of its version's traffic?

    One bar per pod, grouped by version; the black tick is the even share (the
    version's answers divided by its pods). A pod far from its tick, or with no
    bar at all, is a pod the Service is not using as the manifests declare: dead,
    unready or pinned by sticky connections, even when the version totals look
    right.
    """
    findings = [f for f in verdict.get("pods", []) if f.get("pods")]
    if not findings:
        return nothing_to_draw("No answers counted per pod.", "answers per pod")
    colours = version_colours(verdict)
    label_width, right, row, top = 250, 70, 22, 10
    largest = max(max(max(f["pods"].values()), f.get("expected_each") or 0) for f in findings)
    scale = (WIDTH - label_width - right) / max(largest, 1)
    body, y = [], top
    for finding in findings:
        version = finding["version"]
        verdict_word = ("UNEVEN" if finding.get("problem")
                        else "even" if finding.get("p_value") is not None else "not tested")
        pods = len(finding["pods"])
        body.append(text(0, y + 15, f"{version}: {sum(finding['pods'].values())} answers, "
                                    f"{pods} pod{'s' * (pods != 1)} — {verdict_word}",
                         font_weight="bold",
                         fill="#cf222e" if finding.get("problem") else "#1f2328"))
        y += row
        for pod, count in finding["pods"].items():
            # The count goes past the tick too, where the tick would cross it.
            end = max(count, finding.get("expected_each") or 0) * scale
            body += [text(label_width - 8, y + 14, pod, "end"),
                     rect(label_width, y + 3, count * scale, row - 7,
                          colours.get(version, "#6e7781")),
                     text(label_width + end + 6, y + 14, count)]
            if finding.get("expected_each"):
                tick = label_width + finding["expected_each"] * scale
                body.append(line(tick, y, tick, y + row, "#1f2328", stroke_width=2))
            y += row
        y += 8
    body += legend(label_width, y + 12, [("even share per pod", "#1f2328", 1)])
    return svg(y + 20, body, "answers per pod")


# --------------------------------------------------------------------------- chart 3


def _latency_chart(verdict: Mapping, latency: Mapping[str, Mapping[str, float]]) -> str:
    """Latency per version: is the canary slower than the version it may replace?

    For each percentile (median, 95th, 99th) the versions' response times stand
    side by side, so a canary that answers in the right share but more slowly
    shows at a glance; the tail percentiles are where a slow dependency shows
    first.
    """
    versions = [v for v in _versions(verdict) if v in latency] + sorted(
        v for v in latency if v not in _versions(verdict))
    percentiles = list(dict.fromkeys(p for v in versions for p in latency[v]))
    if not versions or not percentiles:
        return nothing_to_draw("No latency recorded.", "latency per version")
    colours = version_colours(verdict)
    left, top, bottom, height = 60, 30, 40, 260
    plot = height - top - bottom
    largest = max(latency[v].get(p, 0) for v in versions for p in percentiles) or 1.0
    group = (WIDTH - left - 20) / len(percentiles)
    bar = min(60.0, group * 0.7 / len(versions))
    body = [line(left, top + plot, WIDTH - 20, top + plot, "#8c959f"),
            text(left - 6, top + 4, f"{largest:.0f} ms", "end"),
            text(left - 6, top + plot + 4, "0", "end")]
    for i, percentile in enumerate(percentiles):
        start = left + i * group + (group - bar * len(versions)) / 2
        for j, version in enumerate(versions):
            value = latency[version].get(percentile)
            if value is None:
                continue
            h = plot * value / largest
            bx = start + j * bar
            body += [rect(bx + 2, top + plot - h, bar - 4, h, colours.get(version, "#6e7781")),
                     text(bx + bar / 2, top + plot - h - 4, f"{value:.0f}", "middle")]
        body.append(text(left + (i + 0.5) * group, top + plot + 18,
                         f"{percentile}th percentile", "middle"))
    body += legend(left, 16, [(f"{v} (ms)", colours.get(v, "#6e7781"), 1) for v in versions])
    return svg(height, body, "latency per version")


# --------------------------------------------------------------------------- tables and page


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _shares_table(verdict: Mapping) -> str:
    declared, observed = verdict.get("declared", {}), verdict.get("observed", {})
    counts = verdict.get("counts", {})
    rows = [(v, pct(declared.get(v, 0.0)), pct(observed.get(v, 0.0)), counts.get(v, 0))
            for v in _versions(verdict)]
    return _table(("version", "declared", "observed", "answers"), rows)


def _tests_table(verdict: Mapping) -> str:
    """The same rows as the terminal table (``verifier.render``): the verdict's ``tests``."""
    rows = verdict.get("tests", [])
    if not rows:
        return "<p>No tests ran: no answers were counted.</p>"
    return _table(("test", "statistic", "p-value", "threshold", "result"), rows)


def _items(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    return (f"<h2>{esc(title)}</h2><ul class=\"reasons\">"
            + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>")


def _why(chart) -> str:
    """A chart's docstring, what it shows and how to read it, as its caption."""
    how_to_read = chart.__doc__.split("\n\n", 1)[-1]  # the heading already asks the question
    return f'<p class="why">{esc(" ".join(how_to_read.split()))}</p>'


def render_html(verdict: Mapping, windows: Sequence[Mapping[str, int]], window_seconds: float,
                latency: Mapping[str, Mapping[str, float]] | None = None,
                sections: Sequence[str] = ()) -> str:
    """The whole page as one string."""
    status = str(verdict.get("status", "inconclusive"))
    colour = STATUS_COLOURS.get(status, "#59636e")
    interval = verdict.get("interval")
    summary = (f"expected {verdict.get('expected', '?')} from {verdict.get('source', '?')}; "
               f"canary {verdict.get('canary', '?')}; {verdict.get('n', 0)} answers counted, "
               f"{verdict.get('planned_n', '?')} planned")
    if interval:
        summary += (f"; {100 * verdict.get('interval_level', 0.9):g}% interval "
                    f"{pct(interval[0])}–{pct(interval[1])}")
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Split check: {esc(status.upper())}</title><style>{CSS}</style></head><body>",
        f'<p class="status" style="color:{colour}">{esc(status.upper())}</p>',
        f'<p class="sub">{esc(summary)}</p>',
        *sections,
        _items("Why", verdict.get("reasons", [])),
        "<h2>Declared vs observed</h2>", _shares_table(verdict),
        "<h2>Canary share over time</h2>", _why(_share_chart),
        _share_chart(verdict, windows, window_seconds),
        "<h2>Answers per pod</h2>", _why(_pod_chart), _pod_chart(verdict),
    ]
    if latency:
        parts += ["<h2>Latency per version</h2>", _why(_latency_chart),
                  _latency_chart(verdict, latency)]
    parts += ["<h2>Tests</h2>", _tests_table(verdict),
              _items("Warnings", verdict.get("warnings", [])), "</body></html>\n"]
    return "\n".join(part for part in parts if part)


def write_html(path: Path, verdict: dict, windows: list[dict[str, int]], window_seconds: float,
               latency: dict[str, dict[str, float]] | None = None,
               sections: Sequence[str] = ()) -> Path:
    """Write report.html (``path`` is the file, or a directory to put report.html in).
    ``sections`` are ready-made HTML sections (the canary analysis) put on top."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    path.write_text(render_html(verdict, windows, window_seconds, latency, sections),
                    encoding="utf-8")
    return path
