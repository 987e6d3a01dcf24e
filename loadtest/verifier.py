"""Is the canary getting the share of traffic the manifests declare? An honest verdict.

How the traffic splits
----------------------
v1 and v2 of notification sit behind ONE Service, and the Service picks a pod per
connection at random (kube-proxy's rule). user-management opens a new connection
per call, so every request is an independent draw that reaches the canary (v2)
with probability p, the share the replica counts declare: 3 v1 pods + 1 v2 pod ->
p = 1/4. Counting who answered is flipping a biased coin, and a verdict has to say
how sure it is.

Why not "40 to 60 of 100 calls"?
--------------------------------
Istio's CI accepts a 50/50 split when each version answers 40-60 of 100 calls.
Chance alone lands outside that window 3.5% of the time, so a correct split fails
about one CI run in 29; and the window is too wide to see a real error: a canary
that really gets 35% when 25% is declared lands inside 15-35 of 100 calls 55% of
the time. One fixed window answers neither "is it wrong?" nor "is it right?" with
a known error rate. This module asks both questions, separately:

1. Sample-ratio mismatch (SRM), "is it wrong?". Pearson's chi-square goodness of
   fit of the per-version counts against the declared shares,
   X^2 = sum_v (O_v - E_v)^2 / E_v with (versions - 1) degrees of freedom, the
   standard SRM check of A/B testing (Fabijan et al. 2019, "Diagnosing Sample
   Ratio Mismatch in Online Controlled Experiments", KDD). "mismatch" when
   p < 0.001: strict, because a mismatch fails a deployment and must almost never
   happen to a correct one.

2. Equivalence, "is it right?". Finding no difference is not evidence of no
   difference: with 30 requests nothing is significant. The two one-sided tests
   (TOST; Schuirmann 1987, J. Pharmacokinet. Biopharm. 15:657) turn the question
   round: the null hypothesis is "the canary share is a margin d (5 points) or
   more away from the declared p0", and rejecting both halves at alpha = 0.05
   verifies the split at 95%. With x canary answers out of n:

       p_low  = P(X >= x | n, p0 - d)     against "share <= p0 - d"
       p_high = P(X <= x | n, p0 + d)     against "share >= p0 + d"
       verified when max(p_low, p_high) <= alpha

   These are exact binomial tails. Equivalently, the 90% (= 1 - 2 alpha)
   Clopper-Pearson interval lies inside [p0 - d, p0 + d]: that is why a 95%
   equivalence verdict shows a 90% interval. Exact, not a normal approximation:
   on 75/25 at 700-900 requests, the Wald and Wilson versions verify a canary
   sitting right on the margin up to 5.8% and 5.6% of the time; the exact test
   never more than 5%.

3. The plan, "how many requests?". For TOST when the true share is the declared
   one, the normal approximation gives (Chow, Shao & Wang, "Sample Size
   Calculations in Clinical Research", ch. 4, one-sample test for equivalence)

       n = (z_{1-alpha} + z_{1-beta/2})^2 * p0 (1 - p0) / d^2

   with beta/2 because a run can miss on either side. 75/25, d = 0.05,
   alpha = 0.05, power 1 - beta = 0.9: (1.645 + 1.645)^2 * 0.1875 / 0.0025 =
   811.7 -> 812. The exact test is a little conservative (its power at 812 is
   0.893), so ``plan_requests`` walks up from there to the first n whose exact
   power reaches the target: 817. Compare a plain 95% interval of +-5 points on
   50/50, 1.96^2 * 0.25 / 0.05^2 = 385 requests, with TOST on 50/50 at 90% power,
   1,083 by the formula and 1,092 exact: the interval must not only be that
   narrow, it must land inside the margin.

   ``verify`` never says "verified" on fewer requests than the plan. A fixed-size
   test is honest at the size chosen before the run; a run that stops whenever
   the numbers happen to look good (optional stopping) verifies wrong splits far
   more often than alpha. To look as often as you like, use the

4. Sequential mode (``SequentialVerifier``), anytime-valid. For a candidate
   share q, with x canary answers out of n so far,

       M_n(q) = [B(a + x, b + n - x) / B(a, b)] / [q^x (1 - q)^(n - x)]

   is the likelihood of the counts averaged over a Beta(a, b) prior on the
   share, divided by their likelihood at q (B is the Beta function). If q is the
   true share, M_n(q) is a nonnegative martingale starting at 1, so by Ville's
   inequality P(M_n(q) >= 1/alpha at some n) <= alpha, however often one looks
   (Robbins 1970, "Statistical methods related to the law of the iterated
   logarithm", Ann. Math. Statist. 41:1397; with a Dirichlet prior a = k p0 this
   is the sequential SRM test of Lindon & Malek 2022, "Anytime-valid inference
   for multinomial count data", NeurIPS). The shares q with M_n(q) < 1/alpha
   form a confidence sequence: it holds the true share at every n at once with
   probability >= 1 - alpha (Howard, Ramdas, McAuliffe & Sekhon 2021,
   "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann.
   Statist. 49:1055). So:

   - mismatch when M_n(p0) >= 1/0.001: the 99.9% sequence has left p0;
   - verified when M_n(p0 - d) >= 1/0.05 and M_n(p0 + d) >= 1/0.05 with x/n
     between them: the 95% sequence lies inside the margin.

   The prior is Beta(k p0, k (1 - p0)) with k + 1 = p0 (1 - p0) / d^2: mean p0
   and standard deviation d, "the real share is about a margin from the declared
   one, or closer". bench/sequential_bench.py measures the price on 75/25 at +-5,
   looking after every 20 requests: a correct split verifies after about 1.2x the
   fixed plan on average, and a split declared 50/50 that really is 75/25 is
   called a mismatch after about 0.15x. Because its guarantee holds at every
   look, the sequential mode may verify before the fixed plan.

5. Per pod. Within a version every pod should get the same share: a chi-square
   test of uniformity across that version's pods. A dead or unready pod (no
   answers) or sticky connections show here even when the version totals look
   right.

6. Stickiness. kube-proxy balances connections, not requests; a client that
   keeps connections alive pins each worker to one pod, and the split of a short
   stretch of time then swings far more than coin flips allow. Given counts per
   time window, the dispersion statistic

       X^2 = sum_w (x_w - n_w p)^2 / (n_w p (1 - p))     (p: the pooled share)

   is chi-square with W - 1 degrees of freedom when the windows are independent
   binomial draws (Cochran 1954, "Some methods for strengthening the common chi^2
   tests", Biometrics 10:417). X^2 / (W - 1), the dispersion, is about 1 for coin
   flips; far above 1 the traffic is sticky, and every count-based verdict above
   is overconfident.

Degenerate splits (100/0, 0/100)
--------------------------------
When the declared canary share is 0 (or 1), one answer from the version that
should get nothing is a mismatch: the declared split makes it impossible (the
chi-square test is undefined there, with an expected count of 0; the p-value is
0). TOST keeps its meaning: with every answer from v1, "the canary share is below
d" is verified once (1 - d)^n <= alpha, i.e. after n >= ln(alpha) / ln(1 - d) = 59
requests for d = 0.05, and the lower half is empty (no share is below 0). The
plan is those 59 requests, with power 1; the sequential mode needs the same 59.

How ``verify`` decides
----------------------
- mismatch (exit 1): SRM rejects; or a version the expectation does not name
  answered; or a version's pods do not share its traffic evenly. The last one on
  purpose: the split is declared as replica counts, and a replica that gets no
  traffic means the running system is not the declared one, even when the version
  totals happen to match. SRM and the per-pod tests share the 0.001 budget
  (Bonferroni: each of m tests uses 0.001 / m), so a correct split with healthy
  pods is called a mismatch at most about 0.1% of the time.
- verified (exit 0): TOST passes, n reaches the plan, and the windows (when
  given) show no stickiness: sticky counts are not independent draws, so their
  interval is too narrow to trust.
- inconclusive (exit 2): anything else, with the number of requests the planner
  needs in the reasons.

Pure functions of counts: no Locust, no network; scipy.stats for the
distributions, numpy so that simulations can run the same code on many runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import optimize, stats
from scipy.special import betaln, xlogy

MARGIN = 0.05  # +-5 points of canary share
ALPHA = 0.05  # each one-sided test of TOST: 95% equivalence
SRM_ALPHA = 0.001  # everything that can call a split wrong
POWER = 0.9  # the plan: a correct split verifies in 90% of runs
MIN_EXPECTED = 5  # below this expected count per cell a chi-square p-value is not trustworthy
EXIT_CODES = {"verified": 0, "mismatch": 1, "inconclusive": 2}


# --------------------------------------------------------------------------- expected split


@dataclass
class Expectation:
    """The split the traffic should show: the canary's share and where that came from.

    ``source`` says where the number came from, for the report: "overlay
    k8s/overlays/75-25", "live cluster", "given". ``replicas`` keeps the pod count
    per version when the split came from them (the per-pod check uses it to
    notice a pod that never answered).
    """

    canary_share: float
    source: str = "given"
    baseline: str = "v1"
    canary: str = "v2"
    replicas: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary share {self.canary_share} is not between 0 and 1")
        if self.baseline == self.canary:
            raise ValueError("the baseline and the canary must be different versions")

    @classmethod
    def from_replicas(cls, replicas: Mapping[str, int], source: str = "given",
                      baseline: str = "v1", canary: str = "v2") -> Expectation:
        """{"v1": 3, "v2": 1} -> 75/25: the Service spreads connections over pods evenly."""
        unknown = sorted(set(replicas) - {baseline, canary})
        if unknown:
            raise ValueError(f"replica counts for {unknown}: only {baseline} and {canary} "
                             "are compared")
        counts = {version: replicas.get(version, 0) for version in (baseline, canary)}
        for version, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
                raise ValueError(f"{version} replicas must be a whole number >= 0, not {count!r}")
        total = sum(counts.values())
        if total == 0:
            raise ValueError("no replicas at all: nothing can answer")
        counts = {version: int(count) for version, count in counts.items()}
        return cls(counts[canary] / total, source, baseline, canary, counts)

    @classmethod
    def parse(cls, text: str, source: str = "given",
              baseline: str = "v1", canary: str = "v2") -> Expectation:
        """"75/25" -> v1 75%, v2 25%. "75-25", the overlays' spelling, works too."""
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[/-]\s*(\d+(?:\.\d+)?)\s*", text)
        if not match:
            raise ValueError(f"split {text!r}: give two percentages, {baseline}/{canary}, "
                             "like 75/25")
        first, second = float(match[1]), float(match[2])
        if not math.isclose(first + second, 100.0, abs_tol=1e-6):
            raise ValueError(f"split {text!r} adds up to {first + second:g}, not 100")
        return cls(second / 100.0, source, baseline, canary)

    @property
    def shares(self) -> dict[str, float]:
        return {self.baseline: 1.0 - self.canary_share, self.canary: self.canary_share}

    @property
    def label(self) -> str:
        """"75/25": baseline/canary percentages."""
        return f"{100 * (1 - self.canary_share):.4g}/{100 * self.canary_share:.4g}"


