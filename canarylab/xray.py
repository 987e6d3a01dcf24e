"""A stand-in for the AWS X-Ray daemon, and the service map the X-Ray console draws.

The services' X-Ray SDK never talks to AWS itself: it sends every finished
segment as one UDP datagram to a daemon (``AWS_XRAY_DAEMON_ADDRESS``, by default
127.0.0.1:2000; on Kubernetes a DaemonSet), which batches them to the X-Ray API.
`XRayCollector` listens where the daemon would and keeps the segments in memory
instead, so the local cluster can show traces with no AWS account.

The wire format, as the SDK's ``UDPEmitter`` writes it: a JSON header line, a
newline, and one JSON document::

    {"format":"json","version":1}
    {"name":"user-management","id":"70de5b6f19ff9a0a","trace_id":"1-5f84c7a1-...", ...}

A document is either a whole *segment* (one request handled by one service, its
*subsegments* nested inside: the calls it made) or, for long requests, a single
subsegment streamed out early on its own (``"type": "subsegment"`` plus
``trace_id`` and ``parent_id``). Both are kept.

`service_map` then rebuilds what the X-Ray console shows as the service graph:
who called whom, how often, how many calls failed, how long they took. A caller
is found the way X-Ray finds it: the downstream service's segment names, as its
``parent_id``, the subsegment that made the call (the SDK sends that id in the
``X-Amzn-Trace-Id`` header).
"""

import asyncio
import collections
import contextlib
import json
import math
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from canarylab.background import ThreadRunnable

Segment = dict  # one segment or subsegment document, as the SDK serialized it

HEADER = {"format": "json", "version": 1}
CLIENT = "client"

# Ask the kernel for a large receive buffer: a burst of segments while the loop
# is busy would otherwise be dropped (UDP has no backpressure). Linux caps it at
# net.core.rmem_max.
_RECEIVE_BUFFER = 4 * 1024 * 1024


def parse_datagram(data: bytes) -> Segment | None:
    """The document one X-Ray datagram carries, or None if it is not one."""
    header, newline, body = data.partition(b"\n")
    if not newline:
        return None
    try:
        if json.loads(header) != HEADER:
            return None
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if _is_document(document) else None


def _is_document(document) -> bool:
    """The fields X-Ray requires of every segment and streamed subsegment."""
    if not isinstance(document, dict):
        return False
    required = ["id", "trace_id", "name"]
    if document.get("type") == "subsegment":
        required.append("parent_id")
    return (all(isinstance(document.get(key), str) for key in required)
            and isinstance(document.get("start_time"), int | float))


