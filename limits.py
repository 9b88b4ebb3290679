"""Abuse limits in sliding windows (see API.md, "Abuse limits"). Each event is a row, so
`--workers 4` share the counts."""

import hashlib
import ipaddress
import math
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import delete, func, insert, literal
from sqlmodel import Session, UTCDateTime, col, select

from config import settings
from models import RateLimitEvent

TOO_MANY_FAILED_LOGINS = "Too many failed logins for this email; try again later"
TOO_MANY_AUTH_REQUESTS = (
    "Too many signups, logins, refreshes and password checks from your address; try again later"
)


async def client_address(request: Request) -> str:
    """The socket peer (see uvicorn's --forwarded-allow-ips), an IPv6 one as its /64: one
    subscriber's block counts once. async: no thread."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:  # an IPv4 address, or none at all
        return host
    if mapped := address.ipv4_mapped:  # an IPv4 client on a dual-stack socket: ::ffff:a.b.c.d
        return str(mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


ClientAddress = Annotated[str, Depends(client_address)]


def bucket_key(*parts: str) -> str:
    # Hashed: a fixed-size key, and the table never holds the emails people typed.
    return hashlib.sha256("\n".join(parts).encode(errors="surrogatepass")).hexdigest()


def count_event(
    session: Session, bucket: str, limit: int, window: timedelta, now: datetime, refusal: str
) -> str:
    """Count one event in `bucket`, or 429 with `refusal` at `limit` live ones. SQLite locks at
    the INSERT, before counting (no SQLITE_BUSY_SNAPSHOT); PostgreSQL's READ COMMITTED needs the
    advisory lock."""
    if session.get_bind().dialect.name == "postgresql":  # 60 bits fit a bigint
        session.execute(select(func.pg_advisory_xact_lock(int(bucket[:15], 16))))
    expires_at = col(RateLimitEvent.expires_at)
    live = (RateLimitEvent.bucket == bucket, expires_at > now)
    live_events = select(func.count()).select_from(RateLimitEvent).where(*live).scalar_subquery()
    new_event = select(literal(bucket), literal(now + window, UTCDateTime()))
    # RETURNING, not rowcount: psycopg reports -1 as the rowcount of an INSERT ... SELECT.
    insert_event = insert(RateLimitEvent).from_select(
        ["bucket", "expires_at"], new_event.where(live_events < limit)
    )
    taken = session.execute(insert_event.returning(col(RateLimitEvent.id))).first()
    session.commit()  # at once: no lock is held while the caller runs bcrypt
    if taken is None:  # full until the limit-th newest live event expires
        newest_first = select(expires_at).where(*live).order_by(expires_at.desc())
        frees_at = session.exec(newest_first.offset(limit - 1).limit(1)).first()
        retry_after = max(1, math.ceil((frees_at - now).total_seconds())) if frees_at else 1
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, refusal, headers={"Retry-After": str(retry_after)}
        )
    return bucket


def limit_auth_requests(session: Session, client: str, now: datetime) -> None:
    """Count a request that may check a password, even one refused with 503: else one address
    could retry for free and hold every hashing slot."""
    if limit := settings.auth_requests_per_minute:
        bucket = bucket_key("auth-request", client)
        count_event(session, bucket, limit, timedelta(minutes=1), now, TOO_MANY_AUTH_REQUESTS)


def count_login_attempt(session: Session, email: str, client: str, now: datetime) -> str | None:
    """Count an attempt as failed before bcrypt, so at most `limit` reach it however many run at
    once; 429 past it. The bucket (None: off) clears it."""
    if not (limit := settings.login_failure_limit):
        return None
    window = timedelta(minutes=settings.login_failure_window_minutes)
    bucket = bucket_key("login-failure", client, email.lower())
    return count_event(session, bucket, limit, window, now, TOO_MANY_FAILED_LOGINS)


def clear_login_failures(session: Session, bucket: str | None) -> None:
    if bucket is not None:
        session.execute(delete(RateLimitEvent).where(col(RateLimitEvent.bucket) == bucket))
        session.commit()


def withdraw_login_attempt(session: Session, bucket: str | None) -> None:
    """Uncount an attempt whose password was not checked (any of the pair's events will do)."""
    if bucket is not None:
        newest = select(func.max(RateLimitEvent.id)).where(RateLimitEvent.bucket == bucket)
        session.execute(
            delete(RateLimitEvent).where(col(RateLimitEvent.id) == newest.scalar_subquery())
        )
        session.commit()
