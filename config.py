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
MAX_URL_LENGTH = 255  # BETTER_AUTH_URL is stored as the issuer of its accounts
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
        require_strong_secret(secret, "BETTER_AUTH_SECRET")
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
        jwt_secret = require_strong_secret(load_or_create_secret(secret_file), str(secret_file))
    origins = os.environ.get("CORS_ORIGINS", DEFAULT_CORS_ORIGINS)
    better_auth_url, better_auth_jwks_url, better_auth_secret = better_auth_settings(jwt_secret)
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
        better_auth_url=better_auth_url,
        better_auth_jwks_url=better_auth_jwks_url,
        better_auth_secret=better_auth_secret,
    )


settings = load_settings()
