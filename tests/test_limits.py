"""What one client or account can cost, through HTTP: failed logins per (email, address),
auth requests per address, and the bounded pool of password hashing (503 when full,
fair between addresses).

conftest turns the abuse limits off for the whole suite; the tests here put theirs in
force by replacing the settings limits.py reads, as the clock is injected.
"""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import httpx2
import pytest
from fastapi.testclient import TestClient
from helpers import INCORRECT_PASSWORD, INVALID_TOKEN, LOGIN_FAILED, NEW_PASSWORD, WRONG, LiveServer
from sqlmodel import Session, func, select

import auth
import limits
from config import Settings, settings
from limits import TOO_MANY_AUTH_REQUESTS
from main import app
from models import RateLimitEvent, User

TOO_MANY_FAILURES = {"detail": "Too many failed logins for this email; try again later"}
TOO_MANY_REQUESTS = {"detail": TOO_MANY_AUTH_REQUESTS}
HASHING_BUSY = {"detail": "Too many password checks in progress; try again shortly"}


@pytest.fixture
def set_limits(monkeypatch):
    """Put limits in force for this test (monkeypatch restores the settings)."""

    def put_in_force(login_failures=0, window_minutes=15, auth_requests_per_minute=0) -> None:
        in_force = replace(
            settings,
            login_failure_limit=login_failures,
            login_failure_window_minutes=window_minutes,
            auth_requests_per_minute=auth_requests_per_minute,
        )
        monkeypatch.setattr(limits, "settings", in_force)

    return put_in_force


@pytest.fixture
def fail_logins(login):
    """fail_logins(email, times): that many failed logins, each a plain 401."""

    def fail(email: str, times: int) -> None:
        for _ in range(times):
            response = login(email, WRONG)
            assert response.status_code == 401, response.text
            assert response.json() == LOGIN_FAILED

    return fail


def assert_locked(response, retry_after, body=TOO_MANY_FAILURES):
    assert response.status_code == 429, response.text
    assert response.json() == body
    assert response.headers["Retry-After"] == str(retry_after)


def assert_logged_in(response, account) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == account.id


def other_address(client_address):
    """A client at another socket address, sharing the app and its test database."""
    return TestClient(app, client=(client_address, 40000))


def login_from(client_address, email, password):
    return other_address(client_address).post(
        "/api/auth/login", json={"email": email, "password": password}
    )


def count_rows(engine, table) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


