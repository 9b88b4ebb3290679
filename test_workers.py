"""`uvicorn main:app --workers 2` against PostgreSQL, through real HTTP.

Two processes share nothing but the database and JWT_SECRET. Which worker answered a
request is read from the app's access log (middleware.AccessLog): each line carries the
worker's process id and the request's X-Request-ID, which the tests set.
"""

import re
import secrets
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import TEST_DATABASE_URL
from live_server import LiveServer

pytestmark = pytest.mark.skipif(
    TEST_DATABASE_URL is None,
    reason="several workers need a shared server database: set TEST_DATABASE_URL to PostgreSQL",
)

PASSWORD = "correct horse battery"
ACCESS_LINE = re.compile(r"todo\.access \[(\d+)\]: \w+ \S+ (\d{3}) [\d.]+ms request_id=(\S+)$", re.M)


def started_workers(server: LiveServer) -> set[int]:
    return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", server.log())}


def answered_by(server: LiveServer) -> dict[str, list[tuple[int, str]]]:
    """Request id -> [(pid, status)] of every request in the app's access log, whose lines
    carry the worker's process id."""
    answers = defaultdict(list)
    for pid, status, request_id in ACCESS_LINE.findall(server.log()):
        answers[request_id].append((int(pid), status))
    return answers


@pytest.fixture(scope="module")
def two_workers(empty_schema_url, tmp_path_factory):
    """uvicorn with two workers on a schema with no tables yet, so both workers also create
    them at start-up, as on a first deployment."""
    settings = {
        "DATABASE_URL": empty_schema_url,
        "JWT_SECRET": secrets.token_urlsafe(48),  # explicit, and the same for both workers
    }
    with LiveServer(tmp_path_factory.mktemp("workers"), workers=2, env=settings) as server:
        yield server
    assert "Traceback" not in server.log()


def sign_up(base_url: str, email: str, probe: str) -> dict:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        response = http.post(
            "/api/auth/signup", json={"email": email, "password": PASSWORD}, headers={"X-Request-ID": probe}
        )
    assert response.status_code == 201, response.text
    return response.json()


def test_both_workers_start_and_are_children_of_uvicorn(two_workers):
    workers = started_workers(two_workers)

    assert len(workers) == 2 and two_workers.process.pid not in workers
    for pid in workers:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == two_workers.process.pid


def test_a_token_from_one_worker_works_on_the_other(two_workers):
    account = sign_up(two_workers.url, "tokens@example.com", probe="tokens-signup")
    headers = {"Authorization": f"Bearer {account['access_token']}", "Connection": "close"}
    [(issuer, _)] = answered_by(two_workers)["tokens-signup"]

    # One new connection per request, so the kernel hands each to whichever worker accepts it.
    other_worker_answers = []
    with httpx.Client(base_url=two_workers.url, headers=headers, timeout=30) as http:
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


def test_200_parallel_creates_from_several_clients_all_land(two_workers):
    users = [sign_up(two_workers.url, f"load{n}@example.com", probe=f"signup-{n}") for n in range(4)]
    clients = [
        httpx.Client(
            base_url=two_workers.url,
            headers={"Authorization": f"Bearer {user['access_token']}"},
            timeout=60,
            limits=httpx.Limits(max_connections=4),
        )
        for user in users
    ]

    def create(number: int) -> tuple[int, int, int]:
        owner = number % len(users)
        url = f"/api/{users[owner]['user']['id']}/tasks"
        response = clients[owner].post(
            url, json={"title": f"task {number}", "tags": ["load"]}, headers={"X-Request-ID": f"load-{number}"}
        )
        assert response.status_code == 201, response.text
        return owner, response.json()["id"], response.json()["user_id"]

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            created = list(pool.map(create, range(200)))
        listings = [
            client.get(f"/api/{user['user']['id']}/tasks", params={"tag": "load", "limit": 100})
            for client, user in zip(clients, users)
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
