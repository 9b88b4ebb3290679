"""The engine, a request's session and clock, /health's check, the pruning of expired rows."""

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import (
    Connection,
    Engine,
    any_,
    delete,
    event,
    func,
    inspect,
    literal_column,
    make_url,
    select,
    text,
    tuple_,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.sql.elements import ColumnClause
from sqlmodel import Session, SQLModel, create_engine

from config import settings
from models import IdempotencyKey, RateLimitEvent, RefreshToken, RevokedToken, TokenFamily, utc_now

STATEMENT_TIMED_OUT = (
    "The query took too long; narrow it down (a shorter search, a filter) and try again"
)
BUSY_TIMEOUT_MS = 30_000  # a SQLite writer's wait for the one write lock


class StatementBudget:
    """Interrupts a SQLite statement `seconds` after its first check, once it holds its locks."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def exceeded(self) -> bool:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        return now > self.deadline


def make_engine(url: str, statement_timeout_ms: int | None = None) -> Engine:
    budget_ms = statement_timeout_ms or settings.statement_timeout_ms
    sqlite = url.startswith("sqlite")
    # Each :memory: connection is its own database: all share one.
    in_memory = sqlite and make_url(url).database in (None, "", ":memory:")
    engine = create_engine(
        url,
        hide_parameters=True,  # password hashes stay out of logs
        execution_options={"statement_budget_ms": budget_ms},
        # AnyIO's 40 threads and /health's own: a connection each.
        **({"poolclass": StaticPool} if in_memory else {"pool_size": 41, "max_overflow": 0}),
        pool_pre_ping=not sqlite,
        # No prepared statements: behind a pooler, a transaction may get another server.
        connect_args={"check_same_thread": False} if sqlite else {"prepare_threshold": None},
    )
    if not sqlite:
        return engine

    @event.listens_for(engine, "connect")
    def configure_sqlite(connection: sqlite3.Connection, record: ConnectionPoolEntry) -> None:
        # SQLite's lower() folds only A-Z; this folds all Unicode, as PostgreSQL's does.
        connection.create_function(
            "lower",
            1,
            lambda value: value.lower() if isinstance(value, str) else value,
            deterministic=True,
        )
        # Switching to WAL takes a lock: wait as start-up does.
        connection.execute(f"PRAGMA busy_timeout={settings.database_wait_seconds * 1000}")
        connection.execute("PRAGMA journal_mode=WAL")  # readers beside the writer
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA foreign_keys=ON")  # for ON DELETE CASCADE
        connection.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        record.info["statement_budget"] = budget = StatementBudget(budget_ms / 1000)
        connection.set_progress_handler(budget.exceeded, 1000)

    @event.listens_for(engine, "before_cursor_execute")
    def restart_statement_budget(connection: Connection, *_: object) -> None:
        connection.info["statement_budget"].deadline = None

    return engine


def limit_statement_time(session: Session) -> None:
    """PostgreSQL's statement_timeout where a client sets the cost: it counts lock waits too."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        budget_ms = int(connection.get_execution_options()["statement_budget_ms"])
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {budget_ms}")


def statement_ran_out_of_time(error: DBAPIError) -> bool:
    code = getattr(error.orig, "sqlite_errorcode", None) or getattr(error.orig, "sqlstate", None)
    return code in (sqlite3.SQLITE_INTERRUPT, "57014")  # 57014: PostgreSQL's query_canceled


engine = make_engine(settings.database_url)

# psycopg's words around the reason, and a DNS error's errno.
DRIVER_PREAMBLE = re.compile(
    r"^connection failed: |connection to server (at|on) .*? failed: |FATAL: +|\[Errno -?\d+\] "
)
log = logging.getLogger("uvicorn.error")


def first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def cause_of(error: DBAPIError) -> str:
    cause = DRIVER_PREAMBLE.sub("", first_line(error.orig))
    return cause[:1].lower() + cause[1:] if cause[1:2].islower() else cause  # "SASL" stays


in_memory_turns = threading.Lock()


@contextmanager
def new_session() -> Iterator[Session]:
    """A request's session, in the thread doing its work: the pool never runs out. In-memory
    SQLite's one connection is taken in turns."""
    turns = in_memory_turns if isinstance(engine.pool, StaticPool) else nullcontext()
    # Handlers return the rows they wrote without reading them again.
    with turns, Session(engine, expire_on_commit=False) as session:
        yield session


def database_answers() -> bool:
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    except SQLAlchemyError:
        return False


# Tokens before their families, whose delete then cascades to none (a million would time out).
EXPIRING_TABLES = (RefreshToken, TokenFamily, RevokedToken, RateLimitEvent, IdempotencyKey)
PRUNE_BATCH_ROWS = 5000  # per transaction: SQLite's write lock is held for milliseconds
pruning = threading.Lock()  # one run per process: another would queue for the same rows


def delete_expired(session: Session, table: type[SQLModel], now: datetime) -> int:
    """One batch of expired rows, in the session's transaction, within the statement budget."""
    limit_statement_time(session)
    mapper = inspect(table)
    expired = mapper.columns["expires_at"] <= now
    if session.get_bind().dialect.name == "postgresql":
        # The batch's row addresses, locked (concurrent runs skip them) and collected once, then
        # deleted by address in a TID scan. DELETE ... IN (SELECT ...) is a join instead, whose
        # plan rests on statistics that a bulk load leaves stale.
        address: ColumnClause[str] = literal_column("ctid")
        batch = select(address).select_from(table).where(expired).limit(PRUNE_BATCH_ROWS)
        batch = batch.with_for_update(skip_locked=True).correlate(None)
        statement = delete(table).where(address == any_(func.array(batch.scalar_subquery())))
    else:
        key = mapper.primary_key
        batch = select(*key).where(expired).limit(PRUNE_BATCH_ROWS)
        statement = delete(table).where(tuple_(*key).in_(batch))
    return session.connection().execute(statement).rowcount


def prune_expired(now: datetime) -> None:
    """After a response: it slows no answer, and a failure is logged, never answered."""
    if not pruning.acquire(blocking=False):
        return
    # A request waiting for SQLite's write lock retries within 100 ms: pause as long.
    pause = 0.1 if engine.dialect.name == "sqlite" else 0
    try:
        with new_session() as session:
            for table in EXPIRING_TABLES:
                while delete_expired(session, table, now) == PRUNE_BATCH_ROWS:
                    session.commit()
                    time.sleep(pause)
                session.commit()
    except DBAPIError as error:  # the time budget, a lost connection
        log.warning("Pruning expired rows failed; the next one tries again: %s", cause_of(error))
    finally:
        pruning.release()


async def request_time() -> datetime:
    """The one timestamp of this request (async def: no thread hop); tests override it."""
    return utc_now()


Now = Annotated[datetime, Depends(request_time)]
