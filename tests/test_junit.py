"""The verdict as JUnit XML: one case per check, failures carry the reasons."""

from xml.etree import ElementTree

from loadtest.junit import verdict_junit
from loadtest.verifier import Expectation, verify

EXPECTED = Expectation.from_replicas({"v1": 3, "v2": 1})
EVEN_PODS = {"v1": {"a": 500, "b": 500, "c": 500}, "v2": {"d": 500}}


def cases(xml: str) -> dict[str, str | None]:
    suite = ElementTree.fromstring(xml)
    found = {}
    for case in suite.iter("testcase"):
        failure = case.find("failure")
        found[case.get("name")] = None if failure is None else failure.get("message")
    assert int(suite.get("tests")) == len(found)
    assert int(suite.get("failures")) == sum(v is not None for v in found.values())
    return found


def test_a_verified_split_has_no_failures():
    verdict = verify({"v1": 1500, "v2": 500}, EXPECTED, pods=EVEN_PODS)
    found = cases(verdict_junit(verdict, (True, "0 of 2000 calls failed")))
    assert verdict.status == "verified"
    assert set(found) >= {"sample-ratio mismatch", "v2 share within ±5 points of 75/25",
                          "pods of v1 share evenly", "canary endpoint healthy"}
    assert not any(found.values())


def test_a_mismatch_fails_with_the_reasons_in_words():
    verdict = verify({"v1": 1000, "v2": 1000}, EXPECTED)
    found = cases(verdict_junit(verdict))
    assert found["sample-ratio mismatch"] and "v2 answered" in found["sample-ratio mismatch"]
    assert found["v2 share within ±5 points of 75/25"].startswith("mismatch")


def test_too_little_data_and_an_unhealthy_endpoint_fail():
    verdict = verify({"v1": 75, "v2": 25}, EXPECTED)
    found = cases(verdict_junit(verdict, (False, "30 of 100 calls failed")))
    assert found["v2 share within ±5 points of 75/25"].startswith("inconclusive")
    assert found["canary endpoint healthy"] == "30 of 100 calls failed"
