"""Schema migrations (migrations/, migrate.migrate): on SQLite, or on PostgreSQL with
TEST_DATABASE_URL, each test on a database of its own.

A database made by the release before migrations existed is built here from that
release's schema, kept in test_data/ as the SQL its create_all issued: it must not follow
models.py, since the databases people already have do not.
"""

import os
import secrets
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import httpx2
import jwt
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import PASSWORD, REPO_ROOT, TEST_DATABASE_URL, free_port
from sqlalchemy import Column, DateTime, Engine, MetaData, String, bindparam, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

import db
import migrate

HEAD = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()

TEST_DATA = Path(__file__).resolve().parent / "test_data"


def release_before_migrations(dialect: str) -> list[str]:
    """The schema that the release before migrations made with SQLModel.metadata.create_all,
    statement for statement."""
    return (TEST_DATA / f"release-before-migrations.{dialect}.sql").read_text().split(";")


MARCH_1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database_url(tmp_path, new_database) -> str:
    """A new, empty database: a SQLite file in tmp_path (where a live server also keeps
    its secret and log), or a PostgreSQL database of its own, dropped afterwards."""
    if TEST_DATABASE_URL is None:
        return f"sqlite:///{tmp_path / 'todo.db'}"
    return new_database("migrations")


@pytest.fixture
def database(database_url) -> Engine:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def build_release_before_migrations(engine: Engine) -> None:
    with engine.begin() as connection:
        for statement in release_before_migrations(engine.dialect.name):
            if statement.strip():
                connection.exec_driver_sql(statement)


def upgrade_to(engine: Engine, revision: str) -> None:
    with migrate.schema_transaction(engine) as connection:
        command.upgrade(migrate.alembic_config(connection=connection), revision)


def downgrade_to(engine: Engine, revision: str) -> None:
    with migrate.schema_transaction(engine) as connection:
        command.downgrade(migrate.alembic_config(connection=connection), revision)


def current_revisions(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_heads()


def schema_of(engine: Engine) -> list[tuple]:
    """Every table, column, constraint and index as the database itself describes them:
    SQLite's own CREATE statements; PostgreSQL's catalog, in its own words."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # sqlite_sequence is SQLite's: made with the first AUTOINCREMENT table, never dropped.
            rows = connection.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE tbl_name NOT IN ('alembic_version', 'sqlite_sequence')"
            )
            # Spacing aside (sqlite_master keeps each statement's own), the statements must
            # match; so must a table's name, which SQLite quotes in the statement of a table
            # that a batch migration rebuilt and renamed into place.
            return sorted(
                (
                    kind,
                    name,
                    table,
                    sql
                    and " ".join(
                        sql.replace(f'CREATE TABLE "{name}"', f"CREATE TABLE {name}").split()
                    ),
                )
                for kind, name, table, sql in rows
            )
        # A column's place among the table's columns, not its ordinal_position: PostgreSQL
        # never reuses the position of a dropped column, so a column dropped by a downgrade
        # and added again by the upgrade comes back in the same place, at another number.
        columns = connection.exec_driver_sql(
            "SELECT table_name, column_name, "
            "rank() OVER (PARTITION BY table_name ORDER BY ordinal_position), "
            "data_type, character_maximum_length, "
            "is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name != 'alembic_version'"
        )
        constraints = connection.exec_driver_sql(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace "
            "AND conrelid::regclass::text != 'alembic_version'"
        )
        indexes = connection.exec_driver_sql(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename != 'alembic_version'"
        )
        sequences = connection.exec_driver_sql(
            "SELECT sequence_name, data_type FROM information_schema.sequences "
            "WHERE sequence_schema = current_schema()"
        )
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        # indexdef names the schema: without it, two schemas' descriptions compare equal.
        return sorted(
            (kind, *(str(value).replace(f"{schema}.", "") for value in row))
            for kind, rows in (
                ("column", columns),
                ("constraint", constraints),
                ("index", indexes),
                ("sequence", sequences),
            )
            for row in rows
        )


def differences_from_models(engine: Engine, metadata: MetaData = SQLModel.metadata) -> list:
    """What `alembic revision --autogenerate` would write: the models against the database."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


# --- models and migrations agree ---


def test_migrations_make_the_schema_that_models_py_describes(database):
    migrate.migrate(database)

    assert current_revisions(database) == (HEAD,)
    assert differences_from_models(database) == []


def test_a_column_in_models_py_that_no_migration_makes_is_a_difference(database):
    migrate.migrate(database)
    models_with_a_new_column = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(models_with_a_new_column)
    models_with_a_new_column.tables["user"].append_column(
        Column("nickname", String(50), nullable=True)
    )

    [(operation, schema, table, column)] = differences_from_models(
        database, models_with_a_new_column
    )

    assert (operation, schema, table, column.name) == ("add_column", None, "user", "nickname")


@pytest.mark.skipif(
    TEST_DATABASE_URL is not None, reason="AUTOINCREMENT is SQLite's; PostgreSQL never reuses ids"
)
def test_every_table_that_never_reuses_ids_is_autoincrement_at_head(database):
    """The comparison above cannot see this table option: a migration that rebuilds a table
    without restating it would let SQLite hand a deleted row's id to the next insert."""
    migrate.migrate(database)
    with database.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'"
        )
        autoincrement = set(rows.scalars())

    never_reuse = {
        table.name
        for table in SQLModel.metadata.tables.values()
        if table.dialect_kwargs.get("sqlite_autoincrement")
    }
    assert {"user", "task"} <= never_reuse
    assert autoincrement == never_reuse


