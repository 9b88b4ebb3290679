"""Runs versions/ on migrate.migrate's locked connection, or on the app's engine for `alembic`."""

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
        # ALTER on SQLite (a rebuilt table) and PostgreSQL from one script.
        render_as_batch=True,
        compare_type=True,
    )
    # Begins nothing: the upgrade commits or rolls back whole, in schema_transaction.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) mode is not supported: migrations run on a database")
if (connection := context.config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    # The command shows the revisions it runs.
    logging.basicConfig(format="%(levelname)-5.5s [%(name)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.INFO)
    with schema_transaction(engine) as connection:
        run_migrations(connection)
