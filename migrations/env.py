"""Alembic's environment: runs the migrations in versions/ against the app's database.

At start-up migrate.migrate passes the connection it has locked, inside the one transaction that
the whole upgrade runs in. The `alembic` command line (see README) uses the app's own engine, from
DATABASE_URL, through the same locked transaction.
"""

import logging

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import models  # noqa: F401 -- registers the tables on SQLModel.metadata
from db import engine
from migrate import schema_transaction


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # Batch operations make ALTER work on SQLite (it rebuilds the table), and are plain
        # ALTERs on PostgreSQL: one script serves both databases.
        render_as_batch=True,
        compare_type=True,
    )
    # The connection is already in its transaction, so this begins nothing: the upgrade
    # commits or rolls back as a whole, when schema_transaction ends.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) mode is not supported: migrations run on a database")
given_connection = context.config.attributes.get("connection")
if given_connection is not None:
    run_migrations(given_connection)
else:
    # The command line's own output: which revisions it runs.
    logging.basicConfig(format="%(levelname)-5.5s [%(name)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.INFO)
    with schema_transaction(engine) as connection:
        run_migrations(connection)
