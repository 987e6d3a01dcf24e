"""Is the canary good enough to promote? v2 judged against v1, honest about what it knows.

What goes in
------------
Per version, from the canary endpoint of one run: how many requests, how many of
them were errors, and their latencies in ms (``VersionSample``). The latencies may
be a bounded reservoir, as long as it is a uniform random sample of the requests:
the latency checks then count the samples, the error checks the requests.

Two kinds of check
------------------
Gates judge the canary alone against a fixed limit, as Flagger does with its
metric thresholds: success rate >= 99%, p99 latency <= 500 ms. Comparisons judge
v2 against v1 measured at the same time under the same load, as Kayenta's judge
does: a slower or flakier canary shows against its baseline even when both are
far inside the gates.

Every check asks two one-sided questions, not one:

- "is the canary evidently worse than allowed?" Its p-value is ``p_worse``; the
  check FAILS when p_worse <= fail_alpha.
- "is the canary evidently within the limit?" ``p_ok``; the check PASSES when
  p_ok <= pass_alpha.
- neither: NOT ENOUGH DATA, with the number of requests per version that would
  settle it.

A check that merely finds no significant problem has not passed: with 30 requests
nothing is significant. This is the equivalence-testing idea of the split verifier
(loadtest/verifier.py, TOST) applied to each check: a pass needs evidence too.

The gates: a binomial test on the bad requests
----------------------------------------------
"success rate >= 99%" is "the error probability e is at most e0 = 1%". With E
errors out of n requests, E ~ Binomial(n, e), so

    p_worse = P(Binomial(n, e0) >= E)      against "e <= e0"
    p_ok    = P(Binomial(n, e0) <= E)      against "e >= e0"

exact, on the counts. "p99 <= 500 ms" is the same test: p99 <= 500 ms means at
most 1% of requests take longer than 500 ms, so count the samples over 500 ms
and test that count against 1%. The table also shows the distribution-free
interval for the canary's p99 from its order statistics: the k-th smallest of n
samples lies below the q-quantile with probability P(Binomial(n, q) >= k)
(David & Nagaraja, "Order Statistics", 3rd ed., sec. 7.1). Consequence: with no
errors at all, success >= 99% passes only from n >= ln(alpha) / ln(0.99) = 299
requests on (0.99^n <= alpha); with fewer, the honest answer is "not enough
data", never "pass".

Latency: Mann-Whitney U with a relative tolerance
-------------------------------------------------
Latencies are skewed and full of outliers; a t-test on means would follow the
outliers. The Mann-Whitney U test (Mann & Whitney 1947, Ann. Math. Statist.
18:50; Kayenta's MannWhitneyClassifier) uses ranks only: it asks whether a random
v2 request tends to be slower than a random v1 request. The tolerance is
relative: with tolerance r, the v2 latencies are divided by (1 + r) before the
test, so

    fail when v2 / (1 + r) is evidently slower than v1 (one-sided "greater"),
    pass when v2 / (1 + r) is evidently faster than v1 (one-sided "less").

Relative, because latencies are multiplicative (lognormal-like): "10% slower"
means the same on a 3 ms service and on a 300 ms one, and a scale change is a
shift of log-latencies, the shift model the test has most power for. Kayenta's
effect-size tolerances are ratios too. scipy.stats.mannwhitneyu gives the
p-values (exact for small samples without ties, else the normal approximation
with tie correction).

The tail: a quantile of v2 against the same quantile of v1
----------------------------------------------------------
Mann-Whitney looks at the whole distribution and hardly moves when only the
slowest 1-2% get slower: a v2 that adds 20 ms at p99 and nothing at the median
passes it. So a second comparison bounds v2's p99 against an allowance over
v1's, k * p99(v1) + t, with k = 1 + tolerance (relative: a tail's noise grows
with its size, on a busy machine p99 is several times what it is on a quiet one)
and t = tolerance_ms. With the order-statistic intervals above: if [L1, U1]
holds v1's p99 and [L2, U2] v2's, each with probability 1 - a/2, then the excess
p99(v2) - k * p99(v1) lies in [L2 - k U1, U2 - k L1] with probability >= 1 - a
(Bonferroni; conservative, exact, no distribution assumed, no resampling). Fail
when L2 - k U1 > t at a = fail_alpha; pass when U2 - k L1 <= t at
a = pass_alpha. A p99 rests
on the slowest 1% of the samples, so this check needs far more requests than
the others: with 500 samples the 97.5% upper bound of a p99 is the slowest
sample itself.

Error rates: the difference with Newcombe's score interval
----------------------------------------------------------
d = e2 - e1 (canary minus baseline). Newcombe's hybrid score interval
(Newcombe 1998, "Interval estimation for the difference between independent
proportions", Stat. Med. 17:873, method 10) combines the Wilson intervals
(l_i, u_i) of the two rates:

    lower = d - sqrt((e2 - l2)^2 + (u1 - e1)^2)
    upper = d + sqrt((u2 - e2)^2 + (e1 - l1)^2)

It stays sensible at 0 errors, where the Wald interval collapses to a point,
and holds its level well at the small rates of a healthy service. Fail when the
one-sided (1 - fail_alpha) lower bound exceeds the tolerance; pass when the
(1 - pass_alpha) upper bound is within it.

How alpha is shared (multiple testing)
--------------------------------------
A false rollback happens when any check fails wrongly, so the budget alpha is
split over the m enabled checks (Bonferroni): each fails only at
fail_alpha = alpha / m. By the union bound a canary as good as its baseline and
within the gates rolls back with probability <= alpha, however the checks
depend on each other (tests/test_analysis.py simulates 1,000 such runs).
Promote needs every check to pass, so a false promote needs the ONE check that
is really bad to pass wrongly: at most pass_alpha = alpha, no split needed
(Berger 1982, "Multiparameter hypothesis testing and acceptance sampling",
Technometrics 24:295, the intersection-union test). ``looks`` divides both by
the number of analyses allowed to decide one growing run.

Too few samples, and early rollback
-----------------------------------
Below ``min_samples`` requests in either version nothing passes: the decision is
hold, "not enough data". A check may still fail, at the much stricter
early_rollback_alpha / m: a canary answering 20 errors in its first 40 requests
does not need 200 more to be rolled back, and at 0.001 a healthy canary is almost
never rolled back on a fluke.

"Not enough data": how many requests would settle it
----------------------------------------------------
A check left undecided says how many requests per version (at the run's current
v1:v2 ratio) would decide it with probability ``power``, if the truth is what the
data show so far (the observed effect as the true one):

- gates: the one-sample normal formula,
  n = ((z_a sqrt(e0 (1 - e0)) + z_b sqrt(e (1 - e))) / (e0 - e))^2;
- Mann-Whitney: Noether's formula (Noether 1987, "Sample size determination
  for some common nonparametric tests", JASA 82:645),
  N = (z_a + z_b)^2 / (12 c (1 - c) (p - 1/2)^2), N requests in all, c the
  canary's share of them, p = P(v2 / (1 + r) > v1) estimated as U / (n1 n2);
- tail and error-rate comparisons: the same interval computed for larger
  samples with the observed rates and quantiles held fixed and z_a replaced by
  z_a + z_b (the normal-theory sample-size argument: the estimate clears the
  bound by z_b standard errors with probability power).

a is the level of the side the data lean to (fail_alpha if the canary looks
worse than allowed, pass_alpha if better). When the observed effect sits right
on the tolerance no number of requests settles it; the check says so. These
are planning numbers: start a new run of that size (or set ``looks``) rather
than topping up this one and testing again.

The configuration, with every default, is loadtest/analysis.yaml.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np
import yaml
from scipy import stats

from loadtest.verifier import json_ready

DEFAULT_CONFIG = Path(__file__).with_name("analysis.yaml")
EXIT_CODES = {"promote": 0, "rollback": 1, "hold": 2}  # the split verifier's convention
PASS, FAIL, NO_DATA = "pass", "fail", "not enough data"
MAX_NEEDED = 10_000_000  # requests per version beyond which "needed" says "more than"


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class VersionSample:
    """One version's answers on the canary endpoint: ``version`` "v1" (baseline) or "v2"
    (canary), its ``requests``, how many were ``errors``, and the latencies in ms of
    the requests (all of them, or a uniform random reservoir of them)."""

    version: str
    requests: int
    errors: int
    latencies_ms: Sequence[float] = ()

    def __post_init__(self) -> None:
        for name in ("requests", "errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{self.version}: {name} must be a whole number >= 0, "
                                 f"not {value!r}")
        if self.errors > self.requests:
            raise ValueError(f"{self.version}: {self.errors} errors in {self.requests} requests")

    def latency_array(self) -> np.ndarray:
        """The latencies, sorted, as floats; refuses NaN, infinite and negative values."""
        values = np.sort(np.asarray(self.latencies_ms, dtype=float).ravel())
        if values.size and not (np.isfinite(values).all() and values[0] >= 0.0):
            raise ValueError(f"{self.version}: latencies must be finite numbers of ms >= 0")
        return values


# --------------------------------------------------------------------------- configuration


class ConfigError(ValueError):
    """An analysis file that cannot be used; the message names the key and says why."""


@dataclass(frozen=True)
class SuccessRateGate:
    enabled: bool = True
    min: float = 0.99


@dataclass(frozen=True)
class LatencyGate:
    enabled: bool = True
    quantile: float = 0.99
    max_ms: float = 500.0


@dataclass(frozen=True)
class LatencyComparison:
    enabled: bool = True
    tolerance: float = 0.10


@dataclass(frozen=True)
class TailComparison:
    enabled: bool = True
    quantile: float = 0.99
    tolerance: float = 0.20
    tolerance_ms: float = 10.0


@dataclass(frozen=True)
class ErrorRateComparison:
    enabled: bool = True
    tolerance: float = 0.01


@dataclass(frozen=True)
class AnalysisConfig:
    """What loadtest/analysis.yaml says; the module docstring explains every number."""

    alpha: float = 0.05
    power: float = 0.8
    min_samples: int = 200
    early_rollback_alpha: float = 0.001
    looks: int = 1
    success_gate: SuccessRateGate = field(default_factory=SuccessRateGate)
    latency_gate: LatencyGate = field(default_factory=LatencyGate)
    latency: LatencyComparison = field(default_factory=LatencyComparison)
    tail_latency: TailComparison = field(default_factory=TailComparison)
    error_rate: ErrorRateComparison = field(default_factory=ErrorRateComparison)
    source: str = "defaults"

    @property
    def enabled_checks(self) -> int:
        return sum(part.enabled for part in (self.success_gate, self.latency_gate, self.latency,
                                             self.tail_latency, self.error_rate))

    @property
    def fail_alpha(self) -> float:
        """Each check's share of the false-rollback budget."""
        return self.alpha / (max(self.enabled_checks, 1) * self.looks)

    @property
    def pass_alpha(self) -> float:
        """Each check's level for a pass: promote needs all of them (intersection-union)."""
        return self.alpha / self.looks

    @property
    def early_alpha(self) -> float:
        return self.early_rollback_alpha / (max(self.enabled_checks, 1) * self.looks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, source: str = "given") -> AnalysisConfig:
        """Build from the YAML's structure; missing keys keep their defaults."""
        if data is None:
            data = {}
        _check_keys(data, _LAYOUT, source, "")
        top = {key: _value(data, key, rule, source, key) for key, rule in _TOP.items()
               if key in data}
        parts = {}
        for section, checks in (("gates", _GATES), ("comparisons", _COMPARISONS)):
            for name, (attribute, kind, rules) in checks.items():
                given = (data.get(section) or {}).get(name) or {}
                where = f"{section}.{name}"
                values = {key: _value(given, key, rule, source, f"{where}.{key}")
                          for key, rule in rules.items() if key in given}
                parts[attribute] = replace(kind(), **values)
        return cls(**top, **parts, source=source)


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """Read an analysis file; ``None`` reads the documented default, loadtest/analysis.yaml."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the analysis file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return AnalysisConfig.from_dict(data, source=str(path))


# Each rule: (check(value) -> bool, what a good value is). Booleans are not numbers here.
def _number(low: float, high: float, *, open_low=True, open_high=True, whole=False):
    def ok(value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if whole and not isinstance(value, int):
            return False
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        return math.isfinite(value) and above and below
    return ok


_SHARE = (_number(0, 1), "a share strictly between 0 and 1 (0.99 = 99%)")
_ALPHA = (_number(0, 0.5), "a probability between 0 and 0.5 (0.05 = 5%)")
_FLAG = (lambda value: isinstance(value, bool), "true or false")
_TOP = {
    "alpha": _ALPHA,
    "power": (_number(0, 1), "a probability between 0 and 1 (0.8 = 80%)"),
    "min_samples": (_number(0, math.inf, open_low=False, whole=True), "a whole number >= 0"),
    "early_rollback_alpha": _ALPHA,
    "looks": (_number(1, math.inf, open_low=False, whole=True), "a whole number >= 1"),
}
_GATES = {
    "success_rate": ("success_gate", SuccessRateGate, {"enabled": _FLAG, "min": _SHARE}),
    "latency": ("latency_gate", LatencyGate, {
        "enabled": _FLAG, "quantile": _SHARE,
        "max_ms": (_number(0, math.inf), "a number of ms > 0")}),
}
_COMPARISONS = {
    "latency": ("latency", LatencyComparison, {
        "enabled": _FLAG,
        "tolerance": (_number(0, 10, open_low=False), "a ratio >= 0 (0.10 = 10% slower)")}),
    "tail_latency": ("tail_latency", TailComparison, {
        "enabled": _FLAG, "quantile": _SHARE,
        "tolerance": (_number(0, 10, open_low=False), "a ratio >= 0 (0.20 = 20% more)"),
        "tolerance_ms": (_number(0, math.inf, open_low=False), "a number of ms >= 0")}),
    "error_rate": ("error_rate", ErrorRateComparison, {
        "enabled": _FLAG,
        "tolerance": (_number(0, 1, open_low=False), "a share >= 0 and < 1 (0.01 = 1 point)")}),
}
_LAYOUT = {**dict.fromkeys(_TOP), "gates": {name: rules for name, (_, _, rules) in _GATES.items()},
           "comparisons": {name: rules for name, (_, _, rules) in _COMPARISONS.items()}}


def _check_keys(data: object, layout: Mapping, source: str, where: str) -> None:
    """Refuse anything but a mapping of known keys, recursively, naming the bad key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where or 'the file'} must be a mapping of keys to "
                          f"values, not {type(data).__name__}")
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in layout:
            close = difflib.get_close_matches(str(key), [str(k) for k in layout], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: {path}: unknown key{hint}; known keys here: "
                              f"{', '.join(layout)}")
        if isinstance(layout[key], Mapping):  # a section, or one check's settings
            _check_keys(value if value is not None else {}, layout[key], source, path)


