"""A Kubernetes Service on one machine: kernel NAT rules, or a TCP proxy, per connection.

Two ways, as kube-proxy has several modes. `IptablesServices` (at the end of
this file) is kube-proxy's own iptables mode: DNAT rules, the kernel moves the
bytes; the local cluster uses it where it can (root). `ServiceProxy` does the
same job in user space, where iptables cannot be used (a laptop without root),
and answers for a Service with no ready endpoint in both modes. The rest of
this docstring is about `ServiceProxy`.

On a cluster a Service is a virtual IP, and kube-proxy programs the kernel so that
every NEW TCP connection to it is sent to one ready pod:

- iptables and nftables mode pick a ready endpoint uniformly at random
  (``mode="random"``, the default, as on most clusters);
- IPVS mode picks them in turn (``mode="round-robin"``).

The choice is made once per connection, never per request: every request that
travels over a kept-alive connection lands on the same pod. That is why the
replica counts of two Deployments behind one Service set the canary split only
for clients that open new connections, and `ServiceProxy` reproduces exactly that.

Other kube-proxy behaviour kept here:

- the endpoints are the READY pods, and they change live when pods become ready,
  fail their probe or scale (`ServiceProxy.set_endpoints`); a connection already
  open keeps its pod;
- with no ready endpoint the connection is rejected: kube-proxy answers
  "connection refused"; a proxy has already accepted the connection, so the
  closest it can do is reset it at once;
- a pod that refuses the connection gets one retry on another ready pod. (Real
  clients rarely meet a dead pod, because readiness removes it first; the retry
  stands in for that.)

How it is built, and why. kube-proxy moves no bytes itself: the kernel rewrites
addresses. Here the bytes pass through Python, and the proxy sits on every call
to notification, so each connection must cost as few Python steps as possible.
asyncio streams (a coroutine per direction) and even Protocols with transports
spend most of their time in asyncio's own bookkeeping (bench/README.md has the
numbers), so this proxy works one level lower, with the event loop's
``add_reader``/``add_writer``: when a socket is readable, one callback reads
once into a buffer and sends the bytes on at once. Works on asyncio's default
loop and on uvloop (not on Windows' proactor loop, which gunicorn does not
run on anyway).
"""

import asyncio
import collections
import contextlib
import errno
import logging
import os
import random
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable

from canarylab.background import serve_in_thread

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]

MODES = ("random", "round-robin")

