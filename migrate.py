"""migrate(), run at start-up: the database at the newest revision, or a StartupError."""

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, inspect
from sqlalchemy.exc import DBAPIError

from config import settings
from db import BUSY_TIMEOUT_MS, cause_of, first_line, log

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001_initial"
SCHEMA_LOCK_KEY = 0x70D0_5C4E  # any number, the same in every process
# A database made before migrations has no alembic_version, and exactly these tables.
UNVERSIONED_SCHEMA = {
    "user": {"id", "email", "name", "password_hash", "created_at", "token_generation"},
    "task": {"id", "user_id", "title", "description", "completed", "priority", "due_date",
             "recurrence", "next_occurrence_created", "created_at", "updated_at", "completed_at"},
    "tasktag": {"task_id", "name"},
    "revokedtoken": {"jti", "expires_at"},
    "ratelimitevent": {"id", "bucket", "expires_at"},
}  # fmt: skip
# A PostgreSQL not up yet answers these.
NOT_UP_YET = (
    "connection refused",
    "the database system is starting up",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
)


class StartupError(Exception):
    """The app cannot start on this database: str() says why, in one line."""


def shown_url(url: URL) -> str:
    # _replace(): URL's documented way to clear a part.
    shown = url._replace(password=None).render_as_string()
    return f"{shown} (password hidden)" if url.password else shown


def start_up_error(failed: str, target: Engine, error: DBAPIError) -> StartupError:
    cause = cause_of(error)
    if cause.startswith((*NOT_UP_YET, "database is locked")):
        cause += f", after waiting {settings.database_wait_seconds} s (DATABASE_WAIT_SECONDS)"
    return StartupError(f"Cannot {failed} the database at {shown_url(target.url)}: {cause}")


def connect_waiting(target: Engine) -> Connection:
    """Waits DATABASE_WAIT_SECONDS at most for a PostgreSQL not up yet."""
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
                log.info(
                    "Waiting up to %d s (DATABASE_WAIT_SECONDS) for the database at %s: %s",
                    settings.database_wait_seconds,
                    shown_url(target.url),
                    cause,
                )
            time.sleep(0.5)


@contextmanager
def schema_transaction(target: Engine) -> Iterator[Connection]:
    """The schema lock in one transaction: one worker migrates, the others wait and find it done."""
    with connect_waiting(target) as connection:
        if connection.dialect.name == "postgresql":
            with connection.begin():
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
                yield connection
            return
        budget = connection.info["statement_budget"]
        budget.seconds, seconds = math.inf, budget.seconds  # a migration may copy a whole table
        # Autocommit (the pool resets it), so pysqlite begins nothing: our BEGIN covers all.
        # Foreign keys off before it (a no-op inside): rebuilding `user` would delete every task.
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # Another worker's write lock: wait as at connect.
        connection.exec_driver_sql(f"PRAGMA busy_timeout={settings.database_wait_seconds * 1000}")
        try:
            # The write lock before the version is read: other workers wait here.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            counters = (
                connection.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all()
                if connection.dialect.has_table(connection, "sqlite_sequence")
                else []
            )
            yield connection
            # A rebuilt table loses its counter: a deleted account's id would go to the next signup.
            for name, seq in counters:
                connection.exec_driver_sql(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name)
                )
                connection.exec_driver_sql(  # or re-made, for a table that came back empty
                    "INSERT INTO sqlite_sequence (name, seq) SELECT ?1, ?2"
                    " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?1)"
                    " AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                    (name, seq),
                )
            if connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise StartupError(
                    "The migration was rolled back: it left a foreign key pointing to no row"
                )
            connection.exec_driver_sql("COMMIT")
        except BaseException:
            driver = cast(sqlite3.Connection, connection.connection.driver_connection)
            if driver.in_transaction:  # SQLite may have rolled back
                connection.exec_driver_sql("ROLLBACK")
            raise
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            budget.seconds = seconds


def alembic_config(migrations: Path = MIGRATIONS, connection: Connection | None = None) -> Config:
    config = Config(attributes={"connection": connection})  # migrations/env.py runs on it
    config.set_main_option("script_location", str(migrations))
    return config


def unversioned_revision(connection: Connection) -> str | None:
    """None for a new database, FIRST_REVISION for one with all its tables, else a StartupError."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if tables.isdisjoint(UNVERSIONED_SCHEMA):
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
    """Return (revision before, revision now); a failure is a StartupError and changes nothing."""
    if target.dialect.name == "sqlite" and target.url.database not in (None, "", ":memory:"):
        # Owner-only (as SQLite's -wal, -shm): it holds password hashes.
        Path(target.url.database).touch(mode=0o600, exist_ok=True)
    scripts = ScriptDirectory.from_config(alembic_config(migrations))
    [head] = scripts.get_heads()
    try:
        with schema_transaction(target) as connection:
            context = MigrationContext.configure(connection)
            versions = context.get_current_heads()
            if len(versions) > 1:
                raise StartupError(
                    f"The database's alembic_version table holds {len(versions)} revisions "
                    f"({', '.join(sorted(versions))}) where it should hold one, so the database "
                    "is left alone: delete the rows of the revisions it is not at"
                )
            known = {script.revision for script in scripts.walk_revisions()}
            if unknown := set(versions) - known:
                raise StartupError(
                    f"The database is at revision {', '.join(unknown)}, which this release of "
                    "the Todo API does not know: a newer release made it. Run that release or a "
                    "newer one on it"
                )
            if versions:
                before: str | None = versions[0]
            elif (before := unversioned_revision(connection)) is not None:
                context.stamp(scripts, before)
            if before != head:
                try:
                    command.upgrade(alembic_config(migrations, connection), "head")
                except Exception as error:
                    raise StartupError(
                        f"Upgrading the database from revision {before or 'none (new database)'}"
                        f" to {head} failed, and it was left as it was: {first_line(error)}"
                    ) from error
    except DBAPIError as error:  # a lock, a permission
        raise start_up_error("use", target, error) from error
    return before, head
