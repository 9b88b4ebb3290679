"""Abuse limits on signup and login, and token revocation
(logout, password change, account deletion), driven through HTTP.

conftest turns the limits off for the whole suite; the tests here set the limits they
need through the configured_limits dependency, the same way the clock is injected, so
nothing depends on environment variables read at import time.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

import auth
import db
import routes.auth
from config import load_settings, settings
from conftest import PASSWORD, Account, empty_tables, sign_up
from limits import AbuseLimits, configured_limits
from main import app
from models import RateLimitEvent, RevokedToken, Task, TaskTag, User, utc_now

WRONG = "not the password"
NEW_PASSWORD = "a brand new passphrase"
INVALID_TOKEN = {"detail": "Could not validate credentials"}
LOGIN_FAILED = {"detail": "Incorrect email or password"}
TOO_MANY_FAILURES = {"detail": "Too many failed logins for this email; try again later"}
TOO_MANY_REQUESTS = {"detail": "Too many signups, logins, refreshes and password checks from your address; try again later"}


@pytest.fixture
def set_limits(client):
    """Put limits in force for this test (the client fixture clears the override)."""

    def put_in_force(login_failures=0, window_minutes=15, auth_requests_per_minute=0) -> None:
        limits = AbuseLimits(login_failures, timedelta(minutes=window_minutes), auth_requests_per_minute)
        app.dependency_overrides[configured_limits] = lambda: limits

    return put_in_force


def login(client, email, password):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def form_login(client, email, password):
    return client.post("/api/auth/token", data={"username": email, "password": password})


def fail_logins(client, email, times):
    for _ in range(times):
        response = login(client, email, WRONG)
        assert response.status_code == 401, response.text
        assert response.json() == LOGIN_FAILED


def assert_locked(response, retry_after, body=TOO_MANY_FAILURES):
    assert response.status_code == 429, response.text
    assert response.json() == body
    assert response.headers["Retry-After"] == str(retry_after)


def me(client, token):
    return client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def other_address(client_address):
    """A client at another socket address, sharing the app and its test database."""
    return TestClient(app, client=(client_address, 40000))


# --- configuration ---


def test_limits_default_to_5_failures_in_15_minutes_and_20_auth_requests(monkeypatch):
    for name in ("LOGIN_FAILURE_LIMIT", "LOGIN_FAILURE_WINDOW_MINUTES", "AUTH_REQUESTS_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    defaults = load_settings()
    assert (defaults.login_failure_limit, defaults.login_failure_window_minutes) == (5, 15)
    assert defaults.auth_requests_per_minute == 20


def test_limit_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOGIN_FAILURE_LIMIT", "3")
    monkeypatch.setenv("LOGIN_FAILURE_WINDOW_MINUTES", "7")
    monkeypatch.setenv("AUTH_REQUESTS_PER_MINUTE", "0")
    configured = load_settings()
    assert (configured.login_failure_limit, configured.login_failure_window_minutes) == (3, 7)
    assert configured.auth_requests_per_minute == 0


def test_a_negative_limit_stops_start_up(monkeypatch):
    monkeypatch.setenv("LOGIN_FAILURE_LIMIT", "-1")
    with pytest.raises(SystemExit, match="LOGIN_FAILURE_LIMIT must be between 0"):
        load_settings()


def test_the_suite_runs_with_the_limits_off():
    assert (settings.login_failure_limit, settings.auth_requests_per_minute) == (0, 0)


# --- failed logins per (email, client address) ---


def test_sixth_login_after_five_failures_is_429_with_retry_after(client, clock, alice, set_limits):
    set_limits(login_failures=5, window_minutes=15)
    fail_logins(client, alice.email, 5)
    assert_locked(login(client, alice.email, WRONG), retry_after=15 * 60)


def test_locked_pair_gets_429_even_with_the_right_password(client, clock, alice, set_limits):
    set_limits(login_failures=5)
    fail_logins(client, alice.email, 5)
    clock.advance(minutes=10)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=5 * 60)
    assert_locked(form_login(client, alice.email, PASSWORD), retry_after=5 * 60)


def test_unknown_email_is_limited_like_a_known_one(client, clock, set_limits):
    set_limits(login_failures=2)
    fail_logins(client, "nobody@example.com", 2)
    assert_locked(login(client, "nobody@example.com", WRONG), retry_after=15 * 60)


def test_the_failure_window_slides(client, clock, alice, set_limits):
    set_limits(login_failures=3, window_minutes=15)
    fail_logins(client, alice.email, 1)  # at 0:00
    clock.advance(minutes=5)
    fail_logins(client, alice.email, 2)  # at 0:05
    clock.advance(minutes=9)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=60)  # at 0:14

    clock.advance(minutes=1)  # 0:15: the first failure has left the window, the others not
    fail_logins(client, alice.email, 1)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=5 * 60)

    clock.advance(minutes=5)  # 0:20: both 0:05 failures have left the window
    response = login(client, alice.email, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == alice.email


def test_retry_after_counts_up_to_the_next_whole_second(client, clock, alice, set_limits):
    set_limits(login_failures=1, window_minutes=1)
    fail_logins(client, alice.email, 1)
    clock.advance(seconds=59.5)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=1)


def test_successful_login_clears_the_failures(client, clock, alice, set_limits):
    set_limits(login_failures=5)
    fail_logins(client, alice.email, 4)
    response = login(client, alice.email, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == alice.id
    fail_logins(client, alice.email, 5)  # a fresh count: five more before the lock
    assert_locked(login(client, alice.email, WRONG), retry_after=15 * 60)


def test_json_and_form_logins_share_one_count(client, clock, alice, set_limits):
    set_limits(login_failures=4)
    fail_logins(client, alice.email.upper(), 2)  # emails compare case-insensitively
    for _ in range(2):
        response = form_login(client, alice.email, WRONG)
        assert response.status_code == 401, response.text
        assert response.json() == LOGIN_FAILED
    assert_locked(form_login(client, alice.email, PASSWORD), retry_after=15 * 60)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=15 * 60)


@pytest.mark.parametrize("padded", [" alice@example.com", "alice@example.com ", "\tALICE@example.com "])
def test_form_login_ignores_whitespace_around_the_email_like_json_login(client, alice, padded):
    for response in (form_login(client, padded, PASSWORD), login(client, padded, PASSWORD)):
        assert response.status_code == 200, response.text
        assert response.json()["user"]["id"] == alice.id


def test_the_lock_is_per_email_and_client_address(client, clock, alice, bob, set_limits):
    set_limits(login_failures=2)
    fail_logins(client, alice.email, 2)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=15 * 60)

    other = login(other_address("203.0.113.9"), alice.email, PASSWORD)
    assert other.status_code == 200, other.text
    assert other.json()["user"]["id"] == alice.id
    same_address_other_email = login(client, bob.email, PASSWORD)
    assert same_address_other_email.status_code == 200, same_address_other_email.text
    assert same_address_other_email.json()["user"]["id"] == bob.id


def test_concurrent_guesses_reach_bcrypt_at_most_limit_times(client, alice, set_limits):
    set_limits(login_failures=5)
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda _: login(client, alice.email, WRONG), range(24)))
    assert sorted(response.status_code for response in responses) == [401] * 5 + [429] * 19
    assert {response.json()["detail"] for response in responses} == {
        LOGIN_FAILED["detail"],
        TOO_MANY_FAILURES["detail"],
    }


def test_login_failure_limit_zero_turns_it_off(client, clock, alice, set_limits):
    set_limits(login_failures=0, auth_requests_per_minute=0)
    fail_logins(client, alice.email, 30)
    response = login(client, alice.email, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == alice.id


def test_old_login_failures_are_pruned(client, engine, clock, alice, set_limits):
    set_limits(login_failures=5, window_minutes=15)
    for number in range(10):
        fail_logins(client, f"guess{number}@example.com", 3)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RateLimitEvent)).one() == 30

    clock.advance(minutes=15)
    fail_logins(client, alice.email, 1)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RateLimitEvent)).one() == 1


# --- signups and logins per client address ---


def test_more_than_20_auth_requests_a_minute_from_one_address_is_429(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=20)
    for number in range(10):
        assert sign_up(client, f"user{number}@example.com").email == f"user{number}@example.com"
        clock.advance(seconds=1)
    for _ in range(5):
        assert login(client, alice.email, PASSWORD).status_code == 200
        assert form_login(client, alice.email, PASSWORD).status_code == 200
    clock.advance(seconds=30)  # 0:40; the first signup, at 0:00, leaves the window at 1:00

    too_many = [
        client.post("/api/auth/signup", json={"email": "late@example.com", "password": PASSWORD}),
        login(client, alice.email, PASSWORD),
        form_login(client, alice.email, PASSWORD),
    ]
    for response in too_many:
        assert_locked(response, retry_after=20, body=TOO_MANY_REQUESTS)

    other = other_address("198.51.100.7").post(
        "/api/auth/signup", json={"email": "late@example.com", "password": PASSWORD}
    )
    assert other.status_code == 201, other.text
    assert other.json()["user"]["email"] == "late@example.com"


def test_the_auth_request_window_slides(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=2)
    assert login(client, alice.email, PASSWORD).status_code == 200  # at 0:00
    clock.advance(seconds=30)
    assert login(client, alice.email, PASSWORD).status_code == 200  # at 0:30
    assert_locked(login(client, alice.email, PASSWORD), retry_after=30, body=TOO_MANY_REQUESTS)
    clock.advance(seconds=30)
    response = login(client, alice.email, PASSWORD)  # at 1:00 the first one has left the window
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == alice.id
    assert_locked(login(client, alice.email, PASSWORD), retry_after=30, body=TOO_MANY_REQUESTS)


def test_refused_auth_requests_do_not_extend_the_block(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=1)
    assert login(client, alice.email, PASSWORD).status_code == 200  # at 0:00
    for retry_after in (50, 40, 30, 20, 10):
        clock.advance(seconds=10)
        assert_locked(login(client, alice.email, PASSWORD), retry_after=retry_after, body=TOO_MANY_REQUESTS)
    clock.advance(seconds=10)
    response = login(client, alice.email, PASSWORD)
    assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)


def test_password_change_and_account_deletion_count_as_auth_requests(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=3)
    assert login(client, alice.email, PASSWORD).status_code == 200
    assert change_password(client, alice.token, WRONG, NEW_PASSWORD).status_code == 401
    assert delete_me(client, alice.token, WRONG).status_code == 401
    assert_locked(change_password(client, alice.token, PASSWORD, NEW_PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)
    assert_locked(delete_me(client, alice.token, PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)


def test_a_password_route_with_a_bad_token_is_401_and_not_counted(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=1)
    for _ in range(3):
        response = change_password(client, "not-a-token", PASSWORD, NEW_PASSWORD)
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    response = login(client, alice.email, PASSWORD)
    assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)


def test_requests_refused_for_lack_of_hashing_capacity_still_count(client, clock, alice, set_limits):
    """Else one address could retry its 503s for free and keep every hashing slot taken."""
    set_limits(auth_requests_per_minute=3)
    with hashing_slots_taken():
        assert_hashing_busy(login(client, alice.email, PASSWORD))
        assert_hashing_busy(change_password(client, alice.token, PASSWORD, NEW_PASSWORD))
        assert_hashing_busy(client.post("/api/auth/signup", json={"email": "new@example.com", "password": PASSWORD}))
    assert_locked(login(client, alice.email, PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)


def test_auth_requests_per_minute_zero_turns_it_off(client, clock, set_limits):
    set_limits(auth_requests_per_minute=0)
    for number in range(25):
        assert sign_up(client, f"many{number}@example.com").email == f"many{number}@example.com"


def test_old_auth_requests_are_pruned(client, engine, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=20)
    for number in range(5):
        assert login(other_address(f"192.0.2.{number}"), alice.email, PASSWORD).status_code == 200
    clock.advance(minutes=1)
    assert login(client, alice.email, PASSWORD).status_code == 200
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RateLimitEvent)).one() == 1


def test_ipv6_clients_are_counted_by_their_64_network(client, clock, alice, set_limits):
    set_limits(auth_requests_per_minute=2)
    one_network = [other_address("2001:db8:0:1::1"), other_address("2001:db8:0:1:ffff:ffff:ffff:fffe")]
    for same_network in one_network:
        assert login(same_network, alice.email, PASSWORD).status_code == 200
    for same_network in one_network:
        assert_locked(login(same_network, alice.email, PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)

    next_network = login(other_address("2001:db8:0:2::1"), alice.email, PASSWORD)
    assert next_network.status_code == 200, next_network.text
    assert next_network.json()["user"]["id"] == alice.id


def test_ipv4_clients_on_an_ipv6_socket_are_still_counted_per_address(client, clock, alice, set_limits):
    """A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d, all in one /64."""
    set_limits(auth_requests_per_minute=1)
    assert login(other_address("::ffff:192.0.2.1"), alice.email, PASSWORD).status_code == 200
    assert_locked(login(other_address("192.0.2.1"), alice.email, PASSWORD), retry_after=60, body=TOO_MANY_REQUESTS)
    response = login(other_address("::ffff:192.0.2.2"), alice.email, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == alice.id


# --- logout ---


def test_logout_ends_only_the_presented_token(client, alice):
    second = login(client, alice.email, PASSWORD).json()["access_token"]
    response = client.post("/api/auth/logout", headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""

    assert me(client, alice.token).status_code == 401
    assert me(client, alice.token).json() == INVALID_TOKEN
    assert me(client, alice.token).headers["WWW-Authenticate"] == "Bearer"
    still_logged_in = me(client, second)
    assert still_logged_in.status_code == 200
    assert still_logged_in.json()["id"] == alice.id
    tasks = client.get(alice.tasks_url, headers=alice.headers)
    assert (tasks.status_code, tasks.json()) == (401, INVALID_TOKEN)


def test_logging_out_twice_is_401(client, alice):
    assert client.post("/api/auth/logout", headers=alice.headers).status_code == 204
    again = client.post("/api/auth/logout", headers=alice.headers)
    assert (again.status_code, again.json()) == (401, INVALID_TOKEN)


def test_logout_needs_a_token(client):
    response = client.post("/api/auth/logout")
    assert (response.status_code, response.json()) == (401, {"detail": "Not authenticated"})


def account_claim(account: Account) -> int:
    return jwt.decode(account.token, options={"verify_signature": False})["acct"]


def family_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["fam"]


def complete_claims(account: Account) -> dict:
    """Every claim, in the account's own session (its family must exist)."""
    now = utc_now()
    return {
        "sub": str(account.id), "iat": now, "exp": now + timedelta(minutes=5), "jti": "forged", "gen": 0,
        "acct": account_claim(account), "fam": family_of(account.token),
    }  # fmt: skip