# --------------------------------------------------------------------------- the plan


def _p_low(canary, n, low):
    """P(X >= canary | n, low): small when the share is evidently above ``low``.

    No share is below 0, so when the margin reaches below 0 this half of TOST has
    nothing to reject: its p-value is 0.
    """
    if low <= 0.0:
        return np.zeros(np.shape(canary))
    return stats.binom.sf(np.asarray(canary) - 1, n, low)


def _p_high(canary, n, high):
    """P(X <= canary | n, high): small when the share is evidently below ``high``."""
    if high >= 1.0:
        return np.zeros(np.shape(canary))
    return stats.binom.cdf(canary, n, high)


def _check_test_settings(margin: float, alpha: float, power: float | None = None) -> None:
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin {margin} must be a share between 0 and 1 (0.05 = 5 points)")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha {alpha} must be between 0 and 0.5")
    if power is not None and not 0.0 < power < 1.0:
        raise ValueError(f"power {power} must be between 0 and 1")


def accepted_counts(n: int, share: float, margin: float = MARGIN,
                    alpha: float = ALPHA) -> tuple[int, int]:
    """The canary counts lo..hi at which the exact TOST verifies after n answers.

    p_low falls and p_high rises with the count, so the accepted counts are one
    run, found from the binomial quantiles; rounding in isf/ppf is settled by the
    test's own rule. lo > hi when n is too small to verify anything.
    """
    low, high = share - margin, share + margin
    lo = 0 if low <= 0.0 else int(stats.binom.isf(alpha, n, low)) + 1
    hi = n if high >= 1.0 else int(stats.binom.ppf(alpha, n, high))
    while lo > 0 and _p_low(lo - 1, n, low) <= alpha:
        lo -= 1
    while lo <= n and _p_low(lo, n, low) > alpha:
        lo += 1
    while hi < n and _p_high(hi + 1, n, high) <= alpha:
        hi += 1
    while hi >= 0 and _p_high(hi, n, high) > alpha:
        hi -= 1
    return lo, hi


