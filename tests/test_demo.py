"""The demo's judgement: the verifier's verdict on what the traffic counted."""

from canarylab.demo import Tally, judge, summary

DECLARED = {"v1": 3, "v2": 1}


def tally(v1: int, v2: int, pods_v1: int = 3, **failures) -> Tally:
    """Calls spread evenly over the pods, in 20 one-second windows."""
    counted = Tally()
    for i in range(v1):
        counted.record("v1", f"notification-v1-{i % pods_v1}", i % 20)
    for i in range(v2):
        counted.record("v2", "notification-v2-0", i % 20)
    counted.failures.update(failures)
    counted.seconds = 20.0
    return counted


def test_counts_near_the_replica_ratio_are_verified():
    verdict = judge(DECLARED, tally(1490, 510), source="overlay 75-25")
    assert verdict.status == "verified" and verdict.exit_code == 0
    assert "verified" in summary(verdict, tally(1490, 510))


def test_a_half_and_half_split_against_75_25_is_a_mismatch():
    verdict = judge(DECLARED, tally(1000, 1000), source="overlay 75-25")
    assert verdict.status == "mismatch" and verdict.exit_code == 1


def test_too_few_calls_are_inconclusive():
    assert judge(DECLARED, tally(75, 25), source="overlay 75-25").status == "inconclusive"


def test_a_v1_pod_that_never_answers_is_a_mismatch():
    verdict = judge(DECLARED, tally(1500, 500, pods_v1=2), source="overlay 75-25")
    assert verdict.status == "mismatch"


def test_failed_calls_are_reported():
    text = summary(judge(DECLARED, tally(1500, 500), "overlay 75-25"),
                   tally(1500, 500, ConnectionRefusedError=3))
    assert "3 calls FAILED" in text
