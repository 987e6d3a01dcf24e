"""MailSink is a real SMTP server: smtplib, as the notification service uses it,
delivers to it, logs in to it, and switches to TLS with it."""

import logging
import smtplib
import ssl
from email.message import EmailMessage

import pytest

from canarylab.mail import MailSink

HOST = "127.0.0.1"


def welcome_mail(to: str = "ada@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@canarylab.local"
    message["To"] = to
    message["Subject"] = "Welcome, Ada"
    message.set_content("Your account is ready.")
    message.add_alternative("<p>Your account is <b>ready</b>.</p>", subtype="html")
    return message


def smtp_client(sink: MailSink) -> smtplib.SMTP:
    return smtplib.SMTP(*sink.address, timeout=5)


def test_message_arrives_with_envelope_and_both_parts():
    with MailSink.run_in_thread(HOST, 0) as sink:
        with smtp_client(sink) as client:
            client.send_message(welcome_mail(), to_addrs=["ada@example.com", "ops@example.com"])

        [received] = sink.messages

    assert received.mail_from == "noreply@canarylab.local"
    assert received.recipients == ["ada@example.com", "ops@example.com"]
    assert received.subject == "Welcome, Ada"
    assert received.text.strip() == "Your account is ready."
    assert received.html.strip() == "<p>Your account is <b>ready</b>.</p>"
    assert (received.login, received.tls) == (None, False)
    assert received.message()["To"] == "ada@example.com"


def test_without_credentials_no_login_is_offered():
    with MailSink.run_in_thread(HOST, 0) as sink, smtp_client(sink) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert not client.has_extn("starttls")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_with_credentials_mail_is_accepted_only_after_login(mechanism):
    with MailSink.run_in_thread(HOST, 0, credentials=("lab-user", "lab-secret")) as sink:
        with smtp_client(sink) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.send_message(welcome_mail())
            assert refused.value.smtp_code == 530

        with smtp_client(sink) as client:
            client.ehlo()
            client.user, client.password = "lab-user", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))

        with smtp_client(sink) as client:
            client.ehlo()
            client.user, client.password = "lab-user", "lab-secret"
            client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            client.send_message(welcome_mail())

        [received] = sink.messages
    assert received.login == "lab-user"


def test_starttls_with_the_sinks_own_certificate():
    with MailSink.run_in_thread(HOST, 0, starttls=True,
                                credentials=("lab-user", "lab-secret")) as sink:
        cert_path = sink.cert_path
        with smtp_client(sink) as client:
            client.starttls(context=ssl.create_default_context(cafile=cert_path))
            client.login("lab-user", "lab-secret")
            client.send_message(welcome_mail())

        [received] = sink.messages
    assert (received.tls, received.login) == (True, "lab-user")
    assert not cert_path.exists()  # removed when the sink stopped


def test_only_the_newest_messages_are_kept():
    with MailSink.run_in_thread(HOST, 0, max_messages=2) as sink:
        with smtp_client(sink) as client:
            for number in range(3):
                client.send_message(welcome_mail(f"user{number}@example.com"))

        kept = sink.wait_for(lambda messages: len(messages) == 2, timeout=1)
        with pytest.raises(TimeoutError):
            sink.wait_for(lambda messages: len(messages) == 3, timeout=0.1)

    assert [m.recipients for m in kept] == [["user1@example.com"], ["user2@example.com"]]


def test_message_bodies_stay_out_of_the_logs(caplog):
    caplog.set_level(logging.DEBUG)
    with MailSink.run_in_thread(HOST, 0) as sink, smtp_client(sink) as client:
        client.send_message(welcome_mail())

    assert "account is ready" not in caplog.text


def test_stopping_ends_open_sessions():
    with MailSink.run_in_thread(HOST, 0) as sink:
        client = smtp_client(sink)
        client.ehlo()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()