def test_a_token_with_every_claim_and_our_secret_works(client, alice):
    """The control for the test below: only the missing claim makes the difference."""
    token = jwt.encode(complete_claims(alice), settings.jwt_secret, algorithm="HS256")
    assert (me(client, token).status_code, me(client, token).json()["id"]) == (200, alice.id)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "jti", "gen"])
def test_a_token_missing_a_claim_is_401(client, alice, missing):
    claims = {name: value for name, value in complete_claims(alice).items() if name != missing}
    token = jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
    response = me(client, token)
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("generation", [1, "0", True, None])
def test_a_token_of_another_generation_is_401(client, alice, generation):
    token = jwt.encode({**complete_claims(alice), "gen": generation}, settings.jwt_secret, algorithm="HS256")
    assert (me(client, token).status_code, me(client, token).json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("sub", [" 2 ", "+2", "0_2", "\u0662", "02", "2.0", "2 ", "0x2"])
def test_a_user_id_in_any_but_canonical_decimal_form_is_401(client, alice, bob, sub):
    assert bob.id == 2
    control = jwt.encode({**complete_claims(bob), "sub": "2"}, settings.jwt_secret, algorithm="HS256")
    assert (me(client, control).status_code, me(client, control).json()["id"]) == (200, 2)
    token = jwt.encode({**complete_claims(bob), "sub": sub}, settings.jwt_secret, algorithm="HS256")
    response = me(client, token)
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("jti", ["\ud800", "caf\u00e9", "has space", "x" * 65, "", 5, None])
def test_a_token_id_that_is_not_a_plain_ascii_token_is_401(client, alice, jti):
    token = jwt.encode({**complete_claims(alice), "jti": jti}, settings.jwt_secret, algorithm="HS256")
    for response in (me(client, token), client.post("/api/auth/logout", headers=bearer(token))):
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.fixture
def wipe_database(engine, tmp_path, monkeypatch):
    """Replace the database with an empty one, keeping the JWT secret: a deleted todo.db,
    or PostgreSQL tables emptied, while .jwt_secret stays."""
    replacements = []

    def wipe() -> None:
        if engine.dialect.name == "postgresql":
            empty_tables(engine)  # ids start again from 1, as in a new database
            return
        fresh = db.make_engine(f"sqlite:///{tmp_path / 'wiped.db'}")
        db.migrate(fresh)
        monkeypatch.setattr(db, "engine", fresh)
        replacements.append(fresh)

    yield wipe
    for replacement in replacements:
        replacement.dispose()


def test_a_token_never_passes_to_a_new_account_with_the_same_id(client, alice, wipe_database):
    task = client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
    assert task.status_code == 201
    wipe_database()
    newcomer = sign_up(client, "newcomer@example.com")
    assert newcomer.id == alice.id == 1
    created = client.post(newcomer.tasks_url, json={"title": "mine"}, headers=newcomer.headers)
    assert created.status_code == 201
    task_url = f"{newcomer.tasks_url}/{created.json()['id']}"
    old = bearer(alice.token)
    requests = [
        ("GET", "/api/auth/me", None),
        ("POST", "/api/auth/logout", None),
        ("PUT", "/api/auth/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        ("DELETE", "/api/auth/me", {"password": PASSWORD}),
        ("GET", newcomer.tasks_url, None),
        ("POST", newcomer.tasks_url, {"title": "planted"}),
        ("GET", task_url, None),
        ("PUT", task_url, {"title": "changed"}),
        ("PATCH", task_url, {"title": "changed"}),
        ("PATCH", f"{task_url}/complete", None),
        ("DELETE", task_url, None),
    ]
    for method, url, body in requests:
        response = client.request(method, url, headers=old, json=body)
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN), (method, url)
    listing = client.get(newcomer.tasks_url, headers=newcomer.headers)
    assert listing.status_code == 200
    assert [(task["title"], task["completed"]) for task in listing.json()] == [("mine", False)]
    assert login(client, newcomer.email, PASSWORD).status_code == 200  # neither changed nor deleted


def test_a_token_issued_before_the_account_claim_existed_works_until_it_expires(client, clock, alice):
    claims = {name: value for name, value in complete_claims(alice).items() if name != "acct"}
    response = me(client, jwt.encode(claims, settings.jwt_secret, algorithm="HS256"))
    assert (response.status_code, response.json()["id"]) == (200, alice.id)
    expired = {**claims, "iat": utc_now() - timedelta(hours=2), "exp": utc_now() - timedelta(hours=1)}
    response = me(client, jwt.encode(expired, settings.jwt_secret, algorithm="HS256"))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("stamp", [1, "same", True, 1.5])
def test_a_token_with_another_account_stamp_is_401(client, alice, stamp):
    wrong = stamp if stamp != "same" else str(account_claim(alice))
    token = jwt.encode({**complete_claims(alice), "acct": wrong}, settings.jwt_secret, algorithm="HS256")
    assert (me(client, token).status_code, me(client, token).json()) == (401, INVALID_TOKEN)


def test_revoked_tokens_are_pruned_once_they_would_have_expired(client, engine, clock, alice):
    second_session = login(client, alice.email, PASSWORD).json()["access_token"]
    real_now = utc_now()
    short_lived_claims = {
        "sub": str(alice.id),
        "iat": real_now,
        "exp": real_now + timedelta(minutes=10),
        "jti": "short-lived",
        "gen": 0,
        "acct": account_claim(alice),
        "fam": family_of(second_session),
    }
    short_lived = jwt.encode(short_lived_claims, settings.jwt_secret, algorithm="HS256")
    clock.now = real_now
    assert client.post("/api/auth/logout", headers=bearer(short_lived)).status_code == 204

    clock.now = real_now + timedelta(minutes=30)  # the short-lived token has expired by now
    assert client.post("/api/auth/logout", headers=alice.headers).status_code == 204
    with Session(engine) as session:
        remaining = session.exec(select(RevokedToken.jti)).all()
    assert remaining == [jwt.decode(alice.token, options={"verify_signature": False})["jti"]]
    assert (me(client, alice.token).status_code, me(client, alice.token).json()) == (401, INVALID_TOKEN)


# --- password change ---


def change_password(client, token, current, new):
    return client.put(
        "/api/auth/password",
        headers=bearer(token),
        json={"current_password": current, "new_password": new},
    )


def test_password_change_ends_every_older_token(client, alice):
    second = login(client, alice.email, PASSWORD).json()["access_token"]
    response = change_password(client, alice.token, PASSWORD, NEW_PASSWORD)
    assert response.status_code == 204
    assert response.content == b""

    for old_token in (alice.token, second):
        assert (me(client, old_token).status_code, me(client, old_token).json()) == (401, INVALID_TOKEN)
    assert (login(client, alice.email, PASSWORD).status_code, login(client, alice.email, PASSWORD).json()) == (
        401,
        LOGIN_FAILED,
    )
    fresh = login(client, alice.email, NEW_PASSWORD)
    assert fresh.status_code == 200, fresh.text
    mine = me(client, fresh.json()["access_token"])
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


def test_a_token_issued_in_the_same_second_as_the_change_tells_before_from_after(
    client, alice, monkeypatch
):
    one_second = utc_now().replace(microsecond=0)
    monkeypatch.setattr(routes.auth, "utc_now", lambda: one_second)  # every token gets this iat
    before = login(client, alice.email, PASSWORD).json()["access_token"]
    assert change_password(client, alice.token, PASSWORD, NEW_PASSWORD).status_code == 204
    after = login(client, alice.email, NEW_PASSWORD).json()["access_token"]

    def issued_at(token):
        return jwt.decode(token, options={"verify_signature": False})["iat"]

    assert issued_at(before) == issued_at(after)
    assert (me(client, before).status_code, me(client, before).json()) == (401, INVALID_TOKEN)
    assert (me(client, after).status_code, me(client, after).json()["id"]) == (200, alice.id)


def test_password_change_with_a_wrong_current_password_is_401(client, alice):
    response = change_password(client, alice.token, WRONG, NEW_PASSWORD)
    assert (response.status_code, response.json()) == (401, {"detail": "Incorrect password"})
    assert me(client, alice.token).status_code == 200
    assert login(client, alice.email, PASSWORD).status_code == 200
    assert login(client, alice.email, NEW_PASSWORD).status_code == 401


@pytest.mark.parametrize("new_password", ["short7!", "é" * 36 + "x"], ids=["7 bytes", "73 bytes"])
def test_new_password_follows_the_signup_rules(client, alice, new_password):
    response = change_password(client, alice.token, PASSWORD, new_password)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "new_password"]
    assert "Password must be 8 to 72 bytes in UTF-8" in error["msg"]
    assert new_password not in response.text
    assert me(client, alice.token).status_code == 200


