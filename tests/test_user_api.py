"""The user API in process: every status code a client can get, and no password leaks.

Notification is deliberately unreachable here (nothing listens on its port), which
also proves that a user is created whatever happens to the welcome mail.
"""

import json

import bcrypt
import pytest
from conftest import STRONG_PASSWORD, assert_database_down, new_user


def test_create_user_answers_201_with_location_and_no_password(usermgmt):
    response = usermgmt.post("/usermgmt/user", json=new_user("ada"))

    assert response.status_code == 201
    assert response.headers["Location"] == "/usermgmt/user/ada"
    body = response.get_json()
    assert body["username"] == "ada" and body["role"] == "ROLE_ADMIN" and body["enabled"] is True
    assert not any("password" in key for key in body)


def test_create_user_survives_notification_outage(usermgmt):
    response = usermgmt.post("/usermgmt/user", json=new_user("grace"))

    assert response.status_code == 201
    assert response.get_json()["notification"]["sent"] is False
    assert "unreachable" in response.get_json()["notification"]["error"]
    assert usermgmt.get("/usermgmt/user/grace").status_code == 200


def test_course_payload_is_accepted(usermgmt):
    # The course's own example: role ROLE_ADMIN, password Pass@123 (exactly 8 characters).
    response = usermgmt.post("/usermgmt/user", json=new_user("admin1", password="Pass@123"))
    assert response.status_code == 201


def test_existing_username_is_409(usermgmt):
    assert usermgmt.post("/usermgmt/user", json=new_user("ada")).status_code == 201
    response = usermgmt.post("/usermgmt/user", json=new_user("ada", email="other@example.com"))

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "user_exists"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"role": "ROLE_ROOT"}, "role"),
        ({"username": "has space"}, "username"),
        ({"password": "short1!A"[:7]}, "password"),
        ({"password": "alllowercase1!"}, "password"),
        ({"password": "ALLUPPERCASE1!"}, "password"),
        ({"password": "NoDigitsHere!"}, "password"),
        ({"password": "NoSymbols123"}, "password"),
        ({"password": "Aa1!" * 33}, "password"),  # 132 characters
        ({"enabled": "maybe"}, "enabled"),
        ({"nickname": "extra"}, "nickname"),
    ],
)
def test_bad_field_is_400_naming_the_field(usermgmt, changes, field):
    response = usermgmt.post("/usermgmt/user", json=new_user("ada", **changes))

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert list(error["fields"]) == [field]


def test_every_missing_field_is_named(usermgmt):
    response = usermgmt.post("/usermgmt/user", json={"username": "ada"})

    assert response.status_code == 400
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"email", "password", "firstname", "lastname", "role"}


def test_password_policy_names_every_missing_rule(usermgmt):
    response = usermgmt.post("/usermgmt/user", json=new_user("ada", password="abc"))

    message = response.get_json()["error"]["fields"]["password"]
    for rule in ("8 to 128 characters", "upper-case", "digit", "symbol"):
        assert rule in message


