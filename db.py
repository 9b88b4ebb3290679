"""The database engine and the per-request session.

SQLite is the zero-setup default. Its settings below are what keep it correct under many
concurrent clients: WAL lets readers run beside the one writer, busy_timeout makes a
writer wait for the lock instead of failing with "database is locked", and the pool has
a connection for every thread of FastAPI's threadpool, and one for /health.

PostgreSQL (DATABASE_URL=postgresql+psycopg://...) needs none of that: it gets the same
pool size, plus pool_pre_ping so that a connection the server has closed is replaced
instead of failing a request. Date-times are timestamptz columns that SQLModel returns
in UTC, so the server's TimeZone setting never shows in the API.

The schema comes from the Alembic migrations in migrations/: migrate() brings any
database to the newest revision at start-up, in one transaction, one process at a time.

On both, every statement has a time budget (STATEMENT_TIMEOUT_MS): SQLite's progress
handler or PostgreSQL's statement_timeout stops it, and main.py answers 503.
"""

import math
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from datetime import datetime
from typing import Annotated

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio import CancelScope, CapacityLimiter, Semaphore, to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends
from sqlalchemy import Connection, Engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from config import settings
from models import utc_now

THREADPOOL_SIZE = 40  # AnyIO's default number of worker threads, which run our sync handlers
SESSION_SLOTS = THREADPOOL_SIZE  # one connection for each thread that can run a query
HEALTH_CHECK_SLOTS = 1  # /health has a connection of its own, so it never queues behind requests
POOL_SIZE = SESSION_SLOTS + HEALTH_CHECK_SLOTS
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed number works: it only has to be the same in every process of this app.
SCHEMA_LOCK_KEY = 0x70D0_5C4E
QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement stopped by statement_timeout
STATEMENT_TIMED_OUT = "The query took too long; narrow it down (a shorter search, a filter) and try again"


def unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def configure_sqlite(dbapi_connection, _connection_record) -> None:
    # SQLite's own lower() folds only A-Z. Python's folds all of Unicode, as PostgreSQL's
    # does, so case-insensitive search and title sorting answer the same on both.
    dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE CASCADE without it
    # In WAL mode NORMAL loses no committed transaction on a process crash; only a power
    # loss can roll back the last few. SQLITE_SYNCHRONOUS=FULL closes that gap.
    cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")  # validated in config.py
    cursor.close()


class StatementBudget:
    """Interrupts a SQLite statement that has run for longer than `seconds` (it then fails
    with "interrupted"): SQLite calls exceeded() every PROGRESS_INSTRUCTIONS steps of its
    virtual machine. The clock starts at a statement's first call, once it holds its locks:
    waiting for the write lock is busy_timeout's business."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def restart(self) -> None:
        self.deadline = None

    def exceeded(self) -> bool:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
            return False
        return now > self.deadline


# Often enough to stop even a statement whose every step is slow (a backtracking LIKE on
# a long text) soon after its budget; seldom enough that an ordinary query calls it a few
# times at most.
PROGRESS_INSTRUCTIONS = 1_000


def restart_statement_budget(connection, _cursor, _statement, _parameters, _context, _executemany) -> None:
    connection.info["statement_budget"].restart()


def remember_statement_budget(milliseconds: int, _dbapi_connection, connection_record) -> None:
    connection_record.info["statement_budget_ms"] = milliseconds


def limit_statement_time(session: Session) -> None:
    """Give the rest of this transaction's statements PostgreSQL's statement_timeout.

    PostgreSQL counts the time a statement waits for a row lock too, which concurrent
    writes to one account do as a matter of course, so the budget is set only for the
    statements whose cost a client controls: the list's search and filters. SQLite's
    budget counts running time alone and covers every statement already."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(connection.info['statement_budget_ms'])}")


