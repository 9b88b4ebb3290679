"""Start-up configuration, tested in fresh Python processes because settings are read
once at import: the JWT secret file, the refusal of weak secrets, and bad numbers."""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent

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
    environment.update({"PYTHONPATH": str(REPO), "BCRYPT_ROUNDS": "4", **env})
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
    environment = {**os.environ, "PYTHONPATH": str(REPO), "JWT_SECRET": "s" * 32}
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


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JWT_SECRET": "too-short"}, "JWT_SECRET must be at least 32 bytes long"),
        ({"JWT_SECRET": ""}, "JWT_SECRET must be at least 32 bytes long"),
        ({"BCRYPT_ROUNDS": "3"}, "BCRYPT_ROUNDS must be between 4 and 31, not 3"),
        ({"ACCESS_TOKEN_EXPIRE_MINUTES": "soon"}, "ACCESS_TOKEN_EXPIRE_MINUTES must be a whole number"),
        ({"ACCESS_TOKEN_EXPIRE_MINUTES": "0"}, "ACCESS_TOKEN_EXPIRE_MINUTES must be between 1"),
        ({"MAX_TASKS_PER_USER": "0"}, "MAX_TASKS_PER_USER must be between 1 and 100000000, not 0"),
        ({"MAX_TASKS_PER_USER": "many"}, "MAX_TASKS_PER_USER must be a whole number, not 'many'"),
        ({"STATEMENT_TIMEOUT_MS": "50"}, "STATEMENT_TIMEOUT_MS must be between 100 and 600000, not 50"),
        ({"STATEMENT_TIMEOUT_MS": "2s"}, "STATEMENT_TIMEOUT_MS must be a whole number, not '2s'"),
    ],
)
def test_bad_settings_stop_start_up_with_a_clear_message(tmp_path, env, message):
    result = run_python("import main", tmp_path, **env)
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
