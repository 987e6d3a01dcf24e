"""Both hops for real: gunicorn processes, a real SMTP server, a real X-Ray UDP socket.

user-management -> notification -> SMTP, each a separate process on loopback,
exactly as a trainee runs them from the README.
"""

import json
import signal
import threading
import time

import pytest
import requests
from cluster_fixtures import wait_for
from conftest import STRONG_PASSWORD, new_user

TRACE = "X-Amzn-Trace-Id"


@pytest.fixture
def stack(start_service, mail_server, xray_daemon):
    """notification v1 + user-management, with mail and traces going to real sockets."""
    daemon = f"127.0.0.1:{xray_daemon.port}"
    notification = start_service("notification", "v1", POD_NAME="notification-v1-abc12-xyz34",
                                 AWS_MAIL_SERVER_HOST="127.0.0.1",
                                 AWS_MAIL_SERVER_PORT=mail_server.port,
                                 AWS_XRAY_DAEMON_ADDRESS=daemon)
    usermgmt = start_service("user-management", POD_NAME="user-management-abc12-xyz34",
                             NOTIFICATION_SERVICE_PORT=notification.port,
                             AWS_XRAY_DAEMON_ADDRESS=daemon)
    return usermgmt, notification


def test_new_user_gets_a_welcome_mail_through_notification(stack, mail_server):
    usermgmt, _ = stack

    response = requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)

    assert response.status_code == 201
    assert response.json()["notification"] == {
        "sent": True, "version": "v1", "pod": "notification-v1-abc12-xyz34"}
    assert response.headers["X-Notification-Version"] == "v1"
    mail = wait_for(lambda: mail_server.messages, what="the welcome mail")[0]
    assert mail.recipients == ["ada@example.com"]
    assert mail.subject == "Welcome to canarylab"
    assert "ada" in mail.text
    assert mail.html is None  # v1 has no html_email feature


def test_v2_sends_an_html_part(start_service, mail_server):
    notification = start_service("notification", "v2", AWS_MAIL_SERVER_HOST="127.0.0.1",
                                 AWS_MAIL_SERVER_PORT=mail_server.port)

    response = requests.post(f"{notification.url}/notification/send", timeout=10, json={
        "subject": "Hello <you>", "content": "line one\nline two", "toEmails": ["a@example.com"]})

    assert response.status_code == 200
    assert response.headers["X-Service-Version"] == "v2"
    mail = wait_for(lambda: mail_server.messages, what="the mail")[0]
    assert "line one" in mail.text
    assert "Hello &lt;you&gt;" in mail.html and "line one<br>" in mail.html


def test_one_trace_spans_both_services(stack, xray_daemon):
    usermgmt, _ = stack

    response = requests.get(f"{usermgmt.url}/usermgmt/notification-xray", timeout=10)

    assert response.status_code == 200
    assert response.headers["X-Notification-Version"] == "v1"
    assert response.headers["X-Notification-Pod"] == "notification-v1-abc12-xyz34"
    assert response.json()["version"] == "v1"
    trace_id = response.headers[TRACE].split(";")[0].removeprefix("Root=")

    def both_segments():
        mine = [s for s in xray_daemon.segments if s.get("trace_id") == trace_id]
        return mine if len(mine) >= 2 else None

    segments = {s["name"]: s for s in wait_for(both_segments, what="two segments")}
    front, back = segments["user-management"], segments["notification-v1"]
    call = next(sub for sub in front["subsegments"] if sub["name"] == "notification")
    # The notification segment's parent is the subsegment that made the call: one trace.
    assert back["parent_id"] == call["id"]
    assert call["namespace"] == "remote"
    assert call["http"]["response"]["status"] == 200
    assert back["annotations"] == {"version": "v1", "pod": "notification-v1-abc12-xyz34"}
    assert back["http"]["response"]["status"] == 200


def test_sql_and_smtp_are_subsegments(stack, xray_daemon):
    usermgmt, _ = stack

    response = requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)
    trace_id = response.headers[TRACE].split(";")[0].removeprefix("Root=")

    def segments_of_trace():
        mine = {s["name"]: s for s in xray_daemon.segments if s.get("trace_id") == trace_id}
        return mine if len(mine) >= 2 else None

    segments = wait_for(segments_of_trace, what="the create-user trace")
    front = segments["user-management"]["subsegments"]
    assert {"sqlite", "notification"} <= {sub["name"] for sub in front}
    statements = [sub["sql"]["sanitized_query"] for sub in front if sub["name"] == "sqlite"]
    assert any(statement.startswith("INSERT INTO users") for statement in statements)
    assert all(STRONG_PASSWORD not in statement for statement in statements)
    back_names = [sub["name"] for sub in segments["notification-v1"]["subsegments"]]
    assert back_names == ["smtp"]


def test_create_user_survives_notification_outage(stack):
    usermgmt, notification = stack
    notification.stop()

    created = requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)

    assert created.status_code == 201
    assert created.json()["notification"]["sent"] is False
    assert requests.get(f"{usermgmt.url}/usermgmt/user/ada", timeout=10).status_code == 200
    relay = requests.get(f"{usermgmt.url}/usermgmt/notification-xray", timeout=10)
    assert relay.status_code == 503
    assert relay.json()["error"]["code"] == "notification_unavailable"


def test_create_user_survives_smtp_outage(start_service, xray_daemon):
    from conftest import free_port

    notification = start_service("notification", "v1", AWS_MAIL_SERVER_HOST="127.0.0.1",
                                 AWS_MAIL_SERVER_PORT=free_port())  # no mail server there
    usermgmt = start_service("user-management", NOTIFICATION_SERVICE_PORT=notification.port)

    created = requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)

    assert created.status_code == 201
    outcome = created.json()["notification"]
    assert outcome["sent"] is False and outcome["version"] == "v1"
    assert "mail server unavailable" in outcome["error"]
    assert requests.get(f"{usermgmt.url}/usermgmt/user/ada", timeout=10).status_code == 200