class XRayCollector(ThreadRunnable, asyncio.DatagramProtocol):
    """The UDP listener: keeps the last ``max_segments`` documents received.

    ``port=0`` binds an ephemeral port; `address` tells which one after `start`.
    ``received`` counts the documents kept, ``malformed`` the datagrams ignored.
    It runs on the loop that called `start`; `segments` and `wait_for` may be
    used from any thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, *,
                 max_segments: int = 100_000):
        self.host = host
        self.port = port
        self.received = 0
        self.malformed = 0
        self._segments: collections.deque[Segment] = collections.deque(maxlen=max_segments)
        self._changed = threading.Condition()
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def daemon_address(self) -> str:
        """The value for the services' ``AWS_XRAY_DAEMON_ADDRESS``."""
        return f"{self.host}:{self.port}"

    @property
    def segments(self) -> list[Segment]:
        """A copy of the documents kept, oldest first."""
        with self._changed:
            return list(self._segments)

    def clear(self) -> None:
        with self._changed:
            self._segments.clear()

    def wait_for(self, predicate: Callable[[list[Segment]], bool],
                 timeout: float = 5.0) -> list[Segment]:
        """Block until ``predicate(segments)`` is true; return those segments.

        For threads other than the collector's own (tests, scripts): UDP gives
        no receipt, so a test that made a request waits here for its segments.
        Raises TimeoutError after ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self._segments)), timeout):
                raise TimeoutError(f"no match among {len(self._segments)} segments "
                                   f"after {timeout} s")
            return list(self._segments)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port))
        sock = self._transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio.DatagramProtocol ------------------------------------------------

    def datagram_received(self, data: bytes, addr) -> None:
        document = parse_datagram(data)
        if document is None:
            self.malformed += 1
            return
        with self._changed:
            self._segments.append(document)
            self.received += 1
            self._changed.notify_all()


# -- segments on disk: how the supervisor hands them to the CLI -------------------

def write_segments(path: str | Path, segments: Iterable[Segment]) -> None:
    """Write segments as JSON lines, atomically: a reader sees the old file or
    the new one, never half of one."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for segment in segments:
                out.write(json.dumps(segment, separators=(",", ":")) + "\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def read_segments(path: str | Path) -> list[Segment]:
    """The segments `write_segments` wrote, in order."""
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


# -- the service map ----------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    """Calls from one node to another, as X-Ray counts them.

    ``errors`` are client errors (4xx, including 429 throttles), ``faults``
    server errors (5xx or an exception), as in the X-Ray console. Latencies are
    the callee's own segment durations, in milliseconds. ``pods`` counts the
    callee's ``pod`` annotation: which replica answered.
    """

    source: str
    target: str
    requests: int
    errors: int
    faults: int
    avg_ms: float
    p95_ms: float
    pods: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceMap:
    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]

    def edge(self, source: str, target: str) -> Edge | None:
        return next((e for e in self.edges if (e.source, e.target) == (source, target)), None)


def service_map(segments: Iterable[Segment]) -> ServiceMap:
    """The service graph of ``segments`` (a pure function of its input).

    Nodes are segment names (``user-management``, ``notification-v1``, ...)
    plus ``client`` for whoever called the first traced service. Each finished
    segment is one request to its node; its caller is the service owning the
    subsegment named by its ``parent_id``, or ``client`` when there is none (or
    that service's segment was never received).
    """
    documents = _latest(segments)
    owners = _owners(documents)
    calls: dict[tuple[str, str], list[Segment]] = collections.defaultdict(list)
    for doc in documents:
        if doc.get("type") == "subsegment" or "end_time" not in doc:
            continue  # a streamed subsegment, or a request still in progress
        caller = owners.get((doc["trace_id"], doc.get("parent_id")), CLIENT)
        calls[(caller, doc["name"])].append(doc)
    edges = tuple(_edge(source, target, docs) for (source, target), docs in sorted(
        calls.items(), key=lambda item: (item[0][0] != CLIENT, item[0])))
    nodes = [CLIENT] if any(e.source == CLIENT for e in edges) else []
    for edge in edges:
        nodes += [n for n in (edge.source, edge.target) if n not in nodes]
    return ServiceMap(tuple(nodes), edges)


def _latest(segments: Iterable[Segment]) -> list[Segment]:
    # A document sent again under the same id (an in-progress segment, then the
    # finished one) replaces the earlier one, as in X-Ray.
    latest = {(doc["trace_id"], doc["id"]): doc for doc in segments}
    return list(latest.values())


def _owners(documents: list[Segment]) -> dict[tuple[str, str], str]:
    """(trace id, entity id) -> the name of the service whose segment holds it."""
    owners: dict[tuple[str, str], str] = {}
    for doc in documents:
        if doc.get("type") != "subsegment":
            _own(owners, doc, doc["name"], doc["trace_id"])
    # A streamed subsegment belongs to whoever owns its parent; its parent may
    # itself be streamed, in any order, so repeat while that resolves more.
    pending = [doc for doc in documents if doc.get("type") == "subsegment"]
    while pending:
        unresolved = []
        for doc in pending:
            owner = owners.get((doc["trace_id"], doc["parent_id"]))
            if owner is None:
                unresolved.append(doc)
            else:
                _own(owners, doc, owner, doc["trace_id"])
        if len(unresolved) == len(pending):
            break  # the rest belong to segments never received
        pending = unresolved
    return owners


def _own(owners: dict, entity: Segment, owner: str, trace_id: str) -> None:
    owners[(trace_id, entity["id"])] = owner
    for child in entity.get("subsegments", ()):
        _own(owners, child, owner, trace_id)


def _outcome(doc: Segment) -> str:
    status = doc.get("http", {}).get("response", {}).get("status") or 0
    if doc.get("fault") or status >= 500:
        return "fault"
    if doc.get("error") or doc.get("throttle") or status >= 400:
        return "error"
    return "ok"


def _edge(source: str, target: str, docs: list[Segment]) -> Edge:
    durations = sorted((doc["end_time"] - doc["start_time"]) * 1000 for doc in docs)
    outcomes = collections.Counter(_outcome(doc) for doc in docs)
    pods = collections.Counter(doc["annotations"]["pod"] for doc in docs
                               if "pod" in doc.get("annotations", {}))
    return Edge(
        source=source,
        target=target,
        requests=len(docs),
        errors=outcomes["error"],
        faults=outcomes["fault"],
        avg_ms=sum(durations) / len(durations),
        p95_ms=_percentile(durations, 0.95),
        pods=dict(sorted(pods.items())),
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of all at or below it."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def render_service_map(graph: ServiceMap) -> str:
    """The service map as a small table for the terminal.

    ``share`` is the edge's part of all calls its caller made: for the calls
    from user-management it is the observed canary split.
    """
    if not graph.edges:
        return "service map: no finished segments yet"
    sent = collections.Counter()
    for edge in graph.edges:
        sent[edge.source] += edge.requests
    width = max(len(f"{e.source} -> {e.target}") for e in graph.edges)
    lines = [f"{'caller -> callee':<{width}}  requests   share  errors  faults"
             f"   avg ms   p95 ms"]
    for edge in graph.edges:
        share = edge.requests / sent[edge.source]
        lines.append(f"{edge.source + ' -> ' + edge.target:<{width}}  {edge.requests:8d}"
                     f"  {share:6.1%}  {edge.errors:6d}  {edge.faults:6d}"
                     f"  {edge.avg_ms:7.1f}  {edge.p95_ms:7.1f}")
        if edge.pods:
            pods = ", ".join(f"{pod} {count}" for pod, count in edge.pods.items())
            lines.append(f"    pods: {pods}")
    return "\n".join(lines)
