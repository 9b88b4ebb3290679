"""Passwords, tokens (PyJWT HS256) and the chain token -> user -> path owner. bcrypt directly:
passlib breaks on bcrypt 4+."""

import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import bcrypt
import jwt
from fastapi import Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import bindparam, exists
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

import better_auth
from better_auth import BetterAuthClaims
from config import settings
from db import new_session
from limits import clear_login_failures, count_login_attempt, withdraw_login_attempt
from models import RevokedToken, TokenFamily, User
from schemas import BCRYPT_MAX_BYTES, MAX_ID, UserIdPath

PASSWORD_IN_BETTER_AUTH = (
    "This account signs in with Better Auth, which keeps its password: "
    "change the password or delete the user there"
)
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token")

# bcrypt releases the GIL: hashing on half the cores leaves CPU to the rest.
HASHING_THREADS = max(1, (os.cpu_count() or 1) // 2)
# A waiting hash holds one of FastAPI's 40 threads: past this many, 503 at once.
MAX_HASHES_IN_FLIGHT = min(8 * HASHING_THREADS, 16)
hashing_slots = threading.BoundedSemaphore(MAX_HASHES_IN_FLIGHT)
hashes_running = threading.BoundedSemaphore(HASHING_THREADS)
HASHING_BUSY = "Too many password checks in progress; try again shortly"


class HashingBusy(HTTPException):
    """503: the password was not checked."""


@contextmanager
def hashing_slot() -> Iterator[None]:
    if not hashing_slots.acquire(blocking=False):
        retry = {"Retry-After": "1"}  # a hash takes ~0.25 s at the default 12 rounds
        raise HashingBusy(status.HTTP_503_SERVICE_UNAVAILABLE, HASHING_BUSY, headers=retry)
    try:
        with hashes_running:
            yield
    finally:
        hashing_slots.release()


def hash_password(password: str) -> str:
    with hashing_slot():
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(settings.bcrypt_rounds)).decode()


# For an unknown email: a login's timing does not tell which emails exist.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, password_hash: str | None) -> bool:
    """A full bcrypt check even for an unknown user; past bcrypt's limit or with a NUL, no match."""
    candidate = password.encode(errors="surrogatepass")
    with hashing_slot():
        matches = bcrypt.checkpw(
            candidate[:BCRYPT_MAX_BYTES], (password_hash or DUMMY_HASH).encode()
        )
    return (
        matches
        and password_hash is not None
        and len(candidate) <= BCRYPT_MAX_BYTES
        and b"\0" not in candidate
    )


def invalid_credentials(detail: str = "Could not validate credentials") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


@dataclass(frozen=True)
class PasswordCheck:
    """Password checks within the failed-login limit: a stolen token cannot guess the password."""

    session: Session
    client: str  # limits.client_address
    now: datetime

    def matches(self, email: str, password: str, password_hash: str | None) -> bool:
        failures = count_login_attempt(self.session, email, self.client, self.now)
        try:
            matched = verify_password(password, password_hash)
        except HashingBusy:  # refused before the check: a retry must not find the pair locked
            withdraw_login_attempt(self.session, failures)
            raise
        if matched:  # a failed attempt stays counted
            clear_login_failures(self.session, failures)
        return matched

    def confirm(self, user: User, password: str) -> None:
        if user.email is None or user.password_hash is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=PASSWORD_IN_BETTER_AUTH)
        if not self.matches(user.email, password, user.password_hash):
            raise invalid_credentials("Incorrect password")


