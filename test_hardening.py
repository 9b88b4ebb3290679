"""Hardening: cases that fuzzing is good at finding, request logging, and the
live-server checks (crash safety, several workers)."""

import logging
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
from fastapi import Request

import db
from conftest import PASSWORD, Account
from live_server import REPO_ROOT, LiveServer
from main import app

# --- found by schemathesis (test_fuzz.py); each keeps a plain HTTP test here ---


def test_405_allow_header_names_every_method_of_the_path(client, alice: Account):
    response = client.options(f"{alice.tasks_url}/1", headers=alice.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "GET, PUT, PATCH, DELETE"


def test_a_value_error_422_names_its_message_in_ctx_not_an_empty_object(client, alice: Account):
    response = client.post(alice.tasks_url, json={"title": "a\x00b"}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "value_error",
                "loc": ["body", "title"],
                "msg": "Value error, must not contain NUL characters",
                "ctx": {"error": "must not contain NUL characters"},
            }
        ]
    }


def test_body_that_is_not_utf8_is_malformed_json_422(client, alice: Account):
    response = client.post(
        alice.tasks_url,
        content=b'{"title": "\xff\xfe"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


def test_update_schema_offers_null_only_where_null_clears(client, alice: Account):
    # The schema said completed/title/priority/tags/recurrence could be null; the API says 422.
    update = client.get("/openapi.json").json()["components"]["schemas"]["TaskUpdate"]["properties"]
    nullable = {name for name, field in update.items() if {"type": "null"} in field.get("anyOf", [])}
    assert nullable == {"description", "due_date"}
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers).json()
    response = client.put(f"{alice.tasks_url}/{created['id']}", json={"completed": None}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "completed"]


def test_number_is_not_a_due_date(client, alice: Account):
    for due_date in (0, 1700000000, "1700000000", "0.5", True):
        response = client.post(alice.tasks_url, json={"title": "t", "due_date": due_date}, headers=alice.headers)
        assert response.status_code == 422, due_date
        assert response.json()["detail"][0]["loc"] == ["body", "due_date"]
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


def test_number_is_not_a_due_date_filter(client, alice: Account):
    response = client.get(alice.tasks_url, params={"due_before": "0.5"}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "due_before"]


def test_iso_due_dates_still_work(client, alice: Account):
    for sent, stored in (
        ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00Z"),
        ("2026-03-01T12:00:00", "2026-03-01T12:00:00Z"),
        ("2026-03-01T14:00:00+02:00", "2026-03-01T12:00:00Z"),
    ):
        response = client.post(alice.tasks_url, json={"title": "t", "due_date": sent}, headers=alice.headers)
        assert response.status_code == 201, response.text
        assert response.json()["due_date"].replace("+00:00", "Z") == stored


# --- request logging ---


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "todo.access"]


