"""Test setup: every test gets a fresh database, fast bcrypt, a random JWT secret, and a
clock it can set. Settings are read when the app is imported, so they are set first.

The database is a new SQLite file per test, unless TEST_DATABASE_URL names a PostgreSQL
database that the tests may wipe (postgresql+psycopg://...). Then the whole suite runs
there: it is migrated once per run and its tables are emptied before every test.

Tests that need a real server start `uvicorn main:app` with the live_server fixture.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

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
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or None
if TEST_DATABASE_URL is not None and not TEST_DATABASE_URL.startswith("postgresql"):
    raise SystemExit("TEST_DATABASE_URL must be a postgresql+psycopg:// URL; leave it unset for SQLite")
# The app's own engine only serves start-up here: each test overrides the session.
os.environ["DATABASE_URL"] = (
    TEST_DATABASE_URL or f"sqlite:///{tempfile.mkdtemp(prefix='todo-tests-')}/startup.db"
)

import httpx2  # noqa: E402
import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Engine, MetaData, make_url, text  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

import db  # noqa: E402
from db import request_time  # noqa: E402
from main import app  # noqa: E402

PASSWORD = "correct horse battery"

# ---- Shared request helpers -------------------------------------------------------------
# Test files take these as fixtures (`def test_x(client, alice, login): ...`); each
# returns a plain function bound to this test's client.

MAX_ID = 2**63 - 1  # the largest id a row can have: a 64-bit signed integer
WRONG = "not the password"
NEW_PASSWORD = "a brand new passphrase"
# The bodies of the 401s that tests expect most often.
INVALID_TOKEN = {"detail": "Could not validate credentials"}
LOGIN_FAILED = {"detail": "Incorrect email or password"}
INCORRECT_PASSWORD = {"detail": "Incorrect password"}


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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

    def sign_up_through(email: str, password: str = PASSWORD, via=None) -> "Account":
        return sign_up(via or request.getfixturevalue("client"), email, password)

    return sign_up_through


@pytest.fixture
def create(client):
    """create(account, **fields) -> the new task; the title defaults to "Task"."""

    def create_task(account: "Account", **fields) -> dict:
        response = client.post(account.tasks_url, json={"title": "Task", **fields}, headers=account.headers)
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
    return lambda email, password: client.post("/api/auth/login", json={"email": email, "password": password})


@pytest.fixture
def form_login(client):
    """form_login(email, password) -> the response of the OAuth2 form login at /api/auth/token."""
    return lambda email, password: client.post("/api/auth/token", data={"username": email, "password": password})


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


# ---- End of the shared request helpers ---------------------------------------------------


def send_body(handler: BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
    """A 200 with this body, from one of the tests' own small HTTP servers."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def require_tool(available: bool, reason: str) -> None:
    """Skip a test whose tool (Node, Chromium, Playwright) this machine lacks, saying how to
    install it. In CI (the environment variable CI is set) fail instead: there .ci/run
    installs every tool, so a missing one is a broken install step, not a reason to skip."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so this is a failure: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def server_engine():
    """The TEST_DATABASE_URL database, migrated to the newest revision, for the whole run."""
    shared_engine = db.make_engine(TEST_DATABASE_URL)
    with shared_engine.begin() as connection:
        # Whatever a previous run left, in any shape (alembic_version included), goes.
        leftovers = MetaData()
        leftovers.reflect(connection)
        leftovers.drop_all(connection)
    db.migrate(shared_engine)
    yield shared_engine
    shared_engine.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite file migrated to the newest revision once; each test gets a copy of it."""
    template = tmp_path_factory.mktemp("template") / "migrated.db"
    template_engine = db.make_engine(f"sqlite:///{template}")
    db.migrate(template_engine)
    template_engine.dispose()  # the last connection to close checkpoints the WAL into the file
    return template


def empty_tables(target: Engine) -> None:
    """Remove every row, so the test starts as on a new database. RESTART IDENTITY numbers
    rows from 1 again, as a fresh SQLite file does; within a test, the sequences still
    never hand out a deleted row's id."""
    quote = target.dialect.identifier_preparer.format_table
    tables = ", ".join(quote(table) for table in SQLModel.metadata.sorted_tables)
    with target.begin() as connection:
        # A connection left inside a transaction would block TRUNCATE forever; fail instead.
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def create_database(server_engine: Engine, prefix: str) -> str:
    """A new, empty database on the TEST_DATABASE_URL server, reached as that URL reaches it
    (directly, or through a pooler, which routes every database by name): its URL. A database,
    not a schema: a pooler in transaction mode passes on no per-connection search_path."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with server_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    return make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(server_engine: Engine, url: str) -> None:
    """FORCE: ends the connections that a server or a pooler still holds to it."""
    with server_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"DROP DATABASE {make_url(url).database} WITH (FORCE)"))


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
    # The app's own get_session, on this test's engine: tests exercise the real dependency.
    monkeypatch.setattr(db, "engine", engine)
    with TestClient(app) as test_client:
        yield test_client
    app.dependency_overrides.clear()


class Clock:
    """Stands in for the request clock, so tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

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


