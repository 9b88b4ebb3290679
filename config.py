"""Settings, read once from environment variables, with safe defaults for a laptop.

The JWT secret is never a constant: when JWT_SECRET is unset, a random one is generated
on first start and kept in JWT_SECRET_FILE, so tokens survive restarts and every worker
process started together reads the same secret.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIN_SECRET_BYTES = 32
MAX_URL_LENGTH = 255  # BETTER_AUTH_URL is stored as the issuer of its accounts
DATABASE_URL_FORMS = "sqlite:///PATH, sqlite:///:memory: or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
# The schemes hosts hand out for PostgreSQL, and the driver this project installs.
POSTGRESQL_SCHEMES = ("postgres://", "postgresql://")
POSTGRESQL_DRIVER = "postgresql+psycopg"
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
DEFAULT_CORS_ORIGINS = (
    "http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173,http://127.0.0.1:5173"
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: str
    access_token_expire_minutes: int
    refresh_token_expire_days: int
    refresh_token_grace_seconds: int
    bcrypt_rounds: int
    cors_origins: list[str]
    # Abuse limits; a limit of 0 turns it off (benchmarks, test suites that create many users).
    login_failure_limit: int
    login_failure_window_minutes: int
    auth_requests_per_minute: int
    sqlite_synchronous: str
    # Bounds on what one request can cost.
    max_tasks_per_user: int
    statement_timeout_ms: int
    # Better Auth (see better_auth.py); None turns that kind of token off.
    better_auth_url: str | None
    better_auth_jwks_url: str | None
    better_auth_secret: str | None


def load_or_create_secret(path: Path) -> str:
    """Return the secret kept in `path`, creating it atomically if it does not exist.

    The secret is written to a private temporary file and then hard-linked into place:
    link() fails if the target exists, so of several workers starting together exactly
    one creates the file and the others read a complete secret, never a half-written one.
    """
    if not path.exists():
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48))
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
        except FileExistsError:
            pass  # another worker won the race; its secret is the one to use
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip()


def read_secret_file(path: Path) -> str:
    try:
        return load_or_create_secret(path)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a text file"
        raise SystemExit(
            f"JWT_SECRET_FILE: cannot read or create {path} ({reason}). Point it at a file in an "
            "existing folder that this user can write, or set JWT_SECRET"
        ) from None


def require_strong_secret(secret: str, source: str) -> str:
    # Surrounding whitespace (a pasted newline, a secret of spaces) adds no secrecy.
    secret = secret.strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(
            f"{source} must be at least {MIN_SECRET_BYTES} bytes long, not counting surrounding whitespace. "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    return secret


def check_sqlite_file(database: str | None) -> None:
    """Stop start-up with one line if SQLite could not create or write the file, instead
    of a traceback at start-up or a 500 at the first write."""
    if database in (None, "", ":memory:"):
        return  # in memory
    path = Path(database)
    folder = path.parent
    elsewhere = "point DATABASE_URL at a file in a folder that this user can write"
    if not folder.is_dir():
        raise SystemExit(f"DATABASE_URL: the folder {folder} does not exist; create it, or {elsewhere}")
    if path.is_dir():
        raise SystemExit(f"DATABASE_URL: {path} is a folder, not a database file; {elsewhere}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise SystemExit(f"DATABASE_URL: {path} is read-only for this user; make it writable, or {elsewhere}")
    # SQLite creates the file, and its -wal and -shm files, beside it.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(
            f"DATABASE_URL: the folder {folder} is read-only for this user; make it writable, or {elsewhere}"
        )


def database_url_setting() -> str:
    """DATABASE_URL, with postgres:// and postgresql:// read as PostgreSQL through psycopg.
    No message repeats the URL: it may hold a password."""
    raw = os.environ.get("DATABASE_URL", "sqlite:///./todo.db").strip()
    for scheme in POSTGRESQL_SCHEMES:
        if raw.startswith(scheme):
            raw = f"{POSTGRESQL_DRIVER}://{raw.removeprefix(scheme)}"
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SystemExit(f"DATABASE_URL is not a database URL; use {DATABASE_URL_FORMS}") from None
    if url.drivername in SQLITE_DRIVERS:
        check_sqlite_file(url.database)
    elif url.drivername != POSTGRESQL_DRIVER:
        raise SystemExit(f"DATABASE_URL: {url.drivername}:// is not supported; use {DATABASE_URL_FORMS}")
    return raw


def int_setting(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SystemExit(f"{name} must be between {low} and {high}, not {value}")
    return value


def choice_setting(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, default)
    if raw.strip().upper() not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw.strip().upper()


def url_setting(name: str) -> str | None:
    """An http(s) URL without its trailing slash, or None when the variable is unset or empty."""
    raw = os.environ.get(name, "").strip().rstrip("/")
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")) or len(raw) > MAX_URL_LENGTH or not raw.isascii():
        raise SystemExit(f"{name} must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters")
    return raw


def better_auth_settings(jwt_secret: str) -> tuple[str | None, str | None, str | None]:
    """BETTER_AUTH_URL, the key set's URL, and BETTER_AUTH_SECRET."""
    url = url_setting("BETTER_AUTH_URL")
    jwks_url = url_setting("BETTER_AUTH_JWKS_URL")
    if jwks_url is not None and url is None:
        raise SystemExit("BETTER_AUTH_JWKS_URL needs BETTER_AUTH_URL, which its tokens' iss and aud must equal")
    secret = os.environ.get("BETTER_AUTH_SECRET") or None
    if secret is not None:
        secret = require_strong_secret(secret, "BETTER_AUTH_SECRET")
        # With one secret for both, our own tokens would pass as Better Auth tokens too.
        if secrets.compare_digest(secret.encode(), jwt_secret.encode()):
            raise SystemExit("BETTER_AUTH_SECRET must differ from JWT_SECRET")
    if url is not None and jwks_url is None:
        jwks_url = f"{url}/api/auth/jwks"
    return url, jwks_url, secret


