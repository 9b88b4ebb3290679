"""The engine (SQLite by default, or PostgreSQL), the per-request session and clock, and migrate(),
which brings any database to the newest Alembic revision (migrations/) at start-up, once it is
there. Every statement has a time budget (STATEMENT_TIMEOUT_MS); main.py answers 503 when one runs
out."""

import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio import CancelScope, CapacityLimiter, Semaphore, to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends
from sqlalchemy import URL, Connection, Engine, delete, event, inspect, make_url, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from config import settings
from models import RateLimitEvent, RefreshToken, RevokedToken, TokenFamily, utc_now

SESSION_SLOTS = (
    40  # a connection for each of AnyIO's 40 worker threads, which run our sync handlers
)
POOL_SIZE = SESSION_SLOTS + 1  # and one for /health, so it never queues behind requests
SCHEMA_LOCK_KEY = 0x70D0_5C4E  # any fixed number: the same in every process of this app
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
        # No server-side prepared statements (psycopg prepares a query run 5 times): behind a pooler in
        # transaction mode (PgBouncer, hosted pooled URLs) the next transaction may get another server.
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
    def configure_sqlite(dbapi_connection, connection_record) -> None:
        # SQLite's own lower() folds only A-Z; Python's folds all of Unicode, as PostgreSQL's does.
        unicode_lower = lambda value: value.lower() if isinstance(value, str) else value  # noqa: E731
        dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)
        # Switching to WAL takes a lock only on a file not yet in WAL (it then stays in WAL): at
        # start-up, which waits DATABASE_WAIT_SECONDS for another process (a worker migrating).
        dbapi_connection.execute(f"PRAGMA busy_timeout={settings.database_wait_seconds * 1000}")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # readers run beside the one writer
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        dbapi_connection.execute(
            "PRAGMA foreign_keys=ON"
        )  # SQLite ignores ON DELETE CASCADE without it
        dbapi_connection.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        connection_record.info["statement_budget"] = budget = StatementBudget(budget_ms / 1000)
        dbapi_connection.set_progress_handler(
            budget.exceeded, 1000
        )  # every 1000 VM steps: cheap, yet prompt

    @event.listens_for(engine, "before_cursor_execute")
    def restart_statement_budget(connection, *_) -> None:
        connection.info["statement_budget"].deadline = None

    return engine


def limit_statement_time(session: Session) -> None:
    """Give the rest of this transaction PostgreSQL's statement_timeout. It counts waiting for row locks
    too, so it is set only where a client controls the cost (the list's search); SQLite's budget covers all."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        budget_ms = int(connection.get_execution_options()["statement_budget_ms"])
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {budget_ms}")


def statement_ran_out_of_time(error: DBAPIError) -> bool:
    """SQLite's "interrupted" (StatementBudget) or PostgreSQL's query_canceled (statement_timeout)."""
    code = getattr(error.orig, "sqlite_errorcode", None) or getattr(error.orig, "sqlstate", None)
    return code in (sqlite3.SQLITE_INTERRUPT, "57014")  # 57014: query_canceled's SQLSTATE


engine = make_engine(settings.database_url)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001_initial"
# A database made before migrations existed has no alembic_version, and exactly these tables.
UNVERSIONED_SCHEMA = {
    "user": {"id", "email", "name", "password_hash", "created_at", "token_generation"},
    "task": {"id", "user_id", "title", "description", "completed", "priority", "due_date", "recurrence",
             "next_occurrence_created", "created_at", "updated_at", "completed_at"},
    "tasktag": {"task_id", "name"},
    "revokedtoken": {"jti", "expires_at"},
    "ratelimitevent": {"id", "bucket", "expires_at"},
}  # fmt: skip
# The counter of a table the migration rebuilt (or, if it came back empty, re-made).
RESTORE_COUNTER = (
    "INSERT INTO sqlite_sequence (name, seq) SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence"
    " WHERE name = ?1) AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)"
)


# What a PostgreSQL that is not up yet answers: nothing listens on its port yet, or it is starting.
NOT_UP_YET = (
    "connection refused",
    "the database system is starting up",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
)
LOCKED = "database is locked"  # SQLite, once busy_timeout has run out
# psycopg's words around the reason: 'connection failed: connection to server at "db", port 5432
# failed: FATAL:  password authentication failed for user "app"', and an errno in a DNS error.
DRIVER_PREAMBLE = re.compile(
    r"^connection failed: |connection to server (at|on) .*? failed: |FATAL: +|\[Errno -?\d+\] "
)
WAIT_INTERVAL_SECONDS = 0.5
log = logging.getLogger("uvicorn.error")  # where uvicorn writes its own messages


class StartupError(Exception):
    """The app cannot start on this database: it cannot be reached, or not brought to this
    release's schema. str() is the one line that says why (middleware.StartupRefusal)."""


