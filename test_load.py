"""Load and abuse: a real `uvicorn main:app` under a burst of simultaneous clients and
under one address that tries to take every password hash for itself; and the bounds on
what one account's requests can cost (tasks per user, time per database statement).

Every request has a timeout, every loop a bound, so a server that stalls fails the test
instead of hanging it. All load goes to the loopback interface.
"""

import dataclasses
import json
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx2
from sqlalchemy import insert

import db
import routes.tasks
from conftest import PASSWORD, TEST_DATABASE_URL, Account
from db import STATEMENT_TIMED_OUT
from limits import TOO_MANY_AUTH_REQUESTS
from live_server import LiveServer
from models import Task

REQUEST_TIMEOUT_SECONDS = 60  # longer than the slowest answer a test accepts, so it measures it


def sign_up(http: httpx2.Client, email: str) -> tuple[int, dict[str, str]]:
    response = http.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["user"]["id"], {"Authorization": f"Bearer {body['access_token']}"}


class HealthProbe:
    """Asks /health over and over on a connection of its own until stopped, and keeps
    each answer's status and duration."""

    MAX_PROBES = 10_000

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx2.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            for _ in range(self.MAX_PROBES):
                started = time.monotonic()
                response = http.get("/health")
                self.answers.append((response.status_code, time.monotonic() - started))
                assert response.json() == {"status": "ok"}, response.text
                if self.stopped.wait(0.05):
                    return


# --- a burst of simultaneous clients ---

BURST_CLIENTS = 150
BURST_ACCOUNTS = 10  # signed up from one address, within the default auth limit