class Account(NamedTuple):
    id: int
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def tasks_url(self) -> str:
        return f"/api/{self.id}/tasks"


def sign_up(client: TestClient, email: str, password: str = PASSWORD) -> Account:
    response = client.post("/api/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(body["user"]["id"], body["user"]["email"], body["access_token"])


@pytest.fixture
def alice(client) -> Account:
    return sign_up(client, "alice@example.com")


@pytest.fixture
def bob(client) -> Account:
    return sign_up(client, "bob@example.com")


# --- a real `uvicorn main:app` in a subprocess, for what needs a real server ---
# It runs in a temporary directory (its SQLite file, its generated .jwt_secret and its log
# live there) and imports the app from the repository with --app-dir.

REPO_ROOT = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 60
POLL_INTERVAL_SECONDS = 0.05
# Cleared from the test process's environment (conftest sets some), so the server runs
# with the defaults a user gets, except what a test passes in `env`.
APP_SETTINGS = {
    "DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "ACCESS_TOKEN_EXPIRE_MINUTES", "BCRYPT_ROUNDS",
    "CORS_ORIGINS", "SQLITE_SYNCHRONOUS", "LOGIN_FAILURE_LIMIT", "LOGIN_FAILURE_WINDOW_MINUTES",
    "AUTH_REQUESTS_PER_MINUTE", "REFRESH_TOKEN_EXPIRE_DAYS", "REFRESH_TOKEN_GRACE_SECONDS",
    "BETTER_AUTH_URL", "BETTER_AUTH_JWKS_URL", "BETTER_AUTH_SECRET",
    "MAX_TASKS_PER_USER", "STATEMENT_TIMEOUT_MS", "DATABASE_WAIT_SECONDS",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """Start with start(), or use as a context manager, which always kills it at the end.

    The app's settings are the defaults, except BCRYPT_ROUNDS=4 (fast tests), a SQLite
    file in `directory`, and what the caller passes in `env`. No JWT_SECRET is set, so
    the server generates .jwt_secret in its directory.
    """

    def __init__(self, directory: Path, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "server.log"
        self.env = {name: value for name, value in os.environ.items() if name not in APP_SETTINGS}
        self.env.update(
            DATABASE_URL=f"sqlite:///{directory / 'todo.db'}", BCRYPT_ROUNDS="4", PYTHONUNBUFFERED="1"
        )
        self.env.update(env or {})
        self.process: subprocess.Popen | None = None

    @property
    def database_path(self) -> Path:
        return self.directory / "todo.db"

    def start(self) -> "LiveServer":
        command = [
            sys.executable, "-m", "uvicorn", "main:app",
            "--app-dir", str(REPO_ROOT),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # A session of its own, so the master and all its workers can be killed together.
            self.process = subprocess.Popen(
                command, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.wait_until_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self) -> None:
        """Poll until /health answers and every worker has finished starting up."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx2.Client(base_url=self.url, timeout=5) as client:
            while True:
                started = self.log().count("Application startup complete")
                if started >= self.workers:
                    try:
                        if client.get("/health").status_code == 200:
                            return
                    except httpx2.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {START_TIMEOUT_SECONDS}s:\n{self.log()}")
                try:  # waits for the next poll, and notices at once if the server died
                    self.process.wait(timeout=POLL_INTERVAL_SECONDS)
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                except subprocess.TimeoutExpired:
                    pass

    def worker_pids(self) -> set[int]:
        """The master's child processes (its workers, and multiprocessing's helpers)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def kill(self) -> None:
        """SIGKILL the whole server, as a power cut or the OOM killer would: no clean-up runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM for a graceful shutdown; SIGKILL if it does not come within 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


@pytest.fixture
def live_server(tmp_path):
    """Starts servers: live_server(workers=..., env=..., directory=...) returns a started
    LiveServer, in tmp_path unless a directory is given. Every one is stopped at teardown."""
    started: list[LiveServer] = []

    def start(workers: int = 1, env: dict[str, str] | None = None, directory: Path | None = None) -> LiveServer:
        server = LiveServer(directory or tmp_path, workers, env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
