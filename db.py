"""The engine (SQLite by default, or PostgreSQL), the per-request session and clock, the health
check and the pruning of expired rows. Every statement has a time budget (STATEMENT_TIMEOUT_MS);
main.py answers 503 when one runs out."""

import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from anyio import CancelScope, CapacityLimiter, Semaphore, to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends
from sqlalchemy import Connection, Engine, delete, event, inspect, make_url, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel import Session, SQLModel, create_engine

from config import settings
from models import RateLimitEvent, RefreshToken, RevokedToken, TokenFamily, utc_now

SESSION_SLOTS = 40  # a connection for each of AnyIO's 40 worker threads, which run our handlers
POOL_SIZE = SESSION_SLOTS + 1  # and one for /health, so it never queues behind requests
STATEMENT_TIMED_OUT = (
    "The query took too long; narrow it down (a shorter search, a filter) and try again"
)
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for the one write lock


class StatementBudget:
    """SQLite's progress handler: interrupts a statement `seconds` after its first check, which
    comes once it holds its locks (waiting for them is busy_timeout's business)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None  # cleared before each statement

    def exceeded(self) -> bool:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        return now > self.deadline


def make_engine(url: str, statement_timeout_ms: int | None = None) -> Engine:
    """An engine whose statements have a time budget: STATEMENT_TIMEOUT_MS unless given."""
    budget_ms = (
        settings.statement_timeout_ms if statement_timeout_ms is None else statement_timeout_ms
    )
    # hide_parameters keeps bound values (password hashes among them) out of error logs.
    options = {"hide_parameters": True, "execution_options": {"statement_budget_ms": budget_ms}}
    if not url.startswith("sqlite"):  # pool_pre_ping: a connection the server closed is replaced
        # No server-side prepared statements: behind a pooler in transaction mode (PgBouncer,
        # hosted pooled URLs) the next transaction may get another server.
        unprepared = {"prepare_threshold": None}
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=POOL_SIZE,
            max_overflow=0,
            connect_args=unprepared,
            **options,
        )
    # Each connection to :memory: is a database of its own: requests take turns on one.
    in_memory = make_url(url).database in (None, "", ":memory:")
    pooling = (
        {"poolclass": StaticPool} if in_memory else {"pool_size": POOL_SIZE, "max_overflow": 0}
    )
    engine = create_engine(url, connect_args={"check_same_thread": False}, **pooling, **options)

    @event.listens_for(engine, "connect")
    def configure_sqlite(
        dbapi_connection: sqlite3.Connection, connection_record: ConnectionPoolEntry
    ) -> None:
        # SQLite's own lower() folds only A-Z; Python's folds all of Unicode, as PostgreSQL's does.
        unicode_lower = lambda value: value.lower() if isinstance(value, str) else value  # noqa: E731
        dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)
        # Switching to WAL takes a lock only on a file not yet in WAL (it then stays in WAL): at
        # start-up, which waits DATABASE_WAIT_SECONDS for another process (a worker migrating).
        dbapi_connection.execute(f"PRAGMA busy_timeout={settings.database_wait_seconds * 1000}")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # readers run beside the one writer
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # SQLite ignores ON DELETE CASCADE without it.
        dbapi_connection.execute("PRAGMA foreign_keys=ON")
        dbapi_connection.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        connection_record.info["statement_budget"] = budget = StatementBudget(budget_ms / 1000)
        # Every 1000 VM steps: cheap, yet prompt.
        dbapi_connection.set_progress_handler(budget.exceeded, 1000)

    @event.listens_for(engine, "before_cursor_execute")
    def restart_statement_budget(connection: Connection, *_: object) -> None:
        connection.info["statement_budget"].deadline = None

    return engine


def limit_statement_time(session: Session) -> None:
    """Give the rest of this transaction PostgreSQL's statement_timeout. It counts waiting for
    row locks too, so it is set only where a client controls the cost (the list's search);
    SQLite's budget covers every statement."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        budget_ms = int(connection.get_execution_options()["statement_budget_ms"])
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {budget_ms}")


def statement_ran_out_of_time(error: DBAPIError) -> bool:
    """SQLite's interrupt (StatementBudget) or PostgreSQL's query_canceled (statement_timeout)."""
    code = getattr(error.orig, "sqlite_errorcode", None) or getattr(error.orig, "sqlstate", None)
    return code in (sqlite3.SQLITE_INTERRUPT, "57014")  # 57014: query_canceled's SQLSTATE


engine = make_engine(settings.database_url)

# psycopg's words around the reason: 'connection failed: connection to server at "db", port 5432
# failed: FATAL:  password authentication failed for user "app"', and an errno in a DNS error.
DRIVER_PREAMBLE = re.compile(
    r"^connection failed: |connection to server (at|on) .*? failed: |FATAL: +|\[Errno -?\d+\] "
)
log = logging.getLogger("uvicorn.error")  # where uvicorn writes its own messages


def cause_of(error: DBAPIError) -> str:
    """The driver's reason in a few words: the first line of its message, without its preamble."""
    first_line = (str(error.orig).strip().splitlines() or [type(error.orig).__name__])[0]
    cause = DRIVER_PREAMBLE.sub("", first_line)
    return cause[:1].lower() + cause[1:] if cause[1:2].islower() else cause  # "SASL" stays


session_slots: RunVar[Semaphore] = RunVar("session_slots")  # AnyIO's: one per event loop
health_check_slot: RunVar[Semaphore] = RunVar("health_check_slot")


def slots(variable: RunVar[Semaphore], count: int) -> Semaphore:
    """This event loop's semaphore; in-memory SQLite's one connection is taken in turns by all."""
    if isinstance(engine.pool, StaticPool):
        variable, count = session_slots, 1
    if (semaphore := variable.get(None)) is None:
        variable.set(semaphore := Semaphore(count, fast_acquire=True))
    return semaphore


async def get_session() -> AsyncIterator[Session]:
    """A session in one of SESSION_SLOTS, taken on the event loop: never more sessions than pooled
    connections, so no thread waits for a connection held by a request that waits for a thread.
    async def: opening a Session does no I/O, so it saves a thread hop."""
    async with slots(session_slots, SESSION_SLOTS):
        # expire_on_commit=False: a handler returns the rows it wrote without a re-read.
        session = Session(engine, expire_on_commit=False)
        try:
            yield session
        finally:
            # Closing returns the connection to the pool: shielded, so a client that hangs up
            # cannot leak it, and outside the threadpool's limit, so it never waits for a thread.
            with CancelScope(shield=True):
                await to_thread.run_sync(session.close, limiter=CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]


def database_answers() -> bool:
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    except SQLAlchemyError:
        return False


async def check_database() -> bool:
    """Whether the database answers, on a connection and a thread of its own, so that /health
    answers as fast under a burst of requests as on an idle server."""
    async with slots(health_check_slot, 1):
        return await to_thread.run_sync(database_answers, limiter=CapacityLimiter(1))


# Refresh tokens before their families: a family expires after its tokens, so by its turn deleting
# it cascades to none (one statement cascading to a million tokens would run out of time).
EXPIRING_TABLES = (RefreshToken, TokenFamily, RevokedToken, RateLimitEvent)
PRUNE_BATCH_ROWS = 5000  # per table and transaction: SQLite's write lock is held for milliseconds
# One pruning run per process: a second would only queue for the same rows.
pruning = threading.Lock()


def delete_expired(session: Session, table: type[SQLModel], now: datetime) -> int:
    """Delete up to PRUNE_BATCH_ROWS rows of `table` whose time is up; return how many."""
    mapper = inspect(table)
    [key] = mapper.primary_key
    expired = select(key).where(mapper.columns["expires_at"] <= now).limit(PRUNE_BATCH_ROWS)
    if session.get_bind().dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)  # concurrent runs take other rows
    statement = delete(table).where(key.in_(expired.scalar_subquery()))
    return session.connection().execute(statement).rowcount


def prune_expired(session: Session, now: datetime) -> None:
    """Delete the sessions, refresh tokens, logged-out tokens and limit events whose time is up,
    in short batches until none is left. Run after a response: however large the backlog, it
    slows no answer, and a failure here is logged, never answered."""
    if not pruning.acquire(blocking=False):
        return
    # SQLite has one write lock, and a request waiting for it checks every 100 ms at most: a
    # pause as long between batches lets it in. PostgreSQL's row locks need no pause.
    pause = 0.1 if session.get_bind().dialect.name == "sqlite" else 0
    try:
        for table in EXPIRING_TABLES:
            while delete_expired(session, table, now) == PRUNE_BATCH_ROWS:
                session.commit()
                time.sleep(pause)
            session.commit()
    except DBAPIError as error:  # the statement budget, a lost connection
        session.rollback()
        log.warning("Pruning expired rows failed; the next one tries again: %s", cause_of(error))
    finally:
        pruning.release()


async def request_time() -> datetime:
    """The one timestamp of this request. async def: no thread hop; tests override it."""
    return utc_now()


Now = Annotated[datetime, Depends(request_time)]