def account_stamp(user: User) -> int:
    """Creation time in microseconds: with the id, one account, never a reused id."""
    return (user.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def create_access_token(user: User, now: datetime, family_id: str) -> str:
    claims = {
        "sub": str(user.id),
        "iat": now,
        "exp": now + timedelta(minutes=settings.access_token_expire_minutes),
        "jti": secrets.token_urlsafe(16),  # so logout can revoke this one token
        "gen": user.token_generation,
        "acct": account_stamp(user),
        "fam": family_id,  # its login session, which ends it too
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


class TokenClaims(BaseModel):
    """Our own token's claims, each only in the form create_access_token writes."""

    model_config = ConfigDict(strict=True, val_temporal_unit="seconds")

    user_id: int = Field(alias="sub", le=MAX_ID)
    token_id: str = Field(alias="jti", pattern=r"^[A-Za-z0-9_-]{1,64}$")  # the jti column's size
    generation: int = Field(alias="gen")
    account: int | None = Field(None, alias="acct")
    # The column's size; None: a token of no login session.
    family_id: str | None = Field(None, alias="fam", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    expires_at: datetime = Field(alias="exp", strict=False)  # lax: exp is a number

    @field_validator("user_id", mode="before")
    @classmethod
    def canonical_decimal(cls, sub: object) -> object:
        """int() would also read " 2 ", "+2", "0_2" and "٢" as 2; strict int refuses the rest."""
        if isinstance(sub, str) and re.fullmatch("[1-9][0-9]{0,18}", sub):
            return int(sub)
        return sub

    @field_validator("account", "family_id", mode="before")
    @classmethod
    def not_null(cls, claim: object) -> object:
        """Absent or the form we write, never null."""
        if claim is None:
            raise ValueError("null")
        return claim


async def get_token_claims(
    token: Annotated[str, Depends(oauth2_scheme)],
) -> TokenClaims | BetterAuthClaims:
    """Our own token's claims, else (when configured) a Better Auth token's. async: no thread."""
    try:
        return TokenClaims.model_validate(
            jwt.decode(
                token,
                settings.jwt_secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "jti", "gen"]},
            )
        )
    except (jwt.InvalidTokenError, ValidationError):
        if not better_auth.verifier.enabled:
            raise invalid_credentials() from None
    try:  # a 503 (the key set cannot be fetched) passes through
        return await better_auth.verifier.verify(token)
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, OSError):
        raise invalid_credentials() from None


TokenClaimsDep = Annotated[TokenClaims | BetterAuthClaims, Depends(get_token_claims)]


# Built once: building it cost more than running it.
USER_AND_LOGOUT = select(
    User,
    exists().where(col(RevokedToken.jti) == bindparam("jti")),
    exists().where(col(TokenFamily.id) == bindparam("family_id")),
).where(User.id == bindparam("user_id"))


@dataclass(frozen=True)
class Caller:
    """A request's token, signature and expiry checked; session() checks the rest in the
    handler's thread: one thread hop per request."""

    claims: TokenClaims | BetterAuthClaims

    @contextmanager
    def session(self) -> Iterator[tuple[Session, User]]:
        with new_session() as session:
            yield session, self.user(session)

    def user(self, session: Session) -> User:
        """The token's account, if the token still holds in the database (401 if not)."""
        claims = self.claims
        if isinstance(claims, BetterAuthClaims):
            user, revoked = better_auth.find_or_create_user(session, claims)
            if revoked:
                raise invalid_credentials()
            return user
        params = {"jti": claims.token_id, "family_id": claims.family_id, "user_id": claims.user_id}
        row = session.exec(USER_AND_LOGOUT, params=params).first()
        if row is None:  # deleted since the token was issued
            raise invalid_credentials()
        user, revoked, family_alive = row
        # Its session ended: logout, or a replayed refresh token.
        session_ended = claims.family_id is not None and not family_alive
        # Another account given the same id.
        other_account = claims.account is not None and account_stamp(user) != claims.account
        password_changed = user.token_generation != claims.generation
        if revoked or session_ended or other_account or password_changed:
            raise invalid_credentials()
        return user


async def get_caller(claims: TokenClaimsDep) -> Caller:
    return Caller(claims)


CallerDep = Annotated[Caller, Depends(get_caller)]
NOT_YOURS = "You can only access your own tasks"


@dataclass(frozen=True)
class Owner(Caller):
    """A caller whose token names the path's user_id."""

    path_user_id: str

    def user(self, session: Session) -> User:
        user = super().user(session)
        path = self.path_user_id
        if path != user.better_auth_id and not (path.isdigit() and int(path) == user.id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=NOT_YOURS)
        return user


async def get_path_owner(user_id: UserIdPath, claims: TokenClaimsDep) -> Owner:
    """403 for another user's path, before any database work; a Better Auth account's numeric
    id is checked in Owner.user."""
    if isinstance(claims, BetterAuthClaims):
        possible = user_id == claims.subject or user_id.isdigit()
    else:
        possible = user_id.isdigit() and int(user_id) == claims.user_id
    if not possible:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=NOT_YOURS)
    return Owner(claims, user_id)


OwnerDep = Annotated[Owner, Depends(get_path_owner)]


def revoke_token(session: Session, claims: TokenClaims | BetterAuthClaims) -> None:
    """Record the token as logged out until it expires."""
    session.add(RevokedToken(jti=claims.token_id, expires_at=claims.expires_at))
    try:
        session.commit()
    except IntegrityError:  # logged out twice at once: revoked either way
        session.rollback()
