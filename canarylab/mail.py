"""A real SMTP server that keeps what it receives: the mail stand-in.

On AWS the notification service sends through Amazon SES's SMTP interface
(``AWS_MAIL_SERVER_HOST``, port 587, a login, STARTTLS); in the k8s manifests an
SMTP pod stands in for it. `MailSink` is that stand-in for the local cluster and
for tests: an ESMTP server (aiosmtpd) that delivers nowhere and keeps each
message, parsed into sender, recipients, subject, text and HTML parts.

What it can check, as SES would:

- with ``credentials=(user, password)`` it offers AUTH PLAIN and LOGIN, even
  without TLS (the lab has no certificates to trust), and refuses ``MAIL FROM``
  until the client has logged in with exactly that pair;
- without credentials no login is needed, and none is offered;
- with ``starttls=True`` it offers STARTTLS, with a self-signed certificate made
  at start by the ``openssl`` command; `cert_path` is the certificate a client
  can trust.

It runs in the event loop that calls `start`, next to the other stand-ins of
the supervisor; tests use `MailSink.run_in_thread`. Message bodies are never
logged (aiosmtpd itself logs each line of DATA at debug level, so its logger is
quietened unless someone set its level on purpose).
"""

import asyncio
import collections
import email
import email.policy
import hmac
import ipaddress
import logging
import shutil
import ssl
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from canarylab.background import ThreadRunnable

# What the server calls itself in its greeting. Given explicitly because
# aiosmtpd would otherwise look up the machine's FQDN, on every connection.
SERVER_NAME = "canarylab-mail"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as it arrived: the SMTP envelope and the parsed content."""

    mail_from: str
    recipients: list[str]
    subject: str
    text: str | None  # the text/plain part (or the whole body of a plain message)
    html: str | None  # the text/html part
    raw: bytes
    login: str | None  # who logged in, if anyone
    tls: bool  # whether the client switched to TLS first

    def message(self) -> email.message.EmailMessage:
        """The full parsed message, for headers and parts beyond the usual ones."""
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class MailSink(ThreadRunnable):
    """An SMTP server on ``(host, port)`` keeping the last ``max_messages`` messages.

    ``port=0`` binds an ephemeral port; `address` tells which one after `start`.
    `messages` and `wait_for` may be used from any thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1025, *,
                 credentials: tuple[str, str] | None = None, starttls: bool = False,
                 max_messages: int = 1000):
        self.host = host
        self.port = port
        self.credentials = credentials
        self.starttls = starttls
        self.cert_path: Path | None = None
        self._messages: collections.deque[ReceivedMessage] = collections.deque(
            maxlen=max_messages)
        self._changed = threading.Condition()
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._tls_context: ssl.SSLContext | None = None
        self._cert_dir: str | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A copy of the messages kept, oldest first."""
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[list[ReceivedMessage]], bool],
                 timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until ``predicate(messages)`` is true; return those messages.

        For threads other than the sink's own, when mail is sent in the
        background. Raises TimeoutError after ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self._messages)), timeout):
                raise TimeoutError(f"no match among {len(self._messages)} messages "
                                   f"after {timeout} s")
            return list(self._messages)

    async def start(self) -> None:
        _quieten_aiosmtpd()
        if self.starttls:
            self._cert_dir = tempfile.mkdtemp(prefix="canarylab-mail-")
            self._tls_context = await asyncio.to_thread(
                _self_signed_context, Path(self._cert_dir), self.host)
            self.cert_path = Path(self._cert_dir) / "cert.pem"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, end the open sessions, remove the certificate."""
        if self._server is not None:
            self._server.close()
            sessions = list(self._sessions)
            for session in sessions:
                if session.transport is not None:
                    session.transport.close()
            # aiosmtpd runs each session as a task; wait for them to end so the
            # loop can close cleanly.
            await asyncio.gather(*(s._handler_coroutine for s in sessions
                                   if s._handler_coroutine), return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = self.cert_path = self._tls_context = None

    # -- one SMTP session per connection ------------------------------------------

    def _new_session(self) -> SMTP:
        login_offered = self.credentials is not None
        session = SMTP(
            self,
            hostname=SERVER_NAME,
            tls_context=self._tls_context,
            # With credentials, AUTH is offered on plain connections too; without,
            # aiosmtpd offers it only after STARTTLS, where any login fails.
            auth_require_tls=not login_offered,
            authenticator=self._authenticate if login_offered else None,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(session)
        return session

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = (value.encode() for value in self.credentials)
        # compare_digest: the time taken does not tell how much of a guess was right.
        valid = (hmac.compare_digest(auth_data.login, user)
                 & hmac.compare_digest(auth_data.password, password))
        return AuthResult(success=bool(valid), handled=False, auth_data=auth_data)

    # aiosmtpd calls these handle_* hooks of its handler, which is this object.

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        received = _parse(envelope, session)
        with self._changed:
            self._messages.append(received)
            self._changed.notify_all()
        return "250 Message accepted for delivery"


def _parse(envelope: Envelope, session: Session) -> ReceivedMessage:
    raw = envelope.original_content or envelope.content
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return ReceivedMessage(
        mail_from=envelope.mail_from,
        recipients=list(envelope.rcpt_tos),
        subject=str(message.get("subject", "")),
        text=text.get_content() if text is not None else None,
        html=html.get_content() if html is not None else None,
        raw=raw,
        login=session.auth_data.login.decode() if session.authenticated else None,
        tls=session.ssl is not None,
    )


def _self_signed_context(directory: Path, host: str) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for ``host``.

    Made with the openssl command because the standard library cannot make
    certificates (the ``cryptography`` package could, but is not a dependency).
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("STARTTLS needs the openssl command (Debian: apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={SERVER_NAME}",
         "-addext", f"subjectAltName={_alt_names(host)}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _alt_names(host: str) -> str:
    """The names the certificate is valid for: what clients will connect to."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host},DNS:localhost"
    return f"IP:{host},DNS:localhost"


def _quieten_aiosmtpd() -> None:
    # aiosmtpd logs every command at INFO, every DATA line at DEBUG, and a
    # deprecation notice at WARNING on each login.
    logger = logging.getLogger("mail.log")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
