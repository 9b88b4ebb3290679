"""Test setup: every test gets a fresh database, fast bcrypt, a random JWT secret, and a
clock it can set. Settings are read when the app is imported, so they are set first.

The database is a new SQLite file per test, unless TEST_DATABASE_URL names a PostgreSQL
database that the tests may wipe (postgresql+psycopg://...). Then the whole suite runs
there: it is migrated once per run and its tables are emptied before every test.

Tests that need a real server start `uvicorn main:app` with the live_server fixture.
Plain helpers (constants, Account, LiveServer) are in helpers.py.
"""

import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
from helpers import (
    MAX_ID,
    PASSWORD,
    TEST_DATABASE_URL,
    Account,
    LiveServer,
    bearer_header,
    create_database,
    drop_database,
    empty_tables,
    sign_up,
)

os.environ["BCRYPT_ROUNDS"] = "4"
os.environ["JWT_SECRET"] = secrets.token_urlsafe(48)
os.environ.pop("CORS_ORIGINS", None)
os.environ.pop("ACCESS_TOKEN_EXPIRE_MINUTES", None)
os.environ.pop("REFRESH_TOKEN_EXPIRE_DAYS", None)
os.environ.pop("REFRESH_TOKEN_GRACE_SECONDS", None)
# Better Auth is off, as by default; test_better_auth.py configures its own per test.
for better_auth_setting in ("BETTER_AUTH_URL", "BETTER_AUTH_JWKS_URL", "BETTER_AUTH_SECRET"):
    os.environ.pop(better_auth_setting, None)
# The abuse limits are off by default here, since many tests sign up many users; the
# tests of the limits themselves replace the settings that limits.py reads.
os.environ["LOGIN_FAILURE_LIMIT"] = "0"
os.environ["AUTH_REQUESTS_PER_MINUTE"] = "0"
os.environ.pop("LOGIN_FAILURE_WINDOW_MINUTES", None)
if TEST_DATABASE_URL is not None and not TEST_DATABASE_URL.startswith("postgresql"):
    raise SystemExit(
        "TEST_DATABASE_URL must be a postgresql+psycopg:// URL; leave it unset for SQLite"
    )
# The app's own engine only serves start-up here: each test overrides the session.
os.environ["DATABASE_URL"] = (
    TEST_DATABASE_URL or f"sqlite:///{tempfile.mkdtemp(prefix='todo-tests-')}/startup.db"
)

# After the settings above: the app reads them when it is imported.
import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import MetaData  # noqa: E402

import db  # noqa: E402
import migrate  # noqa: E402
from db import request_time  # noqa: E402
from main import app  # noqa: E402

# ---- Shared request helpers -------------------------------------------------------------
# Test files take these as fixtures (`def test_x(client, alice, login): ...`); each
# returns a plain function bound to this test's client.


@pytest.fixture
def password() -> str:
    """The password that alice, bob and every new_account sign up with."""
    return PASSWORD


@pytest.fixture
def max_id() -> int:
    return MAX_ID


@pytest.fixture
def bearer():
    """bearer(token) -> the Authorization header that presents it."""
    return bearer_header


@pytest.fixture
def new_account(request):
    """new_account(email, password=PASSWORD, via=None) -> an Account signed up through the
    API: through this test's client, or through `via` (an httpx2 client of a live server)."""

    def sign_up_through(email: str, password: str = PASSWORD, via=None) -> Account:
        return sign_up(via or request.getfixturevalue("client"), email, password)

    return sign_up_through


@pytest.fixture
def create(client):
    """create(account, **fields) -> the new task; the title defaults to "Task"."""

    def create_task(account: Account, **fields) -> dict:
        response = client.post(
            account.tasks_url, json={"title": "Task", **fields}, headers=account.headers
        )
        assert response.status_code == 201, response.text
        return response.json()

    return create_task


@pytest.fixture
def me(client):
    """me(token) -> the response of GET /api/auth/me with that token."""
    return lambda token: client.get("/api/auth/me", headers=bearer_header(token))


@pytest.fixture
def login(client):
    """login(email, password) -> the response of the JSON login."""
    return lambda email, password: client.post(
        "/api/auth/login", json={"email": email, "password": password}
    )


@pytest.fixture
def form_login(client):
    """form_login(email, password) -> the response of the OAuth2 form login at /api/auth/token."""
    return lambda email, password: client.post(
        "/api/auth/token", data={"username": email, "password": password}
    )


