"""The notification API: health, info, the canary endpoint and sending mail."""

from apiflask import APIBlueprint, Schema
from apiflask.fields import Email, List, String
from apiflask.validators import Length
from flask import current_app
from marshmallow import ValidationError, validates

from notification_service import mailer
from servicekit.errors import ApiError
from servicekit.tracing import subsegment

bp = APIBlueprint("notification", __name__, url_prefix="/notification")


class SendRequest(Schema):
    subject = String(required=True, validate=Length(1, 200))
    content = String(required=True, validate=Length(1, 32 * 1024))
    toEmails = List(Email(), required=True, validate=Length(1, 50))  # noqa: N815 (the course's name)

    @validates("subject")
    def _one_line(self, value, **_):
        # A newline in a header would let a caller inject headers of their own.
        if "\r" in value or "\n" in value:
            raise ValidationError("must be a single line")


def _state():
    return current_app.extensions["notification"]


def _who() -> dict:
    return current_app.extensions["identity"].fields()


@bp.get("/health-status")
def health_status():
    """Liveness and readiness: the process answers. Mail is not checked on purpose:
    a mail outage should fail sends, not get every pod restarted."""
    return {"status": "UP", **_who()}


@bp.get("/info")
def info():
    """Which version this is, its features and its fault knobs."""
    state = _state()
    return {
        **_who(),
        "app_version": current_app.extensions["identity"].app_version,
        "features": state.features.as_dict(),
        "faults": state.faults.as_dict(),
    }


@bp.get("/xray")
def xray():
    """The canary endpoint: answered by whichever pod the Service picked."""
    return {"message": "notification reached", **_who()}


@bp.post("/send")
@bp.input(SendRequest, arg_name="mail")
def send(mail):
    """Send a mail over SMTP. 503 when the mail server is unreachable, 502 when it refuses."""
    state = _state()
    message = mailer.build_message(
        state.mail, state.features, mail["toEmails"], mail["subject"], mail["content"]
    )
    try:
        with subsegment("smtp", namespace="remote") as sub:
            if sub is not None:
                sub.put_metadata("recipients", len(mail["toEmails"]))
                sub.put_metadata("server", f"{state.mail.host}:{state.mail.port}")
            mailer.send(state.mail, message)
    except mailer.MailUnavailable as exc:
        raise ApiError(503, f"mail server unavailable: {exc}", code="smtp_unavailable") from None
    except mailer.MailRejected as exc:
        raise ApiError(502, f"mail server refused the mail: {exc}", code="smtp_rejected") from None
    return {"sent": True, "recipients": len(mail["toEmails"]),
            "html": state.features.html_email, **_who()}
