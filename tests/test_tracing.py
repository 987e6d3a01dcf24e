"""servicekit.tracing in one process: real segments over a real UDP socket.

test_chain.py checks tracing across two gunicorn services; this checks what one
app sends when a request fails inside it, and that tracing keeps botocore out.
"""

import json
import socket
import subprocess
import sys

import pytest

from notification_service import create_app


class Daemon:
    """A UDP socket standing in for the X-Ray daemon."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def received(self, timeout: float = 5) -> dict:
        """The next segment: the daemon protocol's header line, then the document."""
        self.sock.settimeout(timeout)
        header, _, document = self.sock.recv(65535).partition(b"\n")
        assert json.loads(header) == {"format": "json", "version": 1}
        return json.loads(document)


@pytest.fixture
def daemon():
    daemon = Daemon()
    yield daemon
    daemon.sock.close()


def test_an_unexpected_error_is_a_500_and_the_segment_names_its_cause(daemon):
    app = create_app({"AWS_XRAY_DAEMON_ADDRESS": daemon.address, "POD_NAME": "pod-1"})

    @app.get("/notification/broken")
    def broken():
        raise RuntimeError("the database melted")

    response = app.test_client().get("/notification/broken",
                                     headers={"X-Amzn-Trace-Id": "Root=1-5f000000-"
                                              "0123456789abcdef01234567;Sampled=1"})

    assert response.status_code == 500
    assert response.get_json()["error"] == {"status": 500, "code": "internal_error",
                                            "message": "internal error"}
    assert "melted" not in response.get_data(as_text=True)  # no details to the client
    segment = daemon.received()
    assert segment["trace_id"] == "1-5f000000-0123456789abcdef01234567"
    assert segment["fault"] is True and segment["http"]["response"]["status"] == 500
    [exception] = segment["cause"]["exceptions"]
    assert exception["type"] == "RuntimeError" and exception["message"] == "the database melted"
    assert segment["annotations"] == {"version": "v1", "pod": "pod-1"}
    assert response.headers["X-Amzn-Trace-Id"] == (
        "Root=1-5f000000-0123456789abcdef01234567;Sampled=1")


def test_an_unsampled_request_passes_its_decision_on_and_sends_nothing(daemon):
    app = create_app({"AWS_XRAY_DAEMON_ADDRESS": daemon.address, "XRAY_SAMPLING_RATE": 0.0})

    response = app.test_client().get("/notification/xray")

    root, sampled = response.headers["X-Amzn-Trace-Id"].split(";")
    assert root.startswith("Root=1-") and sampled == "Sampled=0"
    with pytest.raises(TimeoutError):
        daemon.received(timeout=0.3)


def test_tracing_does_not_import_botocore():
    # A fresh interpreter: this test process may have imported the SDK's recorder.
    code = ("import sys; from notification_service import create_app; create_app(); "
            "print('botocore' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "False"
