"""A real `uvicorn main:app`, through real HTTP: what only several worker processes sharing
one database can show, a real Better Auth server's tokens, and a server SIGKILLed in the
middle of writes.

Which worker answered a request is read from the app's access log: each line carries the
worker's process id and the request's X-Request-ID, which the tests set.
"""

import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path

import httpx2
import jwt
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import (
    INVALID_TOKEN,
    PASSWORD,
    REPO_ROOT,
    TEST_DATABASE_URL,
    LiveServer,
    free_port,
    require_tool,
)
from sqlmodel import SQLModel

import db
import migrate

ACCESS_LINE = re.compile(
    r"todo\.access \[(\d+)\]: \w+ \S+ (\d{3}) [\d.]+ms request_id=(\S+)$", re.M
)
INVALID_REFRESH = {"detail": "Invalid or expired refresh token"}
REFRESH_URL = "/api/auth/refresh"


def started_workers(server: LiveServer) -> set[int]:
    return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", server.log())}


def answered_by(server: LiveServer) -> dict[str, list[tuple[int, str]]]:
    """Request id -> [(pid, status)] of every request in the app's access log."""
    answers = defaultdict(list)
    for pid, status, request_id in ACCESS_LINE.findall(server.log()):
        answers[request_id].append((int(pid), status))
    return answers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def two_workers(request, tmp_path_factory):
    """Two workers started together on a new database (a SQLite file, or a new database on
    TEST_DATABASE_URL's server), as on a first deployment, with one JWT_SECRET for both and no
    refresh grace period, since a live server's clock cannot be moved."""
    env = {"JWT_SECRET": secrets.token_urlsafe(48), "REFRESH_TOKEN_GRACE_SECONDS": "0"}
    if TEST_DATABASE_URL is not None:
        env["DATABASE_URL"] = request.getfixturevalue("empty_database_url")
    with LiveServer(tmp_path_factory.mktemp("workers"), workers=2, env=env) as server:
        yield server
    assert "Traceback" not in server.log()


def sign_up(base_url: str, email: str, probe: str) -> dict:
    with httpx2.Client(base_url=base_url, timeout=30) as http:
        response = http.post(
            "/api/auth/signup",
            json={"email": email, "password": PASSWORD},
            headers={"X-Request-ID": probe},
        )
    assert response.status_code == 201, response.text
    return response.json()


# --- start-up ---


def test_both_workers_start_as_children_of_uvicorn_and_one_migrates_the_new_database(two_workers):
    with httpx2.Client(base_url=two_workers.url, timeout=30) as http:
        signup = http.post(
            "/api/auth/signup", json={"email": "first@example.com", "password": PASSWORD}
        )
        health = [http.get("/health", headers={"Connection": "close"}) for _ in range(8)]
    workers = started_workers(two_workers)
    server_log = two_workers.log()
    engine = db.make_engine(two_workers.env["DATABASE_URL"])
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            revisions = context.get_current_heads()
            differences = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()

    assert (signup.status_code, signup.json()["user"]["email"]) == (201, "first@example.com")
    assert [(response.status_code, response.json()) for response in health] == [
        (200, {"status": "ok"})
    ] * 8
    assert len(workers) == 2 and two_workers.process.pid not in workers
    for pid in workers:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == two_workers.process.pid
    assert server_log.count("Application startup complete") == 2
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert server_log.count("Upgraded the database schema") == 1
    assert f"Upgraded the database schema from revision none (new database) to {head}" in server_log
    assert "ERROR" not in server_log
    assert (revisions, differences) == ((head,), [])


# --- tokens and sessions across workers ---


def test_a_token_from_one_worker_works_on_the_other(two_workers):
    account = sign_up(two_workers.url, "tokens@example.com", probe="tokens-signup")
    headers = {**bearer(account["access_token"]), "Connection": "close"}
    [(issuer, _)] = answered_by(two_workers)["tokens-signup"]

    # One new connection per request, so the kernel hands each to whichever worker accepts it.
    other_worker_answers = []
    with httpx2.Client(base_url=two_workers.url, headers=headers, timeout=30) as http:
        for attempt in range(200):
            response = http.get("/api/auth/me", headers={"X-Request-ID": f"tokens-{attempt}"})
            assert response.status_code == 200, response.text
            assert response.json() == account["user"]
            [(pid, status)] = answered_by(two_workers)[f"tokens-{attempt}"]
            if pid != issuer:
                other_worker_answers.append((pid, status))
                break

    assert issuer in started_workers(two_workers)
    assert other_worker_answers, "all 200 new connections went to the worker that issued the token"
    [(other, status)] = other_worker_answers
    assert other in started_workers(two_workers) - {issuer} and status == "200"


def served_by(server: LiveServer, request_id: str) -> int:
    [(pid, _)] = answered_by(server)[request_id]
    return pid


