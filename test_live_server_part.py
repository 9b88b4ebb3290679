"""(To be appended to test_live_server.py.) A real `uvicorn main:app`: SIGKILLed in the
middle of writes, and with four workers that share one secret, every logout and every
rate limit; and the start-up step that several workers race through on a new database."""

import os
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx2
import jwt
import pytest
import sqlalchemy
from sqlmodel import SQLModel

import db
from conftest import TEST_DATABASE_URL
from live_server import REPO_ROOT, LiveServer

# --- crash safety: a real server, SIGKILLed in the middle of writes ---

WRITER_THREADS = 8
CREATES_PER_THREAD = 50
KILL_AFTER_ACKNOWLEDGED = 150


def list_all_tasks(client: httpx2.Client, account) -> list[dict]:
    tasks, offset = [], 0
    while True:
        page = client.get(account.tasks_url, params={"limit": 100, "offset": offset, "sort": "created"})
        assert page.status_code == 200, page.text
        tasks += page.json()
        offset += 100
        if offset >= int(page.headers["x-total-count"]):
            return tasks


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_no_acknowledged_create_is_lost_when_the_server_is_killed(tmp_path, new_account, synchronous):
    acknowledged: dict[int, dict] = {}  # task id -> the body the 201 carried
    sent_titles: set[str] = set()
    lock = threading.Lock()
    enough_acknowledged = threading.Event()

    with LiveServer(tmp_path, env={"SQLITE_SYNCHRONOUS": synchronous}) as server:
        with httpx2.Client(base_url=server.url) as client:
            account = new_account("crash@example.com", via=client)

        def write(thread: int) -> None:
            with httpx2.Client(base_url=server.url, headers=account.headers, timeout=30) as client:
                for number in range(CREATES_PER_THREAD):
                    body = {
                        "title": f"task {thread}-{number}",
                        "description": secrets.token_hex(16),
                        "priority": ("low", "medium", "high")[number % 3],
                        "tags": [f"thread-{thread}"],
                    }
                    with lock:
                        sent_titles.add(body["title"])
                    try:
                        response = client.post(account.tasks_url, json=body)
                    except httpx2.TransportError:
                        return  # the server is gone; this create's fate is unknown
                    assert response.status_code == 201, response.text
                    with lock:
                        acknowledged[response.json()["id"]] = response.json()
                        if len(acknowledged) >= KILL_AFTER_ACKNOWLEDGED:
                            enough_acknowledged.set()

        writers = [threading.Thread(target=write, args=(thread,)) for thread in range(WRITER_THREADS)]
        for writer in writers:
            writer.start()
        assert enough_acknowledged.wait(timeout=120), "the writers stalled"
        server.kill()
        for writer in writers:
            writer.join()

    # The writers were still going when the server died, so this was a crash mid-write.
    assert KILL_AFTER_ACKNOWLEDGED <= len(acknowledged) < WRITER_THREADS * CREATES_PER_THREAD

    restarted = LiveServer(tmp_path, env={"SQLITE_SYNCHRONOUS": synchronous})
    with restarted, httpx2.Client(base_url=restarted.url, headers=account.headers) as client:
        stored = {task["id"]: task for task in list_all_tasks(client, account)}
        for task_id, body in acknowledged.items():
            assert stored.get(task_id) == body
        # Creates in flight at the kill may or may not have landed; nothing else did.
        assert {task["title"] for task in stored.values()} <= sent_titles

        created = client.post(account.tasks_url, json={"title": "after the crash"})
        assert created.status_code == 201, created.text
        fetched = client.get(f"{account.tasks_url}/{created.json()['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == created.json()
        assert created.json()["id"] > max(stored)  # ids are never reused, even after a crash
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

    with closing(sqlite3.connect(server.database_path)) as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def read_synchronous_setting(tmp_path, setting: str | None) -> subprocess.CompletedProcess:
    """The PRAGMA synchronous that the app's engine sets, read in a fresh process, since
    settings are read once at import."""
    env = {name: value for name, value in os.environ.items() if name != "SQLITE_SYNCHRONOUS"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'probe.db'}"
    if setting is not None:
        env["SQLITE_SYNCHRONOUS"] = setting
    probe = "import db; print(db.engine.connect().exec_driver_sql('PRAGMA synchronous').scalar())"
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(("setting", "level"), [(None, "1"), ("normal", "1"), ("FULL", "2")])
def test_sqlite_synchronous_setting_reaches_sqlite(tmp_path, setting, level):
    result = read_synchronous_setting(tmp_path, setting)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == level  # SQLite's numbers: 1 is NORMAL, 2 is FULL


def test_unsafe_sqlite_synchronous_stops_start_up(tmp_path):
    result = read_synchronous_setting(tmp_path, "OFF")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "SQLITE_SYNCHRONOUS must be one of NORMAL, FULL, not 'OFF'" in result.stderr


# --- several workers: uvicorn main:app --workers 4 ---

WORKERS = 4
REQUESTS_PER_CHECK = 80


def worker_of_each_request(server_log: str) -> dict[str, int]:
    """Request id -> process id of the worker that served it, from the access log."""
    line = re.compile(r"todo\.access \[(?P<pid>\d+)\]: .* request_id=(?P<request_id>\S+)$", re.MULTILINE)
    return {match["request_id"]: int(match["pid"]) for match in line.finditer(server_log)}


def client_at(server: LiveServer, address: str = "127.0.0.1") -> httpx2.Client:
    """A client whose every request opens a new connection, so the kernel may hand it to
    any worker. Any 127.x.y.z source address reaches the server over loopback, and the
    rate limits count per client address, so each check can have an address of its own."""
    transport = httpx2.HTTPTransport(local_address=address)
    return httpx2.Client(base_url=server.url, transport=transport, timeout=30, headers={"Connection": "close"})


def send(http: httpx2.Client, method: str, path: str, request_id: str, headers=None, **kwargs) -> httpx2.Response:
    return http.request(method, path, headers={"X-Request-ID": request_id, **(headers or {})}, **kwargs)


def send_in_parallel(
    http: httpx2.Client, method: str, path: str, prefix: str, count: int = REQUESTS_PER_CHECK, json_for=None, **kwargs
) -> list[httpx2.Response]:
    """`count` requests at once, 8 at a time, with request ids prefix-0, prefix-1, ...;
    json_for(number) gives each its own body."""

    def one(number: int) -> httpx2.Response:
        body = {} if json_for is None else {"json": json_for(number)}
        return send(http, method, path, f"{prefix}-{number}", **body, **kwargs)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(count)))


