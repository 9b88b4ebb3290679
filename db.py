"""The database engine and the per-request session.

SQLite is the zero-setup default. Its settings below are what keep it correct under many
concurrent clients: WAL lets readers run beside the one writer, busy_timeout makes a
writer wait for the lock instead of failing with "database is locked", and the pool has
a connection for every thread of FastAPI's threadpool.

PostgreSQL (DATABASE_URL=postgresql+psycopg://...) needs none of that: it gets the same
pool size, plus pool_pre_ping so that a connection the server has closed is replaced
instead of failing a request. Date-times are timestamptz columns that SQLModel returns
in UTC, so the server's TimeZone setting never shows in the API.

The schema comes from the Alembic migrations in migrations/: migrate() brings any
database to the newest revision at start-up, in one transaction, one process at a time.
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio import CancelScope, CapacityLimiter, to_thread
from fastapi import Depends
from sqlalchemy import Connection, Engine, event, inspect, make_url, text
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from config import settings

THREADPOOL_SIZE = 40  # AnyIO's default number of worker threads, which run our sync handlers
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed number works: it only has to be the same in every process of this app.
SCHEMA_LOCK_KEY = 0x70D0_5C4E


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


def make_engine(url: str) -> Engine:
    # hide_parameters keeps bound values (password hashes among them) out of error logs.
    if url.startswith("sqlite"):
        if make_url(url).database in (None, "", ":memory:"):
            # Each connection to :memory: would be a database of its own, so every request
            # shares one connection: for demos and tests, not for concurrent writers.
            pooling = {"poolclass": StaticPool}
        else:
            pooling = {"pool_size": THREADPOOL_SIZE, "max_overflow": 0}
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False},  # a request may cross threads
            **pooling,
        )
        event.listen(engine, "connect", configure_sqlite)
        return engine
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=THREADPOOL_SIZE,
        max_overflow=0,
    )


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
                yield connection
                if connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise SchemaError("The migration was rolled back: it left a foreign key pointing to no row")
            except BaseException:
                if connection.connection.dbapi_connection.in_transaction:  # SQLite may have rolled back itself
                    connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


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


async def get_session() -> AsyncIterator[Session]:
    # async def saves a thread hop on every request: opening a Session does no I/O (it
    # connects at its first query, in a worker thread). Closing it returns the connection
    # to the pool, which talks to the database, so that runs in a worker thread: shielded,
    # so a client hanging up cannot leak the connection, and outside the threadpool's
    # limit (as FastAPI does for sync dependencies), so it never waits for a thread held
    # by a request that is itself waiting for this connection.
    # expire_on_commit=False: a handler returns the rows it just wrote without a re-read.
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        with CancelScope(shield=True):
            await to_thread.run_sync(session.close, limiter=CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]