class PinnedClient:
    """A client with one keep-alive connection, which stays with the worker that accepted
    it. Every request's worker is read back from the access log and checked."""

    def __init__(self, server: LiveServer, name: str) -> None:
        self.server, self.name, self.sent = server, name, 0
        self.http = httpx2.Client(
            base_url=server.url, timeout=30, limits=httpx2.Limits(max_connections=1)
        )
        probe = self.send("GET", "/health")
        assert probe.status_code == 200, probe.text
        self.worker = served_by(server, self.last_request_id)

    def send(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs
    ) -> httpx2.Response:
        self.sent += 1
        self.last_request_id = f"{self.name}-{self.sent}"
        headers = {"X-Request-ID": self.last_request_id, **(headers or {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> httpx2.Response:
        response = self.send(method, path, **kwargs)
        worker = served_by(self.server, self.last_request_id)
        assert worker == self.worker, "the keep-alive connection moved to another worker"
        return response


def one_client_per_worker(server: LiveServer) -> list[PinnedClient]:
    by_worker: dict[int, PinnedClient] = {}
    for attempt in range(100):  # each new connection goes to whichever worker accepts it first
        client = PinnedClient(server, f"probe{attempt}")
        if client.worker in by_worker:
            client.http.close()
        else:
            by_worker[client.worker] = client
        if len(by_worker) == 2:
            return list(by_worker.values())
    raise AssertionError("100 new connections all went to one worker")


def test_refresh_on_one_worker_use_on_the_other_and_replays_are_caught_by_both(two_workers):
    first, second = one_client_per_worker(two_workers)
    try:
        signup = first.request(
            "POST", "/api/auth/signup", json={"email": "w@example.com", "password": PASSWORD}
        )
        assert signup.status_code == 201, signup.text
        user_id = signup.json()["user"]["id"]
        other_session = second.request(
            "POST", "/api/auth/login", json={"email": "w@example.com", "password": PASSWORD}
        )
        assert other_session.status_code == 200, other_session.text

        on_first = first.request(
            "POST", REFRESH_URL, json={"refresh_token": signup.json()["refresh_token"]}
        )
        assert on_first.status_code == 200, on_first.text
        used_on_second = second.request(
            "GET", "/api/auth/me", headers=bearer(on_first.json()["access_token"])
        )
        assert (used_on_second.status_code, used_on_second.json()["id"]) == (200, user_id)
        on_second = second.request(
            "POST", REFRESH_URL, json={"refresh_token": on_first.json()["refresh_token"]}
        )
        assert on_second.status_code == 200, on_second.text

        replay = first.request(
            "POST", REFRESH_URL, json={"refresh_token": on_first.json()["refresh_token"]}
        )
        assert (replay.status_code, replay.json()) == (401, INVALID_REFRESH)
        for client in (first, second):
            refused = client.request(
                "POST", REFRESH_URL, json={"refresh_token": on_second.json()["refresh_token"]}
            )
            assert (refused.status_code, refused.json()) == (401, INVALID_REFRESH)
            for access in (signup.json()["access_token"], on_second.json()["access_token"]):
                response = client.request("GET", "/api/auth/me", headers=bearer(access))
                assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
            # The other login is another session, on both workers.
            response = client.request(
                "GET", "/api/auth/me", headers=bearer(other_session.json()["access_token"])
            )
            assert (response.status_code, response.json()["id"]) == (200, user_id)
        issued = [signup.json()["refresh_token"], other_session.json()["refresh_token"]]
        issued += [on_first.json()["refresh_token"], on_second.json()["refresh_token"]]
    finally:
        first.http.close()
        second.http.close()
    assert first.worker != second.worker
    log = two_workers.log()
    for token in issued:
        assert token not in log


# --- writes from several clients ---


def test_200_parallel_creates_from_several_clients_all_land(two_workers):
    users = [
        sign_up(two_workers.url, f"load{n}@example.com", probe=f"signup-{n}") for n in range(4)
    ]
    clients = [
        httpx2.Client(
            base_url=two_workers.url,
            headers=bearer(user["access_token"]),
            timeout=60,
            limits=httpx2.Limits(max_connections=4),
        )
        for user in users
    ]

    def create(number: int) -> tuple[int, int, int]:
        owner = number % len(users)
        url = f"/api/{users[owner]['user']['id']}/tasks"
        response = clients[owner].post(
            url,
            json={"title": f"task {number}", "tags": ["load"]},
            headers={"X-Request-ID": f"load-{number}"},
        )
        assert response.status_code == 201, response.text
        return owner, response.json()["id"], response.json()["user_id"]

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            created = list(pool.map(create, range(200)))
        listings = [
            client.get(f"/api/{user['user']['id']}/tasks", params={"tag": "load", "limit": 100})
            for client, user in zip(clients, users, strict=True)
        ]
    finally:
        for client in clients:
            client.close()

    assert len({task_id for _, task_id, _ in created}) == 200
    assert all(user_id == users[owner]["user"]["id"] for owner, _, user_id in created)
    for owner, listing in enumerate(listings):
        assert listing.status_code == 200
        assert listing.headers["X-Total-Count"] == "50"
        expected = {f"task {number}" for number in range(owner, 200, len(users))}
        assert {task["title"] for task in listing.json()} == expected
    answers = answered_by(two_workers)
    served = Counter(pid for number in range(200) for pid, _ in answers[f"load-{number}"])
    assert sum(served.values()) == 200
    assert set(served) == started_workers(two_workers), f"one worker served every create: {served}"


# --- a real Better Auth server's tokens ---

BETTER_AUTH_FOLDER = Path(__file__).parent / "e2e" / "better-auth"


@pytest.fixture
def better_auth_server(tmp_path):
    """A real Better Auth 1.7.25 (jwt() plugin, in-memory database) on 127.0.0.1; needs
    node and `npm ci` in tests/e2e/better-auth (skipped without them, a failure in CI)."""
    node = shutil.which("node")
    require_tool(
        node is not None and (BETTER_AUTH_FOLDER / "node_modules" / "better-auth").is_dir(),
        "the Better Auth interop test needs Node.js 20+ and `npm ci` in tests/e2e/better-auth"
        + (" (node is not installed)" if node is None else " (its node_modules is missing)"),
    )
    port = free_port()
    log_path = tmp_path / "better-auth.log"
    environment = {**os.environ, "PORT": str(port), "BETTER_AUTH_SECRET": secrets.token_urlsafe(48)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=BETTER_AUTH_FOLDER,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx2.Client(base_url=url, timeout=5) as probe:
            while True:
                try:
                    if probe.get("/api/auth/jwks").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"Better Auth did not start:\n{log_path.read_text(errors='replace')}"
                    )
                # Waits for the next poll, and notices at once if node died.
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def better_auth_user(better_auth_url: str, email: str) -> tuple[str, str]:
    """Sign a user up through Better Auth as a browser would; their id and their JWT."""
    with httpx2.Client(
        base_url=better_auth_url, timeout=10, headers={"Origin": better_auth_url}
    ) as browser:
        signup = browser.post(
            "/api/auth/sign-up/email", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )
        assert signup.status_code == 200, signup.text
        session_cookie = signup.headers["set-cookie"].split(";", 1)[0]
        token = browser.get("/api/auth/token", headers={"Cookie": session_cookie})
        assert token.status_code == 200, token.text
        return signup.json()["user"]["id"], token.json()["token"]


def test_a_real_better_auth_servers_tokens_drive_the_task_routes_on_both_workers(
    better_auth_server, live_server
):
    ada_id, ada_token = better_auth_user(better_auth_server, "ada@example.com")
    grace_id, grace_token = better_auth_user(better_auth_server, "grace@example.com")
    assert jwt.get_unverified_header(ada_token)["alg"] == "EdDSA"
    server = live_server(workers=2, env={"BETTER_AUTH_URL": better_auth_server})
    with httpx2.Client(base_url=server.url, timeout=10) as api:
        ada = bearer(ada_token)
        created = api.post(
            f"/api/{ada_id}/tasks", json={"title": "Buy milk", "tags": ["home"]}, headers=ada
        )
        assert created.status_code == 201, created.text
        task = created.json()
        assert created.headers["location"] == f"/api/{ada_id}/tasks/{task['id']}"
        account = api.get("/api/auth/me", headers=ada)
        assert account.status_code == 200
        assert (
            account.json()["better_auth_id"] == ada_id and account.json()["id"] == task["user_id"]
        )
        done = api.patch(f"/api/{ada_id}/tasks/{task['id']}/complete", headers=ada)
        assert done.status_code == 200 and done.json()["completed"] is True
        listing = api.get(
            f"/api/{task['user_id']}/tasks", params={"status": "completed"}, headers=ada
        )
        assert listing.status_code == 200
        assert [item["title"] for item in listing.json()] == ["Buy milk"]
        assert listing.headers["x-total-count"] == "1"

        refused = api.get(f"/api/{ada_id}/tasks", headers=bearer(grace_token))
        assert refused.status_code == 403
        assert refused.json() == {"detail": "You can only access your own tasks"}
        graces = api.get(f"/api/{grace_id}/tasks", headers=bearer(grace_token))
        assert (graces.status_code, graces.json()) == (200, [])

        logout = api.post("/api/auth/logout", headers=ada)
        assert logout.status_code == 204
        for _ in range(6):  # several requests, so both workers answer some of them
            after = api.get(f"/api/{ada_id}/tasks", headers=ada)
            assert after.status_code == 401
            assert after.json() == INVALID_TOKEN
    assert ada_token not in server.log()


# --- crash safety: a real server, SIGKILLed in the middle of writes ---

WRITER_THREADS = 8
CREATES_PER_THREAD = 50
KILL_AFTER_ACKNOWLEDGED = 150


def list_all_tasks(client: httpx2.Client, account) -> list[dict]:
    tasks, offset = [], 0
    while True:
        page = client.get(
            account.tasks_url, params={"limit": 100, "offset": offset, "sort": "created"}
        )
        assert page.status_code == 200, page.text
        tasks += page.json()
        offset += 100
        if offset >= int(page.headers["x-total-count"]):
            return tasks


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_no_acknowledged_create_is_lost_when_the_server_is_killed(
    tmp_path, new_account, synchronous
):
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

        writers = [
            threading.Thread(target=write, args=(thread,)) for thread in range(WRITER_THREADS)
        ]
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
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


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
    return {request_id: int(pid) for pid, _status, request_id in ACCESS_LINE.findall(server_log)}


def client_at(server: LiveServer, address: str = "127.0.0.1") -> httpx2.Client:
    """A client whose every request opens a new connection, so the kernel may hand it to
    any worker. Any 127.x.y.z source address reaches the server over loopback, and the
    rate limits count per client address, so each check can have an address of its own."""
    transport = httpx2.HTTPTransport(local_address=address)
    return httpx2.Client(
        base_url=server.url, transport=transport, timeout=30, headers={"Connection": "close"}
    )


def send(
    http: httpx2.Client, method: str, path: str, request_id: str, headers=None, **kwargs
) -> httpx2.Response:
    return http.request(
        method, path, headers={"X-Request-ID": request_id, **(headers or {})}, **kwargs
    )


def send_in_parallel(
    http: httpx2.Client,
    method: str,
    path: str,
    prefix: str,
    count: int = REQUESTS_PER_CHECK,
    json_for=None,
    **kwargs,
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
        for response in send_in_parallel(
            http, "GET", "/api/auth/me", "other-session", headers=second
        ):
            assert response.status_code == 200, response.text
            assert response.json() == user

        worker_pids = server.worker_pids()
        server_log = server.log()

    served_by = worker_of_each_request(server_log)
    assert server_log.count("Application startup complete") == WORKERS
    assert (
        server_log.count("Upgraded the database schema from revision none (new database)") == 1
    )  # one migrated
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
    assert sorted(path.name for path in tmp_path.iterdir() if "jwt_secret" in path.name) == [
        ".jwt_secret"
    ]
    claims = jwt.decode(
        signup.json()["access_token"], secret_file.read_text().strip(), algorithms=["HS256"]
    )
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
                signup = send(
                    http, "POST", "/api/auth/signup", f"victim-{round_number}", json=account
                )
                assert signup.status_code == 201, signup.text
                wrong = {**account, "password": "a wrong guess"}
                guesses = send_in_parallel(
                    http, "POST", "/api/auth/login", f"guess{round_number}", count=5, json=wrong
                )
                for failed in guesses:
                    assert failed.status_code == 401, failed.text
                    assert failed.json() == {"detail": "Incorrect email or password"}
                blocked = send(
                    http, "POST", "/api/auth/login", f"right-{round_number}", json=account
                )
            assert blocked.status_code == 429, blocked.text
            assert blocked.json() == {
                "detail": "Too many failed logins for this email; try again later"
            }
            assert int(blocked.headers["retry-after"]) > 0

        # 20 signups from one address in a minute, then a 21st: 429; another address: 201.
        def bot(number: int) -> dict[str, str]:
            return {"email": f"bot{number}@example.com", "password": password}

        with client_at(server, "127.0.0.3") as scripter:
            signups = send_in_parallel(
                scripter, "POST", "/api/auth/signup", "bot", count=20, json_for=bot
            )
            for created in signups:
                assert created.status_code == 201, created.text
            body = {"email": "bot20@example.com", "password": password}
            refused = send(scripter, "POST", "/api/auth/signup", "bot-over", json=body)
        assert refused.status_code == 429, refused.text
        assert refused.json() == {
            "detail": "Too many signups, logins, refreshes and password checks from your address;"
            " try again later"
        }
        assert int(refused.headers["retry-after"]) > 0
        with client_at(server) as elsewhere:
            human = send(
                elsewhere,
                "POST",
                "/api/auth/signup",
                "elsewhere",
                json={**body, "email": "human@example.com"},
            )
        assert human.status_code == 201, human.text
        server_log = server.log()

    served_by = worker_of_each_request(server_log)
    spread = [
        len(workers_that_served(served_by, f"guess{round_number}"))
        for round_number in range(rounds)
    ]
    assert max(spread) >= 2, served_by
    assert len(workers_that_served(served_by, "bot")) >= 2, served_by