def test_the_first_revision_makes_exactly_the_schema_of_the_release_before_migrations(
    tmp_path, database_url, new_database
):
    migrated = db.make_engine(database_url)
    if TEST_DATABASE_URL is None:
        released = db.make_engine(f"sqlite:///{tmp_path / 'released.db'}")
    else:
        released = db.make_engine(new_database("released"))
    try:
        build_release_before_migrations(released)
        upgrade_to(migrated, migrate.FIRST_REVISION)

        assert schema_of(migrated) == schema_of(released)
        assert len(schema_of(released)) > 10  # not two empty databases
    finally:
        migrated.dispose()
        released.dispose()


# --- a database made by the release before migrations is upgraded in place ---


def fill_like_the_release_before_migrations(engine: Engine) -> dict:
    """Users, tasks with tags and due dates, a revoked token and rate-limit events, written
    as that release wrote them (ids from the database; times in UTC)."""
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    revoked_jti = secrets.token_urlsafe(16)
    in_a_year = datetime.now(UTC) + timedelta(days=365)
    with engine.begin() as connection:

        def insert(table: str, **values) -> int | None:
            placeholders = ", ".join(f":{name}" for name in values)
            returning = " RETURNING id" if table in ("user", "task") else ""
            statement = text(
                f'INSERT INTO "{table}" ({", ".join(values)}) VALUES ({placeholders}){returning}'
            ).bindparams(
                # Stored as that release stored them: SQLite gets SQLAlchemy's DATETIME text.
                *(
                    bindparam(name, type_=DateTime(timezone=True))
                    for name, value in values.items()
                    if isinstance(value, datetime)
                )
            )
            result = connection.execute(statement, values)
            return result.scalar_one() if table in ("user", "task") else None

        account = {"password_hash": password_hash, "created_at": MARCH_1}
        ada = insert("user", email="ada@example.com", name="Ada", token_generation=0, **account)
        bo = insert("user", email="bo@example.com", name=None, token_generation=2, **account)
        task_values = {
            "description": None,
            "completed": False,
            "priority": "medium",
            "due_date": None,
            "recurrence": "none",
            "next_occurrence_created": False,
            "created_at": MARCH_1,
            "updated_at": MARCH_1,
            "completed_at": None,
        }
        rent = insert(
            "task",
            **{
                **task_values,
                "user_id": ada,
                "title": "Pay rent",
                "priority": "high",
                "due_date": MARCH_1 + timedelta(days=4),
                "recurrence": "monthly",
            },
        )
        insert(
            "task",
            **{
                **task_values,
                "user_id": ada,
                "title": "Call mum",
                "description": "Sunday",
                "completed": True,
                "completed_at": MARCH_1 + timedelta(hours=1),
            },
        )
        insert("task", **{**task_values, "user_id": bo, "title": "Bo's own"})
        for tag in ("home", "money"):
            insert("tasktag", task_id=rent, name=tag)
        insert("revokedtoken", jti=revoked_jti, expires_at=in_a_year)
        for number in range(3):
            insert("ratelimitevent", bucket=f"{number:064x}", expires_at=in_a_year)
    return {"ada": ada, "bo": bo, "rent": rent, "revoked_jti": revoked_jti}


