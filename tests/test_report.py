"""report.html: one self-contained page that shows the verdict and the charts behind it."""


from html_page import Page

from loadtest.report import write_html
from loadtest.verifier import Expectation, verify

LATENCY = {"v1": {"50": 12.0, "95": 40.0, "99": 80.0}, "v2": {"50": 15.0, "95": 55.0, "99": 120.0}}


def parse(path) -> tuple[Page, str]:
    raw = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    page.close()
    return page, raw


def counts(v1: int, v2: int, v1_pods: list[str], v2_pods: list[str], windows: int = 20):
    """Answers spread evenly over the pods and over the time windows."""
    pods = {"v1": {p: v1 // len(v1_pods) for p in v1_pods},
            "v2": {p: v2 // len(v2_pods) for p in v2_pods}}
    totals = {v: sum(c.values()) for v, c in pods.items()}
    split = [{v: total // windows for v, total in totals.items()} for _ in range(windows)]
    return totals, pods, split


def test_a_verified_split_shows_the_word_every_pod_and_three_charts(tmp_path):
    totals, pods, windows = counts(1500, 500, ["notification-v1-a", "notification-v1-b",
                                               "notification-v1-c"], ["notification-v2-a"])
    verdict = verify(totals, Expectation.from_replicas({"v1": 3, "v2": 1}), pods=pods,
                     windows=windows)
    assert verdict.status == "verified"
    path = write_html(tmp_path / "report.html", verdict.to_dict(), windows, 2.0, LATENCY)

    page, raw = parse(path)
    shown = " ".join(page.text)
    assert page.tags.count("svg") == 3  # share over time, pods, latency
    assert "VERIFIED" in shown
    for pod in ("notification-v1-a", "notification-v1-b", "notification-v1-c",
                "notification-v2-a"):
        assert pod in shown
    assert "http://" not in raw.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "script" not in page.tags and "link" not in page.tags


def test_a_mismatch_without_latency_draws_two_charts(tmp_path):
    totals, pods, windows = counts(1000, 1000, ["a", "b", "c"], ["d"])
    verdict = verify(totals, Expectation.from_replicas({"v1": 3, "v2": 1}), pods=pods,
                     windows=windows)
    path = write_html(tmp_path, verdict.to_dict(), windows, 1.0)

    page, _ = parse(path)
    assert path.name == "report.html"
    assert page.tags.count("svg") == 2
    assert "MISMATCH" in " ".join(page.text)


def test_a_pod_name_with_markup_comes_out_as_text(tmp_path):
    evil = '<script>alert("pod")</script>'
    totals, pods, windows = counts(1500, 500, ["v1-a", evil, "v1-c"], ["v2-a"])
    verdict = verify(totals, Expectation.from_replicas({"v1": 3, "v2": 1}), pods=pods,
                     windows=windows)
    path = write_html(tmp_path / "report.html", verdict.to_dict(), windows, 2.0, LATENCY)

    page, raw = parse(path)
    assert "<script>" not in raw
    assert "script" not in page.tags
    assert evil in " ".join(page.text)  # shown as the name it is, not run
