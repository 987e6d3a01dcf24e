"""`canarylab split`: a canary percentage as whole pods, with the rounding said."""

from fractions import Fraction

import pytest

from canarylab.cli import describe_split, percent_text, split_replicas


@pytest.mark.parametrize(("percent", "total", "expected"), [
    (25, 4, (3, 1)),
    (41, 6, (4, 2)),      # 2.46 pods -> 2
    (50, 3, (2, 1)),      # 1.5: a tie goes to the stable version
    (10, 4, (4, 0)),      # 0.4 pods: the canary gets none
    (90, 4, (0, 4)),      # 3.6 -> 4
    (0, 4, (4, 0)),
    (100, 4, (0, 4)),
])
def test_split_replicas_rounds_to_the_nearest_pod(percent, total, expected):
    assert split_replicas(Fraction(percent), total) == expected


def test_percentages_show_a_decimal_only_when_needed():
    assert percent_text(Fraction(25)) == "25%"
    assert percent_text(Fraction(100, 3)) == "33.3%"


def test_the_split_says_how_it_was_rounded():
    assert describe_split(Fraction(41), 6) == (
        "41% of 6 pods is 4/2 = 33.3% to notification-v2 (rounded to the nearest whole pod)")
    assert describe_split(Fraction(50), 3).endswith("; a tie goes to notification-v1)")
    assert describe_split(Fraction(25), 4) == "25% of 4 pods is 3/1 = 25% to notification-v2"


def test_the_split_warns_when_a_version_gets_no_pod():
    assert "warning: notification-v2 gets no pod" in describe_split(Fraction(10), 4)
    assert "warning: notification-v1 gets no pod" in describe_split(Fraction(90), 4)
    assert "warning" not in describe_split(Fraction(0), 4)