TABLES = ("user", "task", "tasktag", "revokedtoken", "ratelimitevent")


def with_columns_of(
    rows: dict[str, set[tuple]], before: dict[str, set[tuple]]
) -> dict[str, set[tuple]]:
    """`rows`, each cut to as many columns as the same table's rows had `before`: later
    revisions add their columns after the old ones (Better Auth's to user, for one)."""
    return {
        table: {row[: len(next(iter(before[table]), row))] for row in table_rows}
        for table, table_rows in rows.items()
    }


def rows_of(engine: Engine) -> dict[str, set[tuple]]:
    with engine.connect() as connection:
        return {
            table: set(map(tuple, connection.execute(text(f'SELECT * FROM "{table}"'))))
            for table in TABLES
        }


def token_for(user_id: int, generation: int, jwt_secret: str, jti: str | None = None) -> str:
    """An access token as the release before migrations issued it."""
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(minutes=30),
        "jti": jti or secrets.token_urlsafe(16),
        "gen": generation,
    }
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def test_a_database_of_the_release_before_migrations_is_upgraded_in_place_by_uvicorn(
    live_server, database_url
):
    engine = db.make_engine(database_url)
    build_release_before_migrations(engine)
    made = fill_like_the_release_before_migrations(engine)
    rows_before = rows_of(engine)
    jwt_secret = secrets.token_urlsafe(48)
    issued_before = {"Authorization": f"Bearer {token_for(made['ada'], 0, jwt_secret)}"}
    logged_out = {
        "Authorization": f"Bearer {token_for(made['ada'], 0, jwt_secret, made['revoked_jti'])}"
    }
    from_before_a_password_change = {
        "Authorization": f"Bearer {token_for(made['bo'], 1, jwt_secret)}"
    }

    server = live_server(env={"DATABASE_URL": database_url, "JWT_SECRET": jwt_secret})
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        me = http.get("/api/auth/me", headers=issued_before)
        refused = http.get("/api/auth/me", headers=logged_out)
        outdated = http.get("/api/auth/me", headers=from_before_a_password_change)
        listing = http.get(
            f"/api/{made['ada']}/tasks",
            headers=issued_before,
            params={"sort": "title", "order": "asc"},
        )
        login = http.post("/api/auth/login", json={"email": "bo@example.com", "password": PASSWORD})
        created = http.post(
            f"/api/{made['ada']}/tasks",
            headers=issued_before,
            json={
                "title": "After the upgrade",
                "tags": ["new"],
                "due_date": "2026-04-01T00:00:00Z",
            },
        )
        signup = http.post(
            "/api/auth/signup", json={"email": "new@example.com", "password": PASSWORD}
        )
        in_order = http.get(
            f"/api/{made['ada']}/tasks", headers=issued_before, params={"sort": "position"}
        )
    server_log = server.log()
    server.stop()

    assert me.status_code == 200, me.text
    assert me.json() == {
        "id": made["ada"],
        "email": "ada@example.com",
        "name": "Ada",
        "created_at": "2026-03-01T12:00:00Z",
        "better_auth_id": None,
    }
    assert (refused.status_code, refused.json()) == (
        401,
        {"detail": "Could not validate credentials"},
    )
    assert (outdated.status_code, outdated.json()) == (
        401,
        {"detail": "Could not validate credentials"},
    )
    assert listing.status_code == 200, listing.text
    assert [
        (task["title"], task["due_date"], task["tags"], task["completed"])
        for task in listing.json()
    ] == [
        ("Call mum", None, [], True),
        ("Pay rent", "2026-03-05T12:00:00Z", ["home", "money"], False),
    ]
    assert login.status_code == 200, login.text
    assert created.status_code == 201, created.text
    assert created.json()["tags"] == ["new"] and created.json()["id"] > made["rent"] + 1
    assert signup.status_code == 201, signup.text
    assert signup.json()["user"]["id"] > made["bo"]
    # The migration places existing tasks in their creation order; a new one goes last.
    assert in_order.status_code == 200, in_order.text
    assert [task["title"] for task in in_order.json()] == [
        "Pay rent",
        "Call mum",
        "After the upgrade",
    ]
    assert (
        f"Upgraded the database schema from revision {migrate.FIRST_REVISION} to {HEAD}"
        in server_log
        or (HEAD == migrate.FIRST_REVISION and "Upgraded the database schema" not in server_log)
    )
    assert "Traceback" not in server_log

    rows_after = with_columns_of(rows_of(engine), rows_before)
    engine.dispose()
    for table in TABLES:
        assert rows_before[table] <= rows_after[table], table  # every row is there, unchanged
    new_rows = {
        table: len(rows_after[table] - rows_before[table]) for table in ("user", "task", "tasktag")
    }
    assert new_rows == {"user": 1, "task": 1, "tasktag": 1}


