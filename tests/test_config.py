"""Start-up configuration, tested in fresh Python processes because settings are read
once at import: the JWT secret file, the refusal of weak secrets, bad numbers, the
database URLs that serve or stop start-up with one line, and the databases that cannot be
used (or are not up yet, and are waited for)."""

import hashlib
import os
import socket
import socketserver
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import httpx2
import pytest
from helpers import APP_SETTINGS, POLL_INTERVAL_SECONDS, REPO_ROOT, TEST_DATABASE_URL, free_port
from sqlalchemy import make_url

# Signs up (first run) or reads /api/auth/me with the saved token (later runs), through HTTP.
SIGN_UP_OR_LOG_BACK_IN = """
import pathlib, sys
from fastapi.testclient import TestClient
from main import app
saved = pathlib.Path("token.txt")
with TestClient(app) as client:
    if saved.exists():
        token = saved.read_text()
        response = client.get("/api/auth/me", headers={"Authorization": "Bearer " + token})
    else:
        account = {"email": "a@example.com", "password": "long enough"}
        response = client.post("/api/auth/signup", json=account)
        saved.write_text(response.json()["access_token"])
print(response.status_code)
"""


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JWT_SECRET", "JWT_SECRET_FILE", "DATABASE_URL")
    }
    environment.update({"PYTHONPATH": str(REPO_ROOT), "BCRYPT_ROUNDS": "4", **env})
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_jwt_secret_a_private_secret_file_is_made_once_and_tokens_survive_restarts(
    tmp_path,
):
    first = run_python(
        SIGN_UP_OR_LOG_BACK_IN, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/todo.db"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["201"]
    secret_file = tmp_path / ".jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    for database_file in ("todo.db", "todo.db-wal", "todo.db-shm"):  # they hold password hashes
        if (tmp_path / database_file).exists():
            assert stat.S_IMODE((tmp_path / database_file).stat().st_mode) == 0o600, database_file
    secret = secret_file.read_text()
    assert len(secret.encode()) >= 32

    restarted = run_python(
        SIGN_UP_OR_LOG_BACK_IN, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/todo.db"
    )
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.split() == ["200"]
    assert secret_file.read_text() == secret
    assert secret not in first.stdout + first.stderr + restarted.stdout + restarted.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_workers_starting_together_agree_on_one_secret(tmp_path):
    code = (
        "import hashlib, pathlib, config; "
        "secret = config.load_or_create_secret(pathlib.Path('shared.secret')); "
        "print(hashlib.sha256(secret.encode()).hexdigest())"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JWT_SECRET": "s" * 32}
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    digests = {process.communicate(timeout=60)[0].strip() for process in starts}
    assert all(process.returncode == 0 for process in starts)
    assert digests == {
        hashlib.sha256((tmp_path / "shared.secret").read_text().strip().encode()).hexdigest()
    }


def test_jwt_secret_file_setting_picks_the_path(tmp_path):
    result = run_python("import config", tmp_path, JWT_SECRET_FILE=str(tmp_path / "keys" / "jwt"))
    assert result.returncode != 0  # its folder does not exist: start-up fails loudly
    (tmp_path / "keys").mkdir()
    result = run_python("import config", tmp_path, JWT_SECRET_FILE=str(tmp_path / "keys" / "jwt"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "keys" / "jwt").exists() and not (tmp_path / ".jwt_secret").exists()


OUT_OF_RANGE = [  # name, value, lowest, highest
    ("BCRYPT_ROUNDS", 3, 4, 31),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", 0, 1, 43_200),
    ("MAX_TASKS_PER_USER", 0, 1, 100_000_000),
    ("STATEMENT_TIMEOUT_MS", 50, 100, 600_000),
]
NOT_A_NUMBER = {
    "ACCESS_TOKEN_EXPIRE_MINUTES": "soon",
    "MAX_TASKS_PER_USER": "many",
    "STATEMENT_TIMEOUT_MS": "2s",
}
BAD_SETTINGS = [
    ({"JWT_SECRET": "too-short"}, "JWT_SECRET must be at least 32 bytes long"),
    ({"JWT_SECRET": ""}, "JWT_SECRET must be at least 32 bytes long"),
    ({"BETTER_AUTH_SECRET": "too-short"}, "BETTER_AUTH_SECRET must be at least 32 bytes long"),
    (
        {"JWT_SECRET": "k" * 40, "BETTER_AUTH_SECRET": "k" * 40},
        "BETTER_AUTH_SECRET must differ from JWT_SECRET",
    ),
    ({"BETTER_AUTH_URL": "localhost:3000"}, "BETTER_AUTH_URL must be an http:// or https:// URL"),
    (
        {"BETTER_AUTH_JWKS_URL": "http://127.0.0.1:3000/api/auth/jwks"},
        "BETTER_AUTH_JWKS_URL needs BETTER_AUTH_URL",
    ),
    *(
        ({name: str(value)}, f"{name} must be between {low} and {high}, not {value}")
        for name, value, low, high in OUT_OF_RANGE
    ),
    *(
        ({name: value}, f"{name} must be a whole number, not {value!r}")
        for name, value in NOT_A_NUMBER.items()
    ),
]


@pytest.mark.parametrize("env, message", BAD_SETTINGS)
def test_bad_settings_stop_start_up_with_a_clear_message(tmp_path, env, message):
    result = run_python("import config", tmp_path, **env)  # main reads its settings from config
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cors_origins_and_token_lifetime_come_from_the_environment(tmp_path):
    code = """
from fastapi.testclient import TestClient
from main import app
preflight = {"Access-Control-Request-Method": "GET"}
with TestClient(app) as client:
    allowed = client.options("/health", headers={"Origin": "https://app.example", **preflight})
    default = client.options("/health", headers={"Origin": "http://localhost:3000", **preflight})
    account = {"email": "a@example.com", "password": "long enough"}
    signup = client.post("/api/auth/signup", json=account)
origin = allowed.headers.get("access-control-allow-origin")
print(origin, default.status_code, signup.json()["expires_in"])
"""
    result = run_python(
        code,
        tmp_path,
        JWT_SECRET="k" * 40,
        DATABASE_URL=f"sqlite:///{tmp_path}/todo.db",
        CORS_ORIGINS="https://app.example, https://admin.example",
        ACCESS_TOKEN_EXPIRE_MINUTES="15",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["https://app.example", "400", "900"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ["None", "None", "False"]),
        (
            {"BETTER_AUTH_URL": "http://localhost:3000/"},
            ["http://localhost:3000", "http://localhost:3000/api/auth/jwks", "False"],
        ),
        (
            {
                "BETTER_AUTH_URL": "https://auth.example",
                "BETTER_AUTH_JWKS_URL": "http://10.0.0.2:3000/api/auth/jwks",
            },
            ["https://auth.example", "http://10.0.0.2:3000/api/auth/jwks", "False"],
        ),
        ({"BETTER_AUTH_SECRET": "b" * 32}, ["None", "None", "True"]),
    ],
)
def test_better_auth_settings_come_from_the_environment(tmp_path, env, expected):
    code = (
        "from config import settings as s; "
        "print(s.better_auth_url, s.better_auth_jwks_url, s.better_auth_secret is not None)"
    )
    result = run_python(code, tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_better_auth_secret_is_used_without_the_whitespace_around_it(tmp_path):
    """A secret pasted with a newline must still check tokens signed with the secret itself."""
    code = "from config import settings; print(repr(settings.better_auth_secret))"
    result = run_python(code, tmp_path, BETTER_AUTH_SECRET=f"  {'b' * 40}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr("b" * 40)


# --- configuration mistakes: each one serves, or stops start-up with one line ---


# Root may write to any file whatever its mode. To see what a plain user sees, a test
# starts the server without that privilege (setpriv is part of util-linux).
AS_A_PLAIN_USER = (
    (
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
    )
    if os.geteuid() == 0
    else ()
)


def start_uvicorn(
    cwd: Path, env: dict[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`uvicorn main:app` as a user runs it; each case here must stop it at start-up."""
    environment = {key: value for key, value in os.environ.items() if key not in APP_SETTINGS}
    environment.update({"BCRYPT_ROUNDS": "4", **env})
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "main:app",
        "--app-dir",
        str(REPO_ROOT),
        "--port",
        str(free_port()),
    ]
    return subprocess.run(
        [*prefix, *command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
    )


def assert_one_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    for part in expected:
        assert part in line, line


SECRET = {"JWT_SECRET": "k" * 40}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"DATABASE_URL": "sqlite:///{tmp}/missing/todo.db", **SECRET},
         ["DATABASE_URL: the folder {tmp}/missing does not exist; create it"]),
        ({"DATABASE_URL": "sqlite:///{tmp}", **SECRET},
         ["DATABASE_URL: {tmp} is a folder, not a database file"]),
        ({"DATABASE_URL": "mysql://todo:hunter2@db.example/todo", **SECRET},
         ["DATABASE_URL: mysql:// is not supported; use sqlite:///PATH"]),
        ({"DATABASE_URL": "todo.db", **SECRET},
         ["DATABASE_URL is not a database URL; use sqlite:///PATH"]),
        ({"JWT_SECRET_FILE": "{tmp}/missing/jwt"},
         ["JWT_SECRET_FILE: cannot read or create {tmp}/missing/jwt (No such file or directory)",
          "set JWT_SECRET"]),
        ({"JWT_SECRET_FILE": "{tmp}"},
         ["JWT_SECRET_FILE: cannot read or create {tmp} (Is a directory)"]),
        ({"JWT_SECRET": " " * 40},
         ["JWT_SECRET must be at least 32 bytes long, not counting surrounding whitespace"]),
        ({"LOGIN_FAILURE_WINDOW_MINUTES": "0", **SECRET},
         ["LOGIN_FAILURE_WINDOW_MINUTES must be between 1 and"]),
        ({"DATABASE_WAIT_SECONDS": "-1", **SECRET},
         ["DATABASE_WAIT_SECONDS must be between 0 and 600, not -1"]),
        ({"BETTER_AUTH_URL": "http://[::1", **SECRET},
         ["BETTER_AUTH_URL is not a well-formed URL: Invalid IPv6 URL"]),
        ({"BETTER_AUTH_URL": "http://exa mple.com", **SECRET},
         ["BETTER_AUTH_URL is not a well-formed URL: it needs a host name, without spaces"]),
        ({"BETTER_AUTH_URL": "https://auth.example", **SECRET,
          "BETTER_AUTH_JWKS_URL": "https://auth.example:jwks"},
         ["BETTER_AUTH_JWKS_URL is not a well-formed URL: Port could not be cast to integer"]),
    ],
    ids=[
        "sqlite-in-missing-folder", "sqlite-path-is-a-folder", "unsupported-database", "not-a-url",
        "secret-file-in-missing-folder", "secret-file-is-a-folder", "blank-secret",
        "zero-failure-window", "negative-database-wait", "better-auth-url-unclosed-ipv6",
        "better-auth-url-with-a-space", "jwks-url-with-a-word-for-port",
    ],
)  # fmt: skip
def test_a_configuration_mistake_stops_uvicorn_with_one_line(tmp_path, env, expected):
    env = {name: value.format(tmp=tmp_path) for name, value in env.items()}
    env.setdefault("DATABASE_URL", f"sqlite:///{tmp_path}/todo.db")
    result = start_uvicorn(tmp_path, env)
    assert_one_line(result, *(part.format(tmp=tmp_path) for part in expected))
    assert "hunter2" not in result.stderr  # a URL's password is never repeated


def test_a_read_only_database_file_stops_start_up_with_one_line(tmp_path):
    database = tmp_path / "todo.db"
    database.touch(mode=0o444)
    result = start_uvicorn(
        tmp_path, {"DATABASE_URL": f"sqlite:///{database}", **SECRET}, AS_A_PLAIN_USER
    )
    assert_one_line(
        result, f"DATABASE_URL: {database} is read-only for this user; make it writable"
    )


def test_a_read_only_database_folder_stops_start_up_with_one_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o555)
    result = start_uvicorn(
        folder, {"DATABASE_URL": f"sqlite:///{folder}/todo.db", **SECRET}, AS_A_PLAIN_USER
    )
    assert_one_line(result, f"DATABASE_URL: the folder {folder} is read-only for this user")
    folder.chmod(0o755)  # so that pytest can remove it


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_serves(live_server, tmp_path, url):
    server = live_server(env={"DATABASE_URL": url, **SECRET})
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        signup = client.post(
            "/api/auth/signup", json={"email": "demo@example.com", "password": "long enough"}
        )
        assert signup.status_code == 201, signup.text
        headers = {"Authorization": f"Bearer {signup.json()['access_token']}"}
        tasks_url = f"/api/{signup.json()['user']['id']}/tasks"
        created = client.post(tasks_url, json={"title": "demo"}, headers=headers)
        assert created.status_code == 201, created.text
        listing = client.get(tasks_url, headers=headers)
        assert (listing.status_code, [task["title"] for task in listing.json()]) == (200, ["demo"])
        health = client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
    server.stop()
    assert not (tmp_path / "todo.db").exists() and "Traceback" not in server.log()


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_postgres_urls_without_a_driver_use_psycopg(tmp_path, scheme):
    code = "import config; print(config.settings.database_url)"
    result = run_python(
        code, tmp_path, DATABASE_URL=f"{scheme}todo:secret@db.example:5432/todo", **SECRET
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["postgresql+psycopg://todo:secret@db.example:5432/todo"]
    if TEST_DATABASE_URL is not None:  # and such a URL reaches a real server
        hosted = scheme + TEST_DATABASE_URL.split("://", 1)[1]
        code = (
            "import db, sqlalchemy; "
            "print(db.engine.connect().execute(sqlalchemy.text('SELECT 7')).scalar())"
        )
        result = run_python(code, tmp_path, DATABASE_URL=hosted, **SECRET)
        assert (result.returncode, result.stdout.split()) == (0, ["7"]), result.stderr


def test_cors_origins_star_allows_every_origin_without_credentials(tmp_path):
    code = """
from fastapi.testclient import TestClient
from main import app
with TestClient(app) as client:
    preflight = client.options("/api/auth/signup", headers={
        "Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    health = client.get("/health", headers={"Origin": "http://localhost:8080"})
print(preflight.status_code, preflight.headers["access-control-allow-origin"],
      preflight.headers.get("access-control-allow-credentials"),
      health.headers["access-control-allow-origin"])
"""
    result = run_python(
        code,
        tmp_path,
        JWT_SECRET="k" * 40,
        DATABASE_URL=f"sqlite:///{tmp_path}/todo.db",
        CORS_ORIGINS="*",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "*", "None", "*"]


# --- a database that cannot be used stops start-up with one line; one not up yet is waited for ---

NEEDS_POSTGRESQL = pytest.mark.skipif(TEST_DATABASE_URL is None, reason="needs TEST_DATABASE_URL")
WAITING = "Waiting up to"  # the log line of a start-up that waits for its database


def assert_refused_at_start_up(result: subprocess.CompletedProcess, *expected: str) -> None:
    """The lifespan refused to start: uvicorn exits with 3, and one ERROR line, before
    uvicorn's own, says why."""
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    [reason, failed] = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert failed == "ERROR:    Application startup failed. Exiting.", result.stderr
    for part in expected:
        assert part in reason, reason


def test_a_postgresql_refusing_connections_is_waited_for_then_named_without_its_password(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://app:hunter2@127.0.0.1:{port}/todo"
    result = start_uvicorn(tmp_path, {"DATABASE_URL": url, "DATABASE_WAIT_SECONDS": "1", **SECRET})
    database = f"the database at postgresql+psycopg://app@127.0.0.1:{port}/todo (password hidden)"
    assert_refused_at_start_up(
        result,
        f"Cannot connect to {database}: connection refused, "
        "after waiting 1 s (DATABASE_WAIT_SECONDS)",
    )
    waits = [line for line in result.stderr.splitlines() if WAITING in line]
    assert waits == [
        f"INFO:     Waiting up to 1 s (DATABASE_WAIT_SECONDS) for {database}: connection refused"
    ]
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    "url, shown, cause",
    [
        (
            "postgresql://app:hunter2@nohost.invalid/todo",
            "postgresql+psycopg://app@nohost.invalid/todo",
            "failed to resolve host 'nohost.invalid'",
        ),
        ("sqlite:///{tmp}/todo.db", "sqlite:///{tmp}/todo.db", "file is not a database"),
        pytest.param(
            "postgresql://{user}:hunter2@{server}/{database}",
            "postgresql+psycopg://{user}@{server}/{database}",
            "authentication failed",
            marks=NEEDS_POSTGRESQL,
        ),
        pytest.param(
            "postgresql://{user}:{password}@{server}/todo_missing",
            "postgresql+psycopg://{user}@{server}/todo_missing",
            'database "todo_missing" does not exist',
            marks=NEEDS_POSTGRESQL,
        ),
    ],
    ids=["unknown-host", "not-a-sqlite-file", "wrong-password", "unknown-database"],
)
def test_a_database_that_waiting_cannot_help_stops_start_up_at_once(tmp_path, url, shown, cause):
    parts = {"tmp": tmp_path}
    if TEST_DATABASE_URL is not None:
        server = make_url(TEST_DATABASE_URL)
        parts.update(
            user=server.username,
            password=server.password,
            database=server.database,
            server=f"{server.host}:{server.port}",
        )
    url, shown = url.format(**parts), shown.format(**parts)
    if url.startswith("sqlite"):
        (tmp_path / "todo.db").write_text("Notes, not a database.\n" * 100)
    result = start_uvicorn(tmp_path, {"DATABASE_URL": url, **SECRET})  # the default wait, 30 s
    password = make_url(url).password
    shown += " (password hidden)" if password else ""
    assert_refused_at_start_up(result, f"Cannot connect to the database at {shown}: ", cause)
    assert WAITING not in result.stderr
    assert password is None or password not in result.stderr


# DELETE: a file that the app has not opened yet; WAL: one of its own.
@pytest.mark.parametrize("journal_mode", ["DELETE", "WAL"])
def test_a_sqlite_file_locked_by_another_process_stops_start_up_after_the_wait(
    tmp_path, journal_mode
):
    database = tmp_path / "todo.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute(f"PRAGMA journal_mode={journal_mode}")
    holder.execute("CREATE TABLE note (text TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        env = {"DATABASE_URL": f"sqlite:///{database}", "DATABASE_WAIT_SECONDS": "1", **SECRET}
        result = start_uvicorn(tmp_path, env)
    finally:
        holder.close()
    assert time.monotonic() - started < 30  # not the 30 s that a writer waits for the lock
    assert_refused_at_start_up(
        result, f"the database at sqlite:///{database}: database is locked, after waiting 1 s"
    )


def copy_until_closed(source: socket.socket, destination: socket.socket) -> None:
    """Copies bytes until the source closes, then closes the destination's sending side."""
    with suppress(OSError):
        while data := source.recv(65536):
            destination.sendall(data)
        destination.shutdown(socket.SHUT_WR)


class Forward(socketserver.BaseRequestHandler):
    """Joins one connection to the server's upstream, both ways."""

    def handle(self) -> None:
        with socket.create_connection(self.server.upstream) as upstream:
            arguments = (upstream, self.request)
            back = threading.Thread(target=copy_until_closed, args=arguments, daemon=True)
            back.start()
            copy_until_closed(self.request, upstream)
            back.join()


class LateDatabase(socketserver.ThreadingTCPServer):
    """A local port that refuses connections (bound, not listening) until come_up(), then
    forwards each one to `upstream`: a database server that comes up after the app."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), Forward, bind_and_activate=False)
        self.upstream = upstream
        self.server_bind()
        self.port = self.server_address[1]
        self.serving = threading.Thread(target=self.serve_forever, daemon=True)

    def come_up_once_logged(self, log: Path, text: str) -> None:
        """Comes up once `text` is in the file `log`; in a thread of its own."""

        def watch() -> None:
            deadline = time.monotonic() + 60
            while not (log.exists() and text in log.read_text()) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_SECONDS)
            self.server_activate()  # listen()
            self.serving.start()

        threading.Thread(target=watch, daemon=True).start()

    def stop(self) -> None:
        if self.serving.is_alive():
            self.shutdown()
        self.server_close()


@NEEDS_POSTGRESQL
def test_a_postgresql_that_comes_up_during_the_wait_is_served(
    live_server, tmp_path, empty_database_url
):
    """As when a container starts beside its database: refused at first, then served."""
    server_url = make_url(empty_database_url)  # a new, empty database: start-up migrates it
    database = LateDatabase((server_url.host, server_url.port))
    url = server_url.set(host="127.0.0.1", port=database.port).render_as_string(hide_password=False)
    database.come_up_once_logged(tmp_path / "server.log", WAITING)  # live_server's log
    try:
        server = live_server(env={"DATABASE_URL": url, "DATABASE_WAIT_SECONDS": "30"})
        with httpx2.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/health")
            account = {"email": "a@example.com", "password": "long enough"}
            signup = client.post("/api/auth/signup", json=account)
        server.stop()
    finally:
        database.stop()
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (signup.status_code, signup.json()["user"]["email"]) == (201, "a@example.com")
    [wait] = [line for line in server.log().splitlines() if WAITING in line]
    assert wait.startswith("INFO:     Waiting up to 30 s (DATABASE_WAIT_SECONDS) for the database")
    assert f"@127.0.0.1:{database.port}/" in wait
    assert wait.endswith(" (password hidden): connection refused")
    assert server_url.password not in server.log() and "Traceback" not in server.log()
