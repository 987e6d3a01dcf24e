"""Calls from user-management to notification, one new connection per call.

Why a new connection each time: Kubernetes' kube-proxy chooses a backend pod per
TCP *connection*, not per request. A pooled, keep-alive client would send every
call of a worker to the pod its connection first landed on, and the observed
v1/v2 split would scatter far from the replica ratio (DESIGN.md measured v1
shares of 0.28 to 1.00 with keep-alive, 0.75-0.76 without). Keep-alive stays
available (``NOTIFICATION_KEEPALIVE=true``) to show exactly that; a call that went
over a reused connection says so to the caller (``X-Notification-Connection:
reused``), so the split verifier can name the cause instead of guessing.

Why ``http.client`` and not ``requests``: the two calls are the hot path of the
canary endpoint, and ``requests`` measured about 0.7 ms more CPU per call on
these machines (bench/client_cost.py re-measures it). The API below is small
enough that the standard library reads just as clearly.

Where the host name resolves to several addresses (compose scales a service
behind one DNS name), one is picked at random per call: glibc sorts the answers,
so simply connecting to the name would hit the same replica every time.
"""

import http.client
import json
import random
import socket
import threading
from dataclasses import dataclass, field

from servicekit.identity import POD_HEADER, VERSION_HEADER
from servicekit.tracing import record_http, subsegment, trace_headers


class NotificationUnavailable(Exception):
    """Notification could not be reached, or did not answer in time."""


@dataclass
class Reply:
    status: int
    body: dict | None
    version: str | None
    pod: str | None
    headers: dict = field(default_factory=dict)
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
                response, data, reused = self._exchange(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                record_http(sub, method, url, None)
                if sub is not None:
                    sub.add_fault_flag()
                reason = f"{self.host}:{self.port}: {_describe(exc)}"
                raise NotificationUnavailable(reason) from None
            record_http(sub, method, url, response.status)
        return _reply(response, data, reused)

    def _exchange(self, method, path, body, headers):
        """(response, body bytes, whether the connection was a reused one)."""
        reused = False
        if self.keepalive:
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            connection = connection or self._connect()
        else:
            headers["Connection"] = "close"
            connection = self._connect()
        try:
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None  # a broken kept-alive connection is not reused
            raise
        if self.keepalive:
            self._local.connection = connection
        else:
            connection.close()
        return response, data, reused

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self._pick_address(), self.port,
                                                timeout=self.connect_timeout)
        connection.connect()
        connection.sock.settimeout(self.read_timeout)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _pick_address(self) -> str:
        addresses = {info[4][0] for info in socket.getaddrinfo(
            self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)}
        return random.choice(sorted(addresses))


def _reply(response: http.client.HTTPResponse, data: bytes, reused: bool = False) -> Reply:
    body = None
    if data and "json" in (response.getheader("Content-Type") or ""):
        try:
            body = json.loads(data)
        except ValueError:
            body = None
    return Reply(
        status=response.status,
        body=body,
        version=response.getheader(VERSION_HEADER),
        pod=response.getheader(POD_HEADER),
        headers=dict(response.getheaders()),
        reused=reused,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or exc.__class__.__name__
