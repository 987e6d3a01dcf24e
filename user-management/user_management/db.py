"""Users in a database: SQLite by default, MySQL (through PyMySQL) when DB_HOSTNAME is set.

The schema is created on first use rather than at import, so user-management
starts (and reports itself unhealthy) while MySQL is still coming up, instead of
crash-looping; the first request after the database is back creates the table.
"""

import logging
import threading
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, String, create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from servicekit.tracing import instrument_sqlalchemy

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(50), primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(100))
    firstname: Mapped[str] = mapped_column(String(100))
    lastname: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(30))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(UTC))

    def to_json(self) -> dict:
        """The user as clients see it: everything but the password hash."""
        return {
            "username": self.username,
            "email": self.email,
            "firstname": self.firstname,
            "lastname": self.lastname,
            "role": self.role,
            "enabled": self.enabled,
        }


class DatabaseUnavailable(Exception):
    """The database could not be reached or answered with an error."""


def database_url(config: dict) -> URL:
    if config["DB_HOSTNAME"]:
        return URL.create(
            "mysql+pymysql",
            username=config["DB_USERNAME"],
            password=config["DB_PASSWORD"] or None,
            host=config["DB_HOSTNAME"],
            port=config["DB_PORT"],
            database=config["DB_NAME"],
            query={"charset": "utf8mb4"},
        )
    return URL.create("sqlite", database=config["SQLITE_PATH"])


class Database:
    def __init__(self, config: dict):
        url = database_url(config)
        self.kind = url.get_backend_name()
        timeout = config["DB_TIMEOUT"]
        if self.kind == "mysql":
            self.engine: Engine = create_engine(
                url,
                pool_pre_ping=True,  # a connection MySQL closed is replaced, not failed
                pool_recycle=1800,
                connect_args={"connect_timeout": timeout, "read_timeout": timeout,
                              "write_timeout": timeout},
            )
        else:
            self.engine = create_engine(url, connect_args={"timeout": timeout})
        # Traced with the server's address only: the URL's password never reaches a trace.
        instrument_sqlalchemy(self.engine, url.render_as_string(hide_password=True), self.kind)
        self._schema_ready = False
        self._lock = threading.Lock()

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._lock:
            if not self._schema_ready:
                Base.metadata.create_all(self.engine)
                self._schema_ready = True

    @contextmanager
    def session(self):
        """A session for one unit of work; database errors become DatabaseUnavailable."""
        try:
            self.ensure_schema()
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except IntegrityError:
            raise  # a conflict in the data, not an outage: the caller answers it
        except SQLAlchemyError as exc:
            log.warning("database error: %s", type(exc).__name__)
            raise DatabaseUnavailable(str(exc.__class__.__name__)) from None

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers ``SELECT 1``."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(exc.__class__.__name__) from None

