"""The database engine and the per-request session.

SQLite is the zero-setup default. Its settings below are what keep it correct under many
concurrent clients: WAL lets readers run beside the one writer, busy_timeout makes a
writer wait for the lock instead of failing with "database is locked", and the pool has
a connection for every thread of FastAPI's threadpool.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine, event
from sqlmodel import Session, SQLModel, create_engine

from config import settings

THREADPOOL_SIZE = 40  # AnyIO's default number of worker threads, which run our sync handlers
SQLITE_BUSY_TIMEOUT_MS = 30_000


def enable_sqlite_concurrency(dbapi_connection, _connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE CASCADE without it
    # In WAL mode NORMAL loses no committed transaction on a process crash; only a power
    # loss can roll back the last few. PRAGMA synchronous=FULL closes that gap.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    # hide_parameters keeps bound values (password hashes among them) out of error logs.
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False},  # a request may cross threads
            pool_size=THREADPOOL_SIZE,
            max_overflow=0,
        )
        event.listen(engine, "connect", enable_sqlite_concurrency)
        return engine
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=THREADPOOL_SIZE,
        max_overflow=0,
    )


engine = make_engine(settings.database_url)


def create_tables(target: Engine) -> None:
    import models  # noqa: F401  (registers the tables on SQLModel.metadata)

    SQLModel.metadata.create_all(target)


def get_session() -> Iterator[Session]:
    # expire_on_commit=False: a handler returns the rows it just wrote without a re-read.
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
