"""The split verifier is honest: its error rates, measured on simulated runs, are the
ones it promises, and its plain-words findings name what is wrong.

Simulations use numpy with fixed seeds, so every run of this file sees the same
numbers. Where a rate is compared with a bound, the comment gives the binomial
uncertainty of the estimate, so the margin of each check is visible.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

from loadtest.verifier import (
    Expectation,
    SequentialVerifier,
    accepted_counts,
    approximate_plan,
    check_pods,
    check_stickiness,
    equivalence_power,
    equivalence_test,
    plan_requests,
    render,
    sequential_decision,
    verify,
)
from loadtest.verifier import test_rows as table_rows  # not a test: pytest would collect it

# Declared canary share per split, with the replica counts of its k8s overlay.
SPLITS = {
    "75/25": (0.25, {"v1": 3, "v2": 1}),
    "50/50": (0.50, {"v1": 2, "v2": 2}),
    "25/75": (0.75, {"v1": 1, "v2": 3}),
}
BATCH = 20  # requests between two looks in the sequential tests


def overlay(name: str) -> Expectation:
    _, replicas = SPLITS[name]
    folder = name.replace("/", "-")  # the overlays are named 75-25, 50-50, ...
    return Expectation.from_replicas(replicas, source=f"overlay k8s/overlays/{folder}")


def split_into_pods(rng, count: int, replicas: int, version: str) -> dict[str, int]:
    """A version's answers spread over its pods the way the Service does it: uniformly."""
    spread = rng.multinomial(count, [1 / replicas] * replicas)
    return {f"notification-{version}-{i}": int(c) for i, c in enumerate(spread)}


def cumulative_looks(rng, runs: int, share: float, looks: int):
    """Canary answers after each of ``looks`` batches, for ``runs`` simulated runs."""
    canary = rng.binomial(BATCH, share, size=(runs, looks)).cumsum(axis=1)
    return canary, BATCH * np.arange(1, looks + 1)