def statement_ran_out_of_time(error: DBAPIError) -> bool:
    """SQLite's "interrupted" (from StatementBudget) or PostgreSQL's query_canceled (from
    statement_timeout)."""
    original = error.orig
    return (
        getattr(original, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT
        or getattr(original, "sqlstate", None) == QUERY_CANCELED
    )


def make_engine(url: str, statement_timeout_ms: int | None = None) -> Engine:
    """An engine whose every statement has a time budget: STATEMENT_TIMEOUT_MS unless
    `statement_timeout_ms` is given."""
    timeout_ms = settings.statement_timeout_ms if statement_timeout_ms is None else statement_timeout_ms
    # hide_parameters keeps bound values (password hashes among them) out of error logs.
    if url.startswith("sqlite"):
        if make_url(url).database in (None, "", ":memory:"):
            # Each connection to :memory: would be a database of its own, so every request
            # shares one connection, one session at a time (see get_session): for demos.
            pooling = {"poolclass": StaticPool}
        else:
            pooling = {"pool_size": POOL_SIZE, "max_overflow": 0}
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False},  # a request may cross threads
            **pooling,
        )

        def configure_connection(dbapi_connection, connection_record) -> None:
            configure_sqlite(dbapi_connection, connection_record)
            budget = StatementBudget(timeout_ms / 1000)
            connection_record.info["statement_budget"] = budget
            dbapi_connection.set_progress_handler(budget.exceeded, PROGRESS_INSTRUCTIONS)

        event.listen(engine, "connect", configure_connection)
        event.listen(engine, "before_cursor_execute", restart_statement_budget)
        return engine
    engine = create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=0,
    )
    event.listen(engine, "connect", partial(remember_statement_budget, timeout_ms))
    return engine


engine = make_engine(settings.database_url)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001_initial"
# What a database made before migrations existed holds: exactly what 0001_initial
# creates. Such a database has no alembic_version table; it is recognised by these.
UNVERSIONED_SCHEMA = {
    "user": {"id", "email", "name", "password_hash", "created_at", "token_generation"},
    "task": {
        "id", "user_id", "title", "description", "completed", "priority", "due_date", "recurrence",
        "next_occurrence_created", "created_at", "updated_at", "completed_at",
    },
    "tasktag": {"task_id", "name"},
    "revokedtoken": {"jti", "expires_at"},
    "ratelimitevent": {"id", "bucket", "expires_at"},
}  # fmt: skip


class SchemaError(Exception):
    """The database cannot be brought to this release's schema. The message says why, in
    one line: start-up prints it and stops."""


@contextmanager
def schema_transaction(target: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the schema lock until it commits, or
    rolls back if the block raises: of several processes starting together, one migrates
    and the others wait, then find the work done."""
    with target.connect() as connection:
        if connection.dialect.name == "postgresql":
            with connection.begin():
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                yield connection
            return
        # A migration may copy a whole table, so it runs without SQLite's statement budget.
        budget = connection.info["statement_budget"]
        budget_seconds, budget.seconds = budget.seconds, math.inf
        # pysqlite opens a transaction only before INSERT/UPDATE/DELETE and runs DDL outside
        # of one, so a failing migration would leave half its tables behind. In autocommit
        # mode the driver starts nothing itself, and the BEGIN below covers everything; the
        # pool restores the default mode when this connection goes back to it.
        connection.execution_options(isolation_level="AUTOCOMMIT")
        # SQLite rebuilds a table to alter it (copy, drop, rename); with foreign keys on,
        # dropping `user` would delete every task through ON DELETE CASCADE. The pragma
        # has no effect inside a transaction, so it is set first; foreign_key_check below
        # still refuses a migration that leaves a dangling reference.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            # IMMEDIATE takes the write lock now, before the version is read: the other
            # workers wait here (busy_timeout) instead of all reading "not migrated yet".
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                sequences = autoincrement_sequences(connection)
                yield connection
                keep_autoincrement_sequences(connection, sequences)
                if connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise SchemaError("The migration was rolled back: it left a foreign key pointing to no row")
            except BaseException:
                if connection.connection.dbapi_connection.in_transaction:  # SQLite may have rolled back itself
                    connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            budget.seconds = budget_seconds


def autoincrement_sequences(connection: Connection) -> dict[str, int]:
    """SQLite's AUTOINCREMENT counters: the highest id each table ever handed out."""
    if not connection.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").first():
        return {}
    return dict(connection.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all())


def keep_autoincrement_sequences(connection: Connection, before: dict[str, int]) -> None:
    """A migration that rebuilds a table (copy, drop, rename) drops its counter with it, and
    SQLite would then hand a deleted account's id to the next signup. Never go back."""
    for table, highest in before.items():
        exists = connection.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        if exists.first() is None:
            continue  # the migration dropped the table itself
        raised = connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (highest, table)
        )
        if raised.rowcount == 0:
            connection.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, highest))


