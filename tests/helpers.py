"""Plain helpers that the tests import by name: constants, accounts, databases of their own, and
LiveServer, a real `uvicorn main:app` in a subprocess. Fixtures live in conftest.py."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, text
from sqlmodel import SQLModel

# A PostgreSQL database that the suite may wipe, or None: the suite runs on SQLite files.
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or None
PASSWORD = "correct horse battery"
MAX_ID = 2**63 - 1  # the largest id a row can have: a 64-bit signed integer
WRONG = "not the password"
NEW_PASSWORD = "a brand new passphrase"
# The bodies of the 401s that tests expect most often.
INVALID_TOKEN = {"detail": "Could not validate credentials"}
LOGIN_FAILED = {"detail": "Incorrect email or password"}
INCORRECT_PASSWORD = {"detail": "Incorrect password"}


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


# --- a real `uvicorn main:app` in a subprocess, for what needs a real server ---
# It runs in a temporary directory (its SQLite file, its generated .jwt_secret and its log
# live there) and imports the app from the repository with --app-dir.

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60
POLL_INTERVAL_SECONDS = 0.05
# Cleared from the test process's environment (conftest sets some), so the server runs
# with the defaults a user gets, except what a test passes in `env`.
APP_SETTINGS = {
    "DATABASE_URL",
    "JWT_SECRET",
    "JWT_SECRET_FILE",
    "ACCESS_TOKEN_EXPIRE_MINUTES",
    "BCRYPT_ROUNDS",
    "CORS_ORIGINS",
    "SQLITE_SYNCHRONOUS",
    "LOGIN_FAILURE_LIMIT",
    "LOGIN_FAILURE_WINDOW_MINUTES",
    "AUTH_REQUESTS_PER_MINUTE",
    "REFRESH_TOKEN_EXPIRE_DAYS",
    "REFRESH_TOKEN_GRACE_SECONDS",
    "BETTER_AUTH_URL",
    "BETTER_AUTH_JWKS_URL",
    "BETTER_AUTH_SECRET",
    "MAX_TASKS_PER_USER",
    "STATEMENT_TIMEOUT_MS",
    "DATABASE_WAIT_SECONDS",
}


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

    def __init__(
        self, directory: Path, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "server.log"
        self.env = {name: value for name, value in os.environ.items() if name not in APP_SETTINGS}
        self.env.update(
            DATABASE_URL=f"sqlite:///{directory / 'todo.db'}",
            BCRYPT_ROUNDS="4",
            PYTHONUNBUFFERED="1",
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
                command,
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
                    raise RuntimeError(
                        f"server not ready after {START_TIMEOUT_SECONDS}s:\n{self.log()}"
                    )
                try:  # waits for the next poll, and notices at once if the server died
                    self.process.wait(timeout=POLL_INTERVAL_SECONDS)
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.log()}"
                    )
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