def test_a_72_byte_new_password_is_accepted(client, alice):
    longest = "é" * 36
    assert change_password(client, alice.token, PASSWORD, longest).status_code == 204
    response = login(client, alice.email, longest)
    assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)


CONCURRENT_CHANGES = 8


def test_of_concurrent_password_changes_exactly_one_succeeds(client, alice, monkeypatch):
    # Every request has checked its token and the current password before any of them
    # writes: the barrier holds each one between hashing its new password and the UPDATE.
    everyone_hashed = threading.Barrier(CONCURRENT_CHANGES)
    real_hash = routes.auth.hash_password

    def hash_then_wait(password):
        hashed = real_hash(password)
        everyone_hashed.wait(timeout=30)
        return hashed

    monkeypatch.setattr(routes.auth, "hash_password", hash_then_wait)
    new_passwords = [f"new passphrase {number}" for number in range(CONCURRENT_CHANGES)]
    with ThreadPoolExecutor(CONCURRENT_CHANGES) as pool:
        responses = list(
            pool.map(lambda new: change_password(client, alice.token, PASSWORD, new), new_passwords)
        )
    statuses = [response.status_code for response in responses]
    assert statuses.count(204) == 1, statuses
    conflict = {"detail": "The password was changed by another request at the same time; log in again"}
    assert all((r.status_code, r.json()) == (409, conflict) for r in responses if r.status_code != 204)
    winner = new_passwords[statuses.index(204)]
    monkeypatch.setattr(routes.auth, "hash_password", real_hash)
    for password in [PASSWORD, *new_passwords]:
        response = login(client, alice.email, password)
        if password == winner:
            assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)
        else:
            assert (response.status_code, response.json()) == (401, LOGIN_FAILED), password


