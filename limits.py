"""Abuse limits: failed logins per (email, client address), and signups, logins and
password checks per client address, each counted in a sliding window.

The counts live in the database (RateLimitEvent rows), not in one process's memory, so
they hold across `uvicorn --workers 4`. Each row is one counted event and carries the
moment it leaves its window; rows past that moment are deleted on every count, so the
table holds at most what is inside the windows.

Counting is one conditional INSERT: "add an event unless the bucket already holds
`limit` events". On SQLite it is the transaction's first statement and a write, so
SQLite takes its one write lock before counting, and two workers can never both take
the last slot. (pysqlite only BEGINs at the first write; a transaction that counted
first and inserted afterwards could fail with SQLITE_BUSY_SNAPSHOT under concurrent
logins.) On PostgreSQL, READ COMMITTED would let two transactions count the same rows
and both insert, so a transaction-scoped advisory lock on the bucket comes first.
"""

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, status
from sqlalchemy import delete, func, insert, literal
from sqlmodel import Session, select

from config import settings
from models import RateLimitEvent


@dataclass(frozen=True)
class AbuseLimits:
    """The limits in force. A dependency, so tests can set their own without touching
    the environment; 0 turns a limit off."""

    login_failure_limit: int
    login_failure_window: timedelta
    auth_requests_per_minute: int


def configured_limits() -> AbuseLimits:
    return AbuseLimits(
        login_failure_limit=settings.login_failure_limit,
        login_failure_window=timedelta(minutes=settings.login_failure_window_minutes),
        auth_requests_per_minute=settings.auth_requests_per_minute,
    )


LimitsDep = Annotated[AbuseLimits, Depends(configured_limits)]

AUTH_REQUEST_WINDOW = timedelta(minutes=1)
TOO_MANY_FAILED_LOGINS = "Too many failed logins for this email; try again later"
TOO_MANY_AUTH_REQUESTS = "Too many signups, logins, refreshes and password checks from your address; try again later"


def bucket_key(*parts: str) -> str:
    # Hashed: a fixed-size key, and the table never holds the emails people typed.
    return hashlib.sha256("\n".join(parts).encode(errors="surrogatepass")).hexdigest()


def too_many_requests(detail: str, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, detail=detail, headers={"Retry-After": str(retry_after)}
    )


def take_slot(session: Session, bucket: str, limit: int, window: timedelta, now: datetime) -> bool:
    """Count one event in `bucket`, unless it already holds `limit` live events.
    Commits at once, so no lock is held while the caller goes on (to bcrypt, say)."""
    if session.get_bind().dialect.name == "postgresql":
        lock_key = int(bucket[:15], 16)  # 60 bits of the SHA-256 fit PostgreSQL's bigint
        session.execute(select(func.pg_advisory_xact_lock(lock_key)))
    expires_at_type = RateLimitEvent.__table__.c.expires_at.type
    live_events = (
        select(func.count())
        .select_from(RateLimitEvent)
        .where(RateLimitEvent.bucket == bucket, RateLimitEvent.expires_at > now)
        .scalar_subquery()
    )
    new_event = select(literal(bucket), literal(now + window, expires_at_type)).where(live_events < limit)
    # RETURNING, not rowcount: psycopg reports -1 as the rowcount of an INSERT ... SELECT.
    taken = session.execute(
        insert(RateLimitEvent).from_select(["bucket", "expires_at"], new_event).returning(RateLimitEvent.id)
    ).first()
    session.execute(delete(RateLimitEvent).where(RateLimitEvent.expires_at <= now))
    session.commit()
    return taken is not None


def seconds_until_free(session: Session, bucket: str, limit: int, now: datetime) -> int:
    """A bucket is full while it holds `limit` live events; it has room again once the
    limit-th newest of them expires."""
    frees_at = session.exec(
        select(RateLimitEvent.expires_at)
        .where(RateLimitEvent.bucket == bucket, RateLimitEvent.expires_at > now)
        .order_by(RateLimitEvent.expires_at.desc())
        .offset(limit - 1)
        .limit(1)
    ).first()
    return max(1, math.ceil((frees_at - now).total_seconds())) if frees_at else 1


def count_auth_request(session: Session, limits: AbuseLimits, client: str, now: datetime) -> None:
    """Count a signup, login or password check from `client`; 429 beyond the per-minute limit."""
    limit = limits.auth_requests_per_minute
    if limit == 0:
        return
    bucket = bucket_key("auth-request", client)
    if not take_slot(session, bucket, limit, AUTH_REQUEST_WINDOW, now):
        retry_after = seconds_until_free(session, bucket, limit, now)
        raise too_many_requests(TOO_MANY_AUTH_REQUESTS, retry_after)


def count_login_attempt(
    session: Session, limits: AbuseLimits, email: str, client: str, now: datetime
) -> str | None:
    """Count a login attempt for (email, client) as a failure before its password is
    checked, and 429 if the pair already has `limit` failures in the window, right
    password or not. Counting first is what keeps it exact: however many attempts run
    at once, at most `limit` of them reach bcrypt. A successful login then clears the
    pair with clear_login_failures(). Returns the pair's bucket, or None when off."""
    limit, window = limits.login_failure_limit, limits.login_failure_window
    if limit == 0 or not window:
        return None
    bucket = bucket_key("login-failure", client, email.lower())
    if not take_slot(session, bucket, limit, window, now):
        retry_after = seconds_until_free(session, bucket, limit, now)
        raise too_many_requests(TOO_MANY_FAILED_LOGINS, retry_after)
    return bucket


def clear_login_failures(session: Session, bucket: str | None) -> None:
    if bucket is not None:
        session.execute(delete(RateLimitEvent).where(RateLimitEvent.bucket == bucket))
        session.commit()


def withdraw_login_attempt(session: Session, bucket: str | None) -> None:
    """Uncount one attempt of the pair, for one whose password was never checked. The
    pair's events are interchangeable, so the newest goes."""
    if bucket is not None:
        newest = select(func.max(RateLimitEvent.id)).where(RateLimitEvent.bucket == bucket).scalar_subquery()
        session.execute(delete(RateLimitEvent).where(RateLimitEvent.id == newest))
        session.commit()