def alembic_config(migrations: Path = MIGRATIONS, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection  # migrations/env.py runs on this one
    return config


def unversioned_revision(connection: Connection) -> str | None:
    """The revision of a database without an alembic_version table: None when it has
    none of our tables (a new database), FIRST_REVISION when it has every table and
    column that revision makes. Anything in between is not a database we made."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names()) & set(UNVERSIONED_SCHEMA)
    if not present:
        return None
    missing = []
    for table, columns in UNVERSIONED_SCHEMA.items():
        if table not in present:
            missing.append(table)
            continue
        existing = {column["name"] for column in inspector.get_columns(table)}
        missing += [f"{table}.{column}" for column in sorted(columns - existing)]
    if missing:
        raise SchemaError(
            "The database has some of the Todo API's tables but not all they need "
            f"(missing: {', '.join(missing)}), so it is left alone: it was not made by this app"
        )
    return FIRST_REVISION


def migrate(target: Engine, migrations: Path = MIGRATIONS) -> tuple[str | None, str]:
    """Bring the database to the newest revision; return (revision before, revision now).

    A database made before migrations existed is recognised as FIRST_REVISION and stamped
    so. A revision this code does not know, or a migration that fails, raises SchemaError
    and leaves the database as it was.
    """
    if target.dialect.name == "sqlite" and target.url.database not in (None, "", ":memory:"):
        # The file holds password hashes: a new one is readable by its owner only (SQLite
        # gives its -wal and -shm files the same permissions).
        Path(target.url.database).touch(mode=0o600, exist_ok=True)
    scripts = ScriptDirectory.from_config(alembic_config(migrations))
    head = scripts.get_current_head()
    known = {script.revision for script in scripts.walk_revisions()}
    with schema_transaction(target) as connection:
        context = MigrationContext.configure(connection)
        versions = context.get_current_heads()
        unknown = [version for version in versions if version not in known]
        if unknown:
            raise SchemaError(
                f"The database is at revision {', '.join(unknown)}, which this release of the Todo API "
                "does not know: a newer release made it. Run that release or a newer one on it"
            )
        if versions:
            [before] = versions
        else:
            before = unversioned_revision(connection)
            if before is not None:
                context.stamp(scripts, before)
        if before == head:
            return before, head
        try:
            command.upgrade(alembic_config(migrations, connection), "head")
        except Exception as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise SchemaError(
                f"Upgrading the database from revision {before or 'none (new database)'} to {head} failed, "
                f"and it was left as it was: {reason}"
            ) from error
    return before, head


# A request keeps its session, and so its pooled connection, from its first query to its
# end, across several hops between the event loop and the threadpool. If every request
# could open a session, 40 threads could each wait for a connection while the 40 pooled
# connections belong to requests parked until a thread frees up: nothing moves until the
# pool's timeout. So a request takes one of SESSION_SLOTS, on the event loop and before
# its first thread, and keeps it until its session is closed. There are never more
# sessions than connections, and a thread never waits for a connection.
session_slots: RunVar[Semaphore] = RunVar("session_slots")  # AnyIO's, one per event loop
health_check_slots: RunVar[Semaphore] = RunVar("health_check_slots")


def slots(variable: RunVar[Semaphore], count: int) -> Semaphore:
    try:
        return variable.get()
    except LookupError:
        semaphore = Semaphore(count, fast_acquire=True)
        variable.set(semaphore)
        return semaphore


def database_answers() -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


async def check_database() -> bool:
    """Whether the database answers a query. On a connection and a thread of its own, so
    the answer comes as fast under a burst of requests as on an idle server."""
    # In-memory SQLite's one connection is the sessions': /health takes its turn with them.
    shared = isinstance(engine.pool, StaticPool)
    async with slots(session_slots, 1) if shared else slots(health_check_slots, HEALTH_CHECK_SLOTS):
        return await to_thread.run_sync(database_answers, limiter=CapacityLimiter(1))


async def get_session() -> AsyncIterator[Session]:
    # async def saves a thread hop on every request: opening a Session does no I/O (it
    # connects at its first query, in a worker thread). Closing it returns the connection
    # to the pool, which talks to the database, so that runs in a worker thread: shielded,
    # so a client hanging up cannot leak the connection or its slot, and outside the
    # threadpool's limit (as FastAPI does for sync dependencies), so it never waits for
    # a thread.
    # expire_on_commit=False: a handler returns the rows it just wrote without a re-read.
    # In-memory SQLite has one connection in all, so its sessions take turns.
    async with slots(session_slots, 1 if isinstance(engine.pool, StaticPool) else SESSION_SLOTS):
        session = Session(engine, expire_on_commit=False)
        try:
            yield session
        finally:
            with CancelScope(shield=True):
                await to_thread.run_sync(session.close, limiter=CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]


async def request_time() -> datetime:
    """The one timestamp of this request. async def: no thread hop; tests override it."""
    return utc_now()


Now = Annotated[datetime, Depends(request_time)]