def test_a_database_at_0001_upgrades_to_refresh_tokens_keeping_its_rows_and_tokens(
    live_server, database_url
):
    """0002_refresh_tokens only adds its two tables: every row stays, an access token issued
    before it keeps working (it belongs to no session), and a login starts a session."""
    engine = db.make_engine(database_url)
    upgrade_to(engine, migrate.FIRST_REVISION)
    made = fill_like_the_release_before_migrations(engine)
    rows_before = rows_of(engine)
    jwt_secret = secrets.token_urlsafe(48)
    issued_before = {"Authorization": f"Bearer {token_for(made['ada'], 0, jwt_secret)}"}

    server = live_server(env={"DATABASE_URL": database_url, "JWT_SECRET": jwt_secret})
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        me = http.get("/api/auth/me", headers=issued_before)
        login = http.post(
            "/api/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
        )
        refreshed = http.post(
            "/api/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        logout = http.post("/api/auth/logout", headers=issued_before)
        after_logout = http.get("/api/auth/me", headers=issued_before)
    server_log = server.log()
    server.stop()

    assert (me.status_code, me.json()["id"]) == (200, made["ada"])
    assert login.status_code == 200, login.text
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["user"]["id"] == made["ada"]
    assert (logout.status_code, after_logout.status_code) == (204, 401)
    assert (
        f"Upgraded the database schema from revision {migrate.FIRST_REVISION} to {HEAD}"
        in server_log
    )
    assert "Traceback" not in server_log
    rows_after = with_columns_of(rows_of(engine), rows_before)
    for table in ("user", "task", "tasktag"):
        assert rows_after[table] == rows_before[table], table
    for table in ("revokedtoken", "ratelimitevent"):  # the logout and the login add theirs
        assert rows_before[table] <= rows_after[table], table
    with engine.connect() as connection:
        sessions = connection.execute(text("SELECT user_id FROM tokenfamily")).scalars().all()
        refresh_tokens = connection.execute(text("SELECT count(*) FROM refreshtoken")).scalar_one()
    assert (sessions, refresh_tokens) == ([made["ada"]], 2)

    downgrade_to(engine, migrate.FIRST_REVISION)  # and back: the sessions go, the accounts stay
    assert current_revisions(engine) == (migrate.FIRST_REVISION,)
    assert {
        table: rows
        for table, rows in rows_of(engine).items()
        if table in ("user", "task", "tasktag")
    } == {table: rows_before[table] for table in ("user", "task", "tasktag")}
    engine.dispose()


def test_a_database_with_only_some_of_the_tables_is_left_alone(database):
    with database.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE revokedtoken (jti VARCHAR(64) PRIMARY KEY)")

    with pytest.raises(migrate.StartupError) as refusal:
        migrate.migrate(database)

    assert str(refusal.value) == (
        "The database has some of the Todo API's tables but not all they need (missing: user, "
        "task, tasktag, revokedtoken.expires_at, ratelimitevent), so it is left alone: it was "
        "not made by this app"
    )
    assert current_revisions(database) == ()


# --- every revision downgrades and upgrades again ---


def test_every_revision_downgrades_and_upgrades_again(database):
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    empty = schema_of(database)
    schemas = []
    for revision in revisions:  # one step at a time: up, down, and up again
        upgrade_to(database, revision)
        schemas.append(schema_of(database))
        downgrade_to(database, "-1")
        assert schema_of(database) == (schemas[-2] if len(schemas) > 1 else empty), revision
        upgrade_to(database, revision)
        assert schema_of(database) == schemas[-1], revision

    downgrade_to(database, "base")
    assert schema_of(database) == empty
    assert current_revisions(database) == ()
    upgrade_to(database, "head")
    assert schema_of(database) == schemas[-1]
    assert differences_from_models(database) == []


# --- a database from a newer release: start-up refuses ---

UNKNOWN_REVISION = "9999_from_a_newer_release"


def stamp_unknown_revision(engine: Engine) -> None:
    migrate.migrate(engine)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE alembic_version SET version_num = :revision"),
            {"revision": UNKNOWN_REVISION},
        )