def load_settings() -> Settings:
    if "JWT_SECRET" in os.environ:
        jwt_secret = require_strong_secret(os.environ["JWT_SECRET"], "JWT_SECRET")
    else:
        secret_file = Path(os.environ.get("JWT_SECRET_FILE", ".jwt_secret"))
        jwt_secret = require_strong_secret(read_secret_file(secret_file), str(secret_file))
    origins = os.environ.get("CORS_ORIGINS", DEFAULT_CORS_ORIGINS)
    better_auth_url, better_auth_jwks_url, better_auth_secret = better_auth_settings(jwt_secret)
    return Settings(
        database_url=database_url_setting(),
        jwt_secret=jwt_secret,
        access_token_expire_minutes=int_setting("ACCESS_TOKEN_EXPIRE_MINUTES", 60, 1, 60 * 24 * 30),
        refresh_token_expire_days=int_setting("REFRESH_TOKEN_EXPIRE_DAYS", 30, 1, 365),
        refresh_token_grace_seconds=int_setting("REFRESH_TOKEN_GRACE_SECONDS", 10, 0, 60),
        bcrypt_rounds=int_setting("BCRYPT_ROUNDS", 12, 4, 31),  # bcrypt's own range
        cors_origins=[origin.strip() for origin in origins.split(",") if origin.strip()],
        login_failure_limit=int_setting("LOGIN_FAILURE_LIMIT", 5, 0, 1_000_000),
        # A window of 0 would count nothing, so it is refused: LOGIN_FAILURE_LIMIT=0 turns the limit off.
        login_failure_window_minutes=int_setting("LOGIN_FAILURE_WINDOW_MINUTES", 15, 1, 60 * 24 * 30),
        auth_requests_per_minute=int_setting("AUTH_REQUESTS_PER_MINUTE", 20, 0, 1_000_000),
        # NORMAL: no committed write is lost when the server crashes; FULL: nor when the
        # machine loses power. OFF is not offered: it can corrupt the file.
        sqlite_synchronous=choice_setting("SQLITE_SYNCHRONOUS", "NORMAL", ("NORMAL", "FULL")),
        max_tasks_per_user=int_setting("MAX_TASKS_PER_USER", 10_000, 1, 100_000_000),
        # Long enough for any ordinary query on a busy machine; short enough that the
        # slowest search (LIKE backtracks: text length times pattern length, per row) is
        # answered, with a 503 if need be, within a few seconds.
        statement_timeout_ms=int_setting("STATEMENT_TIMEOUT_MS", 2_000, 100, 600_000),
        better_auth_url=better_auth_url,
        better_auth_jwks_url=better_auth_jwks_url,
        better_auth_secret=better_auth_secret,
    )


settings = load_settings()