def test_malformed_json_is_400(usermgmt):
    response = usermgmt.post("/usermgmt/user", data='{"username": ',
                             content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_json"


def test_non_json_content_type_is_415(usermgmt):
    response = usermgmt.post("/usermgmt/user", data=json.dumps(new_user("ada")),
                             content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_body_over_64_kib_is_413(usermgmt):
    response = usermgmt.post("/usermgmt/user", json=new_user("ada", lastname="x" * 70_000))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_json_array_body_is_400_not_500(usermgmt):
    response = usermgmt.post("/usermgmt/user", json=[new_user("ada")])
    assert response.status_code == 400


def test_read_list_update_delete(usermgmt):
    usermgmt.post("/usermgmt/user", json=new_user("ada"))
    usermgmt.post("/usermgmt/user", json=new_user("grace", role="ROLE_USER"))

    listed = usermgmt.get("/usermgmt/users").get_json()
    assert [u["username"] for u in listed["users"]] == ["ada", "grace"]
    assert listed["count"] == 2

    updated = usermgmt.put("/usermgmt/user", json={"username": "ada", "lastname": "Byron"})
    assert updated.status_code == 200
    assert updated.get_json()["lastname"] == "Byron"
    assert usermgmt.get("/usermgmt/user/ada").get_json()["firstname"] == "Ada"  # untouched

    assert usermgmt.delete("/usermgmt/user/ada").status_code == 200
    assert usermgmt.get("/usermgmt/user/ada").status_code == 404
    assert usermgmt.get("/usermgmt/users").get_json()["count"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/usermgmt/user/nobody", None),
        ("put", "/usermgmt/user", {"username": "nobody", "lastname": "X"}),
        ("delete", "/usermgmt/user/nobody", None),
    ],
)
def test_absent_user_is_404(usermgmt, method, path, body):
    response = getattr(usermgmt, method)(path, json=body)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_update_rehashes_the_password(usermgmt_app, usermgmt):
    from user_management.db import User

    usermgmt.post("/usermgmt/user", json=new_user("ada"))
    database = usermgmt_app.extensions["usermgmt"].database

    def stored_hash():
        with database.session() as session:
            return session.get(User, "ada").password_hash

    before = stored_hash()
    assert bcrypt.checkpw(STRONG_PASSWORD.encode(), before.encode())

    response = usermgmt.put("/usermgmt/user", json={"username": "ada", "password": "N3w!password"})
    assert response.status_code == 200
    after = stored_hash()
    assert after != before
    assert bcrypt.checkpw(b"N3w!password", after.encode())
    assert STRONG_PASSWORD not in after


def test_update_applies_the_password_policy(usermgmt):
    usermgmt.post("/usermgmt/user", json=new_user("ada"))
    response = usermgmt.put("/usermgmt/user", json={"username": "ada", "password": "weak"})
    assert response.status_code == 400
    assert "password" in response.get_json()["error"]["fields"]


def test_password_never_appears_in_any_response(usermgmt):
    bodies = [
        usermgmt.post("/usermgmt/user", json=new_user("ada")).data,
        usermgmt.get("/usermgmt/user/ada").data,
        usermgmt.get("/usermgmt/users").data,
        usermgmt.put("/usermgmt/user", json={"username": "ada", "password": STRONG_PASSWORD}).data,
        usermgmt.post("/usermgmt/user", json=new_user("ada")).data,  # the 409
        usermgmt.post("/usermgmt/user", json=new_user("bad", email="x")).data,  # the 400
    ]
    for body in bodies:
        assert STRONG_PASSWORD.encode() not in body
        assert b"password_hash" not in body and b"$2b$" not in body


def test_health_reports_database_and_says_who_answered(usermgmt):
    response = usermgmt.get("/usermgmt/health-status")

    assert response.status_code == 200
    assert response.get_json()["status"] == "UP"
    assert response.get_json()["database"] == "sqlite"
    assert response.headers["X-Service-Version"] == "v1"
    assert response.headers["X-Pod-Name"]


def test_health_is_503_when_the_database_is_down(tmp_path):
    from user_management import create_app

    # A database file inside a path that cannot exist: every connection fails.
    app = create_app({"SQLITE_PATH": str(tmp_path / "missing-dir" / "users.db")})
    assert_database_down(app.test_client())


@pytest.mark.parametrize(
    "path",
    ["/usermgmt/notification-xray", "/usermgmt/notification-health-status",
     "/usermgmt/notification-service-info"],
)
def test_relays_answer_503_when_notification_is_unreachable(usermgmt, path):
    response = usermgmt.get(path)

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "notification_unavailable"


def test_unknown_path_and_wrong_method_are_json(usermgmt):
    assert usermgmt.get("/usermgmt/nothing-here").get_json()["error"]["status"] == 404
    response = usermgmt.patch("/usermgmt/users", json={})
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_openapi_document_lists_the_api(usermgmt):
    spec = usermgmt.get("/usermgmt/openapi.json").get_json()

    assert spec["info"]["title"] == "canarylab user-management"
    for path in ("/usermgmt/user", "/usermgmt/users", "/usermgmt/user/{username}",
                 "/usermgmt/notification-xray", "/usermgmt/health-status"):
        assert path in spec["paths"]
    assert "password" in spec["components"]["schemas"]["UserCreate"]["properties"]


def test_metrics_count_requests_by_path_status_and_version(usermgmt):
    usermgmt.get("/usermgmt/user/nobody")
    text = usermgmt.get("/metrics").data.decode()

    assert 'path="/usermgmt/user/<username>"' in text
    assert 'status="404"' in text
    assert "http_request_duration_seconds_bucket" in text