# The most one read takes; the services' HTTP messages fit many times over.
_CHUNK = 64 * 1024
# How many clients one wake-up accepts before other callbacks get a turn.
_ACCEPT_BATCH = 64
# accept() errors that mean "out of file descriptors or memory", not "this client".
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# SO_LINGER on with a zero timeout: close() sends a TCP reset instead of a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class ServiceProxy:
    """One Service port: listens on ``(host, port)``, forwards to ready endpoints.

    ``port=0`` binds an ephemeral port; `address` tells which one after `start`.
    Counters, for ``canarylab status`` and for tests:

    - ``connections[endpoint]``: connections forwarded to that endpoint so far;
    - ``connect_failures[endpoint]``: connection attempts that endpoint refused
      or did not answer within ``connect_timeout`` seconds;
    - ``rejected``: client connections reset because no endpoint was ready.

    `start`, `stop` and the proxying run on one event loop; `set_endpoints` may be
    called from any thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        endpoints: Iterable[Endpoint] = (),
        *,
        mode: str = "random",
        connect_timeout: float = 2.0,
        rng: random.Random | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.host = host
        self.port = port
        self.mode = mode
        self.connect_timeout = connect_timeout
        self.connections: collections.Counter[Endpoint] = collections.Counter()
        self.connect_failures: collections.Counter[Endpoint] = collections.Counter()
        self.rejected = 0
        self._rng = rng or random.Random()
        self._turn = 0  # round-robin position
        self._endpoints: tuple[Endpoint, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._open: set[_Connection] = set()
        # One buffer serves every read: the loop runs one callback at a time, and
        # a callback sends what it read before it returns.
        self._buffer = memoryview(bytearray(_CHUNK))
        self.set_endpoints(endpoints)

    @classmethod
    def run_in_thread(cls, host: str, port: int, endpoints: Iterable[Endpoint] = (),
                      **options) -> contextlib.AbstractContextManager["ServiceProxy"]:
        """``with ServiceProxy.run_in_thread("127.0.0.1", 0, pods) as proxy:``

        The proxy runs on an event loop of its own in a background thread; see
        `canarylab.background.serve_in_thread`.
        """
        return serve_in_thread(cls(host, port, endpoints, **options))

    @property
    def address(self) -> Endpoint:
        """Where the proxy listens (the real port once started with port 0)."""
        return self.host, self.port

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the ready endpoints; only connections opened after this see them.

        The new set is swapped in with one assignment, which is why any thread
        may call this.
        """
        self._endpoints = tuple((host, int(port)) for host, port in endpoints)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        listener = socket.create_server((self.host, self.port), family=_family(self.host),
                                        backlog=1024)
        listener.setblocking(False)
        # Accepted sockets inherit it (Linux): small writes go out at once
        # instead of waiting for the ACK of the previous one (Nagle).
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._listener is None:
            return
        _close(self._loop, self._listener)
        self._listener = None
        for connection in list(self._open):
            connection.abort()

    # -- accepting -------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                client, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                    return
                continue  # that client gave up before we took it
            client.setblocking(False)
            self._serve(client)

    def _pause_accepting(self, exc: OSError) -> None:
        # The listener stays readable while clients wait, so retrying now would
        # spin; clients wait in the backlog for a second instead.
        log.warning("service proxy %s:%s cannot accept (%s); pausing 1 s", *self.address, exc)
        fd = self._listener.fileno()
        self._loop.remove_reader(fd)
        self._loop.call_later(1.0, self._resume_accepting, fd)

    def _resume_accepting(self, fd: int) -> None:
        if self._listener is not None:
            self._loop.add_reader(fd, self._accept)

    def _serve(self, client: socket.socket) -> None:
        endpoint = self._pick()
        if endpoint is None:
            self.rejected += 1
            _close(self._loop, client, reset=True)
            return
        connection = _Connection(self, client)
        self._open.add(connection)
        connection.connect(endpoint)

    # -- choosing a backend ----------------------------------------------------

    def _pick(self, exclude: Endpoint | None = None) -> Endpoint | None:
        """The endpoint for a new connection, or None if none is ready."""
        candidates = self._endpoints
        if exclude is not None:
            candidates = tuple(e for e in candidates if e != exclude)
        if not candidates:
            return None
        if self.mode == "random":
            return self._rng.choice(candidates)
        self._turn += 1
        return candidates[self._turn % len(candidates)]