def _value(data: Mapping, key: str, rule, source: str, path: str):
    ok, words = rule
    value = data[key]
    if not ok(value):
        raise ConfigError(f"{source}: {path}: {value!r} is not {words}")
    return value


# --------------------------------------------------------------------------- results


@dataclass
class VersionSummary:
    """The numbers of one version that the checks and the report show."""

    version: str
    requests: int
    errors: int
    error_rate: float | None
    samples: int  # latency samples
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass
class Check:
    """One row of the analysis. ``p_worse`` small: evidence the canary is worse than
    allowed (fail at ``fail_alpha``); ``p_ok`` small: evidence it is within (pass at
    ``pass_alpha``). Either may be None when the check decides from an interval."""

    name: str
    kind: str  # "gate" | "comparison"
    status: str  # "pass" | "fail" | "not enough data"
    observed: str
    threshold: str
    p_worse: float | None
    p_ok: float | None
    interval: tuple[float, float] | None  # lower bound at the fail level, upper at the pass
    interval_text: str
    reason: str
    needed: dict[str, int] | None = None  # requests per version that would settle it
    needed_more_than: bool = False  # True: even MAX_NEEDED would not


@dataclass
class Analysis:
    """The verdict on the canary. ``to_dict()`` is JSON-ready; ``render`` makes a table."""

    decision: str  # "promote" | "hold" | "rollback"
    baseline: VersionSummary
    canary: VersionSummary
    checks: list[Check]
    reasons: list[str]
    fail_alpha: float
    pass_alpha: float
    enough_samples: bool
    config: AnalysisConfig

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    @property
    def needed(self) -> dict[str, int] | None:
        """Requests per version that would settle every undecided check (the largest ask)."""
        asks = [c.needed for c in self.checks if c.status == NO_DATA and c.needed]
        if not asks:
            return None
        return {v: max(ask.get(v, 0) for ask in asks) for v in
                (self.baseline.version, self.canary.version)}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["needed"] = self.needed
        data["rows"] = [list(row) for row in check_rows(self)]
        return json_ready(data)


