"""Settings, read once from the environment, with safe defaults for a laptop. A missing
JWT_SECRET is made once and kept in JWT_SECRET_FILE, so tokens survive restarts."""

import os
import re
import secrets
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIN_SECRET_BYTES = 32
MAX_URL_LENGTH = 255  # BETTER_AUTH_URL is stored as the issuer of its accounts
DATABASE_URL_FORMS = (
    "sqlite:///PATH, sqlite:///:memory: or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
)
DEFAULT_CORS_ORIGINS = (
    "http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173,http://127.0.0.1:5173"
)


def load_or_create_secret(path: Path) -> str:
    """The secret in `path`, made if missing: link() fails if the file exists, so workers
    starting together agree."""
    if not path.exists():
        # Mode 0o600, gone on close.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp") as file:
            file.write(secrets.token_urlsafe(48))
            file.flush()
            os.fsync(file.fileno())
            with suppress(FileExistsError):  # another worker's secret won
                os.link(file.name, path)
    return path.read_text().strip()


def strong_secret(source: str, secret: str) -> str:
    # Surrounding whitespace (a pasted newline) adds no secrecy.
    secret = secret.strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(
            f"{source} must be at least {MIN_SECRET_BYTES} bytes long, not counting surrounding "
            "whitespace. Generate one with: "
            'python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    return secret


def jwt_secret_setting() -> str:
    if "JWT_SECRET" in os.environ:
        return strong_secret("JWT_SECRET", os.environ["JWT_SECRET"])
    path = Path(os.environ.get("JWT_SECRET_FILE", ".jwt_secret"))
    try:
        return strong_secret(str(path), load_or_create_secret(path))
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise SystemExit(
            f"JWT_SECRET_FILE: cannot read or create {path} ({reason}). Point it at a file in an "
            "existing folder that this user can write, or set JWT_SECRET"
        ) from None


def database_url_setting() -> str:
    """No message repeats the URL: it may hold a password."""
    raw = os.environ.get("DATABASE_URL", "sqlite:///./todo.db").strip()
    raw = re.sub("^postgres(ql)?://", "postgresql+psycopg://", raw)  # the schemes hosts hand out
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SystemExit(f"DATABASE_URL is not a database URL; use {DATABASE_URL_FORMS}") from None
    if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise SystemExit(
            f"DATABASE_URL: {url.drivername}:// is not supported; use {DATABASE_URL_FORMS}"
        )
    if url.drivername == "postgresql+psycopg" or url.database in (None, "", ":memory:"):
        return raw
    path = Path(url.database)
    if not path.parent.is_dir():
        problem = f"the folder {path.parent} does not exist; create it, or"
    elif path.is_dir():
        problem = f"{path} is a folder, not a database file;"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problem = f"{path} is read-only for this user; make it writable, or"
    # SQLite makes the file, and its -wal and -shm, there.
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"the folder {path.parent} is read-only for this user; make it writable, or"
    else:
        return raw
    raise SystemExit(
        f"DATABASE_URL: {problem} point DATABASE_URL at a file in a folder that this user can write"
    )


def int_setting(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SystemExit(f"{name} must be between {low} and {high}, not {value}")
    return value


def url_setting(name: str) -> str | None:
    """An http(s) URL without its trailing slash; None when unset or empty."""
    url = os.environ.get(name, "").strip().rstrip("/")
    if not url:
        return None
    if (
        not url.startswith(("http://", "https://"))
        or len(url) > MAX_URL_LENGTH
        or not url.isascii()
    ):
        raise SystemExit(
            f"{name} must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters"
        )
    # Better Auth would fail on such a URL at each request: stop now.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- reading it checks the port
    except ValueError as error:
        raise SystemExit(f"{name} is not a well-formed URL: {error}") from None
    if not parts.hostname or any(character.isspace() for character in parts.hostname):
        raise SystemExit(f"{name} is not a well-formed URL: it needs a host name, without spaces")
    return url


def sqlite_synchronous_setting() -> str:
    # NORMAL: a crash loses no committed write; FULL: nor does a power cut. OFF can corrupt.
    raw = os.environ.get("SQLITE_SYNCHRONOUS", "NORMAL")
    if (value := raw.strip().upper()) not in ("NORMAL", "FULL"):
        raise SystemExit(f"SQLITE_SYNCHRONOUS must be one of NORMAL, FULL, not {raw!r}")
    return value


def jwks_url_setting() -> str | None:
    better_auth_url, jwks_url = url_setting("BETTER_AUTH_URL"), url_setting("BETTER_AUTH_JWKS_URL")
    if jwks_url and not better_auth_url:
        raise SystemExit(
            "BETTER_AUTH_JWKS_URL needs BETTER_AUTH_URL, which its tokens' iss and aud must equal"
        )
    return jwks_url or (better_auth_url and f"{better_auth_url}/api/auth/jwks")


def list_setting(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def optional_secret(name: str) -> str | None:
    return strong_secret(name, os.environ[name]) if os.environ.get(name) else None


def from_env(read: Callable[..., Any], *args: Any) -> Any:
    return field(default_factory=lambda: read(*args))


@dataclass(frozen=True)
class Settings:
    jwt_secret: str = from_env(jwt_secret_setting)
    better_auth_url: str | None = from_env(url_setting, "BETTER_AUTH_URL")
    better_auth_jwks_url: str | None = from_env(jwks_url_setting)
    better_auth_secret: str | None = from_env(optional_secret, "BETTER_AUTH_SECRET")
    database_url: str = from_env(database_url_setting)
    database_wait_seconds: int = from_env(int_setting, "DATABASE_WAIT_SECONDS", 30, 0, 600)
    access_token_expire_minutes: int = from_env(
        int_setting, "ACCESS_TOKEN_EXPIRE_MINUTES", 60, 1, 60 * 24 * 30
    )
    refresh_token_expire_days: int = from_env(int_setting, "REFRESH_TOKEN_EXPIRE_DAYS", 30, 1, 365)
    refresh_token_grace_seconds: int = from_env(
        int_setting, "REFRESH_TOKEN_GRACE_SECONDS", 10, 0, 60
    )
    bcrypt_rounds: int = from_env(int_setting, "BCRYPT_ROUNDS", 12, 4, 31)  # bcrypt's own range
    cors_origins: list[str] = from_env(list_setting, "CORS_ORIGINS", DEFAULT_CORS_ORIGINS)
    login_failure_limit: int = from_env(int_setting, "LOGIN_FAILURE_LIMIT", 5, 0, 1_000_000)
    # A window of 0 would count nothing: LOGIN_FAILURE_LIMIT=0 turns the limit off.
    login_failure_window_minutes: int = from_env(
        int_setting, "LOGIN_FAILURE_WINDOW_MINUTES", 15, 1, 60 * 24 * 30
    )
    auth_requests_per_minute: int = from_env(
        int_setting, "AUTH_REQUESTS_PER_MINUTE", 20, 0, 1_000_000
    )
    sqlite_synchronous: str = from_env(sqlite_synchronous_setting)
    max_tasks_per_user: int = from_env(int_setting, "MAX_TASKS_PER_USER", 10_000, 1, 100_000_000)
    # Enough for any ordinary query on a busy machine; a backtracking LIKE answers in seconds.
    statement_timeout_ms: int = from_env(int_setting, "STATEMENT_TIMEOUT_MS", 2_000, 100, 600_000)

    def __post_init__(self) -> None:
        # Else our own tokens would pass as Better Auth tokens too.
        secret = self.better_auth_secret
        if secret is not None and secrets.compare_digest(secret.encode(), self.jwt_secret.encode()):
            raise SystemExit("BETTER_AUTH_SECRET must differ from JWT_SECRET")


settings = Settings()