def test_one_access_line_per_request_with_method_path_status_duration_and_id(client, alice: Account, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    response = client.get(alice.tasks_url, params={"q": "milk"}, headers={**alice.headers, "X-Request-ID": "req-42"})
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["x-request-id"] == "req-42"
    [line] = access_lines(caplog)
    assert re.fullmatch(rf"GET {alice.tasks_url} 200 \d+\.\dms request_id=req-42", line), line


# A percent-encoded CR LF, a forged log line, and a terminal escape (clear the screen).
FORGED_PATH_SEGMENT = "1%0D%0ACRITICAL%20admin%20login%20succeeded%1B[2J"
RAW_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def formatted_log(caplog, *names: str) -> str:
    """The records of these loggers as a handler writes them, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records if record.name in names)


def test_client_text_never_writes_control_characters_into_the_log(client, alice: Account, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    caplog.set_level(logging.INFO, logger="uvicorn.error")

    def broken_database(request: Request):
        # An unexpected failure whose message carries what the client sent.
        raise RuntimeError(f"no database for {request.scope['path']} ({request.headers['x-note']})")

    app.dependency_overrides[db.get_session] = broken_database
    note = "note\x1b]0;owned\x07"
    failed = client.get(f"/api/{FORGED_PATH_SEGMENT}/tasks", headers={**alice.headers, "X-Note": note})
    assert (failed.status_code, failed.json()) == (500, {"detail": "Internal server error"})
    app.dependency_overrides.clear()
    missing = client.get(f"/{FORGED_PATH_SEGMENT}")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})

    log = formatted_log(caplog, "todo.access", "uvicorn.error")
    lines = log.split("\n")
    assert [line for line in lines if RAW_CONTROLS.search(line)] == []
    assert [line for line in lines if line.startswith("CRITICAL")] == []
    error_lines = [line for line in lines if line.startswith("ERROR uvicorn.error: Unexpected error in GET")]
    assert error_lines == [f"ERROR uvicorn.error: Unexpected error in GET /api/{FORGED_PATH_SEGMENT}/tasks"]
    decoded = "1\\r\\nCRITICAL admin login succeeded\\x1b[2J"
    message = f"RuntimeError: no database for /api/{decoded}/tasks (note\\x1b]0;owned\\x07)"
    assert message in lines  # the exception's message, escaped on one line of the traceback
    assert "Traceback (most recent call last):" in lines
    access = [record.getMessage() for record in caplog.records if record.name == "todo.access"]
    assert [line.split(" request_id=")[0].rsplit(" ", 1)[0] for line in access] == [
        f"GET /api/{FORGED_PATH_SEGMENT}/tasks 500",
        f"GET /{FORGED_PATH_SEGMENT} 404",
    ]


def test_control_characters_in_any_logged_text_are_escaped(caplog):
    """The filter covers every call on these loggers, uvicorn's own included."""
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    try:
        try:
            raise ValueError("inner\nCRITICAL forged")
        except ValueError as inner:
            raise KeyError("outer\r\x1b[2J") from inner
    except KeyError:
        logging.getLogger("uvicorn.error").exception("%s\n%s", "line\nbreak", "\u2028\x85\ud800")
    log = formatted_log(caplog, "uvicorn.error")
    lines = log.split("\n")
    assert lines[0] == "ERROR uvicorn.error: line\\nbreak\\n\\u2028\\x85\\ud800"
    assert "ValueError: inner\\nCRITICAL forged" in lines
    assert "KeyError: 'outer\\r\\x1b[2J'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines.index("ValueError: inner\\nCRITICAL forged") < lines.index("KeyError: 'outer\\r\\x1b[2J'")
    assert not any(RAW_CONTROLS.search(line) or "\u2028" in line for line in lines)


def test_request_id_is_generated_when_missing_or_not_a_short_token(client, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    sent = [None, "", "has space", "x" * 65, "semi;colon", "Bearer abc"]
    echoed = []
    for request_id in sent:
        headers = {} if request_id is None else {"X-Request-ID": request_id}
        response = client.get("/health", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        echoed.append(response.headers["x-request-id"])
    assert all(re.fullmatch(r"[0-9a-f]{16}", request_id) for request_id in echoed), echoed
    assert len(set(echoed)) == len(sent)
    assert [line.rsplit("request_id=", 1)[1] for line in access_lines(caplog)] == echoed


def test_no_password_token_or_authorization_in_any_log_line(client, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    caplog.set_level(logging.DEBUG, logger="todo.access")  # it has a level of its own
    password = "hunter2-" + secrets.token_urlsafe(12)
    signup = client.post("/api/auth/signup", json={"email": "carol@example.com", "password": password})
    assert signup.status_code == 201
    token = signup.json()["access_token"]
    user_id = signup.json()["user"]["id"]
    login = client.post("/api/auth/login", json={"email": "carol@example.com", "password": password})
    assert login.status_code == 200
    form = client.post("/api/auth/token", data={"username": "carol@example.com", "password": password})
    assert form.status_code == 200
    wrong = client.post("/api/auth/login", json={"email": "carol@example.com", "password": password + "x"})
    assert wrong.status_code == 401
    short = client.post("/api/auth/signup", json={"email": "dave@example.com", "password": "pw"})
    assert short.status_code == 422
    bearer = {"Authorization": f"Bearer {token}"}
    me = client.get("/api/auth/me", headers=bearer)
    assert me.status_code == 200
    # A careless client that puts the token in the query string: the path alone is logged.
    listed = client.get(f"/api/{user_id}/tasks", params={"access_token": token, "q": password}, headers=bearer)
    assert listed.status_code == 200
    forged = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}x"})
    assert forged.status_code == 401
    secrets_sent = [password, "pw", token, login.json()["access_token"], form.json()["access_token"]]
    # Every server-side logger; httpx2 is the test's own client, which logs the URL it asked for.
    lines = [record.getMessage() for record in caplog.records if not record.name.startswith("httpx")]
    assert len(access_lines(caplog)) == 8
    for line in lines:
        assert "Bearer" not in line and "Authorization" not in line.title(), line
        assert "access_token" not in line, line
        for secret in secrets_sent:
            assert secret not in line, line


# --- crash safety: a real server, SIGKILLed in the middle of writes ---

WRITER_THREADS = 8
CREATES_PER_THREAD = 50
KILL_AFTER_ACKNOWLEDGED = 150


def list_all_tasks(client: httpx2.Client, account: Account) -> list[dict]:
    tasks, offset = [], 0
    while True:
        page = client.get(account.tasks_url, params={"limit": 100, "offset": offset, "sort": "created"})
        assert page.status_code == 200, page.text
        tasks += page.json()
        offset += 100
        if offset >= int(page.headers["x-total-count"]):
            return tasks


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_no_acknowledged_create_is_lost_when_the_server_is_killed(tmp_path, synchronous):
    acknowledged: dict[int, dict] = {}  # task id -> the body the 201 carried
    sent_titles: set[str] = set()
    lock = threading.Lock()
    enough_acknowledged = threading.Event()

    with LiveServer(tmp_path, env={"SQLITE_SYNCHRONOUS": synchronous}) as server:
        with httpx2.Client(base_url=server.url) as client:
            signup = client.post("/api/auth/signup", json={"email": "crash@example.com", "password": PASSWORD})
            assert signup.status_code == 201, signup.text
        account = Account(signup.json()["user"]["id"], "crash@example.com", signup.json()["access_token"])

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

    with LiveServer(tmp_path, env={"SQLITE_SYNCHRONOUS": synchronous}) as restarted, httpx2.Client(base_url=restarted.url, headers=account.headers) as client:
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


def send(server: LiveServer, method: str, path: str, request_id: str, *, client_address: str = "127.0.0.1",
         headers: dict[str, str] | None = None, **kwargs) -> httpx2.Response:  # fmt: skip
    """One request on a new connection, so the kernel may hand it to any worker. Any
    127.x.y.z source address reaches the server over loopback, and the rate limits count
    per client address, so each check can have an address of its own."""
    transport = httpx2.HTTPTransport(local_address=client_address)
    with httpx2.Client(base_url=server.url, transport=transport, timeout=30) as client:
        return client.request(method, path, headers={"X-Request-ID": request_id, **(headers or {})}, **kwargs)


def send_in_parallel(
    server: LiveServer, method: str, path: str, prefix: str, count: int = REQUESTS_PER_CHECK, json_for=None, **kwargs
) -> list[httpx2.Response]:
    """`count` requests at once, 8 at a time, with request ids prefix-0, prefix-1, ...;
    json_for(number) gives each its own body."""

    def one(number: int) -> httpx2.Response:
        body = {} if json_for is None else {"json": json_for(number)}
        return send(server, method, path, f"{prefix}-{number}", **body, **kwargs)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(count)))


def workers_that_served(served_by: dict[str, int], prefix: str) -> set[int]:
    return {pid for request_id, pid in served_by.items() if request_id.startswith(f"{prefix}-")}


def test_four_workers_in_a_fresh_directory_share_one_secret_and_every_logout(tmp_path):
    assert list(tmp_path.iterdir()) == []  # a fresh directory: no secret, no database
    with LiveServer(tmp_path, workers=WORKERS) as server:
        assert "JWT_SECRET" not in server.env
        account = {"email": "w@example.com", "password": PASSWORD}
        signup = send(server, "POST", "/api/auth/signup", "signup", json=account)
        assert signup.status_code == 201, signup.text
        user = signup.json()["user"]
        login = send(server, "POST", "/api/auth/login", "login", json=account)
        assert login.status_code == 200, login.text
        first = {"Authorization": f"Bearer {signup.json()['access_token']}"}
        second = {"Authorization": f"Bearer {login.json()['access_token']}"}

        for response in send_in_parallel(server, "GET", "/api/auth/me", "before", headers=first):
            assert response.status_code == 200, response.text
            assert response.json() == user

        logout = send(server, "POST", "/api/auth/logout", "logout", headers=first)
        assert logout.status_code == 204, logout.text
        for response in send_in_parallel(server, "GET", "/api/auth/me", "revoked", headers=first):
            assert response.status_code == 401, response.text
            assert response.json() == {"detail": "Could not validate credentials"}
            assert response.headers["www-authenticate"] == "Bearer"
        for response in send_in_parallel(server, "GET", "/api/auth/me", "other-session", headers=second):
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
    for secret in (PASSWORD, signup.json()["access_token"], login.json()["access_token"], "Bearer"):
        assert secret not in server_log


def test_rate_limits_count_across_workers(tmp_path):
    """With the default limits. Each check sends the requests that fill a limit at once,
    so that several workers take them: counted in each process alone, no worker would
    have reached the limit, and the next request would be let in."""
    rounds = 4  # a round whose requests all reached one worker would prove nothing
    with LiveServer(tmp_path, workers=WORKERS) as server:
        for round_number in range(rounds):
            # 5 failed logins for one email from one address, then even the right password: 429.
            address = f"127.0.0.{10 + round_number}"  # a loopback address of its own per round
            account = {"email": f"victim{round_number}@example.com", "password": PASSWORD}
            signup = send(
                server, "POST", "/api/auth/signup", f"victim-{round_number}", client_address=address, json=account
            )
            assert signup.status_code == 201, signup.text
            wrong = {**account, "password": "a wrong guess"}
            guesses = send_in_parallel(
                server, "POST", "/api/auth/login", f"guess{round_number}", count=5, client_address=address,
                json_for=lambda _: wrong,
            )  # fmt: skip
            for failed in guesses:
                assert failed.status_code == 401, failed.text
                assert failed.json() == {"detail": "Incorrect email or password"}
            blocked = send(
                server, "POST", "/api/auth/login", f"right-{round_number}", client_address=address, json=account
            )
            assert blocked.status_code == 429, blocked.text
            assert blocked.json() == {"detail": "Too many failed logins for this email; try again later"}
            assert int(blocked.headers["retry-after"]) > 0

        # 20 signups from one address in a minute, then a 21st: 429; another address: 201.
        scripter = "127.0.0.3"
        signups = send_in_parallel(
            server, "POST", "/api/auth/signup", "bot", count=20, client_address=scripter,
            json_for=lambda number: {"email": f"bot{number}@example.com", "password": PASSWORD},
        )  # fmt: skip
        for created in signups:
            assert created.status_code == 201, created.text
        body = {"email": "bot20@example.com", "password": PASSWORD}
        refused = send(server, "POST", "/api/auth/signup", "bot-over", client_address=scripter, json=body)
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"detail": "Too many signups, logins, refreshes and password checks from your address; try again later"}
        assert int(refused.headers["retry-after"]) > 0
        elsewhere = send(server, "POST", "/api/auth/signup", "elsewhere", json={**body, "email": "human@example.com"})
        assert elsewhere.status_code == 201, elsewhere.text
        server_log = server.log()

    served_by = worker_of_each_request(server_log)
    spread = [len(workers_that_served(served_by, f"guess{round_number}")) for round_number in range(rounds)]
    assert max(spread) >= 2, served_by
    assert len(workers_that_served(served_by, "bot")) >= 2, served_by


def test_workers_starting_together_on_a_new_database_all_create_its_tables(tmp_path):
    # Found by the multi-worker test: one of four workers died at start-up with "table
    # user already exists", which stopped the whole server. Eight engines race here.
    engines = [db.make_engine(f"sqlite:///{tmp_path / 'new.db'}") for _ in range(8)]
    start_together = threading.Barrier(len(engines))
    failures = []

    def start_worker(engine) -> None:
        start_together.wait()
        try:
            db.migrate(engine)
        except Exception as error:  # noqa: BLE001  (collected, and shown by the assert)
            failures.append(error)

    threads = [threading.Thread(target=start_worker, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert failures == []
    with closing(sqlite3.connect(tmp_path / "new.db")) as database:
        tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"user", "task", "tasktag"} <= tables
