"""`canarylab listen` describes a segment so the link between services is visible."""

from canarylab.listen import describe_segment


def test_segment_line_shows_trace_parent_and_the_remote_call_id():
    front = {"name": "user-management", "id": "aaaa", "trace_id": "1-abc-def",
             "http": {"request": {"method": "GET", "url": "http://x/usermgmt/notification-xray"},
                      "response": {"status": 200}},
             "annotations": {"pod": "user-management-x-y"},
             "subsegments": [{"name": "notification", "id": "bbbb", "namespace": "remote",
                              "http": {"request": {"method": "GET"}}}]}
    back = {"name": "notification-v2", "id": "cccc", "trace_id": "1-abc-def", "parent_id": "bbbb",
            "http": {"request": {"method": "GET", "url": "http://y/notification/xray"}}}

    assert describe_segment(front) == (
        "segment user-management (user-management-x-y): GET http://x/usermgmt/notification-xray"
        " 200 trace 1-abc-def id aaaa subsegments notification bbbb")
    assert describe_segment(back).endswith("trace 1-abc-def id cccc parent bbbb")