def workers_that_served(served_by: dict[str, int], prefix: str) -> set[int]:
    return {pid for request_id, pid in served_by.items() if request_id.startswith(f"{prefix}-")}


def test_four_workers_in_a_fresh_directory_share_one_secret_and_every_logout(tmp_path, password):
    assert list(tmp_path.iterdir()) == []  # a fresh directory: no secret, no database
    with LiveServer(tmp_path, workers=WORKERS) as server, client_at(server) as http:
        assert "JWT_SECRET" not in server.env
        account = {"email": "w@example.com", "password": password}
        signup = send(http, "POST", "/api/auth/signup", "signup", json=account)
        assert signup.status_code == 201, signup.text
        user = signup.json()["user"]
        login = send(http, "POST", "/api/auth/login", "login", json=account)
        assert login.status_code == 200, login.text
        first = {"Authorization": f"Bearer {signup.json()['access_token']}"}
        second = {"Authorization": f"Bearer {login.json()['access_token']}"}

        for response in send_in_parallel(http, "GET", "/api/auth/me", "before", headers=first):
            assert response.status_code == 200, response.text
            assert response.json() == user

        logout = send(http, "POST", "/api/auth/logout", "logout", headers=first)
        assert logout.status_code == 204, logout.text
        for response in send_in_parallel(http, "GET", "/api/auth/me", "revoked", headers=first):
            assert response.status_code == 401, response.text
            assert response.json() == {"detail": "Could not validate credentials"}
            assert response.headers["www-authenticate"] == "Bearer"
        for response in send_in_parallel(http, "GET", "/api/auth/me", "other-session", headers=second):
            assert response.status_code == 200, response.text
            assert response.json() == user

        worker_pids = server.worker_pids()
        server_log = server.log()

    served_by = worker_of_each_request(server_log)
    assert server_log.count("Application startup complete") == WORKERS
    assert server_log.count("Upgraded the database schema from revision none (new database)") == 1  # one migrated
    # The token was signed by one worker and accepted, then refused after the logout, by
    # other worker processes: several distinct children of the master, typically all four.
    for prefix in ("before", "revoked", "other-session"):
        answered = workers_that_served(served_by, prefix)
        assert len(answered) >= 3 and answered <= worker_pids, (prefix, served_by)
    assert workers_that_served(served_by, "before") - {served_by["signup"]}
    assert workers_that_served(served_by, "revoked") - {served_by["logout"]}

    # One secret, created once, private, with no temporary file left behind.
    secret_file = tmp_path / ".jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir() if "jwt_secret" in path.name) == [".jwt_secret"]
    claims = jwt.decode(signup.json()["access_token"], secret_file.read_text().strip(), algorithms=["HS256"])
    assert claims["sub"] == str(user["id"])

    # Nothing secret in any line the server wrote, uvicorn's included.
    assert "Traceback" not in server_log
    for secret in (password, signup.json()["access_token"], login.json()["access_token"], "Bearer"):
        assert secret not in server_log