def test_a_change_whose_token_is_already_outdated_is_401(client, alice):
    assert change_password(client, alice.token, PASSWORD, NEW_PASSWORD).status_code == 204
    response = change_password(client, alice.token, NEW_PASSWORD, "yet another passphrase")
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert login(client, alice.email, NEW_PASSWORD).status_code == 200


def test_password_change_needs_a_token(client):
    response = client.put("/api/auth/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert (response.status_code, response.json()) == (401, {"detail": "Not authenticated"})


# --- account deletion ---


def delete_me(client, token, password):
    return client.request("DELETE", "/api/auth/me", headers=bearer(token), json={"password": password})


def count_rows(engine, table, *where) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table).where(*where)).one()


def test_delete_me_removes_the_user_tasks_and_tags(client, engine, alice, bob):
    for title in ("one", "two"):
        created = client.post(alice.tasks_url, headers=alice.headers, json={"title": title, "tags": ["a", "b"]})
        assert created.status_code == 201, created.text
    bobs = client.post(bob.tasks_url, headers=bob.headers, json={"title": "bob's", "tags": ["a"]})
    assert bobs.status_code == 201, bobs.text

    response = delete_me(client, alice.token, PASSWORD)
    assert response.status_code == 204
    assert response.content == b""

    assert (me(client, alice.token).status_code, me(client, alice.token).json()) == (401, INVALID_TOKEN)
    assert count_rows(engine, User, User.id == alice.id) == 0
    assert count_rows(engine, Task, Task.user_id == alice.id) == 0
    assert count_rows(engine, TaskTag) == 1  # bob's only
    still_there = client.get(f"{bob.tasks_url}/{bobs.json()['id']}", headers=bob.headers)
    assert (still_there.status_code, still_there.json()["tags"]) == (200, ["a"])