@pytest.fixture
def change_password(client):
    """change_password(token, current, new) -> the response of PUT /api/auth/password."""

    def put_password(token: str, current: str, new: str):
        body = {"current_password": current, "new_password": new}
        return client.put("/api/auth/password", headers=bearer_header(token), json=body)

    return put_password


@pytest.fixture
def delete_me(client):
    """delete_me(token, password) -> the response of DELETE /api/auth/me."""
    return lambda token, password: client.request(
        "DELETE", "/api/auth/me", headers=bearer_header(token), json={"password": password}
    )


@pytest.fixture(scope="session")
def server_engine():
    """The TEST_DATABASE_URL database, migrated to the newest revision, for the whole run."""
    shared_engine = db.make_engine(TEST_DATABASE_URL)
    with shared_engine.begin() as connection:
        # Whatever a previous run left, in any shape (alembic_version included), goes.
        leftovers = MetaData()
        leftovers.reflect(connection)
        leftovers.drop_all(connection)
    migrate.migrate(shared_engine)
    yield shared_engine
    shared_engine.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite file migrated to the newest revision once; each test gets a copy of it."""
    template = tmp_path_factory.mktemp("template") / "migrated.db"
    template_engine = db.make_engine(f"sqlite:///{template}")
    migrate.migrate(template_engine)
    template_engine.dispose()  # the last connection to close checkpoints the WAL into the file
    return template


@pytest.fixture
def new_database(request):
    """new_database(prefix) -> the URL of a new, empty PostgreSQL database of the
    TEST_DATABASE_URL server, dropped after the test."""

    def create(prefix: str) -> str:
        server_engine = request.getfixturevalue("server_engine")
        url = create_database(server_engine, prefix)
        request.addfinalizer(lambda: drop_database(server_engine, url))
        return url

    return create


@pytest.fixture(scope="module")
def empty_database_url(server_engine):
    """A new, empty database beside the shared one, for tests of start-up on an empty database."""
    url = create_database(server_engine, "empty")
    yield url
    drop_database(server_engine, url)


@pytest.fixture
def engine(request, tmp_path):
    """A fresh SQLite file per test (a copy of the migrated one): a real file, so WAL and
    locking behave as in production.
    With TEST_DATABASE_URL, the shared PostgreSQL database, emptied."""
    if TEST_DATABASE_URL is not None:
        shared_engine = request.getfixturevalue("server_engine")
        empty_tables(shared_engine)
        yield shared_engine
        return
    database = tmp_path / "test.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), database)
    test_engine = db.make_engine(f"sqlite:///{database}")
    yield test_engine
    test_engine.dispose()


@pytest.fixture
def client(engine, monkeypatch):
    # The app's own sessions, on this test's engine: tests exercise the real code.
    monkeypatch.setattr(db, "engine", engine)
    with TestClient(app) as test_client:
        yield test_client
    app.dependency_overrides.clear()


class Clock:
    """Stands in for the request clock, so tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(client):
    fake = Clock()

    async def fake_request_time() -> datetime:
        return fake.now

    app.dependency_overrides[request_time] = fake_request_time
    return fake


@pytest.fixture
def alice(client) -> Account:
    return sign_up(client, "alice@example.com")


@pytest.fixture
def bob(client) -> Account:
    return sign_up(client, "bob@example.com")


@pytest.fixture
def live_server(tmp_path):
    """Starts servers: live_server(workers=..., env=..., directory=...) returns a started
    LiveServer, in tmp_path unless a directory is given. Every one is stopped at teardown."""
    started: list[LiveServer] = []

    def start(
        workers: int = 1, env: dict[str, str] | None = None, directory: Path | None = None
    ) -> LiveServer:
        server = LiveServer(directory or tmp_path, workers, env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def two_workers_client(request, live_server):
    """An httpx2 client of a new `uvicorn --workers 2` on a database of its own. It opens a new
    connection per request, so the kernel hands each to whichever worker accepts it."""
    env = {"AUTH_REQUESTS_PER_MINUTE": "0", "JWT_SECRET": secrets.token_urlsafe(48)}
    if TEST_DATABASE_URL is not None:  # a new database beside the test database
        env["DATABASE_URL"] = request.getfixturevalue("new_database")("workers")
    server = live_server(workers=2, env=env)
    with httpx2.Client(base_url=server.url, timeout=30, headers={"Connection": "close"}) as http:
        yield http
    assert "Traceback" not in server.log()