def equivalence_power(n: int, share: float, margin: float = MARGIN, alpha: float = ALPHA,
                      true_share: float | None = None) -> float:
    """P(the exact TOST verifies | n requests, the real share is ``true_share``).

    Exact: the binomial probability of the counts the test accepts.
    ``true_share`` defaults to the declared ``share``.
    """
    _check_test_settings(margin, alpha)
    true_share = share if true_share is None else true_share
    lo, hi = accepted_counts(n, share, margin, alpha)
    if lo > hi:
        return 0.0
    return float(stats.binom.cdf(hi, n, true_share) - stats.binom.cdf(lo - 1, n, true_share))


def approximate_plan(share: float, margin: float = MARGIN, alpha: float = ALPHA,
                     power: float = POWER, true_share: float | None = None) -> float:
    """The normal approximation's n (not rounded) for TOST to reach ``power``.

    With e = true - declared and s^2 = true (1 - true), the test verifies when
    both one-sided statistics clear z = z_{1-alpha}, so approximately

        power(n) = Phi((d - e) sqrt(n) / s - z) + Phi((d + e) sqrt(n) / s - z) - 1

    (a side whose boundary lies outside [0, 1] always passes: its Phi is 1).
    With e = 0 and both sides this solves to the textbook
    n = (z_{1-alpha} + z_{1-beta/2})^2 s^2 / d^2, 811.66 for 75/25 at +-5.
    """
    _check_test_settings(margin, alpha, power)
    true_share = share if true_share is None else true_share
    spread = math.sqrt(true_share * (1.0 - true_share))
    offset = true_share - share
    if abs(offset) >= margin:
        raise ValueError(f"a real share {true_share:.3f} is {abs(offset):.3f} from the declared "
                         f"{share:.3f}, outside the margin: the test must not verify it")
    if spread == 0.0:
        return 1.0  # every answer is certain; the exact walk in plan_requests does the rest
    z = stats.norm.ppf(1.0 - alpha)
    sides = [margin - offset] if share + margin < 1.0 else []
    sides += [margin + offset] if share - margin > 0.0 else []

    def shortfall(n: float) -> float:
        misses = sum(1.0 - stats.norm.cdf(gap * math.sqrt(n) / spread - z) for gap in sides)
        return 1.0 - misses - power

    if not sides or shortfall(1.0) >= 0.0:
        return 1.0
    upper = 2.0
    while shortfall(upper) < 0.0:
        upper *= 2.0
    return optimize.brentq(shortfall, 1.0, upper, xtol=1e-6)


@lru_cache(maxsize=512)
def plan_requests(share: float, margin: float = MARGIN, alpha: float = ALPHA,
                  power: float = POWER, true_share: float | None = None) -> int:
    """Requests a fixed-size run needs so that TOST verifies with probability ``power``.

    Starts at the normal approximation (``approximate_plan``, 812 for 75/25 at +-5,
    alpha 0.05, power 0.9) and walks up to the first n at which the exact power
    (``equivalence_power``) reaches ``power``: 817. The walk matters most where
    the approximation is poor: near 0% or 100%, and for 100/0 (59 requests).
    Exact power saw-tooths with n (the test is discrete), so a few requests more
    than the plan can have a power a point lower; the promise is for the plan.
    """
    start = max(1, math.ceil(approximate_plan(share, margin, alpha, power, true_share)))
    for n in range(start, 4 * start + 1000):
        if equivalence_power(n, share, margin, alpha, true_share) >= power:
            return n
    raise RuntimeError(f"no plan found for share {share} between {start} and {4 * start + 1000}")


# --------------------------------------------------------------------------- fixed-size tests


@dataclass
class SrmTest:
    """Sample-ratio mismatch: do the version counts fit the declared shares?"""

    statistic: float | None  # Pearson's X^2; None when an impossible version answered
    df: int
    p_value: float
    threshold: float
    mismatch: bool
    impossible: dict[str, int] = field(default_factory=dict)  # answers from 0%-declared versions


def srm_test(counts: Mapping[str, int], expectation: Expectation,
             threshold: float = SRM_ALPHA) -> SrmTest:
    """Pearson's chi-square goodness of fit of ``counts`` against the declared shares.

    A version declared at 0% (or not declared at all) that answers makes the split
    impossible: p = 0 and no statistic, since an expected count of 0 has none.
    """
    shares = expectation.shares
    impossible = {v: c for v, c in counts.items() if c > 0 and shares.get(v, 0.0) == 0.0}
    possible = [v for v, share in shares.items() if share > 0.0]
    df = max(len(possible) - 1, 0)
    if impossible:
        return SrmTest(None, df, 0.0, threshold, True, impossible)
    n = sum(counts.values())
    if n == 0 or df == 0:
        return SrmTest(0.0, df, 1.0, threshold, False)
    statistic = sum((counts.get(v, 0) - n * shares[v]) ** 2 / (n * shares[v]) for v in possible)
    p_value = float(stats.chi2.sf(statistic, df))
    return SrmTest(float(statistic), df, p_value, threshold, p_value < threshold)


