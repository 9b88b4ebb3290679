"""Better Auth tokens: its jwt() plugin's, checked against its key set (BETTER_AUTH_URL), and
HS256 ones a frontend signs (BETTER_AUTH_SECRET). The rules: API.md, "Better Auth tokens"."""

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import jwt
from anyio import Event, fail_after, move_on_after
from fastapi import HTTPException, status
from sqlalchemy import exists
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from config import settings
from models import SHARED_SECRET_ISSUER, RevokedToken, User
from schemas import USER_ID_PATTERN

# The jwt() plugin's algorithms; never HS256 or none here: the key set is public.
KEY_SET_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
FETCH_TIMEOUT_SECONDS = 3
# Unknown kids refetch at most this often: made-up kids cannot flood Better Auth.
REFETCH_INTERVAL_SECONDS = 5
# A key Better Auth removed stays trusted this long at most (jose's default).
KEY_SET_MAX_AGE_SECONDS = 600
MAX_KEY_SET_BYTES = 256 * 1024
NOT_A_KEY_SET = (ValueError, TypeError, KeyError, AttributeError, RecursionError)
CLOCK_SKEW_SECONDS = 10
KEY_SET_UNAVAILABLE = "Better Auth's key set cannot be fetched; try again shortly"

log = logging.getLogger("uvicorn.error")  # where uvicorn writes its own messages
logged_causes: set[str] = set()


def log_once(cause: str, message: str, *args: object) -> None:
    """A configuration mistake, once per cause and process; never the token."""
    if cause not in logged_causes:
        logged_causes.add(cause)
        log.warning("Refused a Better Auth token: " + message + " (logged once)", *args)


def key_set_unavailable(retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, KEY_SET_UNAVAILABLE, {"Retry-After": str(retry_after)}
    )


class BetterAuthClaims(NamedTuple):
    issuer: str  # BETTER_AUTH_URL, or SHARED_SECRET_ISSUER
    subject: str  # the Better Auth user id
    token_id: str  # SHA-256 of its signed part (it has no jti): what logout records
    expires_at: datetime
    family_id: None = None  # Better Auth keeps the login sessions


def usable_keys(body: bytes | bytearray) -> dict[str, jwt.PyJWK]:
    keys = {}
    for entry in json.loads(body)["keys"]:
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue  # a kind we do not accept; the others count
        if key.algorithm_name in KEY_SET_ALGORITHMS and isinstance(entry.get("kid"), str):
            keys[entry["kid"]] = key
    return keys


class KeySetUnavailable(Exception):
    """Why the key set could not be fetched or read."""


async def download_key_set(url: str) -> dict[str, jwt.PyJWK]:
    # Imported here: only BETTER_AUTH_URL needs it (~2.6 MB).
    import httpx2

    # Uncompressed and read raw: a compressed body could inflate far past MAX_KEY_SET_BYTES.
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    try:
        # One deadline for connect, headers and body, which closes the socket: timeout=None.
        with fail_after(FETCH_TIMEOUT_SECONDS):
            async with (
                httpx2.AsyncClient(timeout=None, follow_redirects=True) as http,
                http.stream("GET", url, headers=headers) as response,
            ):
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_KEY_SET_BYTES:
                        raise ValueError(f"the key set is larger than {MAX_KEY_SET_BYTES} bytes")
        return usable_keys(body)
    except TimeoutError:
        raise KeySetUnavailable(f"no whole answer within {FETCH_TIMEOUT_SECONDS} seconds") from None
    except (httpx2.HTTPError, httpx2.InvalidURL, OSError, *NOT_A_KEY_SET) as error:
        raise KeySetUnavailable(str(error) or type(error).__name__) from None


class KeySet:
    """Better Auth's public keys. Changed only on the event loop, so no lock: one request
    fetches; the others wait, holding no thread."""

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self.keys: dict[str, jwt.PyJWK] = {}
        self.attempted_at: float | None = None
        self.fetched_at: float | None = None
        self.failing = False
        self.fetching: Event | None = None

    async def key_for(self, kid: object) -> jwt.PyJWK | None:
        """The key named `kid`; None if the key set has none; 503 if unfetchable."""
        if not isinstance(kid, str):
            return None
        if (
            self.fetched_at is not None
            and self.clock() - self.fetched_at >= KEY_SET_MAX_AGE_SECONDS
        ):
            self.keys = {}
        # A loop: a fetch cut short (its request cancelled) leaves the next attempt to its waiters.
        while kid not in self.keys and self.fetching is not None:
            with move_on_after(FETCH_TIMEOUT_SECONDS) as waiting:
                await self.fetching.wait()
            if waiting.cancelled_caught:
                raise key_set_unavailable(REFETCH_INTERVAL_SECONDS)
        if kid in self.keys:
            return self.keys[kid]
        now = self.clock()
        if self.attempted_at is not None and now - self.attempted_at < REFETCH_INTERVAL_SECONDS:
            if self.failing:
                retry_after = REFETCH_INTERVAL_SECONDS - (now - self.attempted_at)
                raise key_set_unavailable(math.ceil(retry_after))
            return None  # the key set is fresh and has no such key
        await self.fetch(now)
        if kid not in self.keys:
            log_once(
                "unknown kid",
                "it names a key (kid) that the key set at %s does not have; is BETTER_AUTH_JWKS_URL"
                " the key set of the Better Auth server that issued it?",
                self.url,
            )
        return self.keys.get(kid)

    async def fetch(self, now: float) -> None:
        previous_attempt, self.attempted_at, self.fetching = self.attempted_at, now, Event()
        try:
            self.keys = await download_key_set(self.url)
            self.fetched_at, self.failing = now, False
        except KeySetUnavailable as error:
            if not self.failing:  # once per outage
                log.warning("Better Auth's key set at %s cannot be fetched: %s", self.url, error)
            self.failing = True
            raise key_set_unavailable(REFETCH_INTERVAL_SECONDS) from None
        except BaseException:  # cancelled (its client hung up, say): its waiters fetch again
            self.attempted_at = previous_attempt
            raise
        finally:
            self.fetching.set()
            self.fetching = None