def test_a_deleted_email_can_sign_up_again_and_old_tokens_stay_dead(client, alice):
    assert delete_me(client, alice.token, PASSWORD).status_code == 204
    again = sign_up(client, alice.email, NEW_PASSWORD)
    assert again.id != alice.id
    assert (me(client, alice.token).status_code, me(client, alice.token).json()) == (401, INVALID_TOKEN)
    mine = me(client, again.token)
    assert (mine.status_code, mine.json()["email"]) == (200, alice.email)


def test_delete_me_with_a_wrong_password_is_401_and_deletes_nothing(client, engine, alice):
    created = client.post(alice.tasks_url, headers=alice.headers, json={"title": "keep me"})
    assert created.status_code == 201, created.text
    response = delete_me(client, alice.token, WRONG)
    assert (response.status_code, response.json()) == (401, {"detail": "Incorrect password"})
    assert me(client, alice.token).status_code == 200
    assert count_rows(engine, Task, Task.user_id == alice.id) == 1


def test_delete_me_needs_the_password(client, alice):
    response = client.request("DELETE", "/api/auth/me", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert me(client, alice.token).status_code == 200


# --- passwords with NUL: bcrypt stops reading at the first one ---


@pytest.mark.parametrize("password", ["\x00" * 8, "abc\x00defghijk", "correct horse battery\x00"])
def test_a_password_with_nul_is_422_at_signup(client, password):
    response = client.post("/api/auth/signup", json={"email": "carol@example.com", "password": password})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (["body", "password"], "Value error, Password must not contain NUL characters")
    assert login(client, "carol@example.com", "").json() == LOGIN_FAILED


def test_a_new_password_with_nul_is_422(client, alice):
    response = change_password(client, alice.token, PASSWORD, "\x00" * 8)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "new_password"]
    assert me(client, alice.token).status_code == 200
    assert login(client, alice.email, PASSWORD).status_code == 200


