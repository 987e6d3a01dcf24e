"""`canarylab listen`: the mail server and X-Ray daemon stand-ins, in the foreground.

For running the services by hand (README, "Run the services by hand"): a real
SMTP server and a real UDP listener that speaks the X-Ray daemon's protocol,
each printing one line per mail or segment as it arrives, so a trainee sees the
welcome mail and the segments of both services appear as they make requests.
Ctrl-C stops both. The local cluster (`canarylab up`) runs the same two inside
its supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from canarylab.cluster import split_address
from canarylab.mail import MailSink
from canarylab.xray import XRayCollector


def describe_segment(segment: dict) -> str:
    """One line for a segment: who, what, which trace, and its parent if any."""
    request = segment.get("http", {}).get("request", {})
    status = segment.get("http", {}).get("response", {}).get("status", "")
    annotations = segment.get("annotations", {})
    who = segment.get("name", "?") + (f" ({annotations['pod']})" if "pod" in annotations else "")
    # A remote call shows its id: the next service's segment names it as its parent.
    calls = [f"{sub.get('name')} {sub.get('id')}" if sub.get("namespace") == "remote"
             and sub.get("http") else sub.get("name") for sub in segment.get("subsegments", [])]
    line = (f"segment {who}: {request.get('method', '')} {request.get('url', '')} {status} "
            f"trace {segment.get('trace_id')} id {segment.get('id')}")
    if segment.get("parent_id"):
        line += f" parent {segment['parent_id']}"
    if calls:
        line += f" subsegments {', '.join(calls)}"
    return line


async def listen(smtp_address: str, xray_address: str) -> None:
    mail = MailSink(*split_address(smtp_address))
    collector = XRayCollector(*split_address(xray_address))
    await mail.start()
    await collector.start()
    print(f"SMTP on {mail.host}:{mail.port}  (AWS_MAIL_SERVER_HOST={mail.host} "
          f"AWS_MAIL_SERVER_PORT={mail.port})")
    print(f"X-Ray daemon on udp {collector.daemon_address}  "
          f"(AWS_XRAY_DAEMON_ADDRESS={collector.daemon_address})", flush=True)
    shown_mail = shown_segments = 0
    try:
        while True:
            await asyncio.sleep(0.2)
            # Both keep a bounded history; show what is new since the last look.
            messages, segments = mail.messages, collector.segments
            for message in messages[shown_mail:]:
                print(f"mail from {message.mail_from} to {', '.join(message.recipients)}: "
                      f"{message.subject} ({'text + html' if message.html else 'text'})")
            for segment in segments[shown_segments:]:
                print(describe_segment(segment))
            shown_mail, shown_segments = len(messages), len(segments)
            print(end="", flush=True)
    finally:
        await mail.stop()
        await collector.stop()


def cmd_listen(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(args.smtp_address, args.xray_address))
    return 0
