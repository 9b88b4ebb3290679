"""The requests on a whole list, for one user holding 10,000 tasks: `python bench/lists.py`
(SQLite, about 25 seconds), or `python bench/lists.py --postgres` (about a minute, on a
throwaway PostgreSQL 15 from .ci/postgres, or on the database at $BENCH_DATABASE_URL).

It runs the app in this process, through FastAPI's TestClient, on a new database, and
times the database's part of each request with SQLAlchemy's cursor events on the app's own
engine: the time spent executing statements and committing. Each round signs up a user,
inserts 10,000 tasks straight into the table (positions as the app spaces them, a third of
them completed, due dates past, today and future, some tagged, a tenth recurring) beside
100,000 of other users, and then:

- GET /counts, with no filter and with ?tag=, many times: database time and request time;
- moves (PUT position) at 10,000 tasks, then moves into one gap until the order must be spread
  out (routes/task_rules.py's spread_out), and the move that spreads it;
- mark-all complete, reopen-all and clear-completed, each on all 10,000 tasks.

Each write is compared with the statement budget (STATEMENT_TIMEOUT_MS): a statement past it
would be a 503. The figures are printed and written to bench/results-lists.json.
"""

import argparse
import json
import os
import platform
import random
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median, quantiles

from run import REPOSITORY, start_postgres

RESULTS_FILE = Path(__file__).resolve().parent / "results-lists.json"
TASKS = 10_000
COUNTS_REQUESTS = 200
MOVES = 50
MOVES_INTO_ONE_GAP = 70  # far more than the 21 halvings of a fresh gap of 2**20
RECURRENCES = ("daily", "weekly", "monthly")
# The rest of the database, as in bench/run.py: other users' tasks, which every plan must skip.
OTHER_USERS, OTHER_USERS_TASKS = 100, 1_000
COUNTING = "AS due_today"  # in the counts' one statement, and in no other
COUNTS_CASES = (("no filter", {}), ("?tag=work", {"tag": "work"}))


@dataclass
class Timing:
    """One request: its wall time, and each statement it executed with its duration."""

    status: int
    body: object
    wall_ms: float
    statements: list[tuple[str, float]] = field(default_factory=list)

    @property
    def database_ms(self) -> float:
        return sum(milliseconds for _, milliseconds in self.statements)

    @property
    def longest_statement(self) -> tuple[str, float]:
        """The one the statement budget would stop first (it does not time a COMMIT)."""
        statements = [statement for statement in self.statements if statement[0] != "COMMIT"]
        return max(statements, key=lambda statement: statement[1])

    @property
    def commit_ms(self) -> float:
        return sum(milliseconds for text, milliseconds in self.statements if text == "COMMIT")


