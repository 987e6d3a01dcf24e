"""Calls from user-management to notification, one new connection per call.

Why a new connection each time: Kubernetes' kube-proxy chooses a backend pod per
TCP *connection*, not per request. A pooled, keep-alive client would send every
call of a worker to the pod its connection first landed on, and the observed
v1/v2 split would scatter far from the replica ratio (DESIGN.md measured v1
shares of 0.28 to 1.00 with keep-alive, 0.75-0.76 without). Keep-alive stays
available (``NOTIFICATION_KEEPALIVE=true``) to show exactly that; a call that went
over a reused connection says so to the caller (``X-Notification-Connection:
reused``), so the split verifier can name the cause instead of guessing.

Why a plain socket and not ``requests`` or ``http.client``: the call is the hot
path of the canary endpoint. Per call, ``requests`` measured about 4x the CPU
of ``http.client``, and ``http.client`` about 2x this client, most of it in
parsing the response headers with the email package (bench/client_cost.py
re-measures all of them). The HTTP/1.1 this client speaks is small: one
request line and headers out; a status line, headers and a body back, the body
delimited by Content-Length, by chunked encoding, or by the end of the
connection (RFC 9112 section 6.3).

Where the host name resolves to several addresses (compose scales a service
behind one DNS name), one is picked at random per call: glibc sorts the answers,
so simply connecting to the name would hit the same replica every time.
"""

import json
import random
import re
import socket
import threading
from dataclasses import dataclass, field

from servicekit.identity import POD_HEADER, VERSION_HEADER
from servicekit.tracing import record_http, subsegment, trace_headers

# Limits that keep a misbehaving server from growing a worker without bound.
_MAX_LINE = 8 * 1024
_MAX_HEADERS = 100
_MAX_BODY = 1024 * 1024
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]{1,8}")  # a chunk of at most 4 GiB; _MAX_BODY is far less
_LINE_BREAK = re.compile(r"[\r\n]")


class NotificationUnavailable(Exception):
    """Notification could not be reached, did not answer in time, or answered
    something that is not HTTP."""


class _BadResponse(Exception):
    """What came back is not a well-formed HTTP/1.x response."""


class _NoAnswer(_BadResponse):
    """The connection ended before a single byte of the response."""


# What a kept-alive connection the server closed looks like: no answer, or a reset.
_STALE = (_NoAnswer, ConnectionResetError, BrokenPipeError)


@dataclass
class Reply:
    status: int
    body: dict | None
    version: str | None
    pod: str | None
    headers: dict = field(default_factory=dict)  # as sent; the last of repeated names
    reused: bool = False  # came over a kept-alive connection, not a new one

    def relay_headers(self) -> dict[str, str]:
        """Who answered, and how it was reached, as user-management relays it."""
        relayed = {}
        if self.version:
            relayed["X-Notification-Version"] = self.version
        if self.pod:
            relayed["X-Notification-Pod"] = self.pod
        if self.reused:
            relayed["X-Notification-Connection"] = "reused"
        return relayed


