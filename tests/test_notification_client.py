"""The notification client's own HTTP/1.1, against real sockets that answer as scripted.

user-management reads notification's responses with a small hand-written parser
(notification_client.py says why). These tests hold it to what a server may
send: a Content-Length body, a chunked one, one that ends with the connection,
and the ways a server can fail: garbage, silence, hanging up, refusing.
"""

import socket
import threading

import pytest
from cluster_fixtures import free_port

from user_management.notification_client import NotificationClient, NotificationUnavailable

JSON_HEADERS = (b"Content-Type: application/json\r\n"
                b"x-service-version: v2\r\nX-Pod-Name: notification-v2-abc\r\n")


class ScriptedServer:
    """Accepts connections on 127.0.0.1; answers each request with the next script entry.

    An entry is the bytes to send back, or None to send nothing and keep the
    connection open (a hung server). ``requests`` keeps what each request looked
    like, ``connections`` how many connections were accepted.
    """

    def __init__(self, *answers: bytes | None, close_after_each: bool = True):
        self.answers = list(answers)
        self.close_after_each = close_after_each
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if answer is None:
                        conn.recv(1)  # hang until the client gives up and closes
                        break
                    conn.sendall(answer)
                    if self.close_after_each:
                        break

    @staticmethod
    def _read_request(conn) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                while len(body) < length:
                    body += conn.recv(65536)
        return data

    def close(self):
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers = []

    def start(*answers, **options):
        server = ScriptedServer(*answers, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def client_for(server, **options) -> NotificationClient:
    return NotificationClient("127.0.0.1", server.port, **options)


def test_content_length_body_and_who_answered(serve):
    body = b'{"message": "notification reached"}'
    server = serve(b"HTTP/1.1 200 OK\r\n" + JSON_HEADERS
                   + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    reply = client_for(server).get("/notification/xray")

    assert reply.status == 200
    assert reply.body == {"message": "notification reached"}
    # Header names are case-insensitive: "x-service-version" counts.
    assert (reply.version, reply.pod) == ("v2", "notification-v2-abc")
    assert reply.relay_headers() == {"X-Notification-Version": "v2",
                                     "X-Notification-Pod": "notification-v2-abc"}
    request = server.requests[0]
    assert request.startswith(b"GET /notification/xray HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"Connection: close\r\n" in request


def test_post_sends_a_json_body_with_its_length(serve):
    server = serve(b"HTTP/1.1 200 OK\r\n" + JSON_HEADERS + b"Content-Length: 2\r\n\r\n{}")

    reply = client_for(server).post("/notification/send", {"subject": "hi"})

    assert reply.status == 200
    request = server.requests[0]
    assert b"Content-Type: application/json\r\n" in request
    assert b"Content-Length: 17\r\n" in request
    assert request.endswith(b'\r\n\r\n{"subject": "hi"}')


def test_chunked_body(serve):
    server = serve(b"HTTP/1.1 503 Service Unavailable\r\n" + JSON_HEADERS
                   + b"Transfer-Encoding: chunked\r\n\r\n"
                   + b"a;ext=1\r\n{\"error\": \r\n6\r\n\"down\"\r\n1\r\n}\r\n0\r\nX-T: 1\r\n\r\n")

    reply = client_for(server).get("/notification/info")

    assert reply.status == 503
    assert reply.body == {"error": "down"}


def test_body_delimited_by_the_end_of_the_connection(serve):
    server = serve(b"HTTP/1.0 200 OK\r\n" + JSON_HEADERS + b"\r\n" + b'{"ok": true}')

    assert client_for(server).get("/notification/info").body == {"ok": True}


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # hangs up mid-body
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",  # a broken header line
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",  # a bad length
    "HTTP/1.1 200 OK\r\nContent-Length: \u00b9\r\n\r\n".encode("latin-1"),  # not ASCII
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",  # int() refuses
    "HTTP/1.1 \u00b200 OK\r\n\r\n".encode("latin-1"),  # a status that is no number
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 4096,
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"",  # hangs up without a word
])
def test_a_broken_response_is_notification_unavailable(serve, answer):
    server = serve(answer)

    with pytest.raises(NotificationUnavailable, match=f"127.0.0.1:{server.port}"):
        client_for(server).get("/notification/xray")


def test_a_silent_server_times_out(serve):
    server = serve(None)

    with pytest.raises(NotificationUnavailable, match="timed out"):
        client_for(server, read_timeout=0.3).get("/notification/xray")


def test_nobody_listening_is_notification_unavailable():
    client = NotificationClient("127.0.0.1", free_port())

    with pytest.raises(NotificationUnavailable, match="refused"):
        client.get("/notification/xray")


def test_keepalive_reuses_one_connection_and_says_so(serve):
    ok = b"HTTP/1.1 200 OK\r\n" + JSON_HEADERS + b"Content-Length: 2\r\n\r\n{}"
    server = serve(ok, ok, ok, close_after_each=False)
    client = client_for(server, keepalive=True)

    replies = [client.get("/notification/xray") for _ in range(3)]

    assert server.connections == 1
    assert [reply.reused for reply in replies] == [False, True, True]
    assert replies[1].relay_headers()["X-Notification-Connection"] == "reused"
    assert b"Connection: close" not in server.requests[0]
    client._local.connection.close()


def test_keepalive_opens_a_new_connection_when_the_server_closes_its_own(serve):
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    server = serve(closing, closing)
    client = client_for(server, keepalive=True)

    replies = [client.get("/notification/xray") for _ in range(2)]

    assert server.connections == 2
    assert [reply.reused for reply in replies] == [False, False]


def test_keepalive_sends_a_get_again_when_the_idle_connection_was_closed(serve):
    # The server answers, then closes the connection without saying so, as an idle
    # timeout does: the next GET meets a dead connection and goes out once more.
    keep = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    server = serve(keep, keep)
    client = client_for(server, keepalive=True)

    replies = [client.get("/notification/xray") for _ in range(2)]

    assert [reply.status for reply in replies] == [200, 200]
    assert server.connections == 2 and len(server.requests) == 2
    assert replies[1].reused is False  # answered on the new connection
    client._local.connection.close()


def test_keepalive_never_sends_a_post_twice(serve):
    keep = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    server = serve(keep)  # one answer, then it closes the connection
    client = client_for(server, keepalive=True)
    client.get("/notification/xray")

    # A mail might have gone out before the connection died: not sent again.
    with pytest.raises(NotificationUnavailable):
        client.post("/notification/send", {"toEmails": ["a@example.com"]})
    assert server.connections == 1