def shown_url(url: URL) -> str:
    """The database's URL for a message: without its password, saying so when it has one."""
    # URL.set() cannot clear a part; its documentation names _replace() for that.
    shown = url._replace(password=None).render_as_string()
    return f"{shown} (password hidden)" if url.password else shown


def cause_of(error: DBAPIError) -> str:
    """The driver's reason in a few words: the first line of its message, without its preamble."""
    first_line = (str(error.orig).strip().splitlines() or [type(error.orig).__name__])[0]
    cause = DRIVER_PREAMBLE.sub("", first_line)
    return cause[:1].lower() + cause[1:] if cause[1:2].islower() else cause  # "SASL" stays


def start_up_error(failed: str, target: Engine, error: DBAPIError) -> StartupError:
    """The one line for a database that failed start-up: what failed, on which database, and why."""
    cause = cause_of(error)
    if cause.startswith((*NOT_UP_YET, LOCKED)):
        cause += f", after waiting {settings.database_wait_seconds} s (DATABASE_WAIT_SECONDS)"
    return StartupError(f"Cannot {failed} the database at {shown_url(target.url)}: {cause}")


def connect_waiting(target: Engine) -> Connection:
    """A connection, waiting up to DATABASE_WAIT_SECONDS for a PostgreSQL that is not up yet, as
    when the app starts beside it (SQLite waits in busy_timeout). Anything else fails at once."""
    deadline = time.monotonic() + settings.database_wait_seconds
    waiting = False
    while True:
        try:
            return target.connect()
        except DBAPIError as error:
            cause = cause_of(error)
            if not cause.startswith(NOT_UP_YET) or time.monotonic() >= deadline:
                raise start_up_error("connect to", target, error) from error
            if not waiting:
                waiting = True
                line = "Waiting up to %d s (DATABASE_WAIT_SECONDS) for the database at %s: %s"
                seconds, database = settings.database_wait_seconds, shown_url(target.url)
                log.info(line, seconds, database, cause)
            time.sleep(WAIT_INTERVAL_SECONDS)


@contextmanager
def schema_transaction(target: Engine) -> Iterator[Connection]:
    """A connection in one transaction holding the schema lock: of several processes starting
    together, one migrates and the others wait, then find the work done."""
    with connect_waiting(target) as connection:
        if connection.dialect.name == "postgresql":
            with connection.begin():
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
                yield connection
            return
        budget = connection.info["statement_budget"]
        budget.seconds, seconds = math.inf, budget.seconds  # a migration may copy a whole table
        # pysqlite runs DDL outside its own transactions: in autocommit mode our BEGIN covers all (the pool
        # restores the mode). Foreign keys go off first, as the pragma does nothing inside a transaction:
        # rebuilding `user` with them on would cascade-delete every task.
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # Another process's write lock (a worker migrating, a backup) is waited for as at connect.
        connection.exec_driver_sql(f"PRAGMA busy_timeout={settings.database_wait_seconds * 1000}")
        try:
            # IMMEDIATE takes the write lock before the version is read, so other workers wait here.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            has_counters = connection.dialect.has_table(
                connection, "sqlite_sequence"
            )  # AUTOINCREMENT's
            counters = (
                connection.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all()
                if has_counters
                else []
            )
            yield connection
            # A rebuilt table loses its counter, and a deleted account's id would go to the next signup.
            for name, seq in counters:
                connection.exec_driver_sql(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name)
                )
                connection.exec_driver_sql(RESTORE_COUNTER, (name, seq))
            if connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise StartupError(
                    "The migration was rolled back: it left a foreign key pointing to no row"
                )
            connection.exec_driver_sql("COMMIT")
        except BaseException:
            if connection.connection.dbapi_connection.in_transaction:  # SQLite may have rolled back
                connection.exec_driver_sql("ROLLBACK")
            raise
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            budget.seconds = seconds