@pytest.mark.parametrize("suffix", ["\x00", "\x00anything"])
def test_a_password_with_nul_never_matches(client, engine, alice, suffix):
    typed = PASSWORD + suffix
    for response in (login(client, alice.email, typed), form_login(client, alice.email, typed)):
        assert (response.status_code, response.json()) == (401, LOGIN_FAILED)
    for response in (
        change_password(client, alice.token, typed, NEW_PASSWORD),
        delete_me(client, alice.token, typed),
    ):
        assert (response.status_code, response.json()) == (401, {"detail": "Incorrect password"})
    assert count_rows(engine, User) == 1
    assert login(client, alice.email, PASSWORD).status_code == 200


# --- password checks with a token count as failed logins too ---


def test_a_stolen_token_cannot_guess_the_password_either(client, clock, alice, set_limits):
    set_limits(login_failures=3)
    wrong_change = change_password(client, alice.token, WRONG, NEW_PASSWORD)
    assert (wrong_change.status_code, wrong_change.json()) == (401, {"detail": "Incorrect password"})
    wrong_delete = delete_me(client, alice.token, WRONG)
    assert (wrong_delete.status_code, wrong_delete.json()) == (401, {"detail": "Incorrect password"})
    fail_logins(client, alice.email, 1)

    assert_locked(change_password(client, alice.token, PASSWORD, NEW_PASSWORD), retry_after=15 * 60)
    assert_locked(delete_me(client, alice.token, PASSWORD), retry_after=15 * 60)
    assert_locked(login(client, alice.email, PASSWORD), retry_after=15 * 60)
    assert me(client, alice.token).status_code == 200  # locked out of guessing, not logged out


