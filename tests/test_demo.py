"""The demo's split check: what it calls consistent and what it does not."""

from collections import Counter

from canarylab.demo import Tally, check_split, render

DECLARED = {"v1": 3, "v2": 1}


def tally(v1: int, v2: int, **failures) -> Tally:
    return Tally(versions=Counter({"v1": v1, "v2": v2}),
                 pods=Counter({"notification-v1-a": v1, "notification-v2-b": v2}),
                 failures=Counter(failures), seconds=2.0)


def test_counts_near_the_replica_ratio_are_consistent():
    check = check_split(DECLARED, tally(1490, 510))
    assert check.consistent and check.p_value > 0.1
    assert check.declared == {"v1": 0.75, "v2": 0.25}
    assert "consistent with the declared split" in render(check, tally(1490, 510), DECLARED)


def test_a_half_and_half_split_against_75_25_is_a_mismatch():
    check = check_split(DECLARED, tally(1000, 1000))
    assert not check.consistent and check.p_value < 1e-50
    assert "NOT consistent" in render(check, tally(1000, 1000), DECLARED)


def test_failed_calls_make_the_run_inconsistent():
    assert not check_split(DECLARED, tally(1500, 500, ConnectionRefusedError=3)).consistent


def test_a_version_the_manifests_do_not_declare_is_a_mismatch():
    counts = tally(1500, 500)
    counts.versions["v3"] = 5
    assert not check_split(DECLARED, counts).consistent