def alembic_config(migrations: Path = MIGRATIONS, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection  # migrations/env.py runs on this one
    return config


def unversioned_revision(connection: Connection) -> str | None:
    """An unversioned database's revision: None when it has none of our tables (a new one),
    FIRST_REVISION when it has all that revision makes; anything between is not ours."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if not tables & set(UNVERSIONED_SCHEMA):
        return None
    missing = []
    for table, columns in UNVERSIONED_SCHEMA.items():
        if table not in tables:
            missing.append(table)
            continue
        existing = {column["name"] for column in inspector.get_columns(table)}
        missing += [f"{table}.{column}" for column in sorted(columns - existing)]
    if missing:
        raise StartupError(
            "The database has some of the Todo API's tables but not all they need "
            f"(missing: {', '.join(missing)}), so it is left alone: it was not made by this app"
        )
    return FIRST_REVISION


def migrate(target: Engine, migrations: Path = MIGRATIONS) -> tuple[str | None, str]:
    """Bring the database to the newest revision; return (revision before, revision now). A
    database that cannot be reached or used, a revision this code does not know, or a failing
    migration raises StartupError and changes nothing."""
    try:
        return upgrade_to_head(target, migrations)
    except DBAPIError as error:  # the database's own refusal (a lock, a permission)
        raise start_up_error("use", target, error) from error


def upgrade_to_head(target: Engine, migrations: Path) -> tuple[str | None, str]:
    """migrate()'s work, which it runs and whose database errors it words."""
    if target.dialect.name == "sqlite" and target.url.database not in (None, "", ":memory:"):
        # A new file is its owner's only (SQLite gives -wal and -shm the same): it holds password hashes.
        Path(target.url.database).touch(mode=0o600, exist_ok=True)
    scripts = ScriptDirectory.from_config(alembic_config(migrations))
    head = scripts.get_current_head()
    with schema_transaction(target) as connection:
        context = MigrationContext.configure(connection)
        versions = context.get_current_heads()
        if len(versions) > 1:
            raise StartupError(
                f"The database's alembic_version table holds {len(versions)} revisions "
                f"({', '.join(sorted(versions))}) where it should hold one, so the database is "
                "left alone: delete the rows of the revisions it is not at"
            )
        known = {script.revision for script in scripts.walk_revisions()}
        if unknown := [version for version in versions if version not in known]:
            raise StartupError(
                f"The database is at revision {', '.join(unknown)}, which this release of the Todo API "
                "does not know: a newer release made it. Run that release or a newer one on it"
            )
        if versions:
            [before] = versions
        elif (before := unversioned_revision(connection)) is not None:
            context.stamp(scripts, before)
        if before != head:
            try:
                command.upgrade(alembic_config(migrations, connection), "head")
            except Exception as error:
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise StartupError(
                    f"Upgrading the database from revision {before or 'none (new database)'} to {head} failed, "
                    f"and it was left as it was: {reason}"
                ) from error
    return before, head


session_slots: RunVar[Semaphore] = RunVar("session_slots")  # AnyIO's: one per event loop
health_check_slot: RunVar[Semaphore] = RunVar("health_check_slot")


def slots(variable: RunVar[Semaphore], count: int) -> Semaphore:
    """This event loop's semaphore; in-memory SQLite has one connection in all, so all take turns on one."""
    if isinstance(engine.pool, StaticPool):
        variable, count = session_slots, 1
    if (semaphore := variable.get(None)) is None:
        variable.set(semaphore := Semaphore(count, fast_acquire=True))
    return semaphore


async def get_session() -> AsyncIterator[Session]:
    """A session in one of SESSION_SLOTS, taken on the event loop: never more sessions than pooled
    connections, so no thread waits for a connection held by a request that waits for a thread."""
    # async def saves a thread hop per request, as opening a Session does no I/O. Closing one
    # returns its connection to the pool, so that runs in a thread: shielded, so a client that hangs
    # up cannot leak it, and outside the threadpool's limit, so it never waits for a thread.
    async with slots(session_slots, SESSION_SLOTS):
        session = Session(
            engine, expire_on_commit=False
        )  # a handler returns the rows it wrote without a re-read
        try:
            yield session
        finally:
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
pruning = (
    threading.Lock()
)  # one pruning run per process: a second would only queue for the same rows


def delete_expired(session: Session, table: type[SQLModel], now: datetime) -> int:
    """Delete up to PRUNE_BATCH_ROWS rows of `table` whose expires_at has passed; return how many."""
    [key] = table.__table__.primary_key.columns
    expired = select(key).where(table.expires_at <= now).limit(PRUNE_BATCH_ROWS)
    if session.get_bind().dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)  # concurrent runs take other rows
    return session.execute(delete(table).where(key.in_(expired.scalar_subquery()))).rowcount


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