class RawClient:
    """One keep-alive HTTP/1.1 connection spoken over a plain socket. A burst client does
    nothing but send and read, so the test's own CPU (httpx costs several times more)
    stays small beside the server's on a machine of two cores."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host = f"{host}:{port}"
        self.connection = socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_SECONDS)
        self.received = b""

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, object]:
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}", *(f"{name}: {value}" for name, value in headers.items())]
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self.read_until_blank_line()
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)[1])
        return status, json.loads(self.read_exactly(length))

    def read_until_blank_line(self) -> bytes:
        while b"\r\n\r\n" not in self.received:
            self.receive_more()
        head, self.received = self.received.split(b"\r\n\r\n", 1)
        return head

    def read_exactly(self, length: int) -> bytes:
        while len(self.received) < length:
            self.receive_more()
        body, self.received = self.received[:length], self.received[length:]
        return body

    def receive_more(self) -> None:
        chunk = self.connection.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.received += chunk

    def close(self) -> None:
        self.connection.close()


def test_150_clients_at_once_get_no_5xx_and_health_stays_fast(tmp_path):
    """Each client opens its own connection and, at the same moment as all the others,
    lists its tasks and reads /api/auth/me. More requests arrive at once than the server
    has threads and pooled connections, so most of them wait: none may fail or stall."""
    with LiveServer(tmp_path) as server:
        with httpx2.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            accounts = [sign_up(http, f"burst{number}@example.com") for number in range(BURST_ACCOUNTS)]
        everyone_ready = threading.Barrier(BURST_CLIENTS)
        probe = HealthProbe(server.url)

        def one_client(number: int) -> list[tuple[str, int, float]]:
            user_id, headers = accounts[number % BURST_ACCOUNTS]
            answers = []
            client = RawClient(server.url)
            try:
                everyone_ready.wait(timeout=REQUEST_TIMEOUT_SECONDS)
                for path in (f"/api/{user_id}/tasks", "/api/auth/me"):
                    started = time.monotonic()
                    status, body = client.get(path, headers)
                    answers.append((path, status, time.monotonic() - started))
                    if status == 200:
                        assert body == [] if path.endswith("/tasks") else body["id"] == user_id, body
            finally:
                client.close()
            return answers

        with ThreadPoolExecutor(BURST_CLIENTS + 1) as pool:
            probing = pool.submit(probe.run)
            clients = [pool.submit(one_client, number) for number in range(BURST_CLIENTS)]
            try:
                answers = [answer for client in clients for answer in client.result()]
            finally:
                probe.stopped.set()
            probing.result()
        log = server.log()

    assert len(answers) == 2 * BURST_CLIENTS
    assert Counter(status for _, status, _ in answers) == {200: 2 * BURST_CLIENTS}
    slowest = max(seconds for _, _, seconds in answers)
    assert slowest < 30, f"the slowest request took {slowest:.1f} s"
    assert probe.answers and all(status == 200 for status, _ in probe.answers)
    slowest_health = max(seconds for _, seconds in probe.answers)
    assert slowest_health < 2, f"/health took {slowest_health:.1f} s during the burst"
    assert "QueuePool" not in log and "Traceback" not in log


# --- one address against everyone else's logins, at the default 12 bcrypt rounds ---

ATTACKER = "127.0.0.2"
VICTIMS = ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]
ATTACKER_SIGNUPS = 20  # the default AUTH_REQUESTS_PER_MINUTE: all of them are allowed
ATTACK_THREADS = 12
LOGINS_PER_VICTIM = 5
MAX_ATTACK_REQUESTS_PER_THREAD = 2_000


def from_address(server: LiveServer, address: str) -> httpx2.Client:
    """A client whose connections leave from `address`: the limits count per address."""
    transport = httpx2.HTTPTransport(local_address=address)
    return httpx2.Client(base_url=server.url, transport=transport, timeout=REQUEST_TIMEOUT_SECONDS)


def test_one_address_retrying_password_checks_cannot_starve_other_logins(tmp_path):
    """From one address: 20 signups, then 12 threads that send a password change with a
    wrong current password, over and over, and retry every 503 at once. Meanwhile other
    addresses log in: at least 90% of them get their token at the first try."""
    with LiveServer(tmp_path, env={"BCRYPT_ROUNDS": "12"}) as server:
        with from_address(server, ATTACKER) as attacker:
            emails = [f"attacker{number}@example.com" for number in range(ATTACKER_SIGNUPS)]
            attacker_accounts = [sign_up(attacker, email) for email in emails]
        victims = {}
        for address in VICTIMS:
            email = f"victim-{address}@example.com"
            with from_address(server, address) as victim:
                victims[address] = (email, sign_up(victim, email)[0])
        victims_done = threading.Event()
        attack_started = threading.Barrier(ATTACK_THREADS + 1)

        def attack(number: int) -> Counter:
            """Retries a 503 at once, and takes the next account on every try, so no one
            account's failed-login limit stops it: only its address's limit does."""
            body = {"current_password": "not the password", "new_password": "a brand new passphrase"}
            answers = Counter()
            with from_address(server, ATTACKER) as attacker:
                attack_started.wait(timeout=REQUEST_TIMEOUT_SECONDS)
                for attempt in range(MAX_ATTACK_REQUESTS_PER_THREAD):
                    _, headers = attacker_accounts[(number + attempt) % ATTACKER_SIGNUPS]
                    response = attacker.put("/api/auth/password", json=body, headers=headers)
                    answers[response.status_code] += 1
                    if victims_done.is_set() or response.json() == {"detail": TOO_MANY_AUTH_REQUESTS}:
                        break
            return answers

        def log_in_repeatedly(address: str) -> list[int]:
            email, user_id = victims[address]
            statuses = []
            with from_address(server, address) as victim:
                for _ in range(LOGINS_PER_VICTIM):
                    response = victim.post("/api/auth/login", json={"email": email, "password": PASSWORD})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        assert response.json()["user"]["id"] == user_id
            return statuses

        with ThreadPoolExecutor(ATTACK_THREADS + len(VICTIMS)) as pool:
            attacks = [pool.submit(attack, number) for number in range(ATTACK_THREADS)]
            attack_started.wait(timeout=REQUEST_TIMEOUT_SECONDS)
            try:
                logins = [pool.submit(log_in_repeatedly, address) for address in VICTIMS]
                victim_statuses = [status for login in logins for status in login.result()]
            finally:
                victims_done.set()
            attack_answers = sum((attack.result() for attack in attacks), Counter())
        log = server.log()

    assert set(attack_answers) <= {401, 429, 503}, attack_answers
    # The attacker's signups used up its address's auth requests for the minute: it
    # reaches bcrypt no more than that, however often it retries.
    assert attack_answers[429] > 0 and attack_answers[401] + attack_answers[503] <= ATTACKER_SIGNUPS, attack_answers
    succeeded = victim_statuses.count(200)
    assert len(victim_statuses) == len(VICTIMS) * LOGINS_PER_VICTIM
    assert succeeded >= 0.9 * len(victim_statuses), f"logins from other addresses: {Counter(victim_statuses)}"
    assert "Traceback" not in log


# --- tasks per user ---


def limit_tasks_to(monkeypatch, limit: int) -> dict:
    """MAX_TASKS_PER_USER for this test; returns the 409 body at that limit."""
    monkeypatch.setattr(routes.tasks, "settings", dataclasses.replace(routes.tasks.settings, max_tasks_per_user=limit))
    return {"detail": f"Task limit reached: an account holds at most {limit} tasks; delete some first"}


def create(client, account: Account, **fields):
    return client.post(account.tasks_url, headers=account.headers, json={"title": "a task", **fields})


def total(client, account: Account) -> int:
    listing = client.get(account.tasks_url, headers=account.headers)
    assert listing.status_code == 200, listing.text
    return int(listing.headers["X-Total-Count"])


def test_max_tasks_per_user_defaults_to_10000():
    assert routes.tasks.settings.max_tasks_per_user == 10_000


def test_a_create_beyond_the_task_limit_is_409_until_a_task_is_deleted(client, alice, bob, monkeypatch):
    too_many = limit_tasks_to(monkeypatch, 3)
    created = [create(client, alice).json()["id"] for _ in range(3)]
    refused = create(client, alice)
    assert (refused.status_code, refused.json()) == (409, too_many)
    assert total(client, alice) == 3
    assert create(client, bob).status_code == 201  # the limit is per account

    deleted = client.delete(f"{alice.tasks_url}/{created[0]}", headers=alice.headers)
    assert deleted.status_code == 204
    again = create(client, alice, title="room again")
    assert (again.status_code, again.json()["title"]) == (201, "room again")
    assert total(client, alice) == 3


def test_concurrent_creates_never_pass_the_task_limit(client, alice, monkeypatch):
    too_many = limit_tasks_to(monkeypatch, 5)
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda number: create(client, alice, title=f"task {number}"), range(30)))
    assert Counter(response.status_code for response in responses) == {201: 5, 409: 25}
    assert all(response.json() == too_many for response in responses if response.status_code == 409)
    assert total(client, alice) == 5


def test_tasks_already_stored_count_towards_the_limit(client, engine, alice, monkeypatch):
    """An account's tasks are counted at its first create that needs the count, however
    they got there."""
    too_many = limit_tasks_to(monkeypatch, 3)
    insert_tasks(engine, alice.id, count=3, title="stored", description=None)
    refused = create(client, alice)
    assert (refused.status_code, refused.json()) == (409, too_many)
    assert total(client, alice) == 3


def test_completing_a_recurring_task_at_the_limit_is_409_and_changes_nothing(client, alice, monkeypatch):
    """Its next occurrence would be one task too many; ending the series silently would
    break the promise of exactly one next occurrence."""
    too_many = limit_tasks_to(monkeypatch, 2)
    recurring = create(client, alice, recurrence="daily", due_date="2026-03-02T09:00:00Z").json()
    other = create(client, alice).json()
    url = f"{alice.tasks_url}/{recurring['id']}"

    for response in (
        client.patch(f"{url}/complete", headers=alice.headers),
        client.put(url, headers=alice.headers, json={"completed": True}),
    ):
        assert (response.status_code, response.json()) == (409, too_many)
    unchanged = client.get(url, headers=alice.headers).json()
    assert (unchanged["completed"], unchanged["completed_at"]) == (False, None)
    assert total(client, alice) == 2

    assert client.delete(f"{alice.tasks_url}/{other['id']}", headers=alice.headers).status_code == 204
    completed = client.patch(f"{url}/complete", headers=alice.headers)
    assert (completed.status_code, completed.json()["completed"]) == (200, True)
    listing = client.get(alice.tasks_url, headers=alice.headers).json()
    due_dates = sorted(task["due_date"] for task in listing)
    assert due_dates == ["2026-03-02T09:00:00Z", "2026-03-03T09:00:00Z"]


# --- time per database statement ---

WORST_CASE_TASKS = 3_000
WORST_CASE_QUERY = "a" * 199 + "b"  # LIKE backtracks: text length times pattern length, per row


def insert_tasks(engine, owner_id: int, count: int, title: str, description: str | None) -> None:
    """Rows straight into the table: thousands of them in well under a second."""
    moment = datetime(2026, 3, 1, tzinfo=timezone.utc)
    row = {
        "user_id": owner_id, "title": title, "description": description, "completed": False,
        "priority": "medium", "recurrence": "none", "next_occurrence_created": False,
        "created_at": moment, "updated_at": moment,
    }  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(Task), [row] * count)


def worst_case_search(client, engine, account: Account) -> tuple[httpx2.Response, float]:
    insert_tasks(engine, account.id, WORST_CASE_TASKS, title="a" * 200, description="a" * 1000)
    started = time.monotonic()
    response = client.get(account.tasks_url, headers=account.headers, params={"q": WORST_CASE_QUERY})
    return response, time.monotonic() - started


def test_the_worst_case_search_is_answered_within_4_seconds(client, engine, alice):
    response, seconds = worst_case_search(client, engine, alice)
    assert seconds < 4, f"the search took {seconds:.1f} s"
    if response.status_code == 200:
        assert (response.json(), response.headers["X-Total-Count"]) == ([], "0")
    else:
        assert (response.status_code, response.json()) == (503, {"detail": STATEMENT_TIMED_OUT})


def test_a_statement_over_its_budget_is_503_and_the_server_goes_on(client, engine, alice, monkeypatch):
    """SQLite's "interrupted", PostgreSQL's query_canceled: either way a clear 503."""
    # Far below the search's seconds, far above a primary-key lookup's fraction of a millisecond.
    strict = db.make_engine(TEST_DATABASE_URL or str(engine.url), statement_timeout_ms=50)
    monkeypatch.setattr(db, "engine", strict)
    try:
        response, seconds = worst_case_search(client, engine, alice)
        assert (response.status_code, response.json()) == (503, {"detail": STATEMENT_TIMED_OUT})
        assert seconds < 4
        me = client.get("/api/auth/me", headers=alice.headers)
        assert (me.status_code, me.json()["id"]) == (200, alice.id)
    finally:
        strict.dispose()
