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
from limits import TOO_MANY_AUTH_REQUESTS
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
            attacker_accounts = [sign_up(attacker, f"attacker{number}@example.com") for number in range(ATTACKER_SIGNUPS)]
        victims = {}
        for address in VICTIMS:
            with from_address(server, address) as victim:
                victims[address] = (f"victim-{address}@example.com", sign_up(victim, f"victim-{address}@example.com")[0])
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
