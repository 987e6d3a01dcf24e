"""Sending mail over SMTP, with the timeouts and errors a service needs.

STARTTLS is used whenever the server offers it, and a login is made only when a
username is configured. Every network step has a timeout, so a dead mail server
costs a worker ``SMTP_TIMEOUT`` seconds, not forever.
"""

import html
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from notification_service.features import Features


class MailUnavailable(Exception):
    """The SMTP server could not be reached (down, refusing, timing out)."""


class MailRejected(Exception):
    """The SMTP server answered but refused the mail or the login."""


@dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    username: str
    password: str
    from_address: str
    timeout: float

    @classmethod
    def from_config(cls, config: dict) -> "MailSettings":
        return cls(
            host=config["AWS_MAIL_SERVER_HOST"],
            port=config["AWS_MAIL_SERVER_PORT"],
            username=config["AWS_MAIL_SERVER_USERNAME"],
            password=config["AWS_MAIL_SERVER_PASSWORD"],
            from_address=config["AWS_MAIL_SERVER_FROM_ADDRESS"],
            timeout=config["SMTP_TIMEOUT"],
        )


def build_message(settings: MailSettings, features: Features, to: list[str],
                  subject: str, content: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(content)
    if features.html_email:
        body = html.escape(content).replace("\n", "<br>\n")
        message.add_alternative(
            f"<html><body><h2>{html.escape(subject)}</h2><p>{body}</p></body></html>",
            subtype="html",
        )
    return message


def send(settings: MailSettings, message: EmailMessage) -> None:
    """Deliver ``message``; raise MailUnavailable or MailRejected on failure."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if settings.username:
                smtp.login(settings.username, settings.password)
            smtp.send_message(message)
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
        raise MailUnavailable(f"{settings.host}:{settings.port}: {exc}") from None
    except smtplib.SMTPException as exc:  # an answer: bad login, refused recipient...
        raise MailRejected(str(exc)) from None
    except OSError as exc:  # no answer: refused, unreachable, timed out, TLS failed
        raise MailUnavailable(f"{settings.host}:{settings.port}: {exc}") from None