def test_requests_succeed_without_an_xray_daemon(start_service, mail_server):
    from conftest import free_port

    nowhere = f"127.0.0.1:{free_port()}"
    notification = start_service("notification", "v1", AWS_XRAY_DAEMON_ADDRESS=nowhere,
                                 AWS_MAIL_SERVER_HOST="127.0.0.1",
                                 AWS_MAIL_SERVER_PORT=mail_server.port)
    usermgmt = start_service("user-management", NOTIFICATION_SERVICE_PORT=notification.port,
                             AWS_XRAY_DAEMON_ADDRESS=nowhere)

    statuses = [requests.get(f"{usermgmt.url}/usermgmt/notification-xray", timeout=10).status_code
                for _ in range(20)]
    created = requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)

    assert statuses == [200] * 20
    assert created.status_code == 201 and created.json()["notification"]["sent"] is True
    # A dead daemon is reported, but not once per request.
    assert usermgmt.log().count("cannot send trace segments") <= 2


def test_password_never_reaches_logs_or_traces(stack, xray_daemon):
    usermgmt, notification = stack
    requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("ada"), timeout=10)
    requests.put(f"{usermgmt.url}/usermgmt/user", timeout=10,
                 json={"username": "ada", "password": STRONG_PASSWORD + "2"})
    requests.post(f"{usermgmt.url}/usermgmt/user", json=new_user("bad", email="x"), timeout=10)
    # POST (both services), PUT and the rejected POST (user-management only).
    wait_for(lambda: len(xray_daemon.segments) >= 4, what="segments")
    usermgmt.stop()
    notification.stop()

    captured = usermgmt.log() + notification.log() + json.dumps(xray_daemon.segments)
    assert STRONG_PASSWORD not in captured
    assert "$2b$" not in captured  # nor its hash
    assert '"trace_id"' in usermgmt.log()  # the logs are the JSON lines we expect


def test_access_log_lines_are_json_with_the_trace_id(stack):
    usermgmt, _ = stack
    response = requests.get(f"{usermgmt.url}/usermgmt/notification-xray", timeout=10)
    trace_id = response.headers[TRACE].split(";")[0].removeprefix("Root=")

    def access_line():
        for line in usermgmt.log().splitlines():
            entry = json.loads(line)
            if entry.get("path") == "/usermgmt/notification-xray":
                return entry
        return None

    entry = wait_for(access_line, what="the access log line")
    assert entry["trace_id"] == trace_id
    assert entry["status"] == 200 and entry["method"] == "GET"


def test_metrics_add_up_across_gunicorn_workers(start_service):
    notification = start_service("notification", "v2", GUNICORN_WORKERS=2)
    for _ in range(30):
        requests.get(f"{notification.url}/notification/xray", timeout=10)

    text = requests.get(f"{notification.url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("http_requests_total{")
                and 'path="/notification/xray"' in line)
    assert 'version="v2"' in line and 'status="200"' in line
    assert float(line.rsplit(" ", 1)[1]) == 30


@pytest.mark.parametrize(("keepalive", "versions_seen"), [("false", {"v1", "v2"}),
                                                            ("true", None)])
def test_keepalive_pins_a_worker_to_one_pod_behind_a_service(start_service, keepalive,
                                                             versions_seen):
    """The reason user-management opens a new connection per call (DESIGN.md).

    v1 and v2 behind one Service proxy that picks a pod per connection, as
    kube-proxy does; notification runs threaded workers, which keep connections
    alive. A fresh connection per call reaches both versions; keep-alive sends
    every call of the (single) user-management worker to the pod its connection
    first landed on.
    """
    from canarylab.proxy import ServiceProxy

    v1 = start_service("notification", "v1", GUNICORN_THREADS=2)
    v2 = start_service("notification", "v2", GUNICORN_THREADS=2)
    pods = [("127.0.0.1", v1.port), ("127.0.0.1", v2.port)]
    with ServiceProxy.run_in_thread("127.0.0.1", 0, pods) as service:
        usermgmt = start_service("user-management", NOTIFICATION_SERVICE_PORT=service.port,
                                 NOTIFICATION_KEEPALIVE=keepalive, GUNICORN_WORKERS=1)
        with requests.Session() as client:
            replies = [client.get(f"{usermgmt.url}/usermgmt/notification-xray", timeout=10)
                       .headers for _ in range(40)]
        usermgmt.stop()  # before the proxy goes: its kept-alive connection ends first
    answered = {headers["X-Notification-Version"] for headers in replies}
    reused = [headers.get("X-Notification-Connection") for headers in replies]
    if versions_seen is None:
        assert len(answered) == 1, answered  # stuck: 40 calls, one pod
        # ...and it says why: every call after the first came over the same connection.
        assert reused == [None] + ["reused"] * 39
    else:
        assert reused == [None] * 40
        # 40 fair coin flips all landing on one side: probability 2 * 2^-40.
        assert answered == versions_seen


def test_sigterm_lets_the_request_in_flight_finish(start_service):
    notification = start_service("notification", "v1", FAULT_LATENCY_MS=700, GUNICORN_WORKERS=1)
    result = {}

    def slow_call():
        response = requests.get(f"{notification.url}/notification/xray", timeout=10)
        result["status"] = response.status_code

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)  # the request is now inside its 700 ms
    notification.process.send_signal(signal.SIGTERM)
    caller.join()

    assert result["status"] == 200
    assert notification.process.wait(timeout=10) == 0
