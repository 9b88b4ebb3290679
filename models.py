"""Database tables. What clients send and receive lives in schemas.py.

SQLModel (0.0.45 and later) stores datetime fields as aware UTC on every database,
so each timestamp here comes from utc_now().
"""

from datetime import datetime, timezone

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# Ids are 64-bit, as the API promises (any id up to 2**63 - 1 is a 404, never a 500):
# BIGINT/BIGSERIAL on PostgreSQL, where a 32-bit INTEGER column makes larger lookups fail.
# SQLite's INTEGER is already 64-bit, and only INTEGER PRIMARY KEY can be AUTOINCREMENT.
Id = BigInteger().with_variant(Integer(), "sqlite")

# AUTOINCREMENT stops SQLite from handing a deleted row's id to the next insert;
# PostgreSQL sequences never reuse ids anyway, and ignore this option.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


# The name that keeps shared-secret Better Auth accounts apart from key-set ones, whose
# issuer is a URL (BETTER_AUTH_URL) and so can never equal it.
SHARED_SECRET_ISSUER = "shared-secret"


class User(SQLModel, table=True):
    """A local account (email and password here), or a Better Auth account (its Better Auth
    user id and issuer; no email or password here, since Better Auth holds both)."""

    __table_args__ = (
        # NULLs are distinct in a unique constraint, on SQLite and PostgreSQL alike, so
        # local accounts (NULL here) never collide; Better Auth accounts are unique.
        UniqueConstraint("better_auth_issuer", "better_auth_id", name="uq_user_better_auth"),
        CheckConstraint(
            "(better_auth_id IS NULL AND better_auth_issuer IS NULL"
            " AND email IS NOT NULL AND password_hash IS NOT NULL)"
            " OR (better_auth_id IS NOT NULL AND better_auth_issuer IS NOT NULL"
            " AND email IS NULL AND password_hash IS NULL)",
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
    # Every token carries the generation it was issued in; changing the password bumps it,
    # which ends all older tokens at once. A counter, not a timestamp: a token's iat has
    # one-second resolution and could not tell "just before" from "just after" a change.
    token_generation: int = 0


class Task(SQLModel, table=True):
    __table_args__ = (
        # The default list: one user's tasks, newest first, ties broken by id.
        Index("ix_task_user_created", "user_id", "created_at", "id"),
        # Validation checks this rule on each request's view of the task; the database
        # checks it on the row itself, so two concurrent updates (one making the task
        # recurring, one clearing its due date) cannot break it between them.
        CheckConstraint("recurrence = 'none' OR due_date IS NOT NULL", name="recurring_task_has_due_date"),
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
    # Set once the next occurrence of a recurring task exists, so that reopening and
    # completing the task again never creates a second one.
    next_occurrence_created: bool = False
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)
    completed_at: datetime | None = None


class TaskCount(SQLModel, table=True):
    """How many tasks a user has, kept in the same transactions that create and delete
    them: the per-user limit is then one conditional UPDATE, not a count of every task.
    A user gets a row at the first create that needs it."""

    user_id: int = Field(foreign_key="user.id", primary_key=True, ondelete="CASCADE", sa_type=Id)
    tasks: int


class TaskTag(SQLModel, table=True):
    """One tag of one task. The primary key makes a tag unique per task and serves
    both the tag filter and loading a page's tags."""

    task_id: int = Field(foreign_key="task.id", primary_key=True, ondelete="CASCADE", sa_type=Id)
    name: str = Field(primary_key=True, max_length=30)


class RevokedToken(SQLModel, table=True):
    """A logged-out token, by its jti, until it would have expired anyway (then pruned).
    A Better Auth token has no jti: it is kept by the SHA-256 of the whole token."""

    jti: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(index=True)


class TokenFamily(SQLModel, table=True):
    """One login's session: the refresh tokens that rotation draws from it one after the
    other, and the access tokens issued with them (their "fam" claim). Deleting the row ends
    them all: the refresh tokens go with it (cascade), and an access token whose family
    is gone is refused."""

    id: str = Field(primary_key=True, max_length=32)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE", index=True, sa_type=Id)
    # When the newest token issued in it expires, refresh or access; pruned after.
    expires_at: datetime = Field(index=True)


class RefreshToken(SQLModel, table=True):
    """One refresh token, by the SHA-256 of its value: the value itself is never stored.
    A used token stays until it would have expired, so that a replay of it is recognised."""

    token_hash: str = Field(primary_key=True, max_length=64)  # hex
    family_id: str = Field(foreign_key="tokenfamily.id", ondelete="CASCADE", index=True, max_length=32)
    expires_at: datetime = Field(index=True)
    used_at: datetime | None = None


class RateLimitEvent(SQLModel, table=True):
    """One counted event of an abuse limit (a failed login, an auth request), kept until it
    leaves its sliding window. In the database, not in memory, so every worker sees it."""

    __table_args__ = (Index("ix_ratelimitevent_bucket_expires", "bucket", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)  # pruned rows, but the ids go on
    bucket: str = Field(max_length=64)  # SHA-256 of what is counted: fixed size, no raw emails
    expires_at: datetime = Field(index=True)  # counted until then; pruned after
