"""The notification API in process: versions, features, fault knobs, bad input."""

import pytest
from conftest import notification_app

from notification_service.features import Features


@pytest.mark.parametrize(("version", "app_version", "html"), [("v1", "3.0.0", False),
                                                              ("v2", "4.0.0", True)])
def test_each_version_answers_as_itself(version, app_version, html):
    client = notification_app(version, POD_NAME=f"notification-{version}-abc").test_client()

    info = client.get("/notification/info")
    assert info.headers["X-Service-Version"] == version
    assert info.headers["X-Pod-Name"] == f"notification-{version}-abc"
    body = info.get_json()
    assert (body["version"], body["app_version"], body["pod"]) == (
        version, app_version, f"notification-{version}-abc")
    assert body["features"] == {"html_email": html}

    xray = client.get("/notification/xray")
    assert xray.status_code == 200
    assert xray.get_json()["version"] == version


def test_pod_name_defaults_to_the_host_name():
    import socket

    client = notification_app("v1", POD_NAME="").test_client()
    assert client.get("/notification/health-status").headers["X-Pod-Name"] == socket.gethostname()


@pytest.mark.parametrize(
    ("mail", "field"),
    [
        ({"content": "x", "toEmails": ["a@example.com"]}, "subject"),
        ({"subject": "x", "toEmails": ["a@example.com"]}, "content"),
        ({"subject": "x", "content": "x", "toEmails": []}, "toEmails"),
        ({"subject": "x", "content": "x", "toEmails": ["not-an-address"]}, "toEmails.0"),
        ({"subject": "a\r\nBcc: victim@example.com", "content": "x",
          "toEmails": ["a@example.com"]}, "subject"),
    ],
)
def test_bad_mail_request_is_400_naming_the_field(mail, field):
    response = notification_app().test_client().post("/notification/send", json=mail)

    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]


def test_send_is_503_when_the_mail_server_is_down():
    # The fixture points AWS_MAIL_SERVER_PORT at a port nothing listens on.
    response = notification_app().test_client().post("/notification/send", json={
        "subject": "hi", "content": "hello", "toEmails": ["a@example.com"]})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "smtp_unavailable"
    assert response.headers["X-Service-Version"] == "v1"  # errors say who answered too


def test_fault_knobs_are_off_by_default_and_reported():
    info = notification_app("v2").test_client().get("/notification/info").get_json()
    assert info["faults"] == {"error_rate": 0.0, "error_status": 503, "latency_ms": 0.0,
                              "latency_jitter_ms": 0.0, "latency_share": 1.0, "active": False}


def test_error_rate_fails_requests_but_not_health_probes():
    client = notification_app("v2", FAULT_ERROR_RATE=1.0, FAULT_ERROR_STATUS=500).test_client()

    failed = client.get("/notification/xray")
    assert failed.status_code == 500
    assert failed.get_json()["error"]["code"] == "injected_fault"
    assert failed.headers["X-Service-Version"] == "v2"
    assert client.get("/notification/health-status").status_code == 200


def test_error_rate_is_a_fraction_of_requests():
    client = notification_app("v2", FAULT_ERROR_RATE=0.5).test_client()
    statuses = [client.get("/notification/xray").status_code for _ in range(400)]

    errors = statuses.count(503)
    assert set(statuses) == {200, 503}
    assert 140 <= errors <= 260  # 0.5 of 400 = 200; this window is about 6 standard deviations


def test_latency_knob_delays_answers():
    import time

    client = notification_app("v2", FAULT_LATENCY_MS=60.0).test_client()
    start = time.perf_counter()
    client.get("/notification/xray")
    assert time.perf_counter() - start >= 0.06
    assert client.get("/notification/info").get_json()["faults"]["active"] is True


def test_latency_share_delays_only_that_share_of_answers():
    import time

    client = notification_app("v2", FAULT_LATENCY_MS=30.0, FAULT_LATENCY_SHARE=0.25).test_client()
    slow = 0
    for _ in range(80):
        start = time.perf_counter()
        client.get("/notification/xray")
        slow += time.perf_counter() - start >= 0.03
    # Binomial(80, 0.25): mean 20; outside 6..36 with probability < 1e-5.
    assert 6 <= slow <= 36, slow


@pytest.mark.parametrize("bad", [{"FAULT_ERROR_RATE": 1.5}, {"FAULT_ERROR_STATUS": 404},
                                 {"FAULT_LATENCY_MS": -1.0}, {"FAULT_LATENCY_SHARE": 2.0}])
def test_bad_fault_settings_fail_at_start(bad):
    with pytest.raises(ValueError):
        notification_app("v1", **bad)


def test_unknown_feature_fails_at_start():
    with pytest.raises(ValueError, match="unknown feature"):
        Features.parse("html_email,teleport")


def test_bad_number_in_environment_names_the_variable(monkeypatch):
    from servicekit.config import ConfigError, load_config

    monkeypatch.setenv("FAULT_LATENCY_MS", "slow")
    with pytest.raises(ConfigError, match="FAULT_LATENCY_MS"):
        load_config({"FAULT_LATENCY_MS": 0.0})


def test_versions_differ_only_by_their_release_files():
    from conftest import release_env

    v1, v2 = release_env("v1"), release_env("v2")
    assert set(v1) == set(v2) == {"SERVICE_VERSION", "APP_VERSION", "NOTIFICATION_FEATURES"}
    assert v2["NOTIFICATION_FEATURES"] == "html_email"


def test_openapi_document_lists_the_api():
    spec = notification_app().test_client().get("/notification/openapi.json").get_json()
    assert {"/notification/send", "/notification/info", "/notification/xray",
            "/notification/health-status"} <= set(spec["paths"])
