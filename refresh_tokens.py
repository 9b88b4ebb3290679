"""Refresh tokens: long-lived, opaque, used once each, and grouped in families.

A login starts a family (a TokenFamily row) with its first refresh token. Each refresh uses
up the presented token and issues the next one in the same family, with a new access
token that names the family in its "fam" claim. Ending a family (logout, a password
change, a detected replay) deletes its row: its refresh tokens go with it, and its access
tokens are refused by the user lookup in auth.py.

A refresh token is 256 random bits, so its SHA-256 is as hard to invert as the token is to
guess: only that hash is stored, and a copy of the database holds no usable token.

Locks are always taken family first, then its tokens, as a cascading delete of the family
takes them, so a refresh and a concurrent end of its family wait for each other instead of
deadlocking on PostgreSQL. On SQLite the first statement of a refresh is a write, so the
whole refresh holds SQLite's one write lock.
"""

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

from fastapi import HTTPException, status
from sqlalchemy import delete, insert, select, update
from sqlmodel import Session

from config import settings
from models import RefreshToken, TokenFamily, User

REFRESH_TOKEN_BYTES = 32
FAMILY_ID_BYTES = 16  # 22 characters, within the column's 32
INVALID_REFRESH_TOKEN = "Invalid or expired refresh token"


class IssuedRefreshToken(NamedTuple):
    family_id: str
    token: str  # the raw value: for the client, never for the database or a log


def refresh_lifetime() -> timedelta:
    return timedelta(days=settings.refresh_token_expire_days)


def reuse_grace() -> timedelta:
    """Two tabs of one app often refresh with the same token at the same moment. Within this
    time after a token was used, presenting it again issues another pair in its family,
    instead of being taken for a stolen token's replay."""
    return timedelta(seconds=settings.refresh_token_grace_seconds)


def family_lifetime() -> timedelta:
    """How long a family outlives its newest tokens' issue: until both have expired."""
    return max(refresh_lifetime(), timedelta(minutes=settings.access_token_expire_minutes))


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # the body's validation refused lone surrogates


def invalid_refresh_token() -> HTTPException:
    # One answer whether the token is unknown, expired, used or ended: the caller learns
    # nothing about which tokens exist.
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=INVALID_REFRESH_TOKEN, headers={"WWW-Authenticate": "Bearer"}
    )


def add_refresh_token(session: Session, family_id: str, now: datetime) -> IssuedRefreshToken:
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    session.execute(
        insert(RefreshToken).values(
            token_hash=hash_refresh_token(token), family_id=family_id, expires_at=now + refresh_lifetime()
        )
    )
    return IssuedRefreshToken(family_id, token)


def prune_expired(session: Session, now: datetime) -> None:
    """Forget families and tokens that have expired, used or not. Run at every login and
    refresh, so the tables hold only what was issued within the lifetimes."""
    session.execute(delete(TokenFamily).where(TokenFamily.expires_at <= now))
    session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= now))


def start_family(session: Session, user: User, now: datetime) -> IssuedRefreshToken:
    """A new login's family and its first refresh token, committed."""
    family_id = secrets.token_urlsafe(FAMILY_ID_BYTES)
    session.execute(
        insert(TokenFamily).values(id=family_id, user_id=user.id, expires_at=now + family_lifetime())
    )
    issued = add_refresh_token(session, family_id, now)
    prune_expired(session, now)
    session.commit()
    return issued


def end_family(session: Session, family_id: str) -> None:
    session.execute(delete(TokenFamily).where(TokenFamily.id == family_id))
    session.commit()


def end_every_family(session: Session, user_id: int) -> None:
    """Part of the caller's transaction: every session of the user ends when it commits."""
    session.execute(delete(TokenFamily).where(TokenFamily.user_id == user_id))


def rotate(session: Session, presented: str, now: datetime) -> tuple[User, IssuedRefreshToken]:
    """Use up the presented refresh token and issue the next one in its family, committed.
    401 for a token that is unknown, expired, used or ended. A used token presented again
    after the grace period is taken for a replay: the whole family ends."""
    token_hash = hash_refresh_token(presented)
    presented_family = select(RefreshToken.family_id).where(RefreshToken.token_hash == token_hash)
    # Extending the family first takes its row lock (see the module docstring).
    family = session.execute(
        update(TokenFamily)
        .where(TokenFamily.id == presented_family.scalar_subquery(), TokenFamily.expires_at > now)
        .values(expires_at=now + family_lifetime())
        .returning(TokenFamily.id, TokenFamily.user_id)
    ).first()
    if family is None:
        session.rollback()
        raise invalid_refresh_token()
    # Compare-and-set: of any number of requests presenting this token, exactly one sets
    # used_at; every other one finds it set and goes through the checks below.
    used_now = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.used_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(used_at=now)
    ).rowcount
    if used_now != 1:
        presented_row = session.execute(
            select(RefreshToken.used_at, RefreshToken.expires_at).where(RefreshToken.token_hash == token_hash)
        ).first()
        if presented_row is None or presented_row.expires_at <= now:
            session.rollback()
            raise invalid_refresh_token()
        if now >= presented_row.used_at + reuse_grace():
            end_family(session, family.id)
            raise invalid_refresh_token()
    issued = add_refresh_token(session, family.id, now)
    user = session.get(User, family.user_id)
    prune_expired(session, now)
    session.commit()
    return user, issued
