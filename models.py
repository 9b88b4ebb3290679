"""The database tables. SQLModel stores datetimes as aware UTC on every database."""

from datetime import UTC, datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel


def utc_now() -> datetime:
    return datetime.now(UTC)


# 64-bit, as the API promises; SQLite's AUTOINCREMENT needs INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Else SQLite reuses a deleted row's id.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}
# Better Auth accounts' issuer when they share our secret; a key set's issuer is a URL.
SHARED_SECRET_ISSUER = "shared-secret"


class User(SQLModel, table=True):
    """A local account (email, password) or a Better Auth one (issuer, id)."""

    __table_args__ = (
        # NULLs are distinct, so local accounts never collide here.
        UniqueConstraint("better_auth_issuer", "better_auth_id", name="uq_user_better_auth"),
        CheckConstraint(
            "(better_auth_id IS NULL AND better_auth_issuer IS NULL AND email IS NOT NULL"
            " AND password_hash IS NOT NULL) OR (better_auth_id IS NOT NULL"
            " AND better_auth_issuer IS NOT NULL AND email IS NULL AND password_hash IS NULL)",
            name="user_is_local_or_better_auth",
        ),
        NEVER_REUSE_IDS,
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    email: str | None = Field(default=None, max_length=320, unique=True)  # stored lower-cased
    name: str | None = Field(default=None, max_length=100)
    password_hash: str | None = None
    better_auth_issuer: str | None = Field(default=None, max_length=255)
    better_auth_id: str | None = Field(default=None, max_length=255)  # the token's sub
    created_at: datetime = Field(default_factory=utc_now)
    # A password change bumps it (iat's seconds cannot order changes).
    token_generation: int = 0


class Task(SQLModel, table=True):
    __table_args__ = (
        Index("ix_task_user_created", "user_id", "created_at", "id"),  # the default list's order
        # The user's own order (sort=position): no two tasks in one place.
        UniqueConstraint("user_id", "position", name="uq_task_user_position"),
        # Counts read only this index: completed, overdue and due today per user.
        Index("ix_task_user_completed_due", "user_id", "completed", "due_date"),
        # On the row itself, so two concurrent updates cannot break it between them.
        CheckConstraint(
            "recurrence = 'none' OR due_date IS NOT NULL", name="recurring_task_has_due_date"
        ),
        NEVER_REUSE_IDS,
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", sa_type=Id)
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    completed: bool = False
    priority: str = Field(default="medium", max_length=6)
    due_date: datetime | None = None
    recurrence: str = Field(default="none", max_length=7)
    next_occurrence_created: bool = False  # completing again makes no second one
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)
    completed_at: datetime | None = None
    # One more on every change a response shows: the task's ETag (see routes/preconditions.py).
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    position: int = Field(sa_type=BigInteger)  # its place in the user's order (task_rules.py)


class TaskCount(SQLModel, table=True):
    """A user's task count: the limit is one UPDATE, not a COUNT."""

    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", primary_key=True, sa_type=Id)
    tasks: int


class TaskTag(SQLModel, table=True):
    """One tag of one task; its key serves the tag filter and tag loading."""

    task_id: int = Field(foreign_key="task.id", ondelete="CASCADE", primary_key=True, sa_type=Id)
    name: str = Field(primary_key=True, max_length=30)


class RevokedToken(SQLModel, table=True):
    """A logged-out token until it expires: its jti, or a Better Auth token's SHA-256."""

    jti: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(index=True)


class TokenFamily(SQLModel, table=True):
    """One login's session: deleting it ends its tokens."""

    id: str = Field(primary_key=True, max_length=32)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=Id)
    expires_at: datetime = Field(index=True)  # when its newest token expires


class RefreshToken(SQLModel, table=True):
    """A refresh token by its SHA-256; a used one stays until expiry, to recognise a replay."""

    token_hash: str = Field(primary_key=True, max_length=64)
    family_id: str = Field(
        foreign_key="tokenfamily.id", ondelete="CASCADE", index=True, max_length=32
    )
    expires_at: datetime = Field(index=True)
    used_at: datetime | None = None
    generation: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class IdempotencyKey(SQLModel, table=True):
    """A create's Idempotency-Key, by its SHA-256, and the answer it got, for 24 hours."""

    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", primary_key=True, sa_type=Id)
    key_hash: str = Field(primary_key=True, max_length=64)
    request_hash: str = Field(max_length=64)  # SHA-256 of the request's body, as validated
    answer: str | None = None  # the 201's body; None while the first request still runs
    location: str | None = Field(default=None, max_length=300)
    created_at: datetime
    expires_at: datetime = Field(index=True)


class RateLimitEvent(SQLModel, table=True):
    """One counted event of an abuse limit, seen by every worker."""

    __table_args__ = (Index("ix_ratelimitevent_bucket_expires", "bucket", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    bucket: str = Field(max_length=64)  # SHA-256 of what is counted: no raw emails
    expires_at: datetime = Field(index=True)
