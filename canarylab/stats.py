"""Small, exact statistics for counting a split.

``binomial_p_value`` is the exact two-sided binomial test (the "minlike" rule of
``scipy.stats.binomtest``) in integer arithmetic, so it needs no SciPy and has
no rounding to argue about; ``wilson_interval`` is the interval to quote with a
share (better than share ± 1.96·se when the share is near 0 or 1, or n is small).
"""

import math
from fractions import Fraction


def binomial_p_value(successes: int, trials: int, p: Fraction | float) -> float:
    """P(an outcome as unlikely as ``successes`` in ``trials`` | share ``p``).

    With p = a/b, P(X = i) = C(n, i) a^i (b - a)^(n - i) / b^n: all integers.
    """
    p = Fraction(p).limit_denominator(10_000)
    a, b = p.numerator, p.denominator
    weights = [math.comb(trials, i) * a**i * (b - a) ** (trials - i) for i in range(trials + 1)]
    observed = weights[successes]
    return float(Fraction(sum(w for w in weights if w <= observed), b**trials))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% with the default z) for a share successes/trials."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
            / (1 + z * z / trials))
    return max(0.0, centre - half), min(1.0, centre + half)