def test_rate_limits_count_across_workers(tmp_path, password):
    """With the default limits. Each check sends the requests that fill a limit at once,
    so that several workers take them: counted in each process alone, no worker would
    have reached the limit, and the next request would be let in."""
    rounds = 4  # a round whose requests all reached one worker would prove nothing
    with LiveServer(tmp_path, workers=WORKERS) as server:
        for round_number in range(rounds):
            # 5 failed logins for one email from one address, then even the right password: 429.
            address = f"127.0.0.{10 + round_number}"  # a loopback address of its own per round
            account = {"email": f"victim{round_number}@example.com", "password": password}
            with client_at(server, address) as http:
                signup = send(http, "POST", "/api/auth/signup", f"victim-{round_number}", json=account)
                assert signup.status_code == 201, signup.text
                wrong = {**account, "password": "a wrong guess"}
                guesses = send_in_parallel(
                    http, "POST", "/api/auth/login", f"guess{round_number}", count=5, json_for=lambda _: wrong
                )
                for failed in guesses:
                    assert failed.status_code == 401, failed.text
                    assert failed.json() == {"detail": "Incorrect email or password"}
                blocked = send(http, "POST", "/api/auth/login", f"right-{round_number}", json=account)
            assert blocked.status_code == 429, blocked.text
            assert blocked.json() == {"detail": "Too many failed logins for this email; try again later"}
            assert int(blocked.headers["retry-after"]) > 0

        # 20 signups from one address in a minute, then a 21st: 429; another address: 201.
        with client_at(server, "127.0.0.3") as scripter:
            signups = send_in_parallel(
                scripter, "POST", "/api/auth/signup", "bot", count=20,
                json_for=lambda number: {"email": f"bot{number}@example.com", "password": password},
            )  # fmt: skip
            for created in signups:
                assert created.status_code == 201, created.text
            body = {"email": "bot20@example.com", "password": password}
            refused = send(scripter, "POST", "/api/auth/signup", "bot-over", json=body)
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"detail": "Too many signups, logins, refreshes and password checks from your address; try again later"}
        assert int(refused.headers["retry-after"]) > 0
        with client_at(server) as elsewhere:
            human = send(elsewhere, "POST", "/api/auth/signup", "elsewhere", json={**body, "email": "human@example.com"})
        assert human.status_code == 201, human.text
        server_log = server.log()

    served_by = worker_of_each_request(server_log)
    spread = [len(workers_that_served(served_by, f"guess{round_number}")) for round_number in range(rounds)]
    assert max(spread) >= 2, served_by
    assert len(workers_that_served(served_by, "bot")) >= 2, served_by


# --- the start-up step that every worker runs, raced on a new database ---


def test_workers_starting_together_on_a_new_database_all_create_its_tables(tmp_path, request):
    """db.migrate, as each worker's lifespan runs it, from eight engines at once: on a new
    SQLite file, or on an empty PostgreSQL schema when the suite runs there."""
    if TEST_DATABASE_URL is None:
        url = f"sqlite:///{tmp_path / 'new.db'}"
    else:
        url = request.getfixturevalue("empty_schema_url")
    engines = [db.make_engine(url) for _ in range(8)]
    start_together = threading.Barrier(len(engines))

    def start_worker(engine) -> str | None:
        start_together.wait()
        try:
            db.migrate(engine)
        except Exception as error:  # noqa: BLE001  (returned, and shown by the assert)
            return repr(error)
        return None

    try:
        with ThreadPoolExecutor(max_workers=len(engines)) as pool:
            failures = [failure for failure in pool.map(start_worker, engines) if failure]
        with engines[0].connect() as connection:
            created = sorted(sqlalchemy.inspect(connection).get_table_names())
    finally:
        for engine in engines:
            engine.dispose()

    assert failures == []
    assert created == sorted([*SQLModel.metadata.tables, "alembic_version"])  # every table, each made once