class StatementClock:
    """The statements that the app's engine executes, and its sessions' COMMITs, with their
    durations: the database's part of a request (one request at a time)."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        self.statements: list[tuple[str, float]] = []
        self.counting: tuple[str, object] | None = None  # the last counting statement, as sent
        self.commit_started = 0.0
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)
        event.listen(engine, "commit", self.before_commit)
        event.listen(Session, "after_commit", self.after_commit)

    def before_commit(self, connection) -> None:
        self.commit_started = time.perf_counter()

    def after_commit(self, session) -> None:
        elapsed = time.perf_counter() - self.commit_started
        self.statements.append(("COMMIT", elapsed * 1000))

    def before(self, connection, cursor, statement, parameters, context, executemany) -> None:
        connection.info["bench_started"] = time.perf_counter()

    def after(self, connection, cursor, statement, parameters, context, executemany) -> None:
        elapsed = time.perf_counter() - connection.info.pop("bench_started")
        self.statements.append((" ".join(statement.split()), elapsed * 1000))
        if COUNTING in statement:
            self.counting = statement, parameters


class Bench:
    """The app, its TestClient and the statement clock, and one request at a time."""

    def __init__(self) -> None:
        # Imported here: the app reads its settings from the environment main() sets.
        from fastapi.testclient import TestClient

        import db
        import routes.task_rules
        from main import app

        self.db = db
        self.client = TestClient(app)
        self.client.__enter__()  # the lifespan: migrations
        self.clock = StatementClock(db.engine)
        self.spread_outs = 0
        spread_out = routes.task_rules.spread_out

        def counted_spread_out(*args) -> None:
            self.spread_outs += 1
            spread_out(*args)

        routes.task_rules.spread_out = counted_spread_out

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def request(self, method: str, path: str, token: str, **options) -> Timing:
        self.clock.statements = []
        headers = {"Authorization": f"Bearer {token}"}
        started = time.perf_counter()
        response = self.client.request(method, path, headers=headers, **options)
        wall_ms = (time.perf_counter() - started) * 1000
        body = response.json() if response.content else None
        return Timing(response.status_code, body, wall_ms, self.clock.statements)

    def sign_up(self, email: str) -> tuple[int, str]:
        password = secrets.token_urlsafe(16)
        response = self.client.post("/api/auth/signup", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["user"]["id"], body["access_token"]


@dataclass(frozen=True)
class Backlog:
    """What was inserted for one user: the task ids in their order, and the expected counts."""

    ids: list[int]
    completed: int
    tagged_work: int
    recurring_without_next: int  # pending recurring tasks, whose completion makes one more


def insert_tasks(engine, owner_id: int, count: int, now: datetime) -> Backlog:
    """Rows straight into the tables, as tests/test_load.py's insert_tasks does, and the user's
    task counter."""
    from sqlalchemy import insert, select

    from models import Task, TaskCount, TaskTag

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = []
    for number in range(count):
        completed = number % 3 == 0
        recurrence = RECURRENCES[number // 10 % 3] if number % 10 == 1 else "none"
        due_date = [
            None,
            now - timedelta(days=number % 30 + 1),
            today + timedelta(hours=number % 24),
            now + timedelta(days=number % 60 + 1),
        ][number % 4]
        moment = now - timedelta(days=90) + timedelta(seconds=number)
        rows.append(
            {
                "user_id": owner_id,
                "title": f"Task {number}",
                "description": f"The description of task {number}",
                "completed": completed,
                "completed_at": moment if completed else None,
                "priority": ("low", "medium", "high")[number % 3],
                "due_date": due_date,
                "recurrence": recurrence,
                # A completed recurring task already has its next occurrence.
                "next_occurrence_created": completed and recurrence != "none",
                "created_at": moment,
                "updated_at": moment,
                "position": 2**20 * (number + 1),  # as the app spaces them
            }
        )
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Committed asynchronously (as .ci/postgres's server does), the rows could not be
            # marked all-visible by the VACUUM that follows.
            connection.exec_driver_sql("SET LOCAL synchronous_commit = on")
        connection.execute(insert(Task), rows)
        ids = list(
            connection.execute(
                select(Task.id).where(Task.user_id == owner_id).order_by(Task.position)
            ).scalars()
        )
        tags = [{"task_id": task_id, "name": "work"} for task_id in ids[::5]]
        tags += [{"task_id": task_id, "name": "home"} for task_id in ids[::7]]
        connection.execute(insert(TaskTag), tags)
        # The counter that the user's creates through the API would have made.
        connection.execute(insert(TaskCount).values(user_id=owner_id, tasks=count))
    return Backlog(
        ids=ids,
        completed=sum(row["completed"] for row in rows),
        tagged_work=len(ids[::5]),
        recurring_without_next=sum(
            row["recurrence"] != "none" and not row["completed"] for row in rows
        ),
    )


def insert_other_users(engine, now: datetime) -> None:
    from sqlalchemy import insert

    from models import User

    # "!" is no bcrypt hash, so these accounts cannot log in; they only own tasks.
    with engine.begin() as connection:
        owners = (
            connection.execute(
                insert(User).returning(User.id),
                [
                    {
                        "email": f"other{number}-{secrets.token_hex(4)}@bench.example",
                        "password_hash": "!",
                    }
                    for number in range(OTHER_USERS)
                ],
            )
            .scalars()
            .all()
        )
    for owner_id in owners:
        insert_tasks(engine, owner_id, OTHER_USERS_TASKS, now)


def maintain(engine, command: str) -> None:
    """PostgreSQL's ANALYZE (the planner's statistics, as autovacuum gathers them after such
    inserts) or VACUUM (the visibility map, which lets an index-only scan skip the table)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("task", "tasktag"):
            connection.exec_driver_sql(f"{command} {table}")


def counting_plan(engine, statement: str, parameters) -> list[str]:
    """The plan of the counting statement as the app sent it, with its parameters."""
    explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE"
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"{explain} {statement}", parameters).all()
    return [row[-1] for row in rows]


def percentile_90(values: list[float]) -> float:
    return quantiles(values, n=10)[8]


def distribution(values: list[float]) -> dict:
    return {"median": median(values), "p90": percentile_90(values), "count": len(values)}