def test_a_database_at_an_unknown_revision_is_not_touched(database):
    stamp_unknown_revision(database)
    schema = schema_of(database)

    with pytest.raises(migrate.StartupError) as refusal:
        migrate.migrate(database)

    assert str(refusal.value) == (
        f"The database is at revision {UNKNOWN_REVISION}, which this release of the Todo API "
        "does not know: a newer release made it. Run that release or a newer one on it"
    )
    assert current_revisions(database) == (UNKNOWN_REVISION,)
    assert schema_of(database) == schema


def run_uvicorn_until_it_exits(
    directory: Path, database_url: str, workers: int = 1
) -> subprocess.CompletedProcess:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "JWT_SECRET")
    }
    environment.update(DATABASE_URL=database_url, JWT_SECRET=secrets.token_urlsafe(48))
    command_line = [
        sys.executable, "-m", "uvicorn", "main:app",
        "--app-dir", str(REPO_ROOT),
        "--host", "127.0.0.1", "--port", str(free_port()),
        "--workers", str(workers),
    ]  # fmt: skip
    return subprocess.run(
        command_line, cwd=directory, env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("workers", [1, 4])
def test_uvicorn_refuses_to_start_on_a_database_at_an_unknown_revision(
    tmp_path, database_url, database, workers
):
    stamp_unknown_revision(database)

    result = run_uvicorn_until_it_exits(tmp_path, database_url, workers)

    # uvicorn's exit status: 3 (start-up failed) with one worker; with several, the parent
    # stops when a worker fails to start, and exits with 0.
    assert result.returncode == (3 if workers == 1 else 0)
    assert (workers == 1) or "failed to start, stopping the parent process" in result.stderr
    assert result.stdout == ""
    assert (
        f"ERROR:    The database is at revision {UNKNOWN_REVISION}, which this release"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "Application startup complete" not in result.stderr
    assert current_revisions(database) == (UNKNOWN_REVISION,)


# --- an alembic_version of two rows: which revision the database is at is unclear ---


def test_uvicorn_refuses_to_start_on_a_database_whose_alembic_version_has_two_rows(
    tmp_path, database_url, database
):
    migrate.migrate(database)
    with database.begin() as connection:
        insert = text("INSERT INTO alembic_version (version_num) VALUES (:revision)")
        connection.execute(insert, {"revision": migrate.FIRST_REVISION})
    schema = schema_of(database)

    result = run_uvicorn_until_it_exits(tmp_path, database_url)

    assert result.returncode == 3
    [refusal, failed] = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert refusal == (
        "ERROR:    The database's alembic_version table holds 2 revisions "
        f"({migrate.FIRST_REVISION}, {HEAD}) where it should hold one, so the database is left "
        "alone: delete the rows of the revisions it is not at"
    )
    assert failed == "ERROR:    Application startup failed. Exiting."
    assert "Traceback" not in result.stderr
    assert sorted(current_revisions(database)) == [migrate.FIRST_REVISION, HEAD]
    assert schema_of(database) == schema


# --- a migration that fails leaves the database as it was ---

BROKEN_REVISION = '''
"""Adds a column and a table, then fails."""
import sqlalchemy as sa
from alembic import op

revision = "9000_broken"
down_revision = "HEAD_REVISION"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user") as batch_op:
        batch_op.add_column(sa.Column("nickname", sa.String(50)))
    op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO scratch (id) VALUES (1)")
    op.execute("INSERT INTO scratch (id) VALUES (1)")  # a duplicate key: the migration fails here


def downgrade() -> None:
    pass
'''


@pytest.fixture
def migrations_with_a_broken_revision(tmp_path) -> Path:
    migrations = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "9000_broken.py").write_text(
        BROKEN_REVISION.replace("HEAD_REVISION", HEAD)
    )
    return migrations


@pytest.mark.parametrize("starting_point", ["new", "head", "release before migrations"])
def test_a_failing_migration_leaves_the_database_as_it_was(
    database, migrations_with_a_broken_revision, starting_point
):
    if starting_point == "head":
        migrate.migrate(database)
    elif starting_point == "release before migrations":
        build_release_before_migrations(database)
        fill_like_the_release_before_migrations(database)
    schema, revisions = schema_of(database), current_revisions(database)
    rows = rows_of(database) if starting_point != "new" else None

    with pytest.raises(migrate.StartupError) as refusal:
        migrate.migrate(database, migrations_with_a_broken_revision)

    before = {
        "new": "none (new database)",
        "head": HEAD,
        "release before migrations": migrate.FIRST_REVISION,
    }
    message = str(refusal.value)
    assert message.startswith(
        f"Upgrading the database from revision {before[starting_point]} to 9000_broken failed, "
        "and it was left as it was: ("
    )
    assert "\n" not in message
    assert "UNIQUE constraint failed: scratch.id" in message or "duplicate key value" in message
    assert schema_of(database) == schema  # no new table, no new column: the DDL was rolled back too
    assert current_revisions(database) == revisions
    if rows is not None:
        assert rows_of(database) == rows


# --- several processes starting together: one migrates, all serve ---
# (test_live_server.py starts two workers on a new database.)


def test_engines_migrating_a_new_database_at_once_make_each_table_once(database_url):
    """The start-up step of every worker (migrate.migrate, as the lifespan runs it), raced
    from eight engines: one upgrades, the others find the newest revision."""
    engines = [db.make_engine(database_url) for _ in range(8)]
    start_together = threading.Barrier(len(engines))

    def start_up(engine: Engine) -> tuple[str | None, str] | str:
        start_together.wait()
        try:
            return migrate.migrate(engine)
        except Exception as error:  # noqa: BLE001  (the failure is the finding)
            return repr(error)

    try:
        with ThreadPoolExecutor(max_workers=len(engines)) as pool:
            outcomes = list(pool.map(start_up, engines))
        tables = sorted(inspect(engines[0]).get_table_names())
    finally:
        for engine in engines:
            engine.dispose()

    assert sorted(outcomes, key=str) == [(HEAD, HEAD)] * 7 + [(None, HEAD)]
    assert tables == sorted([*SQLModel.metadata.tables, "alembic_version"])


def test_several_workers_upgrading_a_database_of_the_release_before_migrations_migrate_once(
    live_server, database_url
):
    engine = db.make_engine(database_url)
    build_release_before_migrations(engine)
    made = fill_like_the_release_before_migrations(engine)
    server = live_server(workers=2, env={"DATABASE_URL": database_url})
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        signup = http.post(
            "/api/auth/signup", json={"email": "two@example.com", "password": PASSWORD}
        )
        health = [http.get("/health", headers={"Connection": "close"}) for _ in range(8)]
    server.stop()
    server_log = server.log()

    assert signup.status_code == 201, signup.text
    assert signup.json()["user"]["id"] > made["bo"]
    assert [(response.status_code, response.json()) for response in health] == [
        (200, {"status": "ok"})
    ] * 8
    assert server_log.count("Application startup complete") == 2
    if migrate.FIRST_REVISION != HEAD:
        assert server_log.count("Upgraded the database schema") == 1
        assert (
            f"Upgraded the database schema from revision {migrate.FIRST_REVISION} to {HEAD}"
            in server_log
        )
    assert "Traceback" not in server_log and "ERROR" not in server_log
    assert current_revisions(engine) == (HEAD,)
    assert differences_from_models(engine) == []
    engine.dispose()


# --- what a later migration may do safely ---

REBUILDING_REVISION = '''
"""Rebuilds the user table, as SQLite's batch mode does for most ALTERs."""
import sqlalchemy as sa
from alembic import op

revision = "9000_rebuild_user"
down_revision = "HEAD_REVISION"
branch_labels = None
depends_on = None


# SQLite does not report AUTOINCREMENT when the table is read back: a rebuild must restate it.
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("user", recreate="always", table_kwargs=KEEP_IDS) as batch_op:
        batch_op.add_column(sa.Column("nickname", sa.String(50)))


def downgrade() -> None:
    with op.batch_alter_table("user", recreate="always", table_kwargs=KEEP_IDS) as batch_op:
        batch_op.drop_column("nickname")
'''


@pytest.mark.skipif(
    TEST_DATABASE_URL is not None,
    reason="PostgreSQL alters a table in place; only SQLite rebuilds it",
)
def test_a_migration_that_rebuilds_the_user_table_keeps_every_task(tmp_path, database):
    """SQLite rebuilds a table to alter it: copy, drop, rename. Dropping `user` with foreign
    keys on would delete every task through ON DELETE CASCADE; migrate.migrate turns them off
    for the migration and checks them before it commits."""
    migrations = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "9000_rebuild_user.py").write_text(
        REBUILDING_REVISION.replace("HEAD_REVISION", HEAD)
    )
    build_release_before_migrations(database)
    fill_like_the_release_before_migrations(database)
    rows = rows_of(database)

    assert migrate.migrate(database, migrations) == (migrate.FIRST_REVISION, "9000_rebuild_user")

    rows_after = rows_of(database)
    unwidened = [table for table in TABLES if table not in ("user", "task")]
    assert {table: rows_after[table] for table in unwidened} == {
        table: rows[table] for table in unwidened
    }
    # The same users and tasks, with the columns later revisions added: each user's are NULL
    # (the nickname too); each task is at version 1, placed in its user's creation order.
    for table in ("user", "task"):
        width = len(next(iter(rows[table])))
        assert {row[:width] for row in rows_after[table]} == rows[table]
    width = len(next(iter(rows["user"])))
    assert {value for row in rows_after["user"] for value in row[width:]} == {None}
    width = len(next(iter(rows["task"])))
    places: dict[int, list[tuple[int, int]]] = {}
    for row in sorted(rows_after["task"]):  # by id: the order they were made in
        places.setdefault(row[1], []).append(row[width:])
    for user_places in places.values():
        assert user_places == [(1, 2**20 * place) for place in range(1, len(user_places) + 1)]
    if database.dialect.name == "sqlite":
        with database.connect() as connection:
            user_table = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'user'"
            ).scalar_one()
        assert "AUTOINCREMENT" in user_table


