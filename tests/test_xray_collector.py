"""XRayCollector understands what the real X-Ray SDK sends, and service_map draws
the graph the X-Ray console would draw from it.

Segments are made by the SDK's own recorder (``AWSXRayRecorder``) and sent by
its own UDP emitter to the collector, exactly as a service does.
"""

import socket

import pytest
from aws_xray_sdk.core import AWSXRayRecorder
from aws_xray_sdk.core.sampling.local.sampler import LocalSampler

from canarylab.xray import (
    XRayCollector,
    read_segments,
    render_service_map,
    service_map,
    write_segments,
)


@pytest.fixture
def collector():
    with XRayCollector.run_in_thread("127.0.0.1", 0) as running:
        yield running


@pytest.fixture(scope="module")
def sdk():
    """SDK recorders, one per service, made once: the SDK builds a botocore client
    for centralized sampling in every recorder, which takes a good 0.1 s."""
    recorders = {name: AWSXRayRecorder() for name in ("usermgmt", "streaming", "notification")}
    for name, recorder in recorders.items():
        # sampling=False traces every request; a LocalSampler spares configure()
        # building that botocore client a second time.
        recorder.configure(sampling=False, sampler=LocalSampler(), context_missing="LOG_ERROR",
                           plugins=(), streaming_threshold=0 if name == "streaming" else None)
    yield recorders
    # The SDK's UDP emitter has no close(); its socket would be left to the
    # garbage collector, and this suite turns that ResourceWarning into an error.
    for recorder in recorders.values():
        recorder.emitter._socket.close()


def send_to(collector: XRayCollector, *recorders: AWSXRayRecorder) -> None:
    """Point recorders at a collector, as AWS_XRAY_DAEMON_ADDRESS points a service."""
    for recorder in recorders:
        recorder.emitter.set_daemon_address(collector.daemon_address)


def send_raw(collector: XRayCollector, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, collector.address)


def test_collector_keeps_segments_sent_by_the_sdk(collector, sdk):
    usermgmt = sdk["usermgmt"]
    send_to(collector, usermgmt)
    segment = usermgmt.begin_segment("user-management")
    segment.put_annotation("pod", "user-management-0")
    call = usermgmt.begin_subsegment("notification", "remote")
    call.put_http_meta("status", 200)
    usermgmt.end_subsegment()
    usermgmt.end_segment()

    [received] = collector.wait_for(lambda segments: len(segments) == 1)
    assert received["name"] == "user-management"
    assert received["trace_id"] == segment.trace_id
    assert received["annotations"] == {"pod": "user-management-0"}
    assert received["subsegments"][0]["id"] == call.id
    assert received["subsegments"][0]["http"]["response"]["status"] == 200
    assert received["end_time"] >= received["start_time"]


def test_streamed_subsegments_are_kept_as_documents_of_their_own(collector, sdk):
    # Past the streaming threshold the SDK sends finished subsegments early, each
    # in a datagram of its own; threshold 0 makes it do so for every one.
    streaming = sdk["streaming"]
    send_to(collector, streaming)
    segment = streaming.begin_segment("user-management")
    call = streaming.begin_subsegment("notification", "remote")
    streaming.end_subsegment()
    streaming.end_segment()

    received = collector.wait_for(lambda segments: len(segments) == 2)
    streamed = next(doc for doc in received if doc.get("type") == "subsegment")
    assert (streamed["id"], streamed["parent_id"], streamed["trace_id"]) == (
        call.id, segment.id, segment.trace_id)


@pytest.mark.parametrize("datagram", [
    b"not json at all",
    b'{"format":"json","version":1}',  # no document
    b'{"format":"json","version":2}\n{"id":"a","trace_id":"b","name":"c","start_time":1}',
    b'{"format":"json","version":1}\n{"id":"a", "trace_id":',
    b'{"format":"json","version":1}\n["a", "list"]',
    b'{"format":"json","version":1}\n{"name":"no ids","start_time":1}',
    b'{"format":"json","version":1}\n\xff\xfe',
])
def test_malformed_datagrams_are_counted_and_ignored(collector, sdk, datagram):
    send_raw(collector, datagram)
    usermgmt = sdk["usermgmt"]
    send_to(collector, usermgmt)
    usermgmt.begin_segment("after-the-garbage")
    usermgmt.end_segment()

    [received] = collector.wait_for(lambda segments: len(segments) == 1)
    assert received["name"] == "after-the-garbage"
    assert (collector.received, collector.malformed) == (1, 1)