# --- configuration ---


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (5, 15, 20)),  # the defaults
        (
            {
                "LOGIN_FAILURE_LIMIT": "3",
                "LOGIN_FAILURE_WINDOW_MINUTES": "7",
                "AUTH_REQUESTS_PER_MINUTE": "0",
            },
            (3, 7, 0),
        ),
    ],
)
def test_limit_settings_have_defaults_and_come_from_the_environment(monkeypatch, env, expected):
    for name in ("LOGIN_FAILURE_LIMIT", "LOGIN_FAILURE_WINDOW_MINUTES", "AUTH_REQUESTS_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configured = Settings()
    limits = (configured.login_failure_limit, configured.login_failure_window_minutes)
    assert (*limits, configured.auth_requests_per_minute) == expected


def test_a_negative_limit_stops_start_up(monkeypatch):
    monkeypatch.setenv("LOGIN_FAILURE_LIMIT", "-1")
    with pytest.raises(SystemExit, match="LOGIN_FAILURE_LIMIT must be between 0"):
        Settings()


def test_the_suite_runs_with_the_limits_off():
    assert (settings.login_failure_limit, settings.auth_requests_per_minute) == (0, 0)


# --- failed logins per (email, client address) ---


def test_sixth_login_after_five_failures_is_429_with_retry_after(
    clock, alice, login, fail_logins, set_limits
):
    set_limits(login_failures=5, window_minutes=15)
    fail_logins(alice.email, 5)
    assert_locked(login(alice.email, WRONG), retry_after=15 * 60)


def test_locked_pair_gets_429_even_with_the_right_password(
    clock, alice, password, login, form_login, fail_logins, set_limits
):
    set_limits(login_failures=5)
    fail_logins(alice.email, 5)
    clock.advance(minutes=10)
    assert_locked(login(alice.email, password), retry_after=5 * 60)
    assert_locked(form_login(alice.email, password), retry_after=5 * 60)


def test_unknown_email_is_limited_like_a_known_one(clock, login, fail_logins, set_limits):
    set_limits(login_failures=2)
    fail_logins("nobody@example.com", 2)
    assert_locked(login("nobody@example.com", WRONG), retry_after=15 * 60)


def test_the_failure_window_slides(clock, alice, password, login, fail_logins, set_limits):
    set_limits(login_failures=3, window_minutes=15)
    fail_logins(alice.email, 1)  # at 0:00
    clock.advance(minutes=5)
    fail_logins(alice.email, 2)  # at 0:05
    clock.advance(minutes=9)
    assert_locked(login(alice.email, password), retry_after=60)  # at 0:14

    clock.advance(minutes=1)  # 0:15: the first failure has left the window, the others not
    fail_logins(alice.email, 1)
    assert_locked(login(alice.email, password), retry_after=5 * 60)

    clock.advance(minutes=5)  # 0:20: both 0:05 failures have left the window
    response = login(alice.email, password)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == alice.email


def test_retry_after_counts_up_to_the_next_whole_second(
    clock, alice, password, login, fail_logins, set_limits
):
    set_limits(login_failures=1, window_minutes=1)
    fail_logins(alice.email, 1)
    clock.advance(seconds=59.5)
    assert_locked(login(alice.email, password), retry_after=1)


def test_successful_login_clears_the_failures(
    clock, alice, password, login, fail_logins, set_limits
):
    set_limits(login_failures=5)
    fail_logins(alice.email, 4)
    assert_logged_in(login(alice.email, password), alice)
    fail_logins(alice.email, 5)  # a fresh count: five more before the lock
    assert_locked(login(alice.email, WRONG), retry_after=15 * 60)


def test_json_and_form_logins_share_one_count(
    clock, alice, password, login, form_login, fail_logins, set_limits
):
    set_limits(login_failures=4)
    fail_logins(alice.email.upper(), 2)  # emails compare case-insensitively
    for _ in range(2):
        response = form_login(alice.email, WRONG)
        assert response.status_code == 401, response.text
        assert response.json() == LOGIN_FAILED
    assert_locked(form_login(alice.email, password), retry_after=15 * 60)
    assert_locked(login(alice.email, password), retry_after=15 * 60)


def test_the_lock_is_per_email_and_client_address(
    clock, alice, bob, password, login, fail_logins, set_limits
):
    set_limits(login_failures=2)
    fail_logins(alice.email, 2)
    assert_locked(login(alice.email, password), retry_after=15 * 60)
    assert_logged_in(login_from("203.0.113.9", alice.email, password), alice)
    assert_logged_in(login(bob.email, password), bob)  # same address, another email


def test_concurrent_guesses_reach_bcrypt_at_most_limit_times(alice, login, set_limits):
    set_limits(login_failures=5)
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda _: login(alice.email, WRONG), range(24)))
    assert sorted(response.status_code for response in responses) == [401] * 5 + [429] * 19
    assert {response.json()["detail"] for response in responses} == {
        LOGIN_FAILED["detail"],
        TOO_MANY_FAILURES["detail"],
    }


def test_login_failure_limit_zero_turns_it_off(
    clock, alice, password, login, fail_logins, set_limits
):
    set_limits(login_failures=0, auth_requests_per_minute=0)
    fail_logins(alice.email, 30)
    assert_logged_in(login(alice.email, password), alice)


def test_old_login_failures_are_pruned_after_the_next_successful_auth_request(
    engine, clock, alice, password, login, fail_logins, set_limits
):
    set_limits(login_failures=5, window_minutes=15)
    for number in range(10):
        fail_logins(f"guess{number}@example.com", 3)
    assert count_rows(engine, RateLimitEvent) == 30

    clock.advance(minutes=15)
    fail_logins(alice.email, 1)  # a refused request answers at once, pruning nothing
    assert count_rows(engine, RateLimitEvent) == 31
    assert_logged_in(login(alice.email, password), alice)
    assert count_rows(engine, RateLimitEvent) == 0  # the login cleared alice's own failure


# A password check on a route that holds a token counts as a failed login too.


