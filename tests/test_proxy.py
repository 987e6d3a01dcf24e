"""ServiceProxy balances like kube-proxy: per connection, over the ready endpoints.

Real sockets only: the pods are tiny asyncio servers on loopback that say their
name and then echo every byte; the proxy and the pods each run on a loop of their
own in a background thread, and the test talks to them with plain sockets.
"""

import asyncio
import math
import random
import socket

import pytest

from canarylab.background import serve_in_thread
from canarylab.proxy import ServiceProxy

HOST = "127.0.0.1"
TIMEOUT = 5.0


class _EchoPod(asyncio.Protocol):
    def __init__(self, name: str, pods: "Pods"):
        self.name, self.pods = name, pods

    def connection_made(self, transport):
        self.transport = transport
        self.pods.transports.add(transport)
        transport.write(self.name.encode() + b"\n")

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.pods.transports.discard(self.transport)


class Pods:
    """Echo servers named like pods; ``endpoints[name]`` is where each listens."""

    def __init__(self, *names: str):
        self.names = names
        self.endpoints: dict[str, tuple[str, int]] = {}
        self.transports: set[asyncio.Transport] = set()
        self._servers: list[asyncio.Server] = []

    async def start(self):
        loop = asyncio.get_running_loop()
        for name in self.names:
            server = await loop.create_server(lambda name=name: _EchoPod(name, self), HOST, 0)
            self._servers.append(server)
            self.endpoints[name] = server.sockets[0].getsockname()[:2]

    async def stop(self):
        for server in self._servers:
            server.close()
        for transport in list(self.transports):
            transport.close()


@pytest.fixture
def pods():
    with serve_in_thread(Pods("v1-a", "v1-b", "v1-c", "v2-a")) as running:
        yield running


def connect(proxy: ServiceProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def read_line(sock: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line.decode().strip()


def pod_of_new_connection(proxy: ServiceProxy) -> str:
    with connect(proxy) as sock:
        return read_line(sock)


def refuse_like_a_closed_port(proxy: ServiceProxy) -> None:
    """The client is reset: while connecting, or on its first read (a race it loses
    or wins against the proxy's reset)."""
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        sock.recv(1)


@pytest.fixture
def dead_endpoints():
    """Two loopback ports that refuse connections: bound, but not listening.

    Held for the whole test, so that nothing else can take them meanwhile.
    """
    with socket.socket() as first, socket.socket() as second:
        first.bind((HOST, 0))
        second.bind((HOST, 0))
        yield first.getsockname(), second.getsockname()


def test_new_connections_split_by_replica_count(pods):
    # 3 v1 pods and 1 v2 pod behind one Service: a quarter of connections reach v2.
    with ServiceProxy.run_in_thread(HOST, 0, pods.endpoints.values(),
                                    rng=random.Random(7)) as proxy:
        answered = [pod_of_new_connection(proxy) for _ in range(2000)]

    share_v2 = sum(name.startswith("v2") for name in answered) / len(answered)
    # A z-test against the binomial: |z| < 4 fails a correct proxy 1 time in 16,000.
    z = (share_v2 - 0.25) / math.sqrt(0.25 * 0.75 / len(answered))
    assert abs(z) < 4, f"v2 got {share_v2:.3f} of connections, expected 0.25"
    for name in pods.names:
        assert proxy.connections[pods.endpoints[name]] == answered.count(name) > 350


def test_round_robin_takes_endpoints_in_turn(pods):
    with ServiceProxy.run_in_thread(HOST, 0, pods.endpoints.values(),
                                    mode="round-robin") as proxy:
        answered = [pod_of_new_connection(proxy) for _ in range(40)]

    first_cycle = answered[:4]
    assert sorted(first_cycle) == sorted(pods.names)
    assert answered == first_cycle * 10


def test_kept_alive_connection_keeps_its_pod_when_endpoints_change(pods):
    v1, v2 = pods.endpoints["v1-a"], pods.endpoints["v2-a"]
    with ServiceProxy.run_in_thread(HOST, 0, [v1]) as proxy, connect(proxy) as kept:
        assert read_line(kept) == "v1-a"

        proxy.set_endpoints([v2])  # v1-a failed its readiness probe

        assert pod_of_new_connection(proxy) == "v2-a"
        kept.sendall(b"still here\n")
        assert read_line(kept) == "still here"  # echoed by v1-a, on the old connection
        assert proxy.connections == {v1: 1, v2: 1}


def test_connection_is_reset_when_no_endpoint_is_ready():
    with ServiceProxy.run_in_thread(HOST, 0, []) as proxy:
        refuse_like_a_closed_port(proxy)
        assert proxy.rejected == 1


def test_refused_endpoint_is_retried_on_another(pods, dead_endpoints):
    dead, live = dead_endpoints[0], pods.endpoints["v1-a"]
    with ServiceProxy.run_in_thread(HOST, 0, [dead, live], rng=random.Random(1)) as proxy:
        answered = {pod_of_new_connection(proxy) for _ in range(30)}

    assert answered == {"v1-a"}
    assert proxy.connections == {live: 30}
    assert 0 < proxy.connect_failures[dead] < 30


def test_connection_is_reset_when_the_retry_fails_too(dead_endpoints):
    first, second = dead_endpoints
    with ServiceProxy.run_in_thread(HOST, 0, [first, second]) as proxy:
        refuse_like_a_closed_port(proxy)
        assert proxy.connect_failures == {first: 1, second: 1}


def test_bytes_and_half_close_pass_through_unchanged(pods):
    # The client sends more than the socket buffers hold and reads nothing until
    # it is done, so the echoes pile up: the proxy must hold them back and go on
    # when the client reads. The client half-closes (shuts down its sending
    # side) and still gets every byte back before the end.
    payload = random.Random(3).randbytes(16 * 1024 * 1024)
    with ServiceProxy.run_in_thread(HOST, 0, [pods.endpoints["v2-a"]]) as proxy, \
            socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning
        sock.settimeout(TIMEOUT)
        sock.connect(proxy.address)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk

    assert bytes(received) == b"v2-a\n" + payload


def test_stop_closes_open_connections(pods):
    with ServiceProxy.run_in_thread(HOST, 0, [pods.endpoints["v1-a"]]) as proxy:
        sock = connect(proxy)
        assert read_line(sock) == "v1-a"
    with sock:
        assert sock.recv(1) == b""
    assert proxy.open_connections == 0