# --- 0004_better_auth ---


def test_the_better_auth_revision_keeps_local_accounts_whole_and_better_auth_accounts_unique(
    database,
):
    upgrade_to(database, "0001_initial")
    insert_user = text(
        'INSERT INTO "user" (email, name, password_hash, created_at, token_generation) '
        "VALUES (:email, NULL, :password_hash, :created_at, 0)"
    )
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with database.begin() as connection:
        connection.execute(
            insert_user,
            {"email": "ada@example.com", "password_hash": "$2b$04$hash", "created_at": now},
        )
    upgrade_to(database, "0004_better_auth")

    insert_any = text(
        'INSERT INTO "user" (email, password_hash, better_auth_issuer, better_auth_id, '
        "created_at, token_generation) "
        "VALUES (:email, :password_hash, :issuer, :better_auth_id, :created_at, 0)"
    )
    local = {
        "email": "bo@example.com",
        "password_hash": "$2b$04$hash",
        "issuer": None,
        "better_auth_id": None,
    }
    better_auth = {
        "email": None,
        "password_hash": None,
        "issuer": "http://localhost:3000",
        "better_auth_id": "ada",
    }
    with database.begin() as connection:
        connection.execute(insert_any, {**local, "created_at": now})
        connection.execute(insert_any, {**better_auth, "created_at": now})
        connection.execute(
            insert_any, {**better_auth, "issuer": "shared-secret", "created_at": now}
        )
        connection.execute(
            text(
                "INSERT INTO task (user_id, title, completed, priority, recurrence, "
                "next_occurrence_created, created_at, updated_at) "
                "SELECT id, 'Theirs', false, 'medium', 'none', false, :now, :now "
                'FROM "user" WHERE better_auth_id IS NOT NULL'
            ),
            {"now": now},
        )
    refused = {
        "the same Better Auth account twice": better_auth,
        "a local email twice": {**local, "email": "ada@example.com"},
        "a local account without an email": {**local, "email": None},
        "a local account without a password hash": {
            **local,
            "email": "cy@example.com",
            "password_hash": None,
        },
        "a Better Auth account with an email": {
            **better_auth,
            "better_auth_id": "cy",
            "email": "cy@example.com",
        },
        "a Better Auth account with a password hash": {
            **better_auth,
            "better_auth_id": "cy",
            "password_hash": "x",
        },
        "a Better Auth id without an issuer": {
            **better_auth,
            "better_auth_id": "cy",
            "issuer": None,
        },
    }
    for case, values in refused.items():
        with pytest.raises(IntegrityError), database.begin() as connection:
            connection.execute(insert_any, {**values, "created_at": now})
            pytest.fail(f"accepted {case}")

    downgrade_to(database, "0001_initial")  # Better Auth accounts have no place there: they go
    with database.connect() as connection:
        emails = connection.execute(text('SELECT email FROM "user" ORDER BY id')).scalars().all()
        tasks = connection.execute(text("SELECT count(*) FROM task")).scalar_one()
    assert emails == ["ada@example.com", "bo@example.com"]
    assert tasks == 0


@pytest.mark.skipif(
    TEST_DATABASE_URL is not None, reason="PostgreSQL's sequences survive any ALTER TABLE"
)
def test_a_migration_that_rebuilds_a_table_never_hands_out_a_deleted_accounts_id(database):
    """Rebuilding `user` drops its AUTOINCREMENT counter with the old table; migrate keeps it,
    so an old token of a deleted account can never pass to a new one."""
    upgrade_to(database, "0003_task_count")
    with database.begin() as connection:
        for number in (1, 2, 3):
            connection.execute(
                text(
                    "INSERT INTO user (email, password_hash, created_at, token_generation) "
                    "VALUES (:e, 'x', :t, 0)"
                ),
                {"e": f"user{number}@example.com", "t": "2026-01-01 00:00:00.000000"},
            )
        connection.execute(text("DELETE FROM user WHERE id = 3"))
    migrate.migrate(database)
    with database.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO user (email, password_hash, created_at, token_generation) "
                "VALUES ('new@example.com', 'x', :t, 0)"
            ),
            {"t": "2026-01-02 00:00:00.000000"},
        )
        ids = connection.execute(text("SELECT id FROM user ORDER BY id")).scalars().all()
    assert ids == [1, 2, 4]