def check(condition: bool, message: str, failures: list[str]) -> None:
    if not condition:
        failures.append(message)
        print(f"FAILED: {message}", flush=True)


def total_tasks(bench: Bench, url: str, token: str) -> int:
    timing = bench.request("GET", f"{url}/counts", token)
    assert timing.status == 200, timing.body
    return timing.body["total"]


def measure_counts(
    bench: Bench, url: str, token: str, params: dict, requests: int, expected: dict
) -> dict:
    for _ in range(20):  # warm-up: caches, pooled connections
        bench.request("GET", f"{url}/counts", token, params=params)
    statement, request_database, wall, each_statement = [], [], [], []
    failures: list[str] = []
    timing = None
    for _ in range(requests):
        timing = bench.request("GET", f"{url}/counts", token, params=params)
        check(timing.status == 200, f"counts {params}: {timing.status}", failures)
        check(
            all(timing.body[name] == value for name, value in expected.items()),
            f"counts {params}: {timing.body}, expected {expected}",
            failures,
        )
        statement.append(next(ms for text, ms in timing.statements if COUNTING in text))
        request_database.append(timing.database_ms)
        wall.append(timing.wall_ms)
        each_statement.append([ms for _, ms in timing.statements])
    assert timing is not None and bench.clock.counting is not None
    texts = [text for text, _ in timing.statements]
    return {
        "counts_statement_ms": distribution(statement),
        "request_database_ms": distribution(request_database),
        "request_wall_ms": distribution(wall),
        # Each statement of the request, in order, with its median.
        "statements_ms": [
            (text[:100], median(durations))
            for text, durations in zip(texts, zip(*each_statement, strict=True), strict=True)
        ],
        "plan": counting_plan(bench.db.engine, *bench.clock.counting),
        "failures": failures,
    }


def summary(timing: Timing) -> dict:
    text, longest = timing.longest_statement
    return {
        "status": timing.status,
        "body": timing.body,
        "wall_ms": timing.wall_ms,
        "database_ms": timing.database_ms,
        "commit_ms": timing.commit_ms,
        "statements": len(timing.statements),
        "longest_statement_ms": longest,
        "longest_statement": text[:120],
        "statements_ms": [(text[:100], ms) for text, ms in timing.statements],
    }


