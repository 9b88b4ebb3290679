"""Start-up configuration, tested in fresh Python processes because settings are read
once at import: the JWT secret file, the refusal of weak secrets, bad numbers, and the
database URLs that serve or stop start-up with one line."""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from conftest import APP_SETTINGS, REPO_ROOT, TEST_DATABASE_URL, free_port

# Signs up (first run) or reads /api/auth/me with the saved token (later runs), through HTTP.
SIGN_UP_OR_LOG_BACK_IN = """
import pathlib, sys
from fastapi.testclient import TestClient
from main import app
saved = pathlib.Path("token.txt")
with TestClient(app) as client:
    if saved.exists():
        response = client.get("/api/auth/me", headers={"Authorization": "Bearer " + saved.read_text()})
    else:
        response = client.post("/api/auth/signup", json={"email": "a@example.com", "password": "long enough"})
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
        [sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
    )


def test_without_jwt_secret_a_private_secret_file_is_made_once_and_tokens_survive_restarts(tmp_path):
    first = run_python(SIGN_UP_OR_LOG_BACK_IN, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/todo.db")
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["201"]
    secret_file = tmp_path / ".jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    for database_file in ("todo.db", "todo.db-wal", "todo.db-shm"):  # they hold password hashes
        if (tmp_path / database_file).exists():
            assert stat.S_IMODE((tmp_path / database_file).stat().st_mode) == 0o600, database_file
    secret = secret_file.read_text()
    assert len(secret.encode()) >= 32

    restarted = run_python(SIGN_UP_OR_LOG_BACK_IN, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/todo.db")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.split() == ["200"]
    assert secret_file.read_text() == secret
    assert secret not in first.stdout + first.stderr + restarted.stdout + restarted.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_workers_starting_together_agree_on_one_secret(tmp_path):
    code = (
        "import hashlib, pathlib, config; "
        "print(hashlib.sha256(config.load_or_create_secret(pathlib.Path('shared.secret')).encode()).hexdigest())"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JWT_SECRET": "s" * 32}
    starts = [
        subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    digests = {process.communicate(timeout=60)[0].strip() for process in starts}
    assert all(process.returncode == 0 for process in starts)
    assert digests == {hashlib.sha256((tmp_path / "shared.secret").read_text().strip().encode()).hexdigest()}


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
NOT_A_NUMBER = {"ACCESS_TOKEN_EXPIRE_MINUTES": "soon", "MAX_TASKS_PER_USER": "many", "STATEMENT_TIMEOUT_MS": "2s"}
BAD_SETTINGS = [
    ({"JWT_SECRET": "too-short"}, "JWT_SECRET must be at least 32 bytes long"),
    ({"JWT_SECRET": ""}, "JWT_SECRET must be at least 32 bytes long"),
    ({"BETTER_AUTH_SECRET": "too-short"}, "BETTER_AUTH_SECRET must be at least 32 bytes long"),
    ({"JWT_SECRET": "k" * 40, "BETTER_AUTH_SECRET": "k" * 40}, "BETTER_AUTH_SECRET must differ from JWT_SECRET"),
    ({"BETTER_AUTH_URL": "localhost:3000"}, "BETTER_AUTH_URL must be an http:// or https:// URL"),
    ({"BETTER_AUTH_JWKS_URL": "http://127.0.0.1:3000/api/auth/jwks"}, "BETTER_AUTH_JWKS_URL needs BETTER_AUTH_URL"),
    *(
        ({name: str(value)}, f"{name} must be between {low} and {high}, not {value}")
        for name, value, low, high in OUT_OF_RANGE
    ),
    *(({name: value}, f"{name} must be a whole number, not {value!r}") for name, value in NOT_A_NUMBER.items()),
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
with TestClient(app) as client:
    allowed = client.options("/health", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    default = client.options("/health", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
    signup = client.post("/api/auth/signup", json={"email": "a@example.com", "password": "long enough"})
print(allowed.headers.get("access-control-allow-origin"), default.status_code, signup.json()["expires_in"])
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
        ({"BETTER_AUTH_URL": "http://localhost:3000/"}, ["http://localhost:3000", "http://localhost:3000/api/auth/jwks", "False"]),
        (
            {"BETTER_AUTH_URL": "https://auth.example", "BETTER_AUTH_JWKS_URL": "http://10.0.0.2:3000/api/auth/jwks"},
            ["https://auth.example", "http://10.0.0.2:3000/api/auth/jwks", "False"],
        ),
        ({"BETTER_AUTH_SECRET": "b" * 32}, ["None", "None", "True"]),
    ],
)
def test_better_auth_settings_come_from_the_environment(tmp_path, env, expected):
    code = "from config import settings as s; print(s.better_auth_url, s.better_auth_jwks_url, s.better_auth_secret is not None)"
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
    ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search")
    if os.geteuid() == 0
    else ()
)


def start_uvicorn(cwd: Path, env: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`uvicorn main:app` as a user runs it; each case here must stop it at start-up."""
    environment = {key: value for key, value in os.environ.items() if key not in APP_SETTINGS}
    environment.update({"BCRYPT_ROUNDS": "4", **env})
    command = [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(REPO_ROOT), "--port", str(free_port())]
    return subprocess.run([*prefix, *command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)


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
        ({"DATABASE_URL": "sqlite:///{tmp}", **SECRET}, ["DATABASE_URL: {tmp} is a folder, not a database file"]),
        ({"DATABASE_URL": "mysql://todo:hunter2@db.example/todo", **SECRET},
         ["DATABASE_URL: mysql:// is not supported; use sqlite:///PATH"]),
        ({"DATABASE_URL": "todo.db", **SECRET}, ["DATABASE_URL is not a database URL; use sqlite:///PATH"]),
        ({"JWT_SECRET_FILE": "{tmp}/missing/jwt"},
         ["JWT_SECRET_FILE: cannot read or create {tmp}/missing/jwt (No such file or directory)", "set JWT_SECRET"]),
        ({"JWT_SECRET_FILE": "{tmp}"}, ["JWT_SECRET_FILE: cannot read or create {tmp} (Is a directory)"]),
        ({"JWT_SECRET": " " * 40}, ["JWT_SECRET must be at least 32 bytes long, not counting surrounding whitespace"]),
        ({"LOGIN_FAILURE_WINDOW_MINUTES": "0", **SECRET}, ["LOGIN_FAILURE_WINDOW_MINUTES must be between 1 and"]),
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
        "secret-file-in-missing-folder", "secret-file-is-a-folder", "blank-secret", "zero-failure-window",
        "better-auth-url-unclosed-ipv6", "better-auth-url-with-a-space", "jwks-url-with-a-word-for-port",
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
    result = start_uvicorn(tmp_path, {"DATABASE_URL": f"sqlite:///{database}", **SECRET}, AS_A_PLAIN_USER)
    assert_one_line(result, f"DATABASE_URL: {database} is read-only for this user; make it writable")


def test_a_read_only_database_folder_stops_start_up_with_one_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o555)
    result = start_uvicorn(folder, {"DATABASE_URL": f"sqlite:///{folder}/todo.db", **SECRET}, AS_A_PLAIN_USER)
    assert_one_line(result, f"DATABASE_URL: the folder {folder} is read-only for this user")
    folder.chmod(0o755)  # so that pytest can remove it


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_serves(live_server, tmp_path, url):
    server = live_server(env={"DATABASE_URL": url, **SECRET})
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        signup = client.post("/api/auth/signup", json={"email": "demo@example.com", "password": "long enough"})
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
    result = run_python(code, tmp_path, DATABASE_URL=f"{scheme}todo:secret@db.example:5432/todo", **SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["postgresql+psycopg://todo:secret@db.example:5432/todo"]
    if TEST_DATABASE_URL is not None:  # and such a URL reaches a real server
        hosted = scheme + TEST_DATABASE_URL.split("://", 1)[1]
        code = "import db, sqlalchemy; print(db.engine.connect().execute(sqlalchemy.text('SELECT 7')).scalar())"
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
      preflight.headers.get("access-control-allow-credentials"), health.headers["access-control-allow-origin"])
"""
    result = run_python(
        code, tmp_path, JWT_SECRET="k" * 40, DATABASE_URL=f"sqlite:///{tmp_path}/todo.db", CORS_ORIGINS="*"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "*", "None", "*"]