def test_a_stolen_token_cannot_guess_the_password_either(
    clock, alice, password, login, me, change_password, delete_me, fail_logins, set_limits
):
    set_limits(login_failures=3)
    wrong_change = change_password(alice.token, WRONG, NEW_PASSWORD)
    assert (wrong_change.status_code, wrong_change.json()) == (401, INCORRECT_PASSWORD)
    wrong_delete = delete_me(alice.token, WRONG)
    assert (wrong_delete.status_code, wrong_delete.json()) == (401, INCORRECT_PASSWORD)
    fail_logins(alice.email, 1)

    assert_locked(change_password(alice.token, password, NEW_PASSWORD), retry_after=15 * 60)
    assert_locked(delete_me(alice.token, password), retry_after=15 * 60)
    assert_locked(login(alice.email, password), retry_after=15 * 60)
    mine = me(alice.token)  # locked out of guessing, not logged out
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


def test_a_right_password_on_a_token_route_clears_the_failures(
    clock, alice, password, login, change_password, fail_logins, set_limits
):
    set_limits(login_failures=2)
    fail_logins(alice.email, 1)
    changed = change_password(alice.token, password, NEW_PASSWORD)
    assert (changed.status_code, changed.content) == (204, b"")
    fail_logins(alice.email, 2)  # a fresh count: two more before the lock
    assert_locked(login(alice.email, NEW_PASSWORD), retry_after=15 * 60)


# --- signups, logins and password checks per client address ---


def test_more_than_20_auth_requests_a_minute_from_one_address_is_429(
    client, clock, alice, password, new_account, login, form_login, set_limits
):
    set_limits(auth_requests_per_minute=20)
    for number in range(10):
        assert new_account(f"user{number}@example.com").email == f"user{number}@example.com"
        clock.advance(seconds=1)
    for _ in range(5):
        assert_logged_in(login(alice.email, password), alice)
        assert_logged_in(form_login(alice.email, password), alice)
    clock.advance(seconds=30)  # 0:40; the first signup, at 0:00, leaves the window at 1:00

    late = {"email": "late@example.com", "password": password}
    too_many = [
        client.post("/api/auth/signup", json=late),
        login(alice.email, password),
        form_login(alice.email, password),
    ]
    for response in too_many:
        assert_locked(response, retry_after=20, body=TOO_MANY_REQUESTS)

    other = other_address("198.51.100.7").post("/api/auth/signup", json=late)
    assert other.status_code == 201, other.text
    assert other.json()["user"]["email"] == "late@example.com"


def test_the_auth_request_window_slides(clock, alice, password, login, set_limits):
    set_limits(auth_requests_per_minute=2)
    assert_logged_in(login(alice.email, password), alice)  # at 0:00
    clock.advance(seconds=30)
    assert_logged_in(login(alice.email, password), alice)  # at 0:30
    assert_locked(login(alice.email, password), retry_after=30, body=TOO_MANY_REQUESTS)
    clock.advance(seconds=30)
    assert_logged_in(
        login(alice.email, password), alice
    )  # at 1:00 the first one has left the window
    assert_locked(login(alice.email, password), retry_after=30, body=TOO_MANY_REQUESTS)


def test_refused_auth_requests_do_not_extend_the_block(clock, alice, password, login, set_limits):
    set_limits(auth_requests_per_minute=1)
    assert_logged_in(login(alice.email, password), alice)  # at 0:00
    for retry_after in (50, 40, 30, 20, 10):
        clock.advance(seconds=10)
        assert_locked(login(alice.email, password), retry_after=retry_after, body=TOO_MANY_REQUESTS)
    clock.advance(seconds=10)
    assert_logged_in(login(alice.email, password), alice)