def measure_moves(
    bench: Bench, url: str, token: str, ids: list[int], chooser: random.Random, failures: list
) -> dict:
    """Moves to random places, then moves into one gap until the order is spread out."""
    moves = []
    for _ in range(MOVES):
        task_id, reference = chooser.sample(ids, 2)
        place = chooser.choice([{"before": reference}, {"after": reference}, {"to": "top"}])
        timing = bench.request("PUT", f"{url}/{task_id}/position", token, json=place)
        if timing.status != 200:
            check(False, f"move: {timing.status} {timing.body}", failures)
            return {}
        moves.append(timing)
    moves = moves[5:]  # the first ones warm the caches
    figures = {
        "move": {
            "wall_ms": distribution([timing.wall_ms for timing in moves]),
            "database_ms": distribution([timing.database_ms for timing in moves]),
            "commit_ms": distribution([timing.commit_ms for timing in moves]),
            "longest_statement_ms": max(timing.longest_statement[1] for timing in moves),
        }
    }
    # Each move takes the middle of the anchor's gap to its successor, the last task moved:
    # the gap halves each time until there is no middle left.
    anchor = ids[len(ids) // 2]
    spread_outs_before = bench.spread_outs
    for moves_into_gap, task_id in enumerate(ids[:MOVES_INTO_ONE_GAP], start=1):
        timing = bench.request("PUT", f"{url}/{task_id}/position", token, json={"after": anchor})
        if timing.status != 200:
            check(False, f"move into a gap: {timing.status} {timing.body}", failures)
            break
        if bench.spread_outs > spread_outs_before:
            figures["move_spreading_out"] = summary(timing) | {"moves_into_gap": moves_into_gap}
            break
    check("move_spreading_out" in figures, "moves into one gap spread the order out", failures)
    return figures


def one_round(bench: Bench, number: int, rounds_tag: str, requests: int, tasks: int) -> dict:
    failures: list[str] = []
    user_id, token = bench.sign_up(f"lists-{number}-{rounds_tag}@bench.example")
    url = f"/api/{user_id}/tasks"
    now = datetime.now(UTC)
    engine = bench.db.engine
    backlog = insert_tasks(engine, user_id, tasks, now)
    figures: dict = {"tasks": tasks, "counts": {}}
    expected = {
        "no filter": {"total": tasks, "completed": backlog.completed},
        "?tag=work": {"total": backlog.tagged_work},
    }
    # PostgreSQL: as just written (the visibility map not yet set, as on a busy account),
    # then after a VACUUM; SQLite has no such difference.
    states = ["", ", after VACUUM"] if engine.dialect.name == "postgresql" else [""]
    for state in states:
        if engine.dialect.name == "postgresql":
            maintain(engine, "VACUUM ANALYZE" if state else "ANALYZE")
        for case, params in COUNTS_CASES:
            print(f"round {number + 1}: counts, {case}{state}...", flush=True)
            figures["counts"][case + state] = measure_counts(
                bench, url, token, params, requests, expected[case]
            )

    print(f"round {number + 1}: moves...", flush=True)
    figures |= measure_moves(bench, url, token, backlog.ids, random.Random(number), failures)

    print(f"round {number + 1}: many at once...", flush=True)
    bulk: dict = {}

    def bulk_request(name: str, method: str, expected: dict, **options) -> None:
        timing = bench.request(method, url, token, **options)
        bulk[name] = summary(timing)
        check(
            (timing.status, timing.body) == (200, expected),
            f"{name}: {timing.status} {timing.body}, expected 200 {expected}",
            failures,
        )

    # First every task pending, so that each of the measured requests changes all 10,000.
    bulk_request("reopen the completed", "PATCH", {"changed": backlog.completed},
                 json={"completed": False})  # fmt: skip
    bulk_request("mark all complete", "PATCH", {"changed": tasks}, json={"completed": True})
    made = backlog.recurring_without_next
    check(total_tasks(bench, url, token) == tasks + made, "one next occurrence each", failures)
    bulk["mark all complete"]["next_occurrences"] = made
    # Counts read the pending tasks' index ranges: here all but the new occurrences are done.
    print(f"round {number + 1}: counts, no filter, mostly completed...", flush=True)
    figures["counts"]["no filter, mostly completed"] = measure_counts(
        bench, url, token, {}, requests, {"total": tasks + made, "pending": made}
    )
    bulk_request("delete the next occurrences", "DELETE", {"deleted": made},
                 params={"status": "pending"})  # fmt: skip
    bulk_request("reopen all", "PATCH", {"changed": tasks}, json={"completed": False})
    # Every recurring task has had its next occurrence: this completion makes none.
    bulk_request("mark all complete again", "PATCH", {"changed": tasks}, json={"completed": True})
    bulk_request("clear completed", "DELETE", {"deleted": tasks}, params={"status": "completed"})
    check(total_tasks(bench, url, token) == 0, "clear completed leaves no task", failures)
    figures["bulk"] = bulk
    for counts in figures["counts"].values():
        failures += counts.pop("failures")
    figures["failures"] = failures
    return figures


def median_of(rounds: list[dict], *keys: str) -> float:
    values = []
    for figures in rounds:
        value = figures
        for key in keys:
            value = value[key]
        values.append(value)
    return median(values)


def report(rounds: list[dict], budget_ms: int, database: str) -> None:
    print(
        f"\n{database}, {rounds[0]['tasks']:,} tasks, {len(rounds)} round(s): medians of the "
        "rounds' figures, in microseconds, and the request through TestClient in milliseconds"
    )
    print(
        f"{'GET /counts':32} {'statement':>9} {'p90':>7} {'all statements':>15} {'p90':>7} "
        f"{'request':>8}"
    )
    for case in rounds[0]["counts"]:
        statement, everything, wall = (
            [median_of(rounds, "counts", case, part, which) for which in ("median", "p90")]
            for part in ("counts_statement_ms", "request_database_ms", "request_wall_ms")
        )
        print(
            f"  {case:30} {statement[0] * 1000:9.0f} {statement[1] * 1000:7.0f} "
            f"{everything[0] * 1000:15.0f} {everything[1] * 1000:7.0f} {wall[0]:7.2f}ms"
        )
    print(
        f"  plan (first round, no filter): {' | '.join(rounds[0]['counts']['no filter']['plan'])}"
    )
    print(
        f"\n{'writes, in ms':42} {'request':>8} {'database':>8} {'COMMIT':>8} {'longest':>8}  "
        f"request, longest statement / {budget_ms} ms budget"
    )
    if all("move" in figures for figures in rounds):
        moves = rounds[0]["move"]["wall_ms"]["count"]
        print(
            f"  {f'move, median of {moves}':40} "
            f"{median_of(rounds, 'move', 'wall_ms', 'median'):8.1f} "
            f"{median_of(rounds, 'move', 'database_ms', 'median'):8.2f} "
            f"{median_of(rounds, 'move', 'commit_ms', 'median'):8.2f} "
            f"{median_of(rounds, 'move', 'longest_statement_ms'):8.2f}"
        )
    rows = [("move that spreads the order out", ("move_spreading_out",))]
    rows += [(name, ("bulk", name)) for name in rounds[0]["bulk"]]
    for label, keys in rows:
        if not all(keys[0] in figures for figures in rounds):
            print(f"  {label:40} failed: see the failures below")
            continue
        wall = median_of(rounds, *keys, "wall_ms")
        longest = median_of(rounds, *keys, "longest_statement_ms")
        print(
            f"  {label:40} {wall:8.1f} {median_of(rounds, *keys, 'database_ms'):8.1f} "
            f"{median_of(rounds, *keys, 'commit_ms'):8.1f} "
            f"{longest:8.1f}  {wall / budget_ms:6.1%}, {longest / budget_ms:6.1%}"
        )
    spreading = rounds[0].get("move_spreading_out", {}).get("moves_into_gap")
    made = rounds[0]["bulk"]["mark all complete"].get("next_occurrences")
    print(f"spread out by move {spreading} into one gap; {made} next occurrences made")


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh users, one after another")
    parser.add_argument("--smoke", action="store_true", help="1 round, 1,000 tasks: it runs")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="on a throwaway PostgreSQL 15 (.ci/postgres), or on $BENCH_DATABASE_URL if set",
    )
    arguments = parser.parse_args()
    rounds, tasks, requests = arguments.rounds, TASKS, COUNTS_REQUESTS
    if arguments.smoke:
        rounds, tasks, requests = 1, 1_000, 20
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="todo-bench-lists-") as workdir:
        server_dir = None
        if not arguments.postgres:
            database_url = f"sqlite:///{Path(workdir) / 'lists.db'}"
        elif os.environ.get("BENCH_DATABASE_URL"):  # not an argument: ps would show its password
            database_url = os.environ["BENCH_DATABASE_URL"]
        else:
            # Not inside workdir: the server runs as the postgres user, who cannot enter it.
            server_dir = Path(tempfile.mkdtemp(prefix="todo-bench-postgres-"))
            database_url, _ = start_postgres(server_dir)
        os.environ.update(
            DATABASE_URL=database_url,
            JWT_SECRET=secrets.token_urlsafe(48),  # fresh for every run, never a constant
            JWT_SECRET_FILE=str(Path(workdir) / "unused_jwt_secret"),
            LOGIN_FAILURE_LIMIT="0",
            AUTH_REQUESTS_PER_MINUTE="0",
            # The next occurrences of mark-all complete take a user past the default 10,000.
            MAX_TASKS_PER_USER="100000000",
        )
        sys.path.insert(0, str(REPOSITORY))  # the app's modules live at the repository root
        bench = Bench()
        try:
            budget_ms = bench.db.settings.statement_timeout_ms
            database = bench.db.engine.dialect.name
            with bench.db.engine.connect() as connection:
                server_version = connection.exec_driver_sql(
                    "SELECT version()" if database == "postgresql" else "SELECT sqlite_version()"
                ).scalar()
            print("the rest of the database: other users' tasks...", flush=True)
            insert_other_users(bench.db.engine, started)
            run_tag = secrets.token_hex(4)  # the database may be one the caller gave us
            figures = [
                one_round(bench, number, run_tag, requests, tasks) for number in range(rounds)
            ]
        finally:
            bench.close()
            if server_dir is not None:
                subprocess.run([REPOSITORY / ".ci" / "postgres", "stop", server_dir], check=True)
    report(figures, budget_ms, database)
    failures = [failure for round_figures in figures for failure in round_figures["failures"]]
    RESULTS_FILE.write_text(
        json.dumps(
            {
                "date": started.isoformat(timespec="seconds"),
                "machine": machine(),
                "database": database,
                "server_version": server_version,
                "statement_budget_ms": budget_ms,
                "smoke": arguments.smoke,
                "rounds": figures,
                "failures": failures,
            },
            indent=2,
        )
        + "\n"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed")


if __name__ == "__main__":
    main()