class BetterAuth:
    def __init__(
        self,
        url: str | None,
        jwks_url: str | None,
        secret: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.secret = secret
        self.key_set = KeySet(jwks_url or f"{url}/api/auth/jwks", clock) if url else None
        self.enabled = self.key_set is not None or secret is not None

    async def verify(self, token: str) -> BetterAuthClaims:
        """The token's claims, or jwt.InvalidTokenError (a 401), or an HTTPException (a 503)."""
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        key: str | jwt.PyJWK | None
        if algorithm == "HS256" and self.secret is not None:  # a frontend's own: no iss or aud
            key, issuer, checked = self.secret, SHARED_SECRET_ISSUER, []
        elif algorithm in KEY_SET_ALGORITHMS and self.key_set and self.url:
            key = await self.key_set.key_for(header.get("kid"))
            if key is None:
                raise jwt.InvalidTokenError("no key in the key set has this kid")
            issuer, checked, algorithm = self.url, ["iss", "aud"], key.algorithm_name
        else:
            if algorithm in KEY_SET_ALGORITHMS:
                log_once(
                    "no url",
                    "it is signed with %.120r, which needs BETTER_AUTH_URL to be set",
                    algorithm,
                )
            raise jwt.InvalidAlgorithmError("not an algorithm of a configured kind")
        # iss and aud after the signature: only then is a mismatch worth logging.
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "sub", *checked], "verify_iss": False, "verify_aud": False},
        )
        # Usually BETTER_AUTH_URL spelt unlike Better Auth's baseURL.
        if checked:
            iss, aud, url = claims["iss"], claims["aud"], self.url
            if iss != url:
                log_once(
                    "iss",
                    "its iss is %.120r, but BETTER_AUTH_URL is %.120r: they must be equal",
                    iss,
                    url,
                )
                raise jwt.InvalidIssuerError("wrong iss")
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or url not in audiences:
                log_once(
                    "aud",
                    "its aud is %.120r, but BETTER_AUTH_URL is %.120r: it must be one of them",
                    aud,
                    url,
                )
                raise jwt.InvalidAudienceError("wrong aud")
        subject = claims["sub"]  # it names accounts in paths
        if not isinstance(subject, str) or not re.fullmatch(USER_ID_PATTERN, subject):
            raise jwt.InvalidTokenError("sub must be 1 to 255 characters of [A-Za-z0-9._~-]")
        # The signed part: PyJWT accepts padding after a signature, and ECDSA has two valid
        # signatures per token, so the whole string would let a logged-out token back in.
        token_id = hashlib.sha256(token.rsplit(".", 1)[0].encode()).hexdigest()
        expires_at = datetime.fromtimestamp(claims["exp"] + CLOCK_SKEW_SECONDS, UTC)
        return BetterAuthClaims(issuer, subject, token_id, expires_at)


verifier = BetterAuth(
    settings.better_auth_url, settings.better_auth_jwks_url, settings.better_auth_secret
)


def find_or_create_user(session: Session, claims: BetterAuthClaims) -> tuple[User, bool]:
    """The token's account (made by its first token) and whether the token was logged out."""
    logged_out = exists().where(col(RevokedToken.jti) == claims.token_id)
    query = select(User, logged_out).where(
        User.better_auth_issuer == claims.issuer, User.better_auth_id == claims.subject
    )
    row = session.exec(query).first()
    if row is None:
        user = User(better_auth_issuer=claims.issuer, better_auth_id=claims.subject)
        session.add(user)
        try:
            session.commit()
            return user, False  # a new account has no logged-out token
        except IntegrityError:  # another request made it first (the unique constraint)
            session.rollback()
            row = session.exec(query).one()
    user, revoked = row
    return user, revoked