def test_password_change_and_account_deletion_count_as_auth_requests(
    clock, alice, password, login, change_password, delete_me, set_limits
):
    set_limits(auth_requests_per_minute=3)
    assert_logged_in(login(alice.email, password), alice)
    wrong_change = change_password(alice.token, WRONG, NEW_PASSWORD)
    assert (wrong_change.status_code, wrong_change.json()) == (401, INCORRECT_PASSWORD)
    wrong_delete = delete_me(alice.token, WRONG)
    assert (wrong_delete.status_code, wrong_delete.json()) == (401, INCORRECT_PASSWORD)
    assert_locked(
        change_password(alice.token, password, NEW_PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS
    )
    assert_locked(delete_me(alice.token, password), retry_after=60, body=TOO_MANY_REQUESTS)
    assert_locked(login(alice.email, password), retry_after=60, body=TOO_MANY_REQUESTS)


def test_a_password_route_with_a_bad_token_is_401_and_not_counted(
    clock, alice, password, login, change_password, set_limits
):
    set_limits(auth_requests_per_minute=1)
    for _ in range(3):
        response = change_password("not-a-token", password, NEW_PASSWORD)
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert_logged_in(login(alice.email, password), alice)


def test_auth_requests_per_minute_zero_turns_it_off(clock, new_account, set_limits):
    set_limits(auth_requests_per_minute=0)
    for number in range(25):
        assert new_account(f"many{number}@example.com").email == f"many{number}@example.com"


def test_old_auth_requests_are_pruned(engine, clock, alice, password, login, set_limits):
    set_limits(auth_requests_per_minute=20)
    for number in range(5):
        assert_logged_in(login_from(f"192.0.2.{number}", alice.email, password), alice)
    clock.advance(minutes=1)
    assert_logged_in(login(alice.email, password), alice)
    assert count_rows(engine, RateLimitEvent) == 1


def test_ipv6_clients_are_counted_by_their_64_network(clock, alice, password, set_limits):
    set_limits(auth_requests_per_minute=2)
    one_network = ["2001:db8:0:1::1", "2001:db8:0:1:ffff:ffff:ffff:fffe"]
    for same_network in one_network:
        assert_logged_in(login_from(same_network, alice.email, password), alice)
    for same_network in one_network:
        assert_locked(
            login_from(same_network, alice.email, password), retry_after=60, body=TOO_MANY_REQUESTS
        )
    assert_logged_in(login_from("2001:db8:0:2::1", alice.email, password), alice)


def test_ipv4_clients_on_an_ipv6_socket_are_still_counted_per_address(
    clock, alice, password, set_limits
):
    """A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d, all in one /64."""
    set_limits(auth_requests_per_minute=1)
    assert_logged_in(login_from("::ffff:192.0.2.1", alice.email, password), alice)
    assert_locked(
        login_from("192.0.2.1", alice.email, password), retry_after=60, body=TOO_MANY_REQUESTS
    )
    assert_logged_in(login_from("::ffff:192.0.2.2", alice.email, password), alice)


# --- the bounded pool of password hashing ---


@contextmanager
def hashing_slots_taken():
    """Every hashing slot taken, as by a burst of logins still running or waiting."""
    for _ in range(auth.MAX_HASHES_IN_FLIGHT):
        assert auth.hashing_slots.acquire(blocking=False)
    try:
        yield
    finally:
        for _ in range(auth.MAX_HASHES_IN_FLIGHT):
            auth.hashing_slots.release()


@pytest.fixture
def hashing_full(client):
    with hashing_slots_taken():
        yield


def assert_hashing_busy(response):
    assert response.status_code == 503, response.text
    assert response.json() == HASHING_BUSY
    assert response.headers["Retry-After"] == "1"


def test_routes_that_hash_are_503_while_hashing_is_full_and_change_nothing(
    client, engine, alice, password, login, form_login, me, change_password, delete_me, hashing_full
):
    hashing_routes = {
        "signup": client.post(
            "/api/auth/signup", json={"email": "new@example.com", "password": password}
        ),
        "login": login(alice.email, password),
        "login of an unknown email": login("nobody@example.com", password),
        "token form": form_login(alice.email, password),
        "password change": change_password(alice.token, password, NEW_PASSWORD),
        "delete me": delete_me(alice.token, password),
    }
    for route, response in hashing_routes.items():
        assert response.status_code == 503, route
        assert_hashing_busy(response)
    assert count_rows(engine, User) == 1
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


def test_other_requests_are_served_while_hashing_is_full(client, alice, me, hashing_full):
    created = client.post(alice.tasks_url, headers=alice.headers, json={"title": "still here"})
    assert created.status_code == 201, created.text
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.status_code == 200, listing.text
    assert [task["title"] for task in listing.json()] == ["still here"]
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


def test_a_password_check_refused_for_hashing_is_not_a_failed_login(
    clock, alice, password, login, form_login, change_password, set_limits
):
    set_limits(login_failures=1)
    with hashing_slots_taken():
        assert_hashing_busy(login(alice.email, password))
        assert_hashing_busy(form_login(alice.email, password))
        assert_hashing_busy(change_password(alice.token, password, NEW_PASSWORD))
    assert_logged_in(login(alice.email, password), alice)


def test_requests_refused_for_lack_of_hashing_capacity_still_count(
    client, clock, alice, password, login, change_password, set_limits
):
    """Else one address could retry its 503s for free and keep every hashing slot taken."""
    set_limits(auth_requests_per_minute=3)
    with hashing_slots_taken():
        assert_hashing_busy(login(alice.email, password))
        assert_hashing_busy(change_password(alice.token, password, NEW_PASSWORD))
        assert_hashing_busy(
            client.post("/api/auth/signup", json={"email": "new@example.com", "password": password})
        )
    assert_locked(login(alice.email, password), retry_after=60, body=TOO_MANY_REQUESTS)


def test_every_hash_gives_its_slot_back(alice, password, login, change_password):
    """A slot kept after any of these would leave the later ones 503."""
    for _ in range(auth.MAX_HASHES_IN_FLIGHT + 2):
        assert_logged_in(login(alice.email, password), alice)
        wrong = login(alice.email, WRONG)
        assert (wrong.status_code, wrong.json()) == (401, LOGIN_FAILED)
    response = change_password(alice.token, password, NEW_PASSWORD)
    assert (response.status_code, response.content) == (204, b"")


# --- fair hashing: one address against everyone else's logins, at the default 12 bcrypt rounds ---

REQUEST_TIMEOUT_SECONDS = 60  # longer than the slowest answer a test accepts, so it measures it
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


def test_one_address_retrying_password_checks_cannot_starve_other_logins(
    tmp_path, password, new_account
):
    """From one address: 20 signups, then 12 threads that send a password change with a
    wrong current password, over and over, and retry every 503 at once. Meanwhile other
    addresses log in: at least 90% of them get their token at the first try."""
    with LiveServer(tmp_path, env={"BCRYPT_ROUNDS": "12"}) as server:
        with from_address(server, ATTACKER) as attacker:
            attackers = [
                new_account(f"attacker{number}@example.com", via=attacker)
                for number in range(ATTACKER_SIGNUPS)
            ]
        victims = {}
        for address in VICTIMS:
            with from_address(server, address) as victim:
                victims[address] = new_account(f"victim-{address}@example.com", via=victim)
        victims_done = threading.Event()
        attack_started = threading.Barrier(ATTACK_THREADS + 1)

        def attack(number: int) -> Counter:
            """Retries a 503 at once, and takes the next account on every try, so no one
            account's failed-login limit stops it: only its address's limit does."""
            body = {"current_password": WRONG, "new_password": NEW_PASSWORD}
            answers = Counter()
            with from_address(server, ATTACKER) as attacker:
                attack_started.wait(timeout=REQUEST_TIMEOUT_SECONDS)
                for attempt in range(MAX_ATTACK_REQUESTS_PER_THREAD):
                    account = attackers[(number + attempt) % ATTACKER_SIGNUPS]
                    response = attacker.put(
                        "/api/auth/password", json=body, headers=account.headers
                    )
                    answers[response.status_code] += 1
                    if victims_done.is_set() or response.json() == TOO_MANY_REQUESTS:
                        break
            return answers

        def log_in_repeatedly(address: str) -> list[int]:
            account = victims[address]
            statuses = []
            with from_address(server, address) as victim:
                for _ in range(LOGINS_PER_VICTIM):
                    response = victim.post(
                        "/api/auth/login", json={"email": account.email, "password": password}
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        assert response.json()["user"]["id"] == account.id
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
    assert (
        attack_answers[429] > 0 and attack_answers[401] + attack_answers[503] <= ATTACKER_SIGNUPS
    ), attack_answers
    succeeded = victim_statuses.count(200)
    assert len(victim_statuses) == len(VICTIMS) * LOGINS_PER_VICTIM
    assert succeeded >= 0.9 * len(victim_statuses), (
        f"logins from other addresses: {Counter(victim_statuses)}"
    )
    assert "Traceback" not in log