def test_a_right_password_on_a_token_route_clears_the_failures(client, clock, alice, set_limits):
    set_limits(login_failures=2)
    fail_logins(client, alice.email, 1)
    assert change_password(client, alice.token, PASSWORD, NEW_PASSWORD).status_code == 204
    fail_logins(client, alice.email, 2)  # a fresh count: two more before the lock
    assert_locked(login(client, alice.email, NEW_PASSWORD), retry_after=15 * 60)


# --- a burst of password hashing ---

HASHING_BUSY = {"detail": "Too many password checks in progress; try again shortly"}


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


def hashing_requests(client, account):
    """One request to each route that hashes or verifies a password."""
    return {
        "signup": client.post("/api/auth/signup", json={"email": "new@example.com", "password": PASSWORD}),
        "login": login(client, account.email, PASSWORD),
        "login of an unknown email": login(client, "nobody@example.com", PASSWORD),
        "token form": form_login(client, account.email, PASSWORD),
        "password change": change_password(client, account.token, PASSWORD, NEW_PASSWORD),
        "delete me": delete_me(client, account.token, PASSWORD),
    }


def test_routes_that_hash_get_503_while_hashing_is_full(client, alice, hashing_full):
    for route, response in hashing_requests(client, alice).items():
        assert response.status_code == 503, route
        assert_hashing_busy(response)


