"""The MySQL path, against the real MariaDB/MySQL server on 127.0.0.1:3306.

Each test run creates its own database and drops it afterwards. Where no server
answers, these tests skip — unless ``CANARYLAB_REQUIRE_MYSQL=1`` (set by
``.ci/run``, whose machine has MariaDB), where a missing server is a failure.
"""

import os
import uuid

import pymysql
import pytest
from conftest import STRONG_PASSWORD, assert_database_down, free_port, new_user

pytestmark = pytest.mark.mysql

SERVER = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@pytest.fixture(scope="module")
def mysql_database():
    try:
        admin = pymysql.connect(**SERVER, connect_timeout=3)
    except pymysql.err.OperationalError as exc:
        if os.environ.get("CANARYLAB_REQUIRE_MYSQL") == "1":
            pytest.fail(f"MySQL is required here but does not answer: {exc}")
        pytest.skip(f"no MySQL server on 127.0.0.1:3306 ({exc})")
    name = f"canarylab_test_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE `{name}`")
        admin.close()


def mysql_app(database: str, **config):
    from user_management import create_app

    settings = {"DB_HOSTNAME": SERVER["host"], "DB_PORT": SERVER["port"], "DB_NAME": database,
                "DB_USERNAME": SERVER["user"], "DB_PASSWORD": SERVER["password"],
                "BCRYPT_ROUNDS": 4, "NOTIFICATION_SERVICE_PORT": free_port(),
                "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9"}
    settings.update(config)
    return create_app(settings)


def test_users_live_in_mysql(mysql_database):
    client = mysql_app(mysql_database).test_client()

    assert client.get("/usermgmt/health-status").get_json()["database"] == "mysql"
    assert client.post("/usermgmt/user", json=new_user("ada")).status_code == 201
    assert client.post("/usermgmt/user", json=new_user("ada")).status_code == 409
    changed = client.put("/usermgmt/user", json={"username": "ada", "lastname": "Byron"})
    assert changed.status_code == 200

    # A second app (another pod) sees the same users: they are in MySQL, not in the process.
    other = mysql_app(mysql_database).test_client()
    assert other.get("/usermgmt/user/ada").get_json()["lastname"] == "Byron"
    assert other.delete("/usermgmt/user/ada").status_code == 200
    assert client.get("/usermgmt/user/ada").status_code == 404


def test_mysql_stores_a_bcrypt_hash_not_the_password(mysql_database):
    mysql_app(mysql_database).test_client().post("/usermgmt/user", json=new_user("grace"))

    with pymysql.connect(**SERVER, database=mysql_database) as connection, \
            connection.cursor() as cursor:
        cursor.execute("SELECT password_hash FROM users WHERE username = 'grace'")
        (stored,) = cursor.fetchone()
    assert stored.startswith("$2b$04$")
    assert STRONG_PASSWORD not in stored


def test_mysql_down_is_503_not_500(mysql_database):
    # Port 1 on loopback: connection refused at once, as when the server is stopped.
    client = mysql_app(mysql_database, DB_PORT=1).test_client()

    assert_database_down(client)
    assert client.get("/usermgmt/users").status_code == 503


def test_user_management_starts_while_mysql_is_down(mysql_database):
    # The schema is created on first use, not at start: an app built while the
    # database is unreachable must come up and answer 503, not crash-loop.
    client = mysql_app(mysql_database, DB_PORT=1).test_client()
    assert client.get("/usermgmt/users").status_code == 503
