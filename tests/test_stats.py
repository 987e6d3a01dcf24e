"""The split statistics against values worked out by hand and by their definitions."""

import math
from fractions import Fraction

import pytest

from canarylab.stats import binomial_p_value, wilson_interval


def test_binomial_p_value_matches_hand_computed_values():
    # 3 heads in 10 fair tosses: P(X<=3) + P(X>=7) = 2 * 176/1024.
    assert binomial_p_value(3, 10, Fraction(1, 2)) == pytest.approx(352 / 1024)
    assert binomial_p_value(5, 10, 0.5) == pytest.approx(1.0)
    # 0 successes in 10 at p = 1/4: outcomes at most as likely as (3/4)^10 are
    # X = 0 and X >= 6.
    expected = (3**10 + sum(math.comb(10, i) * 3 ** (10 - i) for i in range(6, 11))) / 4**10
    assert binomial_p_value(0, 10, 0.25) == pytest.approx(expected)


def test_binomial_p_value_tells_a_wrong_split_from_a_right_one():
    assert binomial_p_value(500, 2000, 0.25) == pytest.approx(1.0)
    assert binomial_p_value(1000, 2000, 0.25) < 1e-100
    assert binomial_p_value(0, 50, 0) == 1.0 and binomial_p_value(1, 50, 0) == 0.0


def test_wilson_interval_contains_the_share_and_narrows_with_n():
    low, high = wilson_interval(25, 100)
    assert low < 0.25 < high
    wide_low, wide_high = low, high
    narrow_low, narrow_high = wilson_interval(250, 1000)
    assert narrow_high - narrow_low < wide_high - wide_low
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0
    assert wilson_interval(0, 0) == (0.0, 1.0)