def test_other_requests_are_served_while_hashing_is_full(client, alice, hashing_full):
    created = client.post(alice.tasks_url, headers=alice.headers, json={"title": "still here"})
    assert created.status_code == 201, created.text
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.status_code == 200, listing.text
    assert [task["title"] for task in listing.json()] == ["still here"]
    assert (me(client, alice.token).status_code, me(client, alice.token).json()["id"]) == (200, alice.id)


def test_a_refused_hash_changes_nothing(client, engine, alice, hashing_full):
    assert_hashing_busy(client.post("/api/auth/signup", json={"email": "new@example.com", "password": PASSWORD}))
    assert_hashing_busy(change_password(client, alice.token, PASSWORD, NEW_PASSWORD))
    assert_hashing_busy(delete_me(client, alice.token, PASSWORD))
    assert count_rows(engine, User) == 1
    assert (me(client, alice.token).status_code, me(client, alice.token).json()["id"]) == (200, alice.id)


def test_a_password_check_refused_for_hashing_is_not_a_failed_login(client, clock, alice, set_limits):
    set_limits(login_failures=1)
    with hashing_slots_taken():
        assert_hashing_busy(login(client, alice.email, PASSWORD))
        assert_hashing_busy(form_login(client, alice.email, PASSWORD))
        assert_hashing_busy(change_password(client, alice.token, PASSWORD, NEW_PASSWORD))
    response = login(client, alice.email, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == alice.id


def test_every_hash_gives_its_slot_back(client, alice):
    """A slot kept after any of these would leave the later ones 503."""
    for _ in range(auth.MAX_HASHES_IN_FLIGHT + 2):
        assert login(client, alice.email, PASSWORD).status_code == 200
        assert login(client, alice.email, WRONG).json() == LOGIN_FAILED
    response = change_password(client, alice.token, PASSWORD, NEW_PASSWORD)
    assert (response.status_code, response.content) == (204, b"")


# --- OpenAPI ---


def test_openapi_documents_the_new_routes_and_their_errors(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("post", "/api/auth/logout"): {"204", "401", "503"},
        ("put", "/api/auth/password"): {"204", "401", "403", "409", "422", "429", "503"},
        ("delete", "/api/auth/me"): {"204", "401", "403", "422", "429", "503"},
        ("post", "/api/auth/signup"): {"201", "409", "422", "429", "503"},
        ("post", "/api/auth/login"): {"200", "401", "422", "429", "503"},
        ("post", "/api/auth/token"): {"200", "401", "422", "429", "503"},
    }
    for (method, path), statuses in expected.items():
        operation = paths[path][method]
        assert operation["tags"] == ["auth"]
        assert operation["summary"]
        assert set(operation["responses"]) == statuses, (method, path)
        for retry_later in {"429", "503"} & statuses:
            assert "Retry-After" in operation["responses"][retry_later]["headers"]
    for method, path in [("post", "/api/auth/logout"), ("put", "/api/auth/password"), ("delete", "/api/auth/me")]:
        assert paths[path][method]["security"] == [{"OAuth2PasswordBearer": []}]
