"""Refresh tokens, stored as SHA-256, in families (one per login); the rules: API.md, "Refresh
tokens". Locks go family first, then its tokens, as a cascading delete takes them: never a
deadlock, and a family's rotations take turns."""

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, exists, func, insert, literal, update
from sqlmodel import Session, UTCDateTime, col, select

from auth import invalid_credentials
from config import settings
from models import RefreshToken, TokenFamily, User

# One answer for every refusal: the caller learns nothing about which tokens exist.
INVALID_REFRESH_TOKEN = "Invalid or expired refresh token"


class IssuedRefreshToken(NamedTuple):
    family_id: str
    token: str  # the raw value: for the client, never for the database or a log


def family_lifetime() -> timedelta:
    """A family lives until its newest refresh and access tokens have both expired."""
    return max(
        timedelta(days=settings.refresh_token_expire_days),
        timedelta(minutes=settings.access_token_expire_minutes),
    )


def hash_refresh_token(token: str) -> str:
    # encode() cannot fail: the body's validation refused lone surrogates.
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, family_id: str, now: datetime, generation: int = 0
) -> IssuedRefreshToken:
    """A refresh token of the family at `generation`, committed."""
    token = secrets.token_urlsafe(32)  # 256 random bits
    session.execute(
        insert(RefreshToken).values(
            token_hash=hash_refresh_token(token),
            family_id=family_id,
            expires_at=now + timedelta(days=settings.refresh_token_expire_days),
            generation=generation,
        )
    )
    session.commit()
    return IssuedRefreshToken(family_id, token)


def start_family(session: Session, user: User, now: datetime) -> IssuedRefreshToken:
    """A new login's family and first refresh token, committed; 401 if the account or its
    password changed since `user` was read (FOR SHARE: the two take turns)."""
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
    """Uncommitted: every session of the user ends with the caller's commit."""
    session.execute(delete(TokenFamily).where(col(TokenFamily.user_id) == user_id))


def rotate(session: Session, presented: str, now: datetime) -> tuple[User, IssuedRefreshToken]:
    """Use up the presented refresh token and issue its family's next, committed (else 401).
    One of a closed generation ends its family."""
    is_presented = col(RefreshToken.token_hash) == hash_refresh_token(presented)
    presented_family = select(RefreshToken.family_id).where(is_presented).scalar_subquery()
    # Extending the family first takes its row lock.
    family = session.execute(
        update(TokenFamily)
        .where(col(TokenFamily.id) == presented_family, col(TokenFamily.expires_at) > now)
        .values(expires_at=now + family_lifetime())
        .returning(col(TokenFamily.id), col(TokenFamily.user_id))
    ).first()
    token = session.execute(
        select(RefreshToken.generation, RefreshToken.expires_at).where(is_presented)
    ).first()
    # No live family, or the token expired (perhaps pruned since the UPDATE).
    if family is None or token is None or token.expires_at <= now:
        session.rollback()
        raise invalid_credentials(INVALID_REFRESH_TOKEN)
    in_family = RefreshToken.family_id == family.id
    used_at = col(RefreshToken.used_at)
    generation = col(RefreshToken.generation)
    opened_at = select(func.min(used_at)).where(in_family, generation == token.generation)
    moved_on = exists().where(in_family, generation == token.generation + 1, used_at.is_not(None))
    opened, moved = session.execute(select(opened_at.scalar_subquery(), moved_on)).one()
    grace = timedelta(seconds=settings.refresh_token_grace_seconds)
    # `now` may precede the first use: a request that read the clock before the one that won.
    if opened is not None and (moved or not grace or now >= opened + grace):
        end_family(session, family.id)
        raise invalid_credentials(INVALID_REFRESH_TOKEN)
    session.execute(update(RefreshToken).where(is_presented, used_at.is_(None)).values(used_at=now))
    user = session.get_one(User, family.user_id)
    return user, issue_refresh_token(session, family.id, now, token.generation + 1)