class NotificationClient:
    def __init__(self, host: str, port: int, *, keepalive: bool = False,
                 connect_timeout: float = 2.0, read_timeout: float = 5.0):
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._local = threading.local()  # keep-alive: one connection per thread
        self._literal_address = _is_ipv4(host)

    def get(self, path: str) -> Reply:
        return self._call("GET", path, None)

    def post(self, path: str, payload: dict) -> Reply:
        return self._call("POST", path, json.dumps(payload).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> Reply:
        url = f"http://{self.host}:{self.port}{path}"
        with subsegment("notification", namespace="remote") as sub:
            headers = {"Host": f"{self.host}:{self.port}", **trace_headers()}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                reply = self._exchange(method, path, body, headers)
            except (OSError, _BadResponse) as exc:
                record_http(sub, method, url, None)
                if sub is not None:
                    sub.add_fault_flag()
                reason = f"{self.host}:{self.port}: {_describe(exc)}"
                raise NotificationUnavailable(reason) from None
            record_http(sub, method, url, reply.status)
        return reply

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict) -> Reply:
        """Send one request and read its response, on a new or a kept-alive connection."""
        kept = getattr(self._local, "connection", None) if self.keepalive else None
        if self.keepalive:
            connection = kept or self._connect()
        else:
            headers["Connection"] = "close"
            connection = self._connect()
        self._local.connection = None
        try:
            connection.sendall(_request(method, path, headers, body))
            with connection.makefile("rb") as stream:  # buffered reads; closes only itself
                reply, reusable = _read_response(stream, method)
        except BaseException as exc:
            connection.close()  # a broken kept-alive connection is never reused
            if kept is not None and method == "GET" and isinstance(exc, _STALE):
                # The server closed the kept-alive connection while it sat idle (gunicorn
                # does after 2 s) and answered nothing: a GET is safe to send once more,
                # on a new connection, as pooling clients do.
                return self._exchange(method, path, body, headers)
            raise
        if self.keepalive and reusable:
            self._local.connection = connection
        else:
            connection.close()
        reply.reused = kept is not None
        return reply

    def _connect(self) -> socket.socket:
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            connection.settimeout(self.connect_timeout)
            connection.connect((self._pick_address(), self.port))
        except BaseException:
            connection.close()
            raise
        connection.settimeout(self.read_timeout)
        # The request goes out in one send: no need to wait for the ACK of an earlier one.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _pick_address(self) -> str:
        if self._literal_address:
            return self.host  # an IP address (a Service's, say): nothing to look up
        addresses = {info[4][0] for info in socket.getaddrinfo(
            self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)}
        return random.choice(sorted(addresses))


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def _request(method: str, path: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request as bytes: request line, headers, blank line, body."""
    if body is not None:
        headers["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    if any(_LINE_BREAK.search(line) for line in lines):
        # http.client refused these too: a line break would smuggle in a request of its own.
        raise ValueError(f"line break in the request to notification: {lines!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _read_response(stream, method: str) -> tuple[Reply, bool]:
    """Read one response from ``stream`` (a buffered socket file).

    Returns the reply and whether the connection may carry another request.
    """
    if not stream.peek(1):
        raise _NoAnswer("connection closed before the response was complete")
    status_line = _read_line(stream)
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not _DIGITS.fullmatch(code) \
            or rest[3:4] not in ("", " "):
        raise _BadResponse(f"not an HTTP response: {status_line[:80]!r}")
    status = int(code)
    if 100 <= status < 200:
        # An interim answer (100 Continue, 103 Early Hints): we never ask for one, and
        # the real answer would follow on the same connection. Refuse rather than guess.
        raise _BadResponse(f"unexpected interim response: {status_line[:80]!r}")
    headers = {}  # lower-case name -> value
    named = {}  # the names as sent
    while line := _read_line(stream):
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or len(headers) >= _MAX_HEADERS:
            raise _BadResponse(f"bad response header: {line[:80]!r}")
        headers[name.lower()] = named[name] = value.strip()
    connection = headers.get("connection", "").lower()
    reusable = version == "HTTP/1.1" and "close" not in connection
    if method == "HEAD" or status in (204, 304):
        data = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        data = _read_chunked(stream)
    elif "content-length" in headers:
        data = _read_exactly(stream, _length(headers["content-length"]))
    else:
        data = stream.read(_MAX_BODY + 1)  # delimited by the end of the connection
        if len(data) > _MAX_BODY:
            raise _BadResponse("response body too large")
        reusable = False
    return _reply(status, headers, named, data), reusable


def _read_line(stream) -> str:
    """One line without its CRLF; the end of the stream here is an error."""
    line = stream.readline(_MAX_LINE + 1)
    if not line.endswith(b"\n"):
        raise _BadResponse("line too long" if len(line) > _MAX_LINE
                           else "connection closed before the response was complete")
    return line.rstrip(b"\r\n").decode("latin-1")


def _length(text: str) -> int:
    # ASCII digits only, and few of them: str.isdigit() takes "²", which int() refuses.
    if not _DIGITS.fullmatch(text) or len(text) > 9 or int(text) > _MAX_BODY:
        raise _BadResponse(f"bad Content-Length: {text[:20]!r}")
    return int(text)


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise _BadResponse("connection closed before the response was complete")
    return data


def _read_chunked(stream) -> bytes:
    """Chunked transfer coding: hex size line, data, CRLF ... a 0 chunk, trailers."""
    body = bytearray()
    while True:
        size_text = _read_line(stream).partition(";")[0].strip()
        # Hex digits only: int(..., 16) also takes "-1", "+5", "0x5" and "1_0".
        if not _HEX.fullmatch(size_text):
            raise _BadResponse(f"bad chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            while _read_line(stream):  # trailer fields, up to the blank line
                pass
            return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise _BadResponse("response body too large")
        body += _read_exactly(stream, size)
        if _read_line(stream):
            raise _BadResponse("chunk not followed by CRLF")


def _reply(status: int, headers: dict[str, str], named: dict[str, str], data: bytes) -> Reply:
    body = None
    if data and "json" in headers.get("content-type", ""):
        try:
            body = json.loads(data)
        except ValueError:
            body = None
    return Reply(
        status=status,
        body=body,
        version=headers.get(VERSION_HEADER.lower()),
        pod=headers.get(POD_HEADER.lower()),
        headers=named,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__
