"""A real `uvicorn main:app` under load and abuse: a burst of simultaneous clients, and one
address that tries to take every password hash for itself.

Every request has a timeout, every loop a bound, so a server that stalls fails the test
instead of hanging it. All load goes to the loopback interface.
"""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from conftest import PASSWORD
from live_server import LiveServer

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


def test_150_clients_at_once_get_no_5xx_and_health_stays_fast(tmp_path):
    """Each client opens its own connection and, at the same moment as all the others,
    lists its tasks and reads /api/auth/me. More requests arrive at once than the server
    has threads and pooled connections, so most of them wait: none may fail or stall."""
    with LiveServer(tmp_path) as server:
        with httpx2.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            accounts = [sign_up(http, f"burst{number}@example.com") for number in range(BURST_ACCOUNTS)]
        everyone_ready = threading.Barrier(BURST_CLIENTS)
        limits = httpx2.Limits(max_connections=BURST_CLIENTS, max_keepalive_connections=BURST_CLIENTS)
        probe = HealthProbe(server.url)

        def one_client(number: int) -> list[tuple[str, int, float]]:
            user_id, headers = accounts[number % BURST_ACCOUNTS]
            answers = []
            everyone_ready.wait(timeout=REQUEST_TIMEOUT_SECONDS)
            for path in (f"/api/{user_id}/tasks", "/api/auth/me"):
                started = time.monotonic()
                response = shared.get(path, headers=headers)
                answers.append((path, response.status_code, time.monotonic() - started))
                if response.status_code == 200:
                    body = response.json()
                    assert body == [] if path.endswith("/tasks") else body["id"] == user_id, response.text
            return answers

        with httpx2.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as shared:
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