class _Connection:
    """One client connection and the backend connection made for it."""

    def __init__(self, proxy: ServiceProxy, client: socket.socket):
        self.proxy = proxy
        self.loop = proxy._loop
        self.client = client
        self.backend: socket.socket | None = None
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.timer: asyncio.TimerHandle | None = None
        self.directions_done = 0
        self.closed = False

    # -- connecting to the backend ----------------------------------------------

    def connect(self, endpoint: Endpoint) -> None:
        """Start a non-blocking connect; the loop says when it has finished."""
        self.endpoint = endpoint
        self.attempts += 1
        family = _family(endpoint[0])
        self.backend = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        error = self.backend.connect_ex(endpoint)
        if error not in (0, errno.EINPROGRESS):
            self._connect_failed()
        elif error == 0 or self._established():
            self._connected()
        else:
            # Still shaking hands: the socket turns writable when that is over.
            self.loop.add_writer(self.backend.fileno(), self._connect_finished)
            self.timer = self.loop.call_later(self.proxy.connect_timeout, self._connect_failed)

    def _established(self) -> bool:
        """Has the handshake already finished? On loopback it nearly always has by
        the time connect() returns, and asking saves a trip through the loop."""
        try:
            self.backend.getpeername()
        except OSError:
            return False
        return True

    def _connect_finished(self) -> None:
        self.loop.remove_writer(self.backend.fileno())
        self.timer.cancel()
        if self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._connect_failed()
        else:
            self._connected()

    def _connect_failed(self) -> None:
        log.debug("endpoint %s:%s refused or ignored a connection", *self.endpoint)
        self.proxy.connect_failures[self.endpoint] += 1
        _close(self.loop, self.backend)
        retry = self.proxy._pick(exclude=self.endpoint) if self.attempts == 1 else None
        if retry is None:
            self.abort(reset=True)
        else:
            self.connect(retry)

    def _connected(self) -> None:
        self.proxy.connections[self.endpoint] += 1
        self.backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Pipe(self, self.backend, self.client).start()
        # Only now is the client read: what it sent so far waited in the kernel.
        # It has usually sent its request already, so read it at once rather than
        # one trip through the loop later: the pod gets it sooner.
        _Pipe(self, self.client, self.backend).start(read_now=True)

    # -- finishing ----------------------------------------------------------------

    def direction_done(self, pipe: "_Pipe") -> None:
        """One side has finished sending, and all it sent has been passed on."""
        self.directions_done += 1
        if self.directions_done == 2:
            self.close()
            return
        # A half-close: tell the other side that no more comes this way, while
        # the opposite direction goes on.
        try:
            pipe.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort(reset=True)

    def close(self) -> None:
        """Both directions are done: an orderly close of both sockets."""
        self._finish(reset=False)

    def abort(self, reset: bool = False) -> None:
        """Drop the connection now; with ``reset`` both peers see a TCP reset,
        as they would through kube-proxy when the other end reset."""
        self._finish(reset)

    def _finish(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for sock in (self.client, self.backend):
            if sock is not None:
                _close(self.loop, sock, reset)
        self.proxy._open.discard(self)


class _Pipe:
    """Bytes one way, from ``src`` to ``dst``, passed on as they come.

    Each time ``src`` is readable: read once, send at once. When ``dst`` cannot
    take everything (its kernel buffer is full), keep the rest, stop reading
    ``src`` and wait for ``dst`` to become writable: that backpressure keeps the
    proxy's memory flat however fast one side sends.
    """

    def __init__(self, connection: _Connection, src: socket.socket, dst: socket.socket):
        self.connection = connection
        self.loop = connection.loop
        self.buffer = connection.proxy._buffer
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.pending = b""  # what dst could not take yet; src is not read meanwhile

    def start(self, read_now: bool = False) -> None:
        self.loop.add_reader(self.src_fd, self._readable)
        if read_now:
            self._readable()

    def _readable(self) -> None:
        try:
            size = self.src.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.connection.abort(reset=True)
            return
        if size == 0:
            self._src_finished()
            return
        try:
            sent = self.dst.send(self.buffer[:size])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.connection.abort(reset=True)
            return
        if sent < size:
            self.pending = bytes(self.buffer[sent:size])  # the buffer is shared: copy
            self.loop.remove_reader(self.src_fd)
            self.loop.add_writer(self.dst_fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.dst.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.connection.abort(reset=True)
            return
        self.pending = self.pending[sent:]
        if self.pending:
            return
        self.loop.remove_writer(self.dst_fd)
        self.loop.add_reader(self.src_fd, self._readable)

    def _src_finished(self) -> None:
        self.loop.remove_reader(self.src_fd)
        self.connection.direction_done(self)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _close(loop: asyncio.AbstractEventLoop, sock: socket.socket, reset: bool = False) -> None:
    """Unregister a socket from the loop, then close it (with a reset if asked)."""
    fd = sock.fileno()
    if fd == -1:
        return  # closed already
    loop.remove_reader(fd)
    loop.remove_writer(fd)
    if reset:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.close()


# -- kube-proxy's iptables mode ---------------------------------------------------


class IptablesUnavailable(Exception):
    """This machine cannot do what IptablesServices needs (not root, no iptables...)."""


class IptablesServices:
    """Services the way kube-proxy's iptables mode makes them: in the kernel.

    kube-proxy moves no bytes. For each Service it writes NAT rules that send
    each NEW connection to the Service's address to one ready endpoint, chosen
    at random, by rewriting the destination (DNAT); the kernel's connection
    tracking then keeps every later packet of that connection on the same pod.
    With n endpoints the rules are tried in order, and rule i matches with
    probability 1/(n - i), so each endpoint gets 1/n of the connections and the
    last rule always matches::

        -A CHAIN -d 127.96.0.1/32 -p tcp --dport 8096 -m statistic --mode random
           --probability 0.25 -j DNAT --to-destination 127.244.0.2:8096
        ... 0.333, 0.5, then the fourth endpoint with no probability

    The rules live in one chain of the ``nat`` table of our own (``chain``, named
    after the cluster, so two clusters on one machine never touch each other's),
    reached from ``OUTPUT`` for connections to the Service network: every
    connection here starts on this machine, so OUTPUT is where they pass.
    A Service with no ready endpoint has no rule, and its connections go on to
    the Service address itself (where `ServiceProxy` answers them with a reset,
    as kube-proxy rejects them).

    Each `sync` replaces the whole chain in one ``iptables-restore --noflush``
    transaction, as kube-proxy does: no connection ever sees half a rule set.
    Connections already open keep their pod. Needs root (CAP_NET_ADMIN) and the
    iptables command; `check` says whether this machine has them.
    """

    def __init__(self, chain: str, network: str):
        self.chain = chain
        self.network = network  # the Service network, e.g. 127.96.0.0/24
        self._jump = ["OUTPUT", "-d", network, "-p", "tcp", "-j", chain]
        self._rules: list[str] | None = None  # what the chain holds now, as last written

    @staticmethod
    def check() -> None:
        """Raise IptablesUnavailable, saying why, unless iptables can be used here."""
        if os.geteuid() != 0:
            raise IptablesUnavailable("not root")
        for command in ("iptables", "iptables-restore"):
            if shutil.which(command) is None:
                raise IptablesUnavailable(f"no {command} command")

    def install(self) -> None:
        """Create (or empty) the chain and send the Service network's connections to it."""
        self._restore([])
        self._rules = []
        if self._iptables("-C", *self._jump, check=False).returncode != 0:
            self._iptables("-I", *self._jump)

    def sync(self, services: dict[Endpoint, Iterable[Endpoint]]) -> None:
        """Make the rules say: Service address -> one of these ready endpoints."""
        rules = []
        for (host, port), endpoints in sorted(services.items()):
            endpoints = list(endpoints)
            for index, (pod_host, pod_port) in enumerate(endpoints):
                rule = f"-A {self.chain} -d {host}/32 -p tcp -m tcp --dport {port}"
                remaining = len(endpoints) - index
                if remaining > 1:
                    rule += (" -m statistic --mode random"
                             f" --probability {1 / remaining:.11f}")
                rules.append(f"{rule} -j DNAT --to-destination {pod_host}:{pod_port}")
        # The supervisor calls this on every readiness change, on its event loop: a
        # probe that passes again changes nothing, and costs no iptables-restore.
        if rules != self._rules:
            self._restore(rules)
            self._rules = rules

    def remove(self) -> None:
        """Take every rule and the chain away; safe to call when they are gone already."""
        with contextlib.suppress(IptablesUnavailable):
            while self._iptables("-D", *self._jump, check=False).returncode == 0:
                pass
            self._iptables("-F", self.chain, check=False)
            self._iptables("-X", self.chain, check=False)

    def _restore(self, rules: list[str]) -> None:
        # Declaring the chain (":NAME - [0:0]") empties it; --noflush keeps every other.
        text = "\n".join(["*nat", f":{self.chain} - [0:0]", *rules, "COMMIT", ""])
        self._run(["iptables-restore", "-w", "5", "--noflush"], text)

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(["iptables", "-w", "5", "-t", "nat", *args], None, check)

    @staticmethod
    def _run(command: list[str], stdin: str | None,
             check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                    timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise IptablesUnavailable(f"{command[0]}: {error}") from None
        if check and result.returncode != 0:
            raise IptablesUnavailable(f"{' '.join(command[:2])}: {result.stderr.strip()}")
        return result
