"""The user API: create, read, list, update, delete.

Creating a user also asks notification for a welcome mail. The user is stored
first and stays stored whatever happens next: a notification or mail outage is
reported in the response (``notification.sent: false``), never rolled back.
"""

import logging

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, Email, String
from apiflask.validators import Length, OneOf, Regexp
from flask import current_app, url_for
from marshmallow import ValidationError, validates
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from servicekit.errors import ApiError
from user_management.db import User
from user_management.notification_client import NotificationUnavailable
from user_management.passwords import hash_password, policy_problems

log = logging.getLogger(__name__)

bp = APIBlueprint("users", __name__, url_prefix="/usermgmt")

ROLES = ("ROLE_ADMIN", "ROLE_USER")
USERNAME = Regexp(r"^[A-Za-z0-9._-]+$", error="letters, digits, '.', '_' and '-' only")


class _PasswordPolicy:
    @validates("password")
    def _policy(self, value, **_):
        problems = policy_problems(value)
        if problems:
            raise ValidationError("; ".join(problems))


class UserCreate(_PasswordPolicy, Schema):
    username = String(required=True, validate=[Length(1, 50), USERNAME])
    email = Email(required=True, validate=Length(max=254))
    password = String(required=True, load_only=True)
    firstname = String(required=True, validate=Length(1, 100))
    lastname = String(required=True, validate=Length(1, 100))
    role = String(required=True, validate=OneOf(ROLES))
    enabled = Boolean(load_default=True)


class UserUpdate(_PasswordPolicy, Schema):
    """Update by username; every other field is optional and kept when absent."""

    username = String(required=True, validate=[Length(1, 50), USERNAME])
    email = Email(validate=Length(max=254))
    password = String(load_only=True)
    firstname = String(validate=Length(1, 100))
    lastname = String(validate=Length(1, 100))
    role = String(validate=OneOf(ROLES))
    enabled = Boolean()


def _ext():
    return current_app.extensions["usermgmt"]


def _database():
    return _ext().database


def _find(session, username: str) -> User:
    user = session.get(User, username)
    if user is None:
        raise ApiError(404, f"user {username!r} not found")
    return user


@bp.post("/user")
@bp.input(UserCreate, arg_name="new")
def create_user(new):
    """Create a user and send the welcome mail through notification."""
    password = new.pop("password")
    user = User(**new, password_hash=hash_password(password, current_app.config["BCRYPT_ROUNDS"]))
    try:
        with _database().session() as session:
            if session.get(User, user.username) is not None:
                raise ApiError(409, f"user {user.username!r} already exists", code="user_exists")
            session.add(user)
            session.commit()
    except IntegrityError:  # created by a concurrent request between our check and insert
        raise ApiError(409, f"user {user.username!r} already exists", code="user_exists") from None

    notification, relayed = _send_welcome(user)
    location = url_for("users.get_user", username=user.username)
    return {**user.to_json(), "notification": notification}, 201, {"Location": location, **relayed}


def _send_welcome(user: User) -> tuple[dict, dict]:
    """Ask notification to mail ``user``; say what happened, never raise."""
    try:
        reply = _ext().notification.post("/notification/send", {
            "subject": "Welcome to canarylab",
            "content": f"Hello {user.firstname},\n\nyour account {user.username} is ready.",
            "toEmails": [user.email],
        })
    except NotificationUnavailable as exc:
        log.warning("welcome mail for a new user not sent: %s", exc)
        return {"sent": False, "error": f"notification unreachable: {exc}"}, {}
    outcome = {"sent": reply.status == 200, "version": reply.version, "pod": reply.pod}
    if reply.status != 200:
        error = (reply.body or {}).get("error", {})
        outcome["error"] = error.get("message") or f"notification answered {reply.status}"
    return outcome, reply.relay_headers()


@bp.get("/users")
def list_users():
    """All users, oldest first; never their passwords."""
    with _database().session() as session:
        users = session.scalars(select(User).order_by(User.created_at, User.username)).all()
    return {"users": [user.to_json() for user in users], "count": len(users)}


@bp.get("/user/<username>")
def get_user(username):
    with _database().session() as session:
        return _find(session, username).to_json()


@bp.put("/user")
@bp.input(UserUpdate, arg_name="changes")
def update_user(changes):
    """Change the given fields of an existing user; a new password is hashed again."""
    username = changes.pop("username")
    password = changes.pop("password", None)
    with _database().session() as session:
        user = _find(session, username)
        for name, value in changes.items():
            setattr(user, name, value)
        if password is not None:
            user.password_hash = hash_password(password, current_app.config["BCRYPT_ROUNDS"])
        session.commit()
        return user.to_json()


@bp.delete("/user/<username>")
def delete_user(username):
    with _database().session() as session:
        session.delete(_find(session, username))
        session.commit()
    return {"deleted": username}