def first_decision(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and code of each run's first look that decided (code 2 = still undecided)."""
    decided = codes != 2
    index = np.where(decided.any(axis=1), decided.argmax(axis=1), codes.shape[1] - 1)
    return index, codes[np.arange(len(codes)), index]


# --------------------------------------------------------------------------- expected split


def test_expectation_comes_from_replicas_or_a_percentage_split():
    from_pods = overlay("75/25")
    assert from_pods.canary_share == 0.25 and from_pods.label == "75/25"
    assert from_pods.shares == {"v1": 0.75, "v2": 0.25}
    assert from_pods.source == "overlay k8s/overlays/75-25"
    assert Expectation.parse("75/25").canary_share == 0.25
    assert Expectation.parse(" 75-25 ", source="live cluster").source == "live cluster"
    assert Expectation.from_replicas({"v1": 2}).canary_share == 0.0  # v2 scaled to zero
    assert Expectation.from_replicas({"v1": 2, "v2": 1}).canary_share == pytest.approx(1 / 3)


@pytest.mark.parametrize("text", ["75/20", "75", "75/25/0", "a/b", "-25/125", ""])
def test_a_split_that_is_not_two_percentages_adding_to_100_is_refused(text):
    with pytest.raises(ValueError):
        Expectation.parse(text)


@pytest.mark.parametrize("replicas", [{"v1": 0, "v2": 0}, {"v1": -1, "v2": 1},
                                      {"v1": 3, "v3": 1}, {"v1": 1.5, "v2": 1}])
def test_impossible_replica_counts_are_refused(replicas):
    with pytest.raises(ValueError):
        Expectation.from_replicas(replicas)


# --------------------------------------------------------------------------- the plan


def test_plan_reproduces_the_design_numbers():
    # The textbook formula by hand: (z_.95 + z_.95)^2 * 0.25 * 0.75 / 0.05^2 = 811.66.
    by_hand = (2 * stats.norm.ppf(0.95)) ** 2 * 0.1875 / 0.05**2
    assert approximate_plan(0.25) == pytest.approx(by_hand, rel=1e-6)
    assert math.ceil(by_hand) == 812
    planned = plan_requests(0.25)
    assert abs(planned - 812) / 812 <= 0.03
    # The promise is exact at the planned n, and the walk stops at the first such n.
    assert equivalence_power(planned, 0.25) >= 0.9 > equivalence_power(planned - 1, 0.25)
    assert plan_requests(0.75) == planned  # the canary's share and the baseline's mirror
    # 100/0: every answer from v1 verifies "below 5 points" once 0.95^n <= 0.05.
    assert plan_requests(0.0) == math.ceil(math.log(0.05) / math.log(0.95)) == 59


def test_the_equivalence_decision_is_the_interval_inside_the_margin():
    n = plan_requests(0.25)
    lo, hi = accepted_counts(n, 0.25)  # the counts the planner's power sums over
    for canary in range(n + 1):
        test = equivalence_test(canary, n, 0.25)
        low, high = test.interval
        assert test.equivalent == (low >= 0.20 and high <= 0.30) == (lo <= canary <= hi), canary


# --------------------------------------------------------------------------- honesty at the plan


@pytest.mark.parametrize("name", list(SPLITS))
def test_correct_runs_at_the_plan_almost_never_mismatch_and_verify_as_planned(name):
    share, replicas = SPLITS[name]
    expectation = overlay(name)
    n, runs = plan_requests(share), 2000
    rng = np.random.default_rng(20240601)
    # Each run arrives as the simulator will report it: ten time windows, and per pod.
    sizes = np.array([len(part) for part in np.array_split(np.arange(n), 10)])
    statuses = []
    for canary_per_window in rng.binomial(sizes, share, size=(runs, len(sizes))):
        windows = [{"v1": int(size - c), "v2": int(c)}
                   for size, c in zip(sizes, canary_per_window, strict=True)]
        counts = {v: sum(w[v] for w in windows) for v in ("v1", "v2")}
        pods = {v: split_into_pods(rng, counts[v], replicas[v], v) for v in counts}
        statuses.append(verify(counts, expectation, pods=pods, windows=windows).status)
    # SRM plus the per-pod tests share a 0.001 budget: about 2 false mismatches in
    # 2000 expected; the bound is 0.2% = 4.
    assert statuses.count("mismatch") <= 0.002 * runs
    # The planner promises power 0.9 (exact power at the plan is 0.90-0.91); one
    # standard error of a 2000-run estimate is 0.0067, so allow three. A stickiness
    # check that cried wolf on these binomial windows would pull this down too.
    verified = statuses.count("verified") / runs
    assert verified == pytest.approx(equivalence_power(n, share), abs=0.02)
    assert 0.88 <= verified <= 0.93


@pytest.mark.parametrize("name", list(SPLITS))
@pytest.mark.parametrize("error", [-0.10, +0.10])
def test_a_ten_point_error_is_caught_at_the_plan(name, error):
    share, _ = SPLITS[name]
    n, runs = plan_requests(share), 1000
    rng = np.random.default_rng(7)
    statuses = [verify({"v1": int(n - c), "v2": int(c)}, overlay(name)).status
                for c in rng.binomial(n, share + error, runs)]
    # Caught = not verified. Istio's 40-60-of-100 rule passes a 10-point error over
    # half the time; at the plan the SRM test alone sees it in practically every run.
    assert statuses.count("verified") <= 0.01 * runs
    assert statuses.count("mismatch") >= 0.99 * runs


def test_a_canary_right_on_the_margin_is_verified_at_most_five_percent_of_the_time():
    n = plan_requests(0.25)
    assert equivalence_power(n, 0.25, true_share=0.30) <= 0.05  # exact, not simulated
    rng = np.random.default_rng(11)
    runs = 2000
    verified = sum(verify({"v1": int(n - c), "v2": int(c)}, overlay("75/25")).status
                   == "verified" for c in rng.binomial(n, 0.30, runs)) / runs
    # The exact rate is about 0.04; a 2000-run estimate has a standard error of 0.0045.
    assert verified <= 0.055


@pytest.mark.parametrize("name", list(SPLITS))
def test_too_few_requests_are_inconclusive_even_perfectly_on_target(name):
    share, _ = SPLITS[name]
    planned = plan_requests(share)
    for n in range(1, planned):
        canary = round(n * share)
        verdict = verify({"v1": n - canary, "v2": canary}, overlay(name))
        assert verdict.status == "inconclusive", n
        assert verdict.more_needed == planned - n
    fifty = verify({"v1": 25, "v2": 25}, overlay("50/50"))
    assert fifty.status == "inconclusive" and fifty.exit_code == 2
    assert f"send {plan_requests(0.5) - 50} more" in " ".join(fifty.reasons)


def test_istio_rule_quoted_in_the_module_docstring_is_what_it_says():
    fails_correct = 1 - (stats.binom.cdf(60, 100, 0.5) - stats.binom.cdf(39, 100, 0.5))
    assert fails_correct == pytest.approx(0.035, abs=0.001)
    passes_35_as_25 = stats.binom.cdf(35, 100, 0.35) - stats.binom.cdf(14, 100, 0.35)
    assert passes_35_as_25 > 0.5


# --------------------------------------------------------------------------- degenerate splits


def test_one_answer_from_a_version_declared_at_zero_is_a_mismatch():
    for split, stray in (("100/0", {"v1": 40, "v2": 1}), ("0/100", {"v1": 1, "v2": 40})):
        verdict = verify(stray, Expectation.parse(split))
        assert verdict.status == "mismatch" and verdict.srm.p_value == 0.0
        assert "a single answer" in verdict.reasons[0]


def test_an_all_baseline_run_verifies_a_hundred_zero_split_after_59_requests():
    expectation = Expectation.parse("100/0")
    assert verify({"v1": 58}, expectation).status == "inconclusive"
    verdict = verify({"v1": 59}, expectation)
    assert verdict.status == "verified" and verdict.interval[1] < 0.05
    assert verify({"v2": 59}, Expectation.parse("0/100")).status == "verified"


def test_a_version_nobody_declared_is_a_mismatch():
    verdict = verify({"v1": 600, "v2": 200, "v3": 20}, overlay("75/25"))
    assert verdict.status == "mismatch" and verdict.exit_code == 1
    assert any("v3" in reason for reason in verdict.reasons)


# --------------------------------------------------------------------------- pods and stickiness


def test_a_dead_pod_is_named_and_makes_the_split_a_mismatch():
    n = plan_requests(0.25)
    counts = {"v1": 613, "v2": n - 613}
    pods = {"v1": {"notification-v1-a": 307, "notification-v1-b": 306, "notification-v1-c": 0},
            "v2": {"notification-v2-a": n - 613}}
    verdict = verify(counts, overlay("75/25"), pods=pods)
    assert verdict.srm.mismatch is False  # the version totals are right on target...
    assert verdict.status == "mismatch"  # ...but a declared replica serves nothing
    (finding,) = [f for f in verdict.pods if f.version == "v1"]
    assert finding.problem and "notification-v1-c got no answers" in finding.message
    assert any("notification-v1-c" in reason for reason in verdict.reasons)


def test_a_pod_that_never_answered_is_found_from_the_replica_count():
    finding = check_pods("v1", {"notification-v1-a": 300, "notification-v1-b": 310}, replicas=3)
    assert finding.problem and "only 2 pods answered" in finding.message


def test_evenly_loaded_pods_are_not_flagged_and_tiny_counts_are_not_judged():
    rng = np.random.default_rng(3)
    flagged = sum(check_pods("v1", split_into_pods(rng, 600, 3, "v1"), 3).problem
                  for _ in range(1000))
    assert flagged <= 5  # expected about 1 at the 0.001 threshold
    tiny = check_pods("v1", {"a": 4, "b": 0, "c": 5}, replicas=3)
    assert tiny.p_value is None and not tiny.problem and "too few" in tiny.message


def _windows(rng, shares, size=40):
    windows = []
    for share in shares:
        canary = int(rng.binomial(size, share))
        windows.append({"v1": size - canary, "v2": canary})
    return windows


def test_a_share_jumping_between_zero_and_half_is_flagged_as_sticky():
    rng = np.random.default_rng(5)
    flagged = sum(check_stickiness(_windows(rng, rng.choice([0.0, 0.5], 20))).sticky
                  for _ in range(200))
    assert flagged >= 198


def test_binomial_windows_are_not_flagged_as_sticky():
    rng = np.random.default_rng(6)
    flagged = sum(check_stickiness(_windows(rng, [0.25] * 20)).sticky for _ in range(1000))
    assert flagged <= 5  # expected about 1 at the 0.001 threshold


def test_sticky_traffic_is_never_verified_and_the_reason_points_at_keep_alive():
    # Totals right on 25%, but half the windows saw no canary at all.
    windows = [{"v1": 100, "v2": 0}, {"v1": 50, "v2": 50}] * 5
    counts = {"v1": sum(w["v1"] for w in windows) * 2, "v2": sum(w["v2"] for w in windows) * 2}
    verdict = verify(counts, overlay("75/25"), windows=windows + windows)
    assert verdict.equivalence.equivalent and verdict.n >= verdict.planned_n
    assert verdict.stickiness.sticky and verdict.status != "verified"
    assert "keep" in " ".join(verdict.reasons) and "per connection" in " ".join(verdict.reasons)


# --------------------------------------------------------------------------- sequential mode


def test_looking_after_every_batch_keeps_false_alarms_below_alpha():
    # At alpha = 0.05 the check has teeth with 4000 runs (standard error 0.0034),
    # and the same harness shows what peeking with a fixed-n test does.
    share, runs = 0.25, 4000
    looks = math.ceil(5 * plan_requests(share) / BATCH)
    canary, n = cumulative_looks(np.random.default_rng(12), runs, share, looks)
    codes = sequential_decision(canary, n, share, srm_alpha=0.05)
    anytime = (codes == 1).any(axis=1).mean()  # ever called a mismatch, never stopping
    assert anytime <= 0.05
    chi_square = (canary - n * share) ** 2 / (n * share * (1 - share))
    naive = (stats.chi2.sf(chi_square, 1) < 0.05).any(axis=1).mean()
    assert naive >= 0.25  # peeking at a fixed-n chi-square test after every batch


@pytest.mark.parametrize("name", list(SPLITS))
def test_sequential_false_mismatches_stay_below_the_default_srm_alpha(name):
    # 20,000 runs looked at every 20 requests up to 5x the plan; at the bound 0.001
    # the estimate's standard error is 0.00022: a rate of 0.002 would fail this.
    share, _ = SPLITS[name]
    looks = math.ceil(5 * plan_requests(share) / BATCH)
    rng = np.random.default_rng(13)
    alarms = 0
    for _ in range(4):
        canary, n = cumulative_looks(rng, 5000, share, looks)
        alarms += (sequential_decision(canary, n, share) == 1).any(axis=1).sum()
    assert alarms / 20000 <= 0.001


def test_sequential_mode_rarely_verifies_a_canary_on_the_margin():
    share, runs = 0.25, 2000
    looks = math.ceil(5 * plan_requests(share) / BATCH)
    canary, n = cumulative_looks(np.random.default_rng(14), runs, share + 0.05, looks)
    ever_verified = (sequential_decision(canary, n, share) == 0).any(axis=1).mean()
    assert ever_verified <= 0.05  # standard error at 0.05: 0.005


def test_sequential_mode_meets_the_issue_targets():
    planned, runs = plan_requests(0.25), 500
    looks = math.ceil(10 * planned / BATCH)
    rng = np.random.default_rng(15)
    canary, n = cumulative_looks(rng, runs, 0.25, looks)  # real 75/25, declared 50/50
    index, code = first_decision(sequential_decision(canary, n, 0.5))
    assert (code == 1).all() and n[index].mean() <= 0.3 * planned
    canary, n = cumulative_looks(rng, runs, 0.25, looks)  # real and declared 75/25
    index, code = first_decision(sequential_decision(canary, n, 0.25))
    assert (code == 0).mean() >= 0.99 and n[index].mean() <= 1.5 * planned


def test_the_sequential_verifier_decides_as_the_vectorised_rule_does():
    rng = np.random.default_rng(16)
    planned = plan_requests(0.25)
    looks = math.ceil(3 * planned / BATCH)
    for real, declared in ((0.25, "75/25"), (0.25, "50/50")):
        canary, n = cumulative_looks(rng, 20, real, looks)
        index, code = first_decision(sequential_decision(canary, n, SPLITS[declared][0]))
        for run in range(20):
            checker = SequentialVerifier(overlay(declared))
            for look in range(looks):
                c = int(canary[run, look])
                result = checker.update({"v1": int(n[look]) - c, "v2": c})
                if result.status != "inconclusive":
                    break
            assert (result.n, result.exit_code) == (n[index[run]], code[run])
            assert len(checker.batches) == index[run] + 1


def test_a_sequential_decision_is_final_and_counts_must_be_cumulative():
    checker = SequentialVerifier(overlay("50/50"))
    first = checker.update({"v1": 100, "v2": 0})
    assert first.status == "mismatch" and "evidence" in first.reasons[0]
    assert checker.update({"v1": 150, "v2": 150}) is first
    with pytest.raises(ValueError, match="cumulative"):
        checker.update({"v1": 10, "v2": 10})


def test_sequential_mode_on_a_hundred_zero_split():
    checker = SequentialVerifier(Expectation.parse("100/0"))
    statuses = [checker.update({"v1": n}).status for n in range(1, 60)]
    assert statuses[:58] == ["inconclusive"] * 58 and statuses[58] == "verified"
    stray = SequentialVerifier(Expectation.parse("100/0")).update({"v1": 10, "v2": 1})
    assert stray.status == "mismatch"


def test_a_sequential_run_is_judged_by_its_sequential_test_not_by_the_fixed_size_ones():
    # 720 answers, exactly a quarter from v2: below the plan (817), so the fixed-size
    # verdict must stay inconclusive; the sequential test, which may stop early,
    # verifies it (at 680 answers when the share is spot on).
    rng = np.random.default_rng(5)
    n, canary = 720, 180
    counts = {"v1": n - canary, "v2": canary}
    pods = {"v1": split_into_pods(rng, n - canary, 3, "v1"), "v2": {"notification-v2-0": canary}}
    fixed = verify(counts, overlay("75/25"), pods=pods)
    checker = SequentialVerifier(overlay("75/25"))
    for seen in range(120, n + 1, 120):  # looked at all along, like the locustfile does
        checker.update({"v1": seen - seen // 4, "v2": seen // 4})
    sequential = verify(counts, overlay("75/25"), pods=pods, sequential=checker)
    assert fixed.status == "inconclusive" and fixed.n < fixed.planned_n
    assert sequential.status == checker.decision.status == "verified"
    assert sequential.srm is None and sequential.equivalence is None
    assert sequential.sequential is checker.decision
    assert sequential.interval == checker.decision.sequence
    rows = {row[0]: row[-1] for row in table_rows(sequential)}
    assert rows["sequential SRM (e-value)"] == "ok"
    assert "sequential: checked all along" in render(sequential)
    json.dumps(sequential.to_dict(), allow_nan=False)


def test_a_sequential_verdict_still_checks_the_pods():
    # The version counts look right, but one of three v1 pods never answered.
    checker = SequentialVerifier(overlay("75/25"))
    counts = {"v1": 1500, "v2": 500}
    pods = {"v1": {"notification-v1-a": 750, "notification-v1-b": 750},
            "v2": {"notification-v2-a": 500}}
    verdict = verify(counts, overlay("75/25"), pods=pods, sequential=checker)
    assert checker.decision.status == "verified"
    assert verdict.status == "mismatch"
    assert any("never answered" in reason or "pods" in reason for reason in verdict.reasons)


def test_a_sequential_mismatch_says_why_in_words():
    checker = SequentialVerifier(overlay("50/50"))
    verdict = verify({"v1": 300, "v2": 100}, overlay("50/50"), sequential=checker)
    assert verdict.status == "mismatch" and verdict.exit_code == 1
    assert "evidence against the declared split" in verdict.reasons[0]


def test_answers_over_reused_connections_make_the_traffic_sticky_whatever_the_windows_say():
    # Two workers pinned to two v1 pods: 0% canary in every window, so the windows
    # do not swing; user-management's X-Notification-Connection header says why.
    windows = [{"v1": 200, "v2": 0}] * 5
    verdict = verify({"v1": 1000, "v2": 0}, overlay("75/25"), windows=windows, reused=998)
    assert verdict.status == "mismatch"
    assert verdict.stickiness.sticky
    assert "998 of 1000 answers came over a connection user-management kept alive" \
        in verdict.reasons[-1]
    assert "NOTIFICATION_KEEPALIVE=false" in verdict.reasons[-1]
    assert {row[0]: row[-1] for row in table_rows(verdict)}["stickiness (4 df)"] == "STICKY"


# --------------------------------------------------------------------------- the report


def test_the_verdict_serialises_to_json_and_renders_a_table():
    n = plan_requests(0.25)
    rng = np.random.default_rng(17)
    counts = {"v1": 620, "v2": n - 620}
    pods = {"v1": split_into_pods(rng, 620, 3, "v1"), "v2": {"notification-v2-0": n - 620}}
    windows = _windows(rng, [0.25] * 10, size=n // 10)
    verdict = verify(counts, overlay("75/25"), pods=pods, windows=windows)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert data["status"] == verdict.status and data["exit_code"] == verdict.exit_code
    assert data["planned_n"] == n and len(data["interval"]) == 2
    assert data["srm"]["p_value"] == verdict.srm.p_value and data["reasons"]
    table = render(verdict)
    for text in ("75.0%", "25.0%", "90% interval", "sample-ratio mismatch",
                 "equivalence (TOST)", "notification-v1-2", "stickiness", "reasons"):
        assert text in table, text
    mismatch = verify({"v1": 400, "v2": 400}, overlay("75/25"))
    assert mismatch.to_dict()["exit_code"] == 1 and "MISMATCH" in render(mismatch)