def clopper_pearson(successes: int, trials: int, level: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval: the shares no one-sided binomial test
    at (1 - level) / 2 rejects. Its ends are Beta quantiles:
    lower = Beta^-1(tail; x, n - x + 1), upper = Beta^-1(1 - tail; x + 1, n - x)."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else stats.beta.ppf(tail, successes, trials - successes + 1)
    high = 1.0 if successes == trials else stats.beta.ppf(1 - tail, successes + 1,
                                                          trials - successes)
    return float(low), float(high)


@dataclass
class EquivalenceTest:
    """TOST: is the canary share within the margin of the declared one?"""

    difference: float  # observed - declared canary share
    p_low: float  # against "share <= declared - margin"
    p_high: float  # against "share >= declared + margin"
    p_value: float  # the larger of the two: both must be small
    threshold: float
    interval: tuple[float, float]  # the (1 - 2 alpha) Clopper-Pearson interval
    level: float
    bounds: tuple[float, float]  # the margin as shares: (declared - d, declared + d)
    equivalent: bool


def equivalence_test(canary: int, n: int, share: float, margin: float = MARGIN,
                     alpha: float = ALPHA) -> EquivalenceTest:
    """Exact TOST for ``canary`` answers out of ``n`` against the declared ``share``."""
    _check_test_settings(margin, alpha)
    if n <= 0:
        raise ValueError("the equivalence test needs at least one answer")
    low, high = share - margin, share + margin
    p_low, p_high = float(_p_low(canary, n, low)), float(_p_high(canary, n, high))
    p_value = max(p_low, p_high)
    return EquivalenceTest(
        difference=canary / n - share, p_low=p_low, p_high=p_high, p_value=p_value,
        threshold=alpha, interval=clopper_pearson(canary, n, 1 - 2 * alpha),
        level=1 - 2 * alpha, bounds=(low, high), equivalent=p_value <= alpha)


# --------------------------------------------------------------------------- pods and stickiness


@dataclass
class PodFinding:
    """Does every pod of one version get its even share of that version's answers?"""

    version: str
    pods: dict[str, int]
    expected_each: float
    statistic: float | None  # X^2 against equal shares; None when not tested
    df: int
    p_value: float | None
    threshold: float
    problem: bool
    message: str


def check_pods(version: str, pods: Mapping[str, int], replicas: int | None = None,
               threshold: float = SRM_ALPHA) -> PodFinding:
    """Chi-square uniformity across one version's pods.

    A pod that never answered has no name in the counts; when ``replicas`` says
    how many pods there should be, the missing ones are counted as 0 answers.
    """
    counts = {pod: int(count) for pod, count in pods.items()}
    seen = len(counts)
    silent_note = ""
    if replicas is not None and seen < replicas:
        silent_note = f"{replicas} replicas are declared but only {seen} pods answered; "
        counts.update({f"(silent pod {i + 1})": 0 for i in range(replicas - seen)})
    total, k = sum(counts.values()), len(counts)
    expected = total / k if k else 0.0

    def untested(why: str) -> PodFinding:
        return PodFinding(version, counts, expected, None, max(k - 1, 0), None, threshold,
                          False, f"{version}: {why}; not tested.")

    if replicas is not None and seen > replicas:
        return untested(f"{seen} pods answered for {replicas} replicas, so pods were replaced "
                        "or scaled during the run and equal shares are not expected")
    if k < 2:
        return untested(f"{k} pod, nothing to compare")
    if expected < MIN_EXPECTED:
        return untested(f"about {expected:.1f} answers per pod, too few to compare pods "
                        f"(need {MIN_EXPECTED})")
    statistic = sum((c - expected) ** 2 / expected for c in counts.values())
    p_value = float(stats.chi2.sf(statistic, k - 1))
    problem = p_value < threshold
    spread = f"{'/'.join(str(c) for c in counts.values())} of {total}"
    if problem:
        message = (f"{version}: {silent_note}its pods answered {spread} ({expected:.0f} each "
                   f"expected); {_odd_pods(counts, expected)} (chi-square p = {p_value:.2g}).")
    else:
        message = (f"{version}: {silent_note}its {k} pods share its answers evenly enough "
                   f"({spread}; chi-square p = {p_value:.2g}).")
    return PodFinding(version, counts, expected, float(statistic), k - 1, p_value, threshold,
                      problem, message)


def _odd_pods(counts: Mapping[str, int], expected: float) -> str:
    """Plain words for what is wrong: silent pods, or pods more than 3 standard errors off."""
    silent = [pod for pod, c in counts.items() if c == 0]
    if silent:
        return (f"{', '.join(silent)} got no answers: dead, not ready, or missing from the "
                "Service's endpoints")
    residual = {pod: (c - expected) / math.sqrt(expected) for pod, c in counts.items()}
    words = [f"{', '.join(pods)} got too {which}"
             for which, pods in (("many", [p for p, r in residual.items() if r > 3]),
                                 ("few", [p for p, r in residual.items() if r < -3])) if pods]
    words.append("a pod failing its readiness probe now and then, or connections kept alive "
                 "(sticky), are the usual causes")
    return "; ".join(words)


@dataclass
class StickinessFinding:
    """Does the canary share swing between time windows more than coin flips allow?"""

    windows: int
    canary_shares: list[float]
    pooled_share: float | None
    statistic: float | None  # Cochran's dispersion X^2
    df: int
    dispersion: float | None  # X^2 / df: about 1 for independent requests
    p_value: float | None
    threshold: float
    sticky: bool
    message: str


def check_stickiness(windows: Sequence[Mapping[str, int]], canary: str = "v2",
                     threshold: float = SRM_ALPHA) -> StickinessFinding:
    """Overdispersion of the canary share across time windows, against binomial noise.

    Windows of a few seconds each work; the chi-square reference is best when a
    window expects at least a handful of canary answers (the sequential mode's
    batches of 20 at 25% expect 5).
    """
    pairs = [(w.get(canary, 0), sum(w.values())) for w in windows]
    pairs = [(x, n) for x, n in pairs if n > 0]
    shares = [x / n for x, n in pairs]
    df = len(pairs) - 1
    if df < 1:
        return StickinessFinding(len(pairs), shares, None, None, max(df, 0), None, None,
                                 threshold, False,
                                 "Stickiness needs at least two time windows with answers; "
                                 "not tested.")
    pooled = sum(x for x, _ in pairs) / sum(n for _, n in pairs)
    if pooled in (0.0, 1.0):
        return StickinessFinding(len(pairs), shares, pooled, 0.0, df, 0.0, 1.0, threshold, False,
                                 "Every window went to one version: nothing to swing.")
    statistic = sum((x - n * pooled) ** 2 / (n * pooled * (1 - pooled)) for x, n in pairs)
    p_value = float(stats.chi2.sf(statistic, df))
    sticky = p_value < threshold
    swing = f"{100 * min(shares):.0f}%-{100 * max(shares):.0f}%"
    if sticky:
        message = (f"The {canary} share swings {swing} across {len(pairs)} windows, "
                   f"{statistic / df:.1f} times the variation independent requests give "
                   f"(dispersion test p = {p_value:.2g}): traffic is sticky. kube-proxy picks a "
                   "pod per connection, so a client that keeps connections alive (a pooled "
                   "requests.Session, any keep-alive or HTTP/2 client) pins each worker to one "
                   "pod. Open a new connection per call and run again.")
    else:
        message = (f"The {canary} share varies {swing} across {len(pairs)} windows, as coin "
                   f"flips do (dispersion {statistic / df:.2f}, p = {p_value:.2g}): no sign "
                   "of sticky connections.")
    return StickinessFinding(len(pairs), shares, pooled, float(statistic), df,
                             float(statistic / df), p_value, threshold, sticky, message)


# --------------------------------------------------------------------------- the verdict


def worst_exit_code(*codes: int) -> int:
    """One exit code for several judgements (the split, the canary analysis): 1 when any
    found a problem, else 2 when any could not tell yet, else 0."""
    return 1 if 1 in codes else 2 if 2 in codes else 0


class _Outcome:
    """What a verdict and a sequential look share: a status, its exit code, JSON."""

    status: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return json_ready(data)


@dataclass
class Verdict(_Outcome):
    """What ``verify`` found. ``to_dict()`` is JSON-ready; ``render`` makes it a table."""

    status: str  # "verified" | "mismatch" | "inconclusive"
    expected: str  # "75/25"
    source: str  # where the expected split came from
    canary: str
    declared: dict[str, float]  # share per version
    observed: dict[str, float]
    counts: dict[str, int]
    n: int
    planned_n: int
    more_needed: int | None  # requests the planner still asks for, when inconclusive
    canary_share: float | None
    interval: tuple[float, float] | None  # the TOST's (1 - 2 alpha) interval
    interval_level: float
    margin: float
    alpha: float
    srm_alpha: float
    power: float
    srm: SrmTest | None
    equivalence: EquivalenceTest | None
    pods: list[PodFinding]
    stickiness: StickinessFinding | None
    reasons: list[str]
    warnings: list[str]
    sequential: SequentialLook | None = None  # the deciding look, in sequential mode

    def to_dict(self) -> dict:
        # The table rows too, so every report shows the tests exactly as `render` does.
        return {**super().to_dict(), "tests": [list(row) for row in test_rows(self)]}


def json_ready(value):
    """JSON-ready: tuples as lists, numpy numbers as Python ones, inf/nan as None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _check_counts(counts: Mapping[str, int]) -> dict[str, int]:
    clean = {}
    for version, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"count for {version!r} must be a whole number >= 0, not {count!r}")
        clean[str(version)] = int(count)
    return clean


def verify(counts: Mapping[str, int], expectation: Expectation, *,
           pods: Mapping[str, Mapping[str, int]] | None = None,
           windows: Sequence[Mapping[str, int]] | None = None,
           margin: float = MARGIN, alpha: float = ALPHA, srm_alpha: float = SRM_ALPHA,
           power: float = POWER, sequential: SequentialVerifier | None = None,
           reused: int = 0) -> Verdict:
    """The verdict on one finished run: answers per version in ``counts``, optionally
    answers per pod ({version: {pod: count}}) and per time window ([{version: count}, ...]).

    Call it once, at the end. A run of fixed size is judged by the SRM test and TOST
    at its planned size. A run that was looked at while it ran, and maybe stopped
    early, must be judged by the ``SequentialVerifier`` that looked (pass it as
    ``sequential``; its settings win): the fixed-size tests are not valid after
    optional stopping. ``reused`` counts the answers that came over a kept-alive
    connection (user-management says so in X-Notification-Connection): each is
    sticky by construction, whatever the windows show. The per-pod and stickiness
    checks are the same in both modes:
    the stopping rule looks at the version counts only, and given those, how the
    answers spread over pods and windows does not depend on when the run stopped.
    """
    if sequential is not None:
        margin, alpha, srm_alpha = sequential.margin, sequential.alpha, sequential.srm_alpha
    _check_test_settings(margin, alpha, power)
    counts = _check_counts(counts)
    declared = expectation.shares
    counts = {**dict.fromkeys(declared, 0), **counts}
    n = sum(counts.values())
    share, canary = expectation.canary_share, expectation.canary
    planned = plan_requests(share, margin, alpha, power)
    where = f"{expectation.label} ({expectation.source})"
    verdict = Verdict(
        status="inconclusive", expected=expectation.label, source=expectation.source,
        canary=canary, declared=declared,
        observed={v: (c / n if n else 0.0) for v, c in counts.items()}, counts=counts, n=n,
        planned_n=planned, more_needed=None, canary_share=None, interval=None,
        interval_level=1 - 2 * alpha, margin=margin, alpha=alpha, srm_alpha=srm_alpha,
        power=power, srm=None, equivalence=None, pods=[], stickiness=None, reasons=[],
        warnings=[])
    if n == 0:
        verdict.more_needed = planned
        verdict.reasons.append(f"No answers were counted. Verifying {where} at +-"
                               f"{100 * margin:g} points needs {planned} requests.")
        return verdict

    verdict.pods = _pod_findings(pods or {}, expectation, srm_alpha, counts, verdict.warnings)
    verdict.canary_share = counts[canary] / n
    if sequential is None:
        budget = srm_alpha / (1 + sum(f.p_value is not None for f in verdict.pods))
        verdict.srm = srm_test(counts, expectation, budget)
        verdict.equivalence = equivalence_test(counts[canary], n, share, margin, alpha)
        verdict.interval = verdict.equivalence.interval
    if windows:
        verdict.stickiness = check_stickiness(windows, canary, srm_alpha)
        if verdict.stickiness.p_value is None and not reused:
            verdict.warnings.append(verdict.stickiness.message)
    elif not reused:
        verdict.warnings.append("No per-window counts: stickiness was not checked.")
    if reused:
        verdict.stickiness = _reused_connections(verdict.stickiness, reused, n, srm_alpha)

    if sequential is not None:
        return _sequential_verdict(verdict, sequential.update(counts))
    mismatch = _mismatch_reasons(verdict, expectation, where)
    if mismatch:
        verdict.status, verdict.reasons = "mismatch", mismatch
    else:
        verdict.status, verdict.reasons = _equivalence_reasons(verdict, where)
    if verdict.stickiness and verdict.stickiness.sticky:
        verdict.reasons.append(verdict.stickiness.message)
    return verdict


def _reused_connections(finding: StickinessFinding | None, reused: int, n: int,
                        threshold: float) -> StickinessFinding:
    """Sticky for certain: user-management said it reused connections to notification.

    Pinned connections need not make the share swing (two workers pinned to two
    v1 pods give 0% canary in every window), so the dispersion test can miss them;
    the relayed header cannot.
    """
    message = (f"{reused} of {n} answers came over a connection user-management kept alive "
               "(X-Notification-Connection: reused): traffic is sticky. kube-proxy picks a pod "
               "per connection, so each kept-alive connection pins a user-management worker to "
               "one pod. Set NOTIFICATION_KEEPALIVE=false (the default): a new connection per "
               "call, and run again.")
    if finding is None:
        return StickinessFinding(0, [], None, None, 0, None, None, threshold, True, message)
    return replace(finding, sticky=True, message=f"{message} ({finding.message})")


def _pod_findings(pods: Mapping[str, Mapping[str, int]], expectation: Expectation,
                  srm_alpha: float, counts: Mapping[str, int],
                  warnings: list[str]) -> list[PodFinding]:
    """Per-pod findings at the Bonferroni share of the mismatch budget (see the module doc)."""
    replicas = expectation.replicas or {}
    for version, per_pod in pods.items():
        if sum(per_pod.values()) != counts.get(version, 0):
            warnings.append(f"{version}'s pod counts add up to {sum(per_pod.values())}, its "
                            f"version count is {counts.get(version, 0)}.")
    findings = [check_pods(v, p, replicas.get(v), srm_alpha) for v, p in pods.items()]
    tested = sum(f.p_value is not None for f in findings)
    # The tests have to be run once to know how many there are; then each gets its share.
    findings = [check_pods(v, p, replicas.get(v), srm_alpha / (1 + tested))
                for v, p in pods.items()]
    warnings.extend(f.message for f in findings if f.p_value is None)
    return findings


def _sequential_verdict(verdict: Verdict, look: SequentialLook) -> Verdict:
    """Status and reasons from the sequential decision; pods and stickiness as always."""
    verdict.sequential = look
    verdict.interval, verdict.interval_level = look.sequence, 1 - verdict.alpha
    pods = [f"{finding.message} The split is declared as replica counts, so a replica that "
            "does not get its share is not the declared split."
            for finding in verdict.pods if finding.problem]
    sticky = verdict.stickiness is not None and verdict.stickiness.sticky
    if look.status == "mismatch" or pods:
        verdict.status = "mismatch"
        verdict.reasons = (look.reasons if look.status == "mismatch" else []) + pods
    elif sticky:
        verdict.status = "inconclusive"
        verdict.reasons = look.reasons + [
            "Sticky traffic is not a series of independent draws, so no confidence sequence "
            "computed from these counts can verify the split."]
    else:
        verdict.status, verdict.reasons = look.status, list(look.reasons)
    if sticky:
        verdict.reasons.append(verdict.stickiness.message)
    return verdict


def _mismatch_reasons(verdict: Verdict, expectation: Expectation, where: str) -> list[str]:
    reasons = []
    srm = verdict.srm
    for version, count in srm.impossible.items():
        if version in expectation.shares:
            reasons.append(f"{version} answered {count} request(s), but {where} gives it no "
                           "traffic: a single answer shows the split is not the declared one.")
        else:
            reasons.append(f"{version} answered {count} request(s), but {where} declares only "
                           f"{expectation.baseline} and {expectation.canary}.")
    if srm.mismatch and not srm.impossible:
        difference = verdict.canary_share - expectation.canary_share
        reasons.append(
            f"{verdict.canary} answered {_pct(verdict.canary_share)} of {verdict.n} requests "
            f"where {where} gives it {_pct(expectation.canary_share)}. Chance alone makes a "
            f"difference this large with probability {srm.p_value:.2g} (sample-ratio-mismatch "
            f"chi-square test, threshold {srm.threshold:.2g}).")
        if abs(difference) < verdict.margin:
            reasons.append(
                f"The difference, {100 * difference:+.1f} points, is inside the +-"
                f"{100 * verdict.margin:g}-point margin but too consistent to be chance: "
                "something besides the replica counts steers the traffic.")
    for finding in verdict.pods:
        if finding.problem:
            reasons.append(f"{finding.message} The split is declared as replica counts, so a "
                           "replica that does not get its share is not the declared split.")
    return reasons


def _equivalence_reasons(verdict: Verdict, where: str) -> tuple[str, list[str]]:
    """verified or inconclusive, once no mismatch was found."""
    test, n, planned = verdict.equivalence, verdict.n, verdict.planned_n
    low, high = test.bounds
    shown = (f"The {100 * test.level:g}% interval for the {verdict.canary} share is "
             f"{_pct(test.interval[0])}-{_pct(test.interval[1])} (observed "
             f"{_pct(verdict.canary_share)}); the margin around {where} is "
             f"{_pct(max(low, 0))}-{_pct(min(high, 1))}.")
    plan_words = (f"the plan for +-{100 * verdict.margin:g} points at "
                  f"{100 * (1 - verdict.alpha):g}% with power {verdict.power:g} is {planned} "
                  "requests")
    sticky = verdict.stickiness is not None and verdict.stickiness.sticky
    if test.equivalent and n >= planned and not sticky:
        return "verified", [f"{shown} It lies inside: the split is verified at "
                            f"{100 * (1 - verdict.alpha):g}% with {n} requests ({plan_words})."]
    reasons = [shown]
    if n < planned:
        verdict.more_needed = planned - n
        already = (" The interval already lies inside the margin, but a fixed-size test is only "
                   "honest at its planned size." if test.equivalent else "")
        reasons.append(f"Only {n} requests were counted and {plan_words}: send "
                       f"{planned - n} more, or use SequentialVerifier, which may stop as soon "
                       f"as the evidence allows.{already}")
    elif not test.equivalent:
        reasons.append(_replan(verdict, plan_words))
    if sticky:
        reasons.append("Sticky traffic is not a series of independent draws, so no interval "
                       "computed from these counts can verify the split.")
    return "inconclusive", reasons


def _replan(verdict: Verdict, plan_words: str) -> str:
    """Inconclusive at or above the plan: what the planner says, taking the observed share
    as the truth."""
    declared, observed = verdict.declared[verdict.canary], verdict.canary_share
    if abs(observed - declared) >= verdict.margin:
        return (f"The observed share, {_pct(observed)}, is itself outside the margin: no number "
                "of requests verifies a split that really is that far off, and the mismatch "
                "test has not (yet) shown that it is.")
    # The normal approximation, not the exact walk: this is a hint for the next run,
    # and near the margin the exact walk would step through tens of thousands of n.
    needed = math.ceil(approximate_plan(declared, verdict.margin, verdict.alpha, verdict.power,
                                        observed))
    caution = ("Start a new run of that size, or use SequentialVerifier: adding requests to "
               "this run and testing again inflates the error rates.")
    if needed <= verdict.n:
        return (f"The interval reaches outside the margin; {plan_words}, and runs of this size "
                f"verify a correct split with probability {verdict.power:g}: this one missed. "
                f"{caution}")
    verdict.more_needed = needed - verdict.n
    return (f"The interval reaches outside the margin. If the real share is the observed "
            f"{_pct(observed)}, the planner needs about {needed} requests to verify it with "
            f"power {verdict.power:g}: {needed - verdict.n} more. {caution}")


def render(verdict: Verdict) -> str:
    """The verdict as a small table for the terminal."""
    lines = [f"Split check: {verdict.status.upper()} (exit {verdict.exit_code})",
             f"expected {verdict.expected} from {verdict.source}; canary {verdict.canary}; "
             f"margin +-{100 * verdict.margin:g} points at {100 * (1 - verdict.alpha):g}%",
             f"requests counted {verdict.n}, planned {verdict.planned_n}"
             + (" (sequential: checked all along, may stop before the plan)"
                if verdict.sequential else ""), "",
             f"{'version':<10}{'declared':>10}{'observed':>10}{'answers':>10}"]
    for version, count in verdict.counts.items():
        lines.append(f"{version:<10}{_pct(verdict.declared.get(version, 0.0)):>10}"
                     f"{_pct(verdict.observed.get(version, 0.0)):>10}{count:>10}")
    if verdict.equivalence:
        test = verdict.equivalence
        lines += ["", f"{verdict.canary} share {_pct(verdict.canary_share)}, "
                      f"{100 * test.level:g}% interval {_pct(test.interval[0])}-"
                      f"{_pct(test.interval[1])}, margin {_pct(max(test.bounds[0], 0))}-"
                      f"{_pct(min(test.bounds[1], 1))}"]
    rows = test_rows(verdict)
    if rows:
        lines += ["", f"{'test':<30}{'statistic':>12}{'p-value':>10}{'threshold':>11}  result"]
        lines += [f"{name:<30}{stat:>12}{p:>10}{limit:>11}  {result}"
                  for name, stat, p, limit, result in rows]
    if any(finding.pods for finding in verdict.pods):
        lines += ["", f"{'pod':<40}{'answers':>10}{'expected':>10}"]
        for finding in verdict.pods:
            for pod, count in finding.pods.items():
                lines.append(f"{finding.version + '  ' + pod:<40}{count:>10}"
                             f"{finding.expected_each:>10.0f}")
    for title, items in (("reasons", verdict.reasons), ("warnings", verdict.warnings)):
        if items:
            lines += ["", title] + [f"  - {item}" for item in items]
    return "\n".join(lines)


def test_rows(verdict: Verdict) -> list[tuple[str, str, str, str, str]]:
    """The tests as table rows: (test, statistic, p-value, threshold, result), as text."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    rows = []
    if verdict.sequential:
        look = verdict.sequential
        rows.append(("sequential SRM (e-value)", fmt(look.evidence), "-",
                     fmt(1 / verdict.srm_alpha),
                     "MISMATCH" if look.status == "mismatch" else "ok"))
        if look.sequence:
            rows.append((f"{100 * (1 - verdict.alpha):g}% confidence sequence",
                         f"{_pct(look.sequence[0])}-{_pct(look.sequence[1])}", "-",
                         f"{_pct(max(look.bounds[0], 0))}-{_pct(min(look.bounds[1], 1))}",
                         "within margin" if look.status == "verified" else "not shown"))
    if verdict.srm:
        srm = verdict.srm
        rows.append((f"sample-ratio mismatch ({srm.df} df)", fmt(srm.statistic),
                     fmt(srm.p_value), fmt(srm.threshold), "MISMATCH" if srm.mismatch else "ok"))
    if verdict.equivalence:
        test = verdict.equivalence
        rows.append(("equivalence (TOST)", f"{100 * test.difference:+.1f} pts",
                     fmt(test.p_value), fmt(test.threshold),
                     "within margin" if test.equivalent else "not shown"))
    for finding in verdict.pods:
        if finding.p_value is not None:
            rows.append((f"pods of {finding.version} ({finding.df} df)", fmt(finding.statistic),
                         fmt(finding.p_value), fmt(finding.threshold),
                         "UNEVEN" if finding.problem else "even"))
    if verdict.stickiness and (verdict.stickiness.p_value is not None
                               or verdict.stickiness.sticky):
        sticky = verdict.stickiness
        rows.append((f"stickiness ({sticky.df} df)", fmt(sticky.statistic),
                     fmt(sticky.p_value), fmt(sticky.threshold),
                     "STICKY" if sticky.sticky else "not sticky"))
    return rows


# --------------------------------------------------------------------------- sequential mode


def prior_concentration(share: float, margin: float = MARGIN) -> float:
    """k for the Beta(k p0, k (1 - p0)) prior: k + 1 = p0 (1 - p0) / d^2 makes its
    standard deviation the margin. At least 1, so the prior stays a spread-out bet."""
    return max(share * (1.0 - share) / margin**2 - 1.0, 1.0)


def log_e_value(canary, n, share: float, prior_share: float, concentration: float):
    """ln M_n(share): evidence against ``share`` after ``canary`` of ``n`` answers.

    M_n(q) = B(a + x, b + n - x) / B(a, b) / (q^x (1 - q)^(n - x)) with
    a = k * prior_share, b = k * (1 - prior_share) (see the module docstring).
    Works on numpy arrays, so simulations run the code users run. ``share`` may be
    0 or 1 (then one contrary answer makes the evidence infinite);
    ``prior_share`` must be strictly between 0 and 1.
    """
    a, b = concentration * prior_share, concentration * (1.0 - prior_share)
    canary, n = np.asarray(canary, dtype=float), np.asarray(n, dtype=float)
    log_mixture = betaln(a + canary, b + n - canary) - betaln(a, b)
    return log_mixture - xlogy(canary, share) - xlogy(n - canary, 1.0 - share)


def sequential_decision(canary, n, share: float, margin: float = MARGIN, alpha: float = ALPHA,
                        srm_alpha: float = SRM_ALPHA, concentration: float | None = None):
    """0 verified, 1 mismatch, 2 keep going (the exit codes), for cumulative counts.

    Arrays welcome: bench and tests decide thousands of simulated looks at once.
    """
    _check_test_settings(margin, alpha)
    canary, n = np.asarray(canary), np.asarray(n)
    low, high = share - margin, share + margin
    if share in (0.0, 1.0):
        # The prior is a point mass at the declared share: one contrary answer is a
        # mismatch, and while there is none M_n(share +- d) = (1 - d)^-n.
        contrary = canary if share == 0.0 else n - canary
        mismatch = contrary > 0
        verified = ~mismatch & (-n * math.log1p(-margin) >= math.log(1.0 / alpha))
    else:
        k = prior_concentration(share, margin) if concentration is None else concentration

        def beyond(q: float, level: float):
            return log_e_value(canary, n, q, share, k) >= math.log(1.0 / level)

        mismatch = beyond(share, srm_alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            observed = canary / n
        inside = (observed > low) & (observed < high)
        # A margin end outside [0, 1] needs no evidence: no share lies beyond it.
        verified = (~mismatch & inside & (beyond(low, alpha) if low > 0.0 else True)
                    & (beyond(high, alpha) if high < 1.0 else True))
    return np.where(mismatch, 1, np.where(verified, 0, 2))


def confidence_sequence(canary: int, n: int, share: float, margin: float = MARGIN,
                        alpha: float = ALPHA,
                        concentration: float | None = None) -> tuple[float, float] | None:
    """The shares q with M_n(q) < 1/alpha: they hold the true share at every n at once
    with probability >= 1 - alpha. None when a 0%-declared version answered."""
    if n == 0:
        return 0.0, 1.0
    if share in (0.0, 1.0):
        if (canary if share == 0.0 else n - canary) > 0:
            return None
        reach = 1.0 - alpha ** (1.0 / n)  # (1 - q)^-n = 1/alpha
        return (0.0, reach) if share == 0.0 else (1.0 - reach, 1.0)
    k = prior_concentration(share, margin) if concentration is None else concentration

    def gap(q: float) -> float:
        return float(log_e_value(canary, n, q, share, k)) - math.log(1.0 / alpha)

    # ln M_n(q) is convex in q with its minimum (<= 0 < ln 1/alpha) at q = x/n, so
    # each end is the one root on its side.
    observed, tiny = canary / n, 1e-12
    low = 0.0 if canary == 0 else optimize.brentq(gap, tiny, observed)
    high = 1.0 if canary == n else optimize.brentq(gap, observed, 1.0 - tiny)
    return float(low), float(high)


@dataclass
class SequentialLook(_Outcome):
    """The state of a sequential check after one look."""

    status: str  # "verified" | "mismatch" | "inconclusive" (keep going)
    n: int
    canary_share: float | None
    sequence: tuple[float, float] | None  # the (1 - alpha) confidence sequence
    bounds: tuple[float, float]  # the margin as shares
    evidence: float  # M_n(declared share): a correct split reaches 1/srm_alpha w.p. <= srm_alpha
    planned_n: int  # the fixed plan, for scale
    reasons: list[str]



class SequentialVerifier:
    """Check the split after every batch; stop at the first "mismatch" or "verified".

    Give ``update`` the CUMULATIVE counts per version (what a counter shows). The
    decision is anytime-valid (module docstring, part 4): a correct split is called
    a mismatch with probability <= srm_alpha and a split a margin or more off is
    verified with probability <= alpha, however often it is looked at. The first
    decision is final; later updates return it. The increments between looks are
    kept in ``batches``: they are time windows for ``check_stickiness``.
    """

    def __init__(self, expectation: Expectation, *, margin: float = MARGIN,
                 alpha: float = ALPHA, srm_alpha: float = SRM_ALPHA, power: float = POWER):
        _check_test_settings(margin, alpha, power)
        self.expectation = expectation
        self.margin, self.alpha, self.srm_alpha = margin, alpha, srm_alpha
        share = expectation.canary_share
        self.concentration = prior_concentration(share, margin) if 0.0 < share < 1.0 else None
        self.planned_n = plan_requests(share, margin, alpha, power)
        self.batches: list[dict[str, int]] = []
        self.decision: SequentialLook | None = None
        self._last: dict[str, int] = {}

    def update(self, counts: Mapping[str, int]) -> SequentialLook:
        counts = _check_counts(counts)
        batch = {v: c - self._last.get(v, 0) for v, c in counts.items()}
        if any(c < 0 for c in batch.values()) or set(self._last) - set(counts):
            raise ValueError("counts went down: update() takes cumulative counts, not batches")
        self.batches.append(batch)
        self._last = counts
        if self.decision is None:
            look = self._look(counts)
            if look.status != "inconclusive":
                self.decision = look
            return look
        return self.decision

    def _look(self, counts: Mapping[str, int]) -> SequentialLook:
        exp = self.expectation
        share, canary_name = exp.canary_share, exp.canary
        n = sum(counts.values())
        canary = counts.get(canary_name, 0)
        bounds = (share - self.margin, share + self.margin)
        strangers = {v: c for v, c in counts.items() if c > 0 and v not in exp.shares}
        observed = canary / n if n else None
        sequence = confidence_sequence(canary, n, share, self.margin, self.alpha,
                                       self.concentration) if n else (0.0, 1.0)
        if share in (0.0, 1.0) or n == 0:
            contrary = canary if share == 0.0 else n - canary
            evidence = math.inf if (share in (0.0, 1.0) and contrary) else 1.0
        else:
            evidence = math.exp(min(float(log_e_value(canary, n, share, share,
                                                      self.concentration)), 700.0))
        code = 1 if strangers else int(sequential_decision(
            canary, n, share, self.margin, self.alpha, self.srm_alpha, self.concentration))
        status = {0: "verified", 1: "mismatch", 2: "inconclusive"}[code]
        look = SequentialLook(status, n, observed, sequence, bounds, evidence, self.planned_n, [])
        look.reasons = self._reasons(look, strangers)
        return look

    def _reasons(self, look: SequentialLook, strangers: Mapping[str, int]) -> list[str]:
        exp, n = self.expectation, look.n
        where = f"{exp.label} ({exp.source})"
        low, high = (_pct(max(look.bounds[0], 0)), _pct(min(look.bounds[1], 1)))
        if strangers:
            return [f"{', '.join(strangers)} answered, but {where} declares only {exp.baseline} "
                    f"and {exp.canary}."]
        if look.status == "mismatch" and math.isinf(look.evidence):
            return [f"{exp.canary if exp.canary_share == 0.0 else exp.baseline} answered, but "
                    f"{where} gives it no traffic: a single answer shows the split is not the "
                    "declared one."]
        if look.status == "mismatch":
            return [f"After {n} requests {exp.canary} has {_pct(look.canary_share)} of the "
                    f"answers where {where} gives it {_pct(exp.canary_share)}. The evidence "
                    f"against the declared split is {look.evidence:.3g} to 1; a correct split "
                    f"reaches {1 / self.srm_alpha:g} to 1 with probability at most "
                    f"{self.srm_alpha:g}, however often it is checked."]
        conf = f"{100 * (1 - self.alpha):g}%"
        if look.status == "verified":
            return [f"After {n} requests the {conf} confidence sequence for the {exp.canary} "
                    f"share, {_pct(look.sequence[0])}-{_pct(look.sequence[1])}, lies inside "
                    f"the margin {low}-{high} around {where}: verified at {conf}, valid "
                    "however often it was checked."]
        if n == 0:
            return ["No answers yet."]
        return [f"After {n} requests the {conf} confidence sequence "
                f"{_pct(look.sequence[0])}-{_pct(look.sequence[1])} is not inside the margin "
                f"{low}-{high} yet: keep sending (the fixed plan is {self.planned_n} requests)."]