def test_only_the_newest_segments_are_kept(sdk):
    with XRayCollector.run_in_thread("127.0.0.1", 0, max_segments=3) as collector:
        usermgmt = sdk["usermgmt"]
        send_to(collector, usermgmt)
        for number in range(5):
            usermgmt.begin_segment(f"request-{number}")
            usermgmt.end_segment()
        collector.wait_for(lambda _: collector.received == 5)

        assert [doc["name"] for doc in collector.segments] == [
            "request-2", "request-3", "request-4"]


def trace_two_services(sdk, collector, calls, *, streamed=False):
    """Requests through user-management to notification, traced by the SDK.

    ``calls`` is a list of (version, pod, status, milliseconds): one request
    each, answered by that notification pod. Each service has its own recorder,
    as each runs in its own process; the trace id and the id of user-management's
    call subsegment travel the way the X-Amzn-Trace-Id header carries them. With
    ``streamed`` that call subsegment arrives as a document of its own.
    """
    usermgmt = sdk["streaming" if streamed else "usermgmt"]
    notification = sdk["notification"]
    send_to(collector, usermgmt, notification)
    for version, pod, status, milliseconds in calls:
        request = usermgmt.begin_segment("user-management")
        call = usermgmt.begin_subsegment("notification", "remote")
        answer = notification.begin_segment(f"notification-{version}", traceid=request.trace_id,
                                            parent_id=call.id)
        answer.put_annotation("version", version)
        answer.put_annotation("pod", pod)
        answer.put_http_meta("status", status)
        notification.end_segment(end_time=answer.start_time + milliseconds / 1000)
        call.put_http_meta("status", status)
        usermgmt.end_subsegment()
        request.put_http_meta("status", 201)
        usermgmt.end_segment()
    expected = len(calls) * (3 if streamed else 2)
    return collector.wait_for(lambda segments: len(segments) == expected)


CANARY_CALLS = (
    [("v1", "notification-v1-a", 200, ms) for ms in range(1, 11)]
    + [("v1", "notification-v1-b", 200, 20)] * 5
    + [("v2", "notification-v2-a", 200, 30)] * 3
    + [("v2", "notification-v2-a", 503, 40), ("v2", "notification-v2-a", 404, 50)]
)


@pytest.mark.parametrize("streamed", [False, True], ids=["nested", "streamed"])
def test_service_map_links_notification_versions_to_their_caller(collector, sdk, streamed):
    segments = trace_two_services(sdk, collector, CANARY_CALLS, streamed=streamed)

    graph = service_map(segments)

    assert graph.nodes == ("client", "user-management", "notification-v1", "notification-v2")
    assert [(e.source, e.target, e.requests) for e in graph.edges] == [
        ("client", "user-management", 20),
        ("user-management", "notification-v1", 15),
        ("user-management", "notification-v2", 5),
    ]
    v1 = graph.edge("user-management", "notification-v1")
    assert (v1.errors, v1.faults) == (0, 0)
    assert v1.pods == {"notification-v1-a": 10, "notification-v1-b": 5}
    assert v1.avg_ms == pytest.approx((55 + 5 * 20) / 15, abs=0.01)
    assert v1.p95_ms == pytest.approx(20, abs=0.01)  # 15 calls: the 15th smallest
    v2 = graph.edge("user-management", "notification-v2")
    assert (v2.errors, v2.faults) == (1, 1)
    assert v2.p95_ms == pytest.approx(50, abs=0.01)


def test_rendered_map_shows_each_versions_share(collector, sdk):
    graph = service_map(trace_two_services(sdk, collector, CANARY_CALLS))

    table = render_service_map(graph)

    assert "user-management -> notification-v1" in table
    assert "75.0%" in table and "25.0%" in table
    assert "notification-v1-a 10, notification-v1-b 5" in table


def test_segments_survive_a_round_trip_through_json_lines(collector, sdk, tmp_path):
    segments = trace_two_services(sdk, collector, CANARY_CALLS[:4])
    path = tmp_path / "segments.jsonl"

    write_segments(path, collector.segments)

    assert read_segments(path) == segments
    assert len(path.read_text().splitlines()) == len(segments)
    write_segments(path, [])
    assert read_segments(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["segments.jsonl"]  # no temporary left


def test_an_orphan_segment_is_shown_as_called_by_the_client():
    # Its caller's segment never arrived (lost datagram, or evicted): X-Ray
    # still shows the service, entered from the client.
    orphan = {"name": "notification-v2", "id": "b1", "trace_id": "1-2-3", "parent_id": "a9",
              "start_time": 10.0, "end_time": 10.5}

    graph = service_map([orphan])

    assert [(e.source, e.target, e.avg_ms) for e in graph.edges] == [
        ("client", "notification-v2", 500.0)]
