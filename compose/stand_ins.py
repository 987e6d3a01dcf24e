"""Stand-ins for the images CI cannot pull: a mail catcher and an X-Ray daemon.

docker-compose.yml names the real images, Mailpit and amazon/aws-xray-daemon.
CI has no registry, so compose/ci.yml builds this module into an image from the
local base instead. Each stand-in is a real server speaking the real protocol,
built on the one the local cluster uses, plus a small HTTP API so a test can see
what arrived:

``python stand_ins.py mail``
    An SMTP server (`canarylab.mail.MailSink`, aiosmtpd) on :1025 and, on :8025,
    the part of Mailpit's web UI and API a trainee or a test uses: ``/`` lists
    the messages, ``GET /api/v1/messages`` answers in Mailpit's JSON shape
    (``total`` and ``messages`` with ``From``, ``To``, ``Subject``, ``Snippet``),
    ``/livez`` says it is up. Like Mailpit, it reads ``MP_SMTP_AUTH``
    ("user:password") and then refuses mail from clients that did not log in.

``python stand_ins.py xray``
    The X-Ray daemon's UDP listener (`canarylab.xray.XRayCollector`) on :2000
    and, on :2080, ``GET /segments`` (the documents received, as JSON) and
    ``GET /service-map`` (the caller -> callee table the X-Ray console draws).

Both stop cleanly on SIGTERM. Run ``python stand_ins.py mail --help`` for the
addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from canarylab.mail import MailSink, ReceivedMessage
from canarylab.xray import XRayCollector, render_service_map, service_map

SNIPPET_CHARS = 200  # Mailpit's list shows the start of each text, so do we
MAX_SEGMENTS_SHOWN = 5000  # /segments answers with at most the newest this many


# -- the HTTP side, shared by both stand-ins -----------------------------------------

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)


def json_body(document) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(document).encode()


def make_handler(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    """A request handler answering GET on ``routes``; anything else is a JSON 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, kind, body = 404, "application/json", json.dumps(
                    {"error": {"status": 404, "message": f"no such path: {self.path}"}}).encode()
            else:
                status, kind, body = route()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002
            pass  # health checks poll every few seconds: keep the log for the mail

    return Handler


def parse_address(text: str) -> tuple[str, int]:
    """'0.0.0.0:1025' -> ('0.0.0.0', 1025)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host or "0.0.0.0", int(port)


# -- the mail catcher --------------------------------------------------------------

def mailpit_message(number: int, message: ReceivedMessage) -> dict:
    """One message in the shape of Mailpit's ``/api/v1/messages`` list."""
    return {
        "ID": str(number),
        "From": {"Name": "", "Address": message.mail_from},
        "To": [{"Name": "", "Address": address} for address in message.recipients],
        "Subject": message.subject,
        "Snippet": " ".join((message.text or message.html or "").split())[:SNIPPET_CHARS],
    }


def mail_routes(sink: MailSink) -> dict[str, Route]:
    def listing() -> list[dict]:
        # Numbered oldest first, listed newest first, as Mailpit does.
        numbered = [mailpit_message(n, m) for n, m in enumerate(sink.messages, start=1)]
        return numbered[::-1]

    def api() -> tuple[int, str, bytes]:
        messages = listing()
        return json_body({"total": len(messages), "count": len(messages), "start": 0,
                          "messages": messages})

    def page() -> tuple[int, str, bytes]:
        rows = "".join(
            f"<tr><td>{html.escape(m['From']['Address'])}</td>"
            f"<td>{html.escape(', '.join(t['Address'] for t in m['To']))}</td>"
            f"<td>{html.escape(m['Subject'])}</td><td>{html.escape(m['Snippet'])}</td></tr>"
            for m in listing())
        body = ("<!doctype html><meta charset=utf-8><title>canarylab mail</title>"
                "<h1>Mail received</h1><table border=1 cellpadding=4>"
                "<tr><th>from</th><th>to</th><th>subject</th><th>text</th></tr>"
                f"{rows}</table>")
        return 200, "text/html; charset=utf-8", body.encode()

    return {"/": page, "/api/v1/messages": api,
            "/livez": lambda: (200, "text/plain", b"ok\n")}


def mailpit_credentials(environ) -> tuple[str, str] | None:
    """Mailpit's ``MP_SMTP_AUTH="user:password"``; None when unset (no login needed)."""
    value = environ.get("MP_SMTP_AUTH", "").split()
    if not value:
        return None
    user, colon, password = value[0].partition(":")
    if not colon:
        raise SystemExit("MP_SMTP_AUTH: expected user:password")
    return user, password


def run_mail(args: argparse.Namespace, stop: threading.Event) -> None:
    host, port = args.smtp
    credentials = mailpit_credentials(os.environ)
    with MailSink.run_in_thread(host, port, credentials=credentials) as sink:
        serve(args.http, mail_routes(sink), stop,
              f"mail catcher: SMTP on {host}:{port}"
              f" ({'login required' if credentials else 'no login'}), web UI on %s")


# -- the X-Ray daemon --------------------------------------------------------------

def xray_routes(collector: XRayCollector) -> dict[str, Route]:
    def segments() -> tuple[int, str, bytes]:
        return json_body({"received": collector.received, "malformed": collector.malformed,
                          "segments": collector.segments[-MAX_SEGMENTS_SHOWN:]})

    def graph() -> tuple[int, str, bytes]:
        text = render_service_map(service_map(collector.segments)) + "\n"
        return 200, "text/plain; charset=utf-8", text.encode()

    return {"/segments": segments, "/service-map": graph,
            "/livez": lambda: (200, "text/plain", b"ok\n")}


def run_xray(args: argparse.Namespace, stop: threading.Event) -> None:
    host, port = args.udp
    with XRayCollector.run_in_thread(host, port) as collector:
        serve(args.http, xray_routes(collector), stop,
              f"X-Ray daemon stand-in: segments on udp {host}:{port}, read them on %s")


# -- running -----------------------------------------------------------------------

def serve(address: tuple[str, int], routes: dict[str, Route], stop: threading.Event,
          banner: str) -> None:
    """Answer HTTP on ``address`` until ``stop`` is set."""
    server = ThreadingHTTPServer(address, make_handler(routes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(banner % f"http://{address[0]}:{server.server_address[1]}", flush=True)
    try:
        while not stop.wait(1.0):  # a timeout, so signals are handled promptly
            pass
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mail = commands.add_parser("mail", help="SMTP server with a Mailpit-like web UI and API")
    mail.add_argument("--smtp", type=parse_address, default=("0.0.0.0", 1025))
    mail.add_argument("--http", type=parse_address, default=("0.0.0.0", 8025))
    xray = commands.add_parser("xray", help="X-Ray daemon: UDP segments, read over HTTP")
    xray.add_argument("--udp", type=parse_address, default=("0.0.0.0", 2000))
    xray.add_argument("--http", type=parse_address, default=("0.0.0.0", 2080))
    args = parser.parse_args(argv)

    # Compose stops a container with SIGTERM: stop serving and close the sockets.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run = run_mail if args.command == "mail" else run_xray
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C when run by hand
        run(args, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
