"""The "Canary split" tab of Locust's web UI, as a person sees it: real Locust, real Chromium.

A real `locust -f loadtest/locustfile.py` serves its web UI on 127.0.0.1; headless
Chromium (Debian's chromium and chromium-driver, `make browser`) opens it, presses
Start, clicks the tab and reads the table the page draws, while the run goes.

The target is the small stand-in of bench/locust_cost.py: a threaded HTTP server in
this process answering the canary endpoint with X-Notification-Version v1 or v2 at
random, 3:1, from three pods per version. No cluster needed: the tab is about what
Locust counts, and test_locustfile.py already runs the suite against a real cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cluster_fixtures import free_port, wait_for
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]
USERS = 8  # about 60 canary calls a second against the stand-in: 2-core friendly

sys.path.insert(0, str(ROOT / "bench"))  # the stand-in target lives with the benchmark
from locust_cost import start_server  # noqa: E402


@pytest.fixture
def target():
    """The stand-in canary endpoint: v1/v2 at 3:1, three pods each."""
    server, port = start_server()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def locust_ui(target, tmp_path):
    """`locust` with its web UI on a free port of 127.0.0.1, not started: a person presses
    Start. -u/-r fill the form's defaults; -t ends the run even if the test does not."""
    port = free_port()
    log = open(tmp_path / "locust.log", "wb")  # noqa: SIM115 (open while locust runs)
    process = subprocess.Popen(
        [str(LOCUST), "-f", str(LOCUSTFILE), "--host", target, "--web-host", "127.0.0.1",
         "--web-port", str(port), "--tags", "canary", "-u", str(USERS), "-r", str(USERS),
         "-t", "90s", "--expect", "75/25"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ui_answers():
        if process.poll() is not None:
            raise AssertionError((tmp_path / "locust.log").read_text()[-3000:])
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(ui_answers, timeout=30, interval=0.2, what="the Locust web UI answers")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Locust quits: the verdict, then exit
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven through chromedriver, with a profile of its own."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("no /usr/bin/chromium or /usr/bin/chromedriver: run `make browser`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


# Every row of the tab's table, read in one go (the page redraws it every 2 s), by column.
READ_TABLE = """
const head = [...document.querySelectorAll('table thead th')].map(th => th.textContent);
return [...document.querySelectorAll('table tbody tr')].map(tr => {
  const cells = [...tr.querySelectorAll('td')].map(td => td.textContent);
  return Object.fromEntries(head.map((title, i) => [title, cells[i]]));
});
"""


def read_tab(driver) -> dict[str, list[dict]]:
    """The tab's rows grouped by their Part column: verdict, version, pod, test."""
    rows = driver.execute_script(READ_TABLE)
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row.get("Part"), []).append(row)
    return grouped


def click(driver, xpath: str, timeout: float = 30) -> None:
    element = WebDriverWait(driver, timeout).until(
        expected_conditions.element_to_be_clickable(("xpath", xpath)))
    element.click()


def percent(text: str) -> float:
    return float(re.search(r"(\d+(?:\.\d+)?)%", text)[1])


def test_the_canary_split_tab_shows_the_live_split_pods_and_verdicts(locust_ui, browser):
    browser.get(locust_ui)
    click(browser, "//button[normalize-space()='Start']")
    click(browser, "//*[@role='tab'][normalize-space()='Canary split']")

    def verdict_rows():
        """The tab once the run has counted a few answers, else None."""
        tab = read_tab(browser)
        verdicts = {row["What"]: row for row in tab.get("verdict", [])}
        fixed = verdicts.get("split, if the run stopped now")
        if fixed and int(fixed["Answers"].split()[0]) >= 150:
            return tab, verdicts
        return None

    tab, verdicts = wait_for(verdict_rows, timeout=40, interval=0.5,
                             what="the tab shows 150 counted answers")
    # The verdicts on top, in this order, though the page sorts tables by default.
    order = [row["What"] for row in browser.execute_script(READ_TABLE)]
    assert order[:3] == ["split, if the run stopped now", "split, watched live (anytime-valid)",
                         "canary endpoint errors"], order

    # Declared vs observed per version, with the canary's interval.
    versions = {row["What"]: row for row in tab["version"]}
    assert set(versions) == {"v1", "v2 (canary)"}
    assert versions["v1"]["Declared"] == "75.0%" and versions["v2 (canary)"]["Declared"] == "25.0%"
    canary = versions["v2 (canary)"]
    observed = percent(canary["Observed"])
    assert 10 < observed < 40, canary  # 3:1 at random; 150+ answers: far inside
    low, high = (float(x) for x in re.findall(r"(\d+(?:\.\d+)?)%", canary["Interval"])[:2])
    assert low < observed < high and high - low < 25, canary
    assert "(90%)" in canary["Interval"]
    answers = {name: int(row["Answers"]) for name, row in versions.items()}

    # Per pod: three of each version (the stand-in's), adding up to the version's answers.
    pods = tab["pod"]
    for version, name in (("v1", "v1"), ("v2", "v2 (canary)")):
        mine = [row for row in pods if row["What"].startswith(f"{version} ")]
        assert len(mine) == 3, pods
        assert all(row["Declared"] == f"33.3% of {version}" for row in mine), mine
        assert sum(int(row["Answers"]) for row in mine) == answers[name], (mine, answers)

    # The verdicts: a word each, and the statistics behind them.
    fixed = verdicts["split, if the run stopped now"]
    assert fixed["Result"] in {"VERIFIED", "INCONCLUSIVE"}, fixed  # a 3:1 split: no mismatch
    assert fixed["Declared"] == "75/25: v2 20.0%-30.0% (±5 pts)"
    assert fixed["Answers"] == f"{sum(answers.values())} (plan 817)"
    live = verdicts["split, watched live (anytime-valid)"]
    assert live["Result"] in {"KEEP GOING", "VERIFIED"} and "95% sequence" in live["Interval"]
    assert verdicts["canary endpoint errors"]["Result"] == "HEALTHY"
    assert {row["What"].split(" (")[0] for row in tab["test"]} >= {
        "sample-ratio mismatch", "equivalence", "pods of v1", "pods of v2"}

    # Refreshed while the run goes: more answers a few seconds later, without a reload.
    first = sum(answers.values())

    def grown():
        rows = {row["What"]: row for row in read_tab(browser).get("verdict", [])}
        now = int(rows["split, if the run stopped now"]["Answers"].split()[0])
        return now if now > first + 50 else None

    wait_for(grown, timeout=30, interval=0.5, what="the tab's answer count grows")


def live(url: str) -> dict:
    return requests.get(f"{url}/canarylab/live", timeout=5).json()


def start(url: str, users: int = 4) -> None:
    started = requests.post(f"{url}/swarm", data={"user_count": users, "spawn_rate": users},
                            timeout=5)
    assert started.json()["success"], started.text


def test_the_live_state_is_json_and_a_new_run_starts_from_zero(locust_ui):
    start(locust_ui)
    state = wait_for(lambda: (s := live(locust_ui))["requests"] >= 150 and s, timeout=40,
                     interval=0.5, what="150 canary calls counted")
    assert state["expected"] == "75/25" and state["canary"] == "v2"
    assert state["verdict"]["n"] == sum(state["verdict"]["counts"].values()) == state["requests"]
    assert state["verdict"]["status"] in {"verified", "inconclusive"}
    assert state["sequential"]["status"] in {"verified", "inconclusive"}
    assert state["health"]["healthy"]
    assert state["analysis"]["decision"] in {"promote", "hold", "rollback"}
    assert state["analysis"]["baseline"]["requests"] == state["verdict"]["counts"]["v1"]
    # Locust's own stats answer carries the tab's rows: what the page draws.
    report = requests.get(f"{locust_ui}/stats/requests", timeout=5).json()
    (tab,) = report["extended_stats"]
    assert tab["key"] == "canary-split"
    assert [row["what"] for row in tab["data"][:3]] == [
        "split, if the run stopped now", "split, watched live (anytime-valid)",
        "canary endpoint errors"]

    # Stop, start again (what the page's Stop and New buttons send): the tab counts the
    # new run only, as Locust's own statistics do.
    assert requests.post(f"{locust_ui}/stop", timeout=5).json()["success"]
    stopped = live(locust_ui)
    assert stopped["state"] == "stopped"
    start(locust_ui, users=1)  # one user: 150 calls take the new run 15 s or more
    wait_for(lambda: 0 < live(locust_ui)["requests"] < stopped["requests"], timeout=15,
             interval=0.1, what="the counts of the new run start from zero")


def test_a_split_typed_wrong_into_the_start_form_is_a_clear_json_error(locust_ui):
    # The locustfile's options (--expect, --replicas, --margin) are fields of the page's
    # start form too, so they can arrive wrong after Locust has started.
    started = requests.post(f"{locust_ui}/swarm", timeout=5,
                            data={"user_count": 1, "spawn_rate": 1, "expect": "70/20"})
    assert started.json()["success"], started.text
    answer = requests.get(f"{locust_ui}/canarylab/live", timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_split"
    assert "adds up to 90, not 100" in answer.json()["error"]["message"]
    # The tab says the same in a row, and Locust's own statistics still arrive.
    report = requests.get(f"{locust_ui}/stats/requests", timeout=5).json()
    (row,) = report["extended_stats"][0]["data"]
    assert row["result"] == "ERROR" and "adds up to 90" in row["note"]
    assert report["stats"] and report["state"] in {"spawning", "running"}