# --------------------------------------------------------------------------- statistics


_NORMAL = NormalDist()


def _z(alpha: float) -> float:
    """The one-sided normal quantile: P(Z > z) = alpha."""
    return _NORMAL.inv_cdf(1.0 - alpha)


@lru_cache(maxsize=4096)
def _ranks(n: int, q: float, alpha: float) -> tuple[int, int]:
    """0-based positions in a sorted sample of n of the (1 - alpha) lower and upper
    bounds of the q-quantile; -1 and n where no such bound exists (see quantile_bounds)."""
    k = int(stats.binom.ppf(alpha, n, q))
    if stats.binom.cdf(k, n, q) > alpha:
        k -= 1
    return max(k, -1), min(int(stats.binom.ppf(1.0 - alpha, n, q)), n)


def _at(ordered: np.ndarray, level: float) -> float:
    """The sample quantile at ``level`` (linear interpolation, as numpy's default),
    without numpy.quantile's overhead: the sample-size searches call it thousands of times."""
    position = level * (len(ordered) - 1)
    below = int(position)
    if below >= len(ordered) - 1:
        return float(ordered[-1])
    return float(ordered[below] + (position - below) * (ordered[below + 1] - ordered[below]))


def quantile_bounds(ordered: np.ndarray, q: float, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper confidence bounds for the q-quantile, from
    the order statistics of the sorted sample ``ordered``. No bound exists on too
    few samples: then 0 (latencies are >= 0) and infinity."""
    n = len(ordered)
    if n == 0:
        return 0.0, math.inf
    # Lower: the r-th smallest with P(Binomial(n, q) <= r - 1) <= alpha, r as large as can
    # be; upper: the s-th smallest with P(Binomial(n, q) <= s - 1) >= 1 - alpha, s as small.
    # _ranks gives r - 1 and s - 1, the 0-based positions.
    low, high = _ranks(n, q, alpha)
    return (float(ordered[low]) if low >= 0 else 0.0,
            float(ordered[high]) if high < n else math.inf)


def _plugin_bounds(ordered: np.ndarray, q: float, n: float, z: float) -> tuple[float, float]:
    """What ``quantile_bounds`` would give on n samples from the distribution observed
    (normal approximation to the binomial ranks, levels q -+ z sqrt(q (1 - q) / n))."""
    spread = z * math.sqrt(q * (1.0 - q) / n)
    low, high = q - spread, q + spread
    lower = _at(ordered, low) if low >= 0.0 else 0.0
    upper = _at(ordered, high) if high <= 1.0 else math.inf
    return lower, upper


def wilson(errors: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion, at a normal quantile z (one side each)."""
    if n <= 0:
        return 0.0, 1.0
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(e2: float, n2: float, e1: float, n1: float, z_low: float,
             z_high: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for rate2 - rate1: lower bound at z_low, upper at
    z_high (each a one-sided normal quantile)."""
    p2, p1 = e2 / n2, e1 / n1
    d = p2 - p1
    l2, _ = wilson(e2, n2, z_low)
    _, u1 = wilson(e1, n1, z_low)
    _, u2 = wilson(e2, n2, z_high)
    l1, _ = wilson(e1, n1, z_high)
    return (d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2),
            d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2))


def _smallest_scale(settles: Callable[[float], bool], largest: float) -> float | None:
    """The smallest factor s >= 1 (to about 1%) with settles(s), or None below ``largest``.
    Used for "how many requests": settles grows more likely with s."""
    if settles(1.0):
        return 1.0
    high = 2.0
    while not settles(high):
        if high >= largest:
            return None
        high = min(high * 2.0, largest)
    low = high / 2.0
    while high / low > 1.01:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if settles(middle) else (middle, high)
    return high


def _per_version(scale: float | None, baseline: int, canary: int,
                 names: tuple[str, str]) -> tuple[dict[str, int] | None, bool]:
    """Current counts times ``scale``, as needed requests per version, capped."""
    if scale is None:
        return None, True
    needed = {names[0]: math.ceil(baseline * scale), names[1]: math.ceil(canary * scale)}
    if max(needed.values()) > MAX_NEEDED:
        return None, True
    return needed, False


def _one_sample_n(rate: float, limit: float, z_a: float, z_b: float) -> float:
    """Requests for a binomial test of ``limit`` to decide when the true rate is ``rate``."""
    if rate == limit:
        return math.inf
    spread = z_a * math.sqrt(limit * (1 - limit)) + z_b * math.sqrt(rate * (1 - rate))
    return (spread / (limit - rate)) ** 2


# --------------------------------------------------------------------------- the checks


@dataclass
class _Context:
    """What every check needs: the samples, the levels, the wording."""

    baseline: VersionSample
    canary: VersionSample
    x: np.ndarray  # baseline latencies, sorted
    y: np.ndarray  # canary latencies, sorted
    config: AnalysisConfig
    enough: bool  # both versions at min_samples or more
    fail_alpha: float
    pass_alpha: float

    @property
    def names(self) -> tuple[str, str]:
        return self.baseline.version, self.canary.version

    def settle(self, p_worse: float | None, p_ok: float | None,
               fails: bool | None = None, passes: bool | None = None) -> str:
        """fail / pass / not enough data, from the p-values or from interval verdicts."""
        fails = p_worse is not None and p_worse <= self.fail_alpha if fails is None else fails
        passes = p_ok is not None and p_ok <= self.pass_alpha if passes is None else passes
        if fails:
            return FAIL
        if passes and self.enough:
            return PASS
        return NO_DATA

    def too_few(self) -> str:
        cfg, b, c = self.config, self.baseline, self.canary
        return (f"Fewer than {cfg.min_samples} requests in a version ({b.version} {b.requests}, "
                f"{c.version} {c.requests}): not enough data to pass anything; a failure needs "
                f"p <= {self.fail_alpha:.2g} here.")


def _pct(share: float | None, digits: int = 1) -> str:
    return "-" if share is None else f"{100 * share:.{digits}f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g} ms" if abs(value) < 100 else f"{value:.0f} ms"


def _needed_words(needed: dict[str, int] | None, more_than: bool, names: tuple[str, str],
                  power: float, what: str) -> str:
    if more_than or needed is None:
        return (f" No sample size settles it: the observed difference sits on the tolerance, "
                f"or {what} would need more than {MAX_NEEDED:,} requests per version.")
    if len(needed) == 1:
        (version, n), = needed.items()
        return (f" To settle it with probability {power:g}, if the canary is as observed: "
                f"about {n:,} {version} requests.")
    b, c = names
    return (f" To settle it with probability {power:g}, if the difference is as observed: "
            f"about {needed[b]:,} {b} and {needed[c]:,} {c} requests (the current ratio; "
            f"{needed[b] + needed[c]:,} in all).")


def _rate_gate(ctx: _Context, name: str, bad: int, n: int, limit: float, threshold: str,
               observed: str, what: str, interval: tuple[float, float] | None,
               interval_text: str) -> Check:
    """A binomial gate: ``bad`` of ``n`` requests were bad; at most ``limit`` may be."""
    canary = ctx.canary.version
    if n == 0:
        return Check(name, "gate", NO_DATA, observed, threshold, None, None, None, "-",
                     f"No {canary} {what} to judge.",
                     {canary: max(ctx.config.min_samples, 1)})
    p_worse = float(stats.binom.sf(bad - 1, n, limit))
    p_ok = float(stats.binom.cdf(bad, n, limit))
    status = ctx.settle(p_worse, p_ok)
    rate = bad / n
    check = Check(name, "gate", status, observed, threshold, p_worse, p_ok, interval,
                  interval_text, "")
    if status == FAIL:
        check.reason = (f"{canary}: {bad} of {n} {what} ({_pct(rate, 2)}) where at most "
                        f"{_pct(limit, 2)} may be; chance makes that many with probability "
                        f"{p_worse:.2g} (limit {ctx.fail_alpha:.2g}).")
    elif status == PASS:
        check.reason = (f"{canary}: {bad} of {n} {what} ({_pct(rate, 2)}): evidently at most "
                        f"{_pct(limit, 2)} (p = {p_ok:.2g}).")
    else:
        z_a = _z(ctx.pass_alpha if rate < limit else ctx.fail_alpha)
        needed_n = _one_sample_n(rate, limit, z_a, _z(1 - ctx.config.power))
        if rate < limit and rate == 0.0:  # the exact rule: (1 - limit)^n <= alpha
            needed_n = max(needed_n, math.log(ctx.pass_alpha) / math.log1p(-limit))
        needed_n = max(needed_n, ctx.config.min_samples, n)
        check.needed_more_than = needed_n > MAX_NEEDED
        check.needed = None if check.needed_more_than else {canary: math.ceil(needed_n)}
        lead = ctx.too_few() + " " if not ctx.enough else ""
        check.reason = (f"{lead}{canary}: {bad} of {n} {what} ({_pct(rate, 2)}), limit "
                        f"{_pct(limit, 2)}: neither evidently within (p = {p_ok:.2g}) nor "
                        f"evidently over (p = {p_worse:.2g})."
                        + _needed_words(check.needed, check.needed_more_than, ctx.names,
                                        ctx.config.power, "it"))
    return check


def _success_gate(ctx: _Context) -> Check:
    gate, c = ctx.config.success_gate, ctx.canary
    limit = 1.0 - gate.min
    rate = 1 - c.errors / c.requests if c.requests else None
    interval, text = None, "-"
    if c.requests:
        low = stats.beta.ppf(ctx.fail_alpha, c.errors, c.requests - c.errors + 1) if (
            c.errors) else 0.0
        high = stats.beta.isf(ctx.pass_alpha, c.errors + 1, c.requests - c.errors) if (
            c.errors < c.requests) else 1.0
        interval = (1.0 - float(high), 1.0 - float(low))  # as success rates
        text = f"{_pct(interval[0], 2)}-{_pct(interval[1], 2)}"
    return _rate_gate(ctx, f"{c.version} success rate", c.errors, c.requests, limit,
                      f">= {100 * gate.min:g}%",
                      f"{_pct(rate, 2)} ({c.errors} of {c.requests} failed)",
                      "requests failed", interval, text)


def _latency_gate(ctx: _Context) -> Check:
    gate, y, version = ctx.config.latency_gate, ctx.y, ctx.canary.version
    q = gate.quantile
    label = f"p{100 * q:g}"
    over = int(len(y) - np.searchsorted(y, gate.max_ms, side="right"))
    interval, text, observed = None, "-", "no samples"
    if len(y):
        low, _ = quantile_bounds(y, q, ctx.fail_alpha)
        _, high = quantile_bounds(y, q, ctx.pass_alpha)
        interval = (low, high)
        text = f"{_ms(low)}-{_ms(high)}"
        observed = f"{_ms(_at(y, q))} ({over} of {len(y)} > {_ms(gate.max_ms)})"
    return _rate_gate(ctx, f"{version} {label} latency", over, len(y), 1.0 - q,
                      f"<= {_ms(gate.max_ms)}", observed,
                      f"samples slower than {_ms(gate.max_ms)}", interval, text)


def _latency_comparison(ctx: _Context) -> Check:
    r = ctx.config.latency.tolerance
    b, c = ctx.names
    name = f"latency {c} vs {b} (Mann-Whitney)"
    threshold = f"<= {1 + r:g} x {b}"
    x, y = ctx.x, ctx.y
    if not len(x) or not len(y):
        return Check(name, "comparison", NO_DATA, "no samples", threshold, None, None, None,
                     "-", "No latency samples to compare.",
                     dict.fromkeys(ctx.names, max(ctx.config.min_samples, 1)))
    shifted = y / (1.0 + r)
    worse = stats.mannwhitneyu(shifted, x, alternative="greater")
    p_worse = float(worse.pvalue)
    p_ok = float(stats.mannwhitneyu(shifted, x, alternative="less").pvalue)
    superiority = float(worse.statistic) / (len(x) * len(y))  # P(v2 / (1 + r) > v1)
    ratio = _at(y, 0.5) / _at(x, 0.5) if _at(x, 0.5) > 0 else math.inf
    observed = f"median {_ms(_at(y, 0.5))} vs {_ms(_at(x, 0.5))} ({ratio:.2f}x)"
    status = ctx.settle(p_worse, p_ok)
    check = Check(name, "comparison", status, observed, threshold, p_worse, p_ok, None, "-", "")
    if status == FAIL:
        check.reason = (f"{c} is slower than {b} by more than {100 * r:g}%: a {c} request "
                        f"divided by {1 + r:g} is still slower than a {b} request "
                        f"{100 * superiority:.0f}% of the time (Mann-Whitney p = {p_worse:.2g}, "
                        f"limit {ctx.fail_alpha:.2g}); medians {_ms(_at(y, 0.5))} vs "
                        f"{_ms(_at(x, 0.5))}.")
    elif status == PASS:
        check.reason = (f"{c} is evidently at most {100 * r:g}% slower than {b} "
                        f"(Mann-Whitney p = {p_ok:.2g}); medians {_ms(_at(y, 0.5))} vs "
                        f"{_ms(_at(x, 0.5))}.")
    else:
        z_a = _z(ctx.fail_alpha if superiority > 0.5 else ctx.pass_alpha)
        z_b = _z(1 - ctx.config.power)
        total = len(x) + len(y)
        share = len(y) / total
        effect = (superiority - 0.5) ** 2
        noether = ((z_a + z_b) ** 2 / (12 * share * (1 - share) * effect)
                   if effect > 0 else math.inf)
        scale = max(noether / total, ctx.config.min_samples / min(len(x), len(y)), 1.0)
        check.needed, check.needed_more_than = _per_version(
            scale if math.isfinite(scale) else None, len(x), len(y), ctx.names)
        lead = ctx.too_few() + " " if not ctx.enough else ""
        check.reason = (f"{lead}Whether {c} is more than {100 * r:g}% slower than {b} is not "
                        f"settled: P({c}/{1 + r:g} > {b}) = {superiority:.3f} "
                        f"(p = {p_worse:.2g} for slower, {p_ok:.2g} for within)."
                        + _needed_words(check.needed, check.needed_more_than, ctx.names,
                                        ctx.config.power, "Noether's formula"))
    return check


def _tail_comparison(ctx: _Context) -> Check:
    cfg = ctx.config.tail_latency
    q, tol, k = cfg.quantile, cfg.tolerance_ms, 1.0 + cfg.tolerance
    b, c = ctx.names
    label = f"p{100 * q:g}"
    name = f"{label} {c} vs {b}"
    allowance = f"{b} x {k:g} + {tol:g} ms" if k != 1 else f"{b} + {tol:g} ms"
    threshold = f"<= {allowance}"
    x, y = ctx.x, ctx.y
    if not len(x) or not len(y):
        return Check(name, "comparison", NO_DATA, "no samples", threshold, None, None, None,
                     "-", "No latency samples to compare.",
                     dict.fromkeys(ctx.names, max(ctx.config.min_samples, 1)))
    qx, qy = _at(x, q), _at(y, q)
    l2, _ = quantile_bounds(y, q, ctx.fail_alpha / 2)
    _, u1 = quantile_bounds(x, q, ctx.fail_alpha / 2)
    _, u2 = quantile_bounds(y, q, ctx.pass_alpha / 2)
    l1, _ = quantile_bounds(x, q, ctx.pass_alpha / 2)
    low, high = l2 - k * u1, u2 - k * l1  # the excess of v2's quantile over k * v1's
    status = ctx.settle(None, None, fails=low > tol, passes=high <= tol)
    observed = f"{_ms(qy)} vs {_ms(qx)} ({qy - qx:+.3g} ms)"
    text = f"{low:+.3g} to {high:+.3g} ms" if math.isfinite(high) else f"{low:+.3g} ms to inf"
    check = Check(name, "comparison", status, observed, threshold, None, None, (low, high),
                  text, "")
    if status == FAIL:
        check.reason = (f"{c}'s {label} is {_ms(qy)}, {b}'s {_ms(qx)}: at least {low:.3g} ms "
                        f"over the allowance, {allowance} (one-sided "
                        f"{100 * (1 - ctx.fail_alpha):g}% bound).")
    elif status == PASS:
        check.reason = (f"{c}'s {label} is {_ms(qy)}, {b}'s {_ms(qx)}: within the allowance, "
                        f"{allowance} ({100 * (1 - ctx.pass_alpha):g}% bound).")
    else:
        aim_fail = qy - k * qx > tol
        z = _z((ctx.fail_alpha if aim_fail else ctx.pass_alpha) / 2) + _z(1 - ctx.config.power)

        def settles(scale: float) -> bool:
            lo2, hi2 = _plugin_bounds(y, q, len(y) * scale, z)
            lo1, hi1 = _plugin_bounds(x, q, len(x) * scale, z)
            return lo2 - k * hi1 > tol if aim_fail else hi2 - k * lo1 <= tol

        scale = _smallest_scale(settles, MAX_NEEDED / min(len(x), len(y)))
        if scale is not None:
            scale = max(scale, ctx.config.min_samples / min(len(x), len(y)),
                        1.0 + 1.0 / min(len(x), len(y)))
        check.needed, check.needed_more_than = _per_version(scale, len(x), len(y), ctx.names)
        lead = ctx.too_few() + " " if not ctx.enough else ""
        bounds = (f"between {low:+.3g} and {high:+.3g} ms" if math.isfinite(high)
                  else f"at least {low:+.3g} ms, with no upper bound yet")
        check.reason = (f"{lead}{c}'s {label} is {_ms(qy)}, {b}'s {_ms(qx)} "
                        f"({qy - qx:+.3g} ms), but on {len(y)} and {len(x)} samples its excess "
                        f"over the allowance, {allowance}, can only be placed {bounds}: it may "
                        f"be within the allowance or beyond it. A {label} rests on the slowest "
                        f"{100 * (1 - q):.2g}% of the samples."
                        + _needed_words(check.needed, check.needed_more_than, ctx.names,
                                        ctx.config.power, "it")
                        + (" A rough figure: the slowest few samples so far decide it."
                           if check.needed else ""))
    return check


def _error_comparison(ctx: _Context) -> Check:
    tol = ctx.config.error_rate.tolerance
    base, can = ctx.baseline, ctx.canary
    b, c = ctx.names
    name = f"error rate {c} vs {b}"
    threshold = f"<= {b} + {100 * tol:g} points"
    if not base.requests or not can.requests:
        return Check(name, "comparison", NO_DATA, "no requests", threshold, None, None, None,
                     "-", "No requests to compare.",
                     dict.fromkeys(ctx.names, max(ctx.config.min_samples, 1)))
    e1, e2 = base.errors / base.requests, can.errors / can.requests
    low, _ = newcombe(can.errors, can.requests, base.errors, base.requests,
                      _z(ctx.fail_alpha), _z(ctx.fail_alpha))
    _, high = newcombe(can.errors, can.requests, base.errors, base.requests,
                       _z(ctx.pass_alpha), _z(ctx.pass_alpha))
    status = ctx.settle(None, None, fails=low > tol, passes=high <= tol)
    observed = f"{_pct(e2, 2)} vs {_pct(e1, 2)}"
    text = f"{100 * low:+.2f} to {100 * high:+.2f} points"
    check = Check(name, "comparison", status, observed, threshold, None, None, (low, high),
                  text, "")
    if status == FAIL:
        check.reason = (f"{c} failed {can.errors} of {can.requests} requests ({_pct(e2, 2)}), "
                        f"{b} {base.errors} of {base.requests} ({_pct(e1, 2)}): at least "
                        f"{100 * low:.2f} points more (one-sided "
                        f"{100 * (1 - ctx.fail_alpha):g}% bound), beyond the {100 * tol:g}-point "
                        "tolerance.")
    elif status == PASS:
        check.reason = (f"{c} {_pct(e2, 2)} errors, {b} {_pct(e1, 2)}: at most "
                        f"{100 * high:.2f} points more ({100 * (1 - ctx.pass_alpha):g}% bound), "
                        f"within {100 * tol:g} points.")
    else:
        aim_fail = e2 - e1 > tol
        z = _z(ctx.fail_alpha if aim_fail else ctx.pass_alpha) + _z(1 - ctx.config.power)

        def settles(scale: float) -> bool:
            lo, hi = newcombe(can.errors * scale, can.requests * scale,
                              base.errors * scale, base.requests * scale, z, z)
            return lo > tol if aim_fail else hi <= tol

        fewest = min(base.requests, can.requests)
        scale = _smallest_scale(settles, MAX_NEEDED / fewest)
        if scale is not None:
            scale = max(scale, ctx.config.min_samples / fewest, 1.0 + 1.0 / fewest)
        check.needed, check.needed_more_than = _per_version(scale, base.requests, can.requests,
                                                            ctx.names)
        lead = ctx.too_few() + " " if not ctx.enough else ""
        check.reason = (f"{lead}{c} {_pct(e2, 2)} errors, {b} {_pct(e1, 2)}: the difference "
                        f"lies between {100 * low:+.2f} and {100 * high:+.2f} points, which "
                        f"straddles the {100 * tol:g}-point tolerance."
                        + _needed_words(check.needed, check.needed_more_than, ctx.names,
                                        ctx.config.power, "it"))
    return check


# --------------------------------------------------------------------------- the analysis


def summarize(sample: VersionSample, ordered: np.ndarray | None = None) -> VersionSummary:
    ordered = sample.latency_array() if ordered is None else ordered

    def quantile(q: float) -> float | None:
        return _at(ordered, q) if len(ordered) else None

    return VersionSummary(sample.version, sample.requests, sample.errors,
                          sample.errors / sample.requests if sample.requests else None,
                          len(ordered), quantile(0.5), quantile(0.95), quantile(0.99))


def analyze(baseline: VersionSample, canary: VersionSample,
            config: AnalysisConfig | None = None) -> Analysis:
    """Judge ``canary`` against ``baseline``: promote, hold or rollback, with the reasons.

    Pure: no Locust, no network, no clock. ``config`` defaults to loadtest/analysis.yaml.
    """
    config = load_config() if config is None else config
    if baseline.version == canary.version:
        raise ValueError("the baseline and the canary must be different versions")
    x, y = baseline.latency_array(), canary.latency_array()
    enough = min(baseline.requests, canary.requests) >= config.min_samples
    ctx = _Context(baseline, canary, x, y, config, enough,
                   config.fail_alpha if enough else config.early_alpha, config.pass_alpha)
    plan = [(config.success_gate, _success_gate), (config.latency_gate, _latency_gate),
            (config.latency, _latency_comparison), (config.tail_latency, _tail_comparison),
            (config.error_rate, _error_comparison)]
    checks = [run(ctx) for part, run in plan if part.enabled]
    failed = [c for c in checks if c.status == FAIL]
    undecided = [c for c in checks if c.status == NO_DATA]
    decision = "rollback" if failed else "hold" if undecided or not checks else "promote"
    analysis = Analysis(decision, summarize(baseline, x), summarize(canary, y), checks, [],
                        ctx.fail_alpha, ctx.pass_alpha, enough, config)
    analysis.reasons = _reasons(analysis, failed, undecided)
    return analysis


def _reasons(analysis: Analysis, failed: list[Check], undecided: list[Check]) -> list[str]:
    cfg, c = analysis.config, analysis.canary.version
    m = len(analysis.checks)
    if not analysis.checks:
        return ["Every check is disabled in the analysis file: nothing can be promoted."]
    budget = (f"alpha {cfg.alpha:g} shared over {m} check{'s' * (m != 1)}"
              f"{f' and {cfg.looks} looks' if cfg.looks > 1 else ''}: each fails at p <= "
              f"{analysis.fail_alpha:.2g}, passes at p <= {analysis.pass_alpha:.2g}")
    if failed:
        early = ("" if analysis.enough_samples else
                 f" Early rollback: fewer than {cfg.min_samples} requests per version, but the "
                 f"evidence clears the early level {analysis.fail_alpha:.2g}.")
        names = ", ".join(check.name for check in failed)
        return ([f"Roll back {c}: {len(failed)} of {m} checks failed ({names}).{early}"]
                + [check.reason for check in failed] + [f"({budget}.)"])
    if undecided:
        head = f"Hold {c}: {len(undecided)} of {m} checks cannot decide yet"
        needed = analysis.needed
        if needed:
            head += (f"; about {needed[analysis.baseline.version]:,} "
                     f"{analysis.baseline.version} and {needed[c]:,} {c} requests would settle "
                     f"them all (with power {cfg.power:g}, if the data so far are the truth)")
        head += ". Nothing here shows the canary is bad, and nothing yet shows it is good."
        return [head] + [check.reason for check in undecided] + [f"({budget}.)"]
    return [f"Promote {c}: all {m} checks passed with evidence, not just without alarm "
            f"({budget}; a bad canary is promoted with probability at most "
            f"{analysis.pass_alpha:.2g})."] + [check.reason for check in analysis.checks]


# --------------------------------------------------------------------------- console


def check_rows(analysis: Analysis) -> list[tuple[str, str, str, str, str, str, str]]:
    """(check, kind, observed, threshold, p worse / p ok, interval, result), as text."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2g}"

    return [(c.name, c.kind, c.observed, c.threshold, f"{fmt(c.p_worse)} / {fmt(c.p_ok)}",
             c.interval_text, c.status.upper() if c.status == FAIL else c.status)
            for c in analysis.checks]


def render(analysis: Analysis) -> str:
    """The analysis as text for the terminal, like ``verifier.render``."""
    cfg = analysis.config
    lines = [f"Canary analysis: {analysis.decision.upper()} (exit {analysis.exit_code})",
             f"{analysis.canary.version} against {analysis.baseline.version}; analysis file "
             f"{cfg.source}; alpha {cfg.alpha:g} (fail at {analysis.fail_alpha:.2g}, pass at "
             f"{analysis.pass_alpha:.2g}), min {cfg.min_samples} requests per version", "",
             f"{'version':<10}{'requests':>10}{'errors':>8}{'err %':>8}{'samples':>9}"
             f"{'p50':>10}{'p95':>10}{'p99':>10}"]
    for s in (analysis.baseline, analysis.canary):
        lines.append(f"{s.version:<10}{s.requests:>10}{s.errors:>8}{_pct(s.error_rate, 2):>8}"
                     f"{s.samples:>9}{_ms(s.p50_ms):>10}{_ms(s.p95_ms):>10}{_ms(s.p99_ms):>10}")
    rows = check_rows(analysis)
    if rows:
        header = ("check", "kind", "observed", "threshold", "p worse / p ok", "interval",
                  "result")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    lines += ["", "reasons"] + [f"  - {reason}" for reason in analysis.reasons]
    return "\n".join(lines)

