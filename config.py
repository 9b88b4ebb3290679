"""Settings, read once from environment variables, with safe defaults for a laptop.

The JWT secret is never a constant: when JWT_SECRET is unset, a random one is generated
on first start and kept in JWT_SECRET_FILE, so tokens survive restarts and every worker
process started together reads the same secret.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

MIN_SECRET_BYTES = 32
DEFAULT_CORS_ORIGINS = (
    "http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173,http://127.0.0.1:5173"
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: str
    access_token_expire_minutes: int
    bcrypt_rounds: int
    cors_origins: list[str]
    # Abuse limits; 0 turns a limit off (benchmarks, test suites that create many users).
    login_failure_limit: int
    login_failure_window_minutes: int
    auth_requests_per_minute: int
    sqlite_synchronous: str
    # Bounds on what one request can cost.
    max_tasks_per_user: int
    statement_timeout_ms: int


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


def require_strong_secret(secret: str, source: str) -> str:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(
            f"{source} must be at least {MIN_SECRET_BYTES} bytes long. "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    return secret


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


def load_settings() -> Settings:
    if "JWT_SECRET" in os.environ:
        jwt_secret = require_strong_secret(os.environ["JWT_SECRET"], "JWT_SECRET")
    else:
        secret_file = Path(os.environ.get("JWT_SECRET_FILE", ".jwt_secret"))
        jwt_secret = require_strong_secret(load_or_create_secret(secret_file), str(secret_file))
    origins = os.environ.get("CORS_ORIGINS", DEFAULT_CORS_ORIGINS)
    return Settings(
        database_url=os.environ.get("DATABASE_URL", "sqlite:///./todo.db"),
        jwt_secret=jwt_secret,
        access_token_expire_minutes=int_setting("ACCESS_TOKEN_EXPIRE_MINUTES", 60, 1, 60 * 24 * 30),
        bcrypt_rounds=int_setting("BCRYPT_ROUNDS", 12, 4, 31),  # bcrypt's own range
        cors_origins=[origin.strip() for origin in origins.split(",") if origin.strip()],
        login_failure_limit=int_setting("LOGIN_FAILURE_LIMIT", 5, 0, 1_000_000),
        login_failure_window_minutes=int_setting("LOGIN_FAILURE_WINDOW_MINUTES", 15, 0, 60 * 24 * 30),
        auth_requests_per_minute=int_setting("AUTH_REQUESTS_PER_MINUTE", 20, 0, 1_000_000),
        # NORMAL: no committed write is lost when the server crashes; FULL: nor when the
        # machine loses power. OFF is not offered: it can corrupt the file.
        sqlite_synchronous=choice_setting("SQLITE_SYNCHRONOUS", "NORMAL", ("NORMAL", "FULL")),
        max_tasks_per_user=int_setting("MAX_TASKS_PER_USER", 10_000, 1, 100_000_000),
        # Long enough for any ordinary query on a busy machine; short enough that the
        # slowest search (LIKE backtracks: text length times pattern length, per row) is
        # answered, with a 503 if need be, within a few seconds.
        statement_timeout_ms=int_setting("STATEMENT_TIMEOUT_MS", 2_000, 100, 600_000),
    )


settings = load_settings()
