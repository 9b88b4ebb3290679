"""Refresh tokens, stored as SHA-256, in families (one per login) whose row ends them all. The
rules: API.md, "Refresh tokens". A token's generation is its depth in its family's chain; a
generation closes REFRESH_TOKEN_GRACE_SECONDS after its first use, or at the next one's.

Locks go family first, then its tokens, as a cascading delete takes them: never a deadlock, and
a family's rotations take turns, each seeing what the last one wrote."""

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, exists, func, insert, literal, update
from sqlmodel import Session, UTCDateTime, col, select

from auth import invalid_credentials
from config import settings
from models import RefreshToken, TokenFamily, User

# One answer for unknown, expired, used or ended: the caller learns nothing about which exist.
INVALID_REFRESH_TOKEN = "Invalid or expired refresh token"


class IssuedRefreshToken(NamedTuple):
    family_id: str
    token: str  # the raw value: for the client, never for the database or a log


def family_lifetime() -> timedelta:
    """A family lives until its newest refresh and access tokens have both expired."""
    refresh, access = settings.refresh_token_expire_days, settings.access_token_expire_minutes
    return max(timedelta(days=refresh), timedelta(minutes=access))


def hash_refresh_token(token: str) -> str:
    # encode() cannot fail: the body's validation refused lone surrogates.
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, family_id: str, now: datetime, generation: int = 0
) -> IssuedRefreshToken:
    """A refresh token of the family at `generation`, committed."""
    token = secrets.token_urlsafe(32)  # 256 random bits
    expires_at = now + timedelta(days=settings.refresh_token_expire_days)
    session.execute(
        insert(RefreshToken).values(
            token_hash=hash_refresh_token(token),
            family_id=family_id,
            expires_at=expires_at,
            generation=generation,
        )
    )
    session.commit()
    return IssuedRefreshToken(family_id, token)


def start_family(session: Session, user: User, now: datetime) -> IssuedRefreshToken:
    """A new login's family and first refresh token, committed; 401 if the password changed or the
    account went since `user` was read (FOR SHARE: such a change and this insert take turns)."""
    family_id = secrets.token_urlsafe(16)  # 22 characters, within the column's 32
    expires_at = literal(now + family_lifetime(), UTCDateTime())
    same_user = select(literal(family_id), col(User.id), expires_at).where(
        User.id == user.id, User.token_generation == user.token_generation
    )
    family = insert(TokenFamily).from_select(
        ["id", "user_id", "expires_at"], same_user.with_for_update(read=True)
    )
    # RETURNING, not rowcount: psycopg reports -1 as the rowcount of an INSERT ... SELECT.
    if session.execute(family.returning(col(TokenFamily.id))).first() is None:
        session.rollback()
        raise invalid_credentials()
    return issue_refresh_token(session, family_id, now)


def end_family(session: Session, family_id: str) -> None:
    session.execute(delete(TokenFamily).where(col(TokenFamily.id) == family_id))
    session.commit()


def end_every_family(session: Session, user_id: int) -> None:
    """Part of the caller's transaction: every session of the user ends when it commits."""
    session.execute(delete(TokenFamily).where(col(TokenFamily.user_id) == user_id))


def rotate(session: Session, presented: str, now: datetime) -> tuple[User, IssuedRefreshToken]:
    """Use up the presented refresh token and issue its family's next, committed; 401 for one
    unknown, expired or ended. One of a closed generation ends its family."""
    is_presented = col(RefreshToken.token_hash) == hash_refresh_token(presented)
    presented_family = select(RefreshToken.family_id).where(is_presented).scalar_subquery()
    # Extending the family first takes its row lock.
    family = session.execute(
        update(TokenFamily)
        .where(col(TokenFamily.id) == presented_family, col(TokenFamily.expires_at) > now)
        .values(expires_at=now + family_lifetime())
        .returning(col(TokenFamily.id), col(TokenFamily.user_id))
    ).first()
    if family is None:
        session.rollback()
        raise invalid_credentials(INVALID_REFRESH_TOKEN)
    presented_token = select(RefreshToken.generation, RefreshToken.expires_at).where(is_presented)
    token = session.execute(presented_token).first()
    if token is None or token.expires_at <= now:  # expired (and perhaps pruned since the UPDATE)
        session.rollback()
        raise invalid_credentials(INVALID_REFRESH_TOKEN)
    in_family = RefreshToken.family_id == family.id
    used_at = col(RefreshToken.used_at)
    same_generation = RefreshToken.generation == token.generation
    opened_at = select(func.min(used_at)).where(in_family, same_generation)
    next_generation = RefreshToken.generation == token.generation + 1
    moved_on = exists().where(in_family, next_generation, used_at.is_not(None))
    opened, moved = session.execute(select(opened_at.scalar_subquery(), moved_on)).one()
    grace = timedelta(seconds=settings.refresh_token_grace_seconds)
    # `now` may precede the first use: a request that read the clock before the one that won.
    if opened is not None and (moved or not grace or now >= opened + grace):
        end_family(session, family.id)
        raise invalid_credentials(INVALID_REFRESH_TOKEN)
    session.execute(update(RefreshToken).where(is_presented, used_at.is_(None)).values(used_at=now))
    user = session.get_one(User, family.user_id)
    return user, issue_refresh_token(session, family.id, now, token.generation + 1)
