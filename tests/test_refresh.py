"""Refresh tokens, through HTTP: rotation, reuse detection, the grace period for two tabs,
ending sessions, storage, expiry and pruning (with the injected clock), the auth limit,
the logs, and two uvicorn workers.

A session here is a token family: the refresh tokens that rotation draws from one login,
and the access tokens issued with them.
"""

import dataclasses
import hashlib
import json
import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import NamedTuple

import httpx2
import jwt
import pytest
from helpers import INVALID_TOKEN, NEW_PASSWORD, PASSWORD, TEST_DATABASE_URL, Account, sign_up
from sqlalchemy import inspect, text
from sqlmodel import Session, func, select

import auth
import limits
import refresh_tokens
import routes.auth
from config import Settings, settings
from models import RefreshToken, TokenFamily, utc_now

INVALID_REFRESH = {"detail": "Invalid or expired refresh token"}
REFRESH_URL = "/api/auth/refresh"
JSON = {"Content-Type": "application/json"}


class Pair(NamedTuple):
    """What a signup, login or refresh hands out."""

    access: str
    refresh: str


def pair_of(response) -> Pair:
    body = response.json()
    return Pair(body["access_token"], body["refresh_token"])


def refresh(client, token: str):
    return client.post(REFRESH_URL, json={"refresh_token": token})


def refreshed(client, token: str) -> Pair:
    response = refresh(client, token)
    assert response.status_code == 200, response.text
    return pair_of(response)


def login(client, email: str, password: str = PASSWORD) -> Pair:
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return pair_of(response)


def bearer(access: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access}"}


def me(client, access: str):
    return client.get("/api/auth/me", headers=bearer(access))


def assert_refresh_refused(client, token: str) -> None:
    response = refresh(client, token)
    assert (response.status_code, response.json()) == (401, INVALID_REFRESH)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def log_out(client, access: str) -> None:
    response = client.post("/api/auth/logout", headers=bearer(access))
    assert (response.status_code, response.content) == (204, b"")


def assert_access_refused(client, access: str) -> None:
    response = me(client, access)
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


def assert_access_works(client, access: str, user_id: int) -> None:
    response = me(client, access)
    assert (response.status_code, response.json()["id"]) == (200, user_id)


def family_of(access: str) -> str:
    return jwt.decode(access, options={"verify_signature": False})["fam"]


def stored_tokens(engine) -> list[RefreshToken]:
    with Session(engine) as session:
        return list(session.exec(select(RefreshToken)).all())


def count_rows(engine, table) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


@pytest.fixture
def carol(client, clock) -> tuple[Account, Pair]:
    """An account signed up at the clock's time, with the pair that signup returned."""
    response = client.post(
        "/api/auth/signup", json={"email": "carol@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    account = Account(
        response.json()["user"]["id"], "carol@example.com", response.json()["access_token"]
    )
    return account, pair_of(response)


@pytest.fixture
def set_settings(monkeypatch):
    """Change settings for this test where the token code reads them."""

    def change(**values) -> None:
        changed = dataclasses.replace(settings, **values)
        monkeypatch.setattr(refresh_tokens, "settings", changed)
        monkeypatch.setattr(routes.auth, "settings", changed)

    return change


# --- issuing ---


def test_signup_login_and_the_oauth2_form_each_return_a_refresh_token(client):
    signup = client.post(
        "/api/auth/signup", json={"email": "dora@example.com", "password": PASSWORD}
    )
    login_response = client.post(
        "/api/auth/login", json={"email": "dora@example.com", "password": PASSWORD}
    )
    form = client.post(
        "/api/auth/token", data={"username": "dora@example.com", "password": PASSWORD}
    )
    bodies = [signup.json(), login_response.json(), form.json()]
    assert [signup.status_code, login_response.status_code, form.status_code] == [201, 200, 200]
    for body in bodies:
        assert set(body) == {
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "user",
        }
        assert body["refresh_expires_in"] == 30 * 24 * 60 * 60
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["refresh_token"])  # 32 random bytes
        assert body["refresh_token"].count(".") == 0  # opaque, not a JWT
    assert len({body["refresh_token"] for body in bodies}) == 3
    # Each login is a session of its own.
    assert len({family_of(body["access_token"]) for body in bodies}) == 3


# --- rotation ---


def test_a_refresh_returns_a_new_pair_in_the_same_session(client, carol):
    account, first = carol
    response = refresh(client, first.refresh)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == me(client, first.access).json()
    assert (body["token_type"], body["expires_in"], body["refresh_expires_in"]) == (
        "bearer",
        3600,
        30 * 86400,
    )
    second = pair_of(response)
    assert second.refresh != first.refresh and second.access != first.access
    assert family_of(second.access) == family_of(first.access)
    assert_access_works(client, second.access, account.id)
    assert_access_works(client, first.access, account.id)  # access tokens live out their time
    third = refreshed(client, second.refresh)
    assert_access_works(client, third.access, account.id)


def test_a_refresh_uses_up_the_presented_token(client, engine, carol, clock):
    _, first = carol
    refreshed(client, first.refresh)
    used = [token for token in stored_tokens(engine) if token.used_at is not None]
    assert [(token.token_hash, token.used_at) for token in used] == [
        (hashlib.sha256(first.refresh.encode()).hexdigest(), clock.now)
    ]
    clock.advance(seconds=10)  # past the grace period: presenting it again is a replay
    assert_refresh_refused(client, first.refresh)


# --- reuse detection ---


def test_a_replay_after_the_grace_period_ends_the_whole_session(client, carol, clock):
    account, first = carol
    other_session = login(client, account.email)
    second = refreshed(client, first.refresh)
    third = refreshed(client, second.refresh)

    clock.advance(seconds=10)
    assert_refresh_refused(client, first.refresh)  # a thief's, or the victim's, late replay

    assert_refresh_refused(client, third.refresh)  # the newest refresh token is ended too
    for access in (first.access, second.access, third.access):
        assert_access_refused(client, access)
    # Another login of the same account is another session: untouched.
    assert_access_works(client, other_session.access, account.id)
    assert_access_works(client, refreshed(client, other_session.refresh).access, account.id)


def test_the_thief_who_refreshes_first_is_found_out_when_the_victim_refreshes(client, carol, clock):
    account, stolen = carol
    thief = refreshed(client, stolen.refresh)
    clock.advance(minutes=59)
    assert_refresh_refused(client, stolen.refresh)  # the victim's client, an hour later
    assert_refresh_refused(client, thief.refresh)
    assert_access_refused(client, thief.access)


def test_within_the_grace_period_the_used_token_gives_another_pair_in_its_session(
    client, carol, clock
):
    account, first = carol
    tab_one = refreshed(client, first.refresh)
    clock.advance(seconds=9)
    tab_two = refreshed(client, first.refresh)

    assert tab_two.refresh != tab_one.refresh
    assert family_of(tab_two.access) == family_of(tab_one.access) == family_of(first.access)
    # Both tabs go on refreshing, each with its own token.
    assert_access_works(client, refreshed(client, tab_one.refresh).access, account.id)
    assert_access_works(client, refreshed(client, tab_two.refresh).access, account.id)
    # One session: logging out in one tab ends the other tab's tokens too.
    log_out(client, tab_one.access)
    assert_access_refused(client, tab_two.access)


def test_concurrent_refreshes_of_one_token_all_get_a_working_pair(client, carol):
    account, first = carol
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: refresh(client, first.refresh), range(8)))
    assert [response.status_code for response in responses] == [200] * 8, [
        r.text for r in responses
    ]
    pairs = [pair_of(response) for response in responses]
    assert len({pair.refresh for pair in pairs}) == 8
    for pair in pairs:
        assert_access_works(client, pair.access, account.id)
        assert_access_works(client, refreshed(client, pair.refresh).access, account.id)
    assert_access_works(client, first.access, account.id)  # nobody was logged out


@pytest.mark.parametrize("moves_on_first", ["victim", "thief"])
def test_a_pair_from_a_replay_within_the_grace_dies_once_the_session_moves_on_without_it(
    client, carol, clock, moves_on_first
):
    """A thief who replays a just-used token within the grace gets a pair, as a second tab
    would; whichever of the two refreshes first carries the session on, and the other's
    refresh token, presented more than the grace later, ends the session for both."""
    account, stolen = carol
    victim = refreshed(client, stolen.refresh)
    clock.advance(seconds=5)
    thief = refreshed(client, stolen.refresh)
    ahead, behind = (victim, thief) if moves_on_first == "victim" else (thief, victim)

    clock.advance(minutes=59)
    ahead_next = refreshed(client, ahead.refresh)
    clock.advance(minutes=59)
    ahead_last = refreshed(client, ahead_next.refresh)
    assert_access_works(client, behind.access, account.id)  # until its own expiry, or ...
    assert_refresh_refused(client, behind.refresh)  # ... until its refresh token is presented

    assert_refresh_refused(client, ahead_last.refresh)
    for access in (victim.access, thief.access, ahead_next.access, ahead_last.access):
        assert_access_refused(client, access)


def test_a_replay_within_the_grace_ends_the_session_once_it_has_moved_past_the_token(
    client, carol, clock
):
    _, first = carol
    second = refreshed(client, first.refresh)
    clock.advance(seconds=1)
    third = refreshed(client, second.refresh)
    clock.advance(seconds=1)  # 2 seconds after `first` was used: within its grace

    assert_refresh_refused(client, first.refresh)
    assert_refresh_refused(client, third.refresh)
    for access in (first.access, second.access, third.access):
        assert_access_refused(client, access)


@pytest.mark.parametrize(("grace_seconds", "status"), [(10, 200), (0, 401)])
def test_a_refresh_timed_before_the_one_that_used_the_token_is_in_the_grace_if_there_is_one(
    client, carol, clock, set_settings, grace_seconds, status
):
    """Each request reads the clock as it starts: one that started before the winner, and
    reaches the token after it, finds it used later than its own time."""
    set_settings(refresh_token_grace_seconds=grace_seconds)
    account, first = carol
    winner = refreshed(client, first.refresh)
    clock.advance(seconds=-1)
    early = refresh(client, first.refresh)
    winners_next = refresh(client, winner.refresh)

    assert (early.status_code, winners_next.status_code) == (status, status)
    if status == 200:  # another tab: both go on
        assert_access_works(client, pair_of(early).access, account.id)
    else:  # a replay: it ended the session, the winner's tokens with it
        assert early.json() == winners_next.json() == INVALID_REFRESH


def test_without_a_grace_period_exactly_one_of_20_concurrent_refreshes_wins(client, set_settings):
    """The compare-and-set, with the request clock running (no `clock` fixture): a request
    that read the time before the winner did, and runs after it, is a replay too."""
    set_settings(refresh_token_grace_seconds=0)
    body = {"email": "carol@example.com", "password": PASSWORD}
    signup = client.post("/api/auth/signup", json=body)
    assert signup.status_code == 201, signup.text
    first = pair_of(signup)
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: refresh(client, first.refresh), range(20)))

    assert sorted(response.status_code for response in responses) == [200] + [401] * 19
    for response in responses:
        if response.status_code == 401:
            assert response.json() == INVALID_REFRESH
    [winner] = [pair_of(response) for response in responses if response.status_code == 200]
    # The replays ended the session, the winner's new tokens with it.
    assert_refresh_refused(client, winner.refresh)
    assert_access_refused(client, winner.access)


# An access log line's worker (process id) and request id.
ACCESS_LINE = re.compile(r"todo\.access \[(\d+)\]: .* request_id=(\S+)$", re.M)


def test_with_two_workers_and_no_grace_period_exactly_one_of_20_concurrent_refreshes_wins(
    request, live_server
):
    env = {"REFRESH_TOKEN_GRACE_SECONDS": "0", "AUTH_REQUESTS_PER_MINUTE": "0"}
    if TEST_DATABASE_URL is not None:  # a new database beside the test database
        env["DATABASE_URL"] = request.getfixturevalue("new_database")("refresh")
    server = live_server(workers=2, env=env)
    # A new connection per request, so the kernel hands each to whichever worker accepts it.
    with httpx2.Client(base_url=server.url, timeout=30, headers={"Connection": "close"}) as http:
        body = {"email": "carol@example.com", "password": PASSWORD}
        signup = http.post("/api/auth/signup", json=body)
        assert signup.status_code == 201, signup.text
        first = pair_of(signup)

        def refresh_as(number: int):
            request_id = {"X-Request-ID": f"refresh-{number}"}
            return http.post(REFRESH_URL, json={"refresh_token": first.refresh}, headers=request_id)

        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(refresh_as, range(20)))
        assert sorted(response.status_code for response in responses) == [200] + [401] * 19
        for response in responses:
            if response.status_code == 401:
                assert response.json() == INVALID_REFRESH
        [winner] = [pair_of(response) for response in responses if response.status_code == 200]
        assert_refresh_refused(http, winner.refresh)  # the replays ended the session
        assert_access_refused(http, winner.access)
    server_log = server.log()

    workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", server_log)}
    served_by = {request_id: int(pid) for pid, request_id in ACCESS_LINE.findall(server_log)}
    refreshed_by = {served_by[f"refresh-{number}"] for number in range(20)}
    assert len(workers) == 2 and refreshed_by == workers, served_by
    assert "Traceback" not in server_log


# --- ending sessions ---


def test_logout_ends_the_session_of_the_presented_token(client, carol):
    account, first = carol
    other_session = login(client, account.email)
    second = refreshed(client, first.refresh)

    log_out(client, second.access)
    assert_refresh_refused(client, second.refresh)
    assert_access_refused(client, first.access)  # an older access token of the same session
    assert_access_works(client, other_session.access, account.id)
    assert_access_works(client, refreshed(client, other_session.refresh).access, account.id)


def test_a_password_change_ends_every_session(client, carol):
    account, first = carol
    other_session = login(client, account.email)
    response = client.put(
        "/api/auth/password",
        headers=bearer(first.access),
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
    )
    assert (response.status_code, response.content) == (204, b"")
    for ended in (first, other_session):
        assert_refresh_refused(client, ended.refresh)
        assert_access_refused(client, ended.access)
    after = login(client, account.email, "a brand new passphrase")
    assert_access_works(client, refreshed(client, after.refresh).access, account.id)


def test_deleting_the_account_removes_every_session_and_token(client, engine, carol, bob):
    account, first = carol
    other_session = login(client, account.email)
    refreshed(client, other_session.refresh)
    bobs_session = login(client, bob.email)
    response = client.request(
        "DELETE", "/api/auth/me", headers=bearer(first.access), json={"password": PASSWORD}
    )
    assert (response.status_code, response.content) == (204, b"")

    assert_refresh_refused(client, first.refresh)
    with Session(engine) as session:
        families = session.exec(select(TokenFamily.user_id)).all()
        token_families = session.exec(select(RefreshToken.family_id)).all()
    assert families == [bob.id, bob.id]  # bob's signup and his login
    assert set(token_families) == {family_of(bob.token), family_of(bobs_session.access)}
    assert_access_works(client, refreshed(client, bobs_session.refresh).access, bob.id)


SESSION_ENDING_REQUESTS = {
    "password change": (
        "PUT",
        "/api/auth/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    ),
    "account deletion": ("DELETE", "/api/auth/me", {"password": PASSWORD}),
}


@pytest.mark.parametrize(
    ("method", "path", "body"), SESSION_ENDING_REQUESTS.values(), ids=SESSION_ENDING_REQUESTS
)
def test_a_login_overtaken_during_its_password_check_starts_no_session(
    client, engine, carol, monkeypatch, method, path, body
):
    account, first = carol
    check_password = auth.verify_password

    def check_then_end_every_session(password: str, password_hash: str | None) -> bool:
        monkeypatch.setattr(
            auth, "verify_password", check_password
        )  # the request below checks its own
        matched = check_password(password, password_hash)
        ending = client.request(method, path, headers=bearer(first.access), json=body)
        assert (ending.status_code, ending.content) == (204, b"")
        return matched

    monkeypatch.setattr(auth, "verify_password", check_then_end_every_session)
    response = client.post("/api/auth/login", json={"email": account.email, "password": PASSWORD})
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert count_rows(engine, TokenFamily) == 0


def forged_access(account: Account, **claims) -> str:
    """The account's own access token with claims changed, signed with the server's secret."""
    now = utc_now()
    original = jwt.decode(account.token, options={"verify_signature": False})
    changed = {
        **original,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": secrets.token_urlsafe(16),
        **claims,
    }
    return jwt.encode(
        {name: value for name, value in changed.items() if value is not None}, settings.jwt_secret
    )


def test_an_access_token_of_an_unknown_session_is_401(client, carol):
    account, _ = carol
    assert_access_works(client, forged_access(account), account.id)  # the control: only fam differs
    for family in ("no-such-session", "x" * 33, 42, ""):
        assert_access_refused(client, forged_access(account, fam=family))


def test_an_access_token_without_a_session_ends_by_its_own_logout(client, carol):
    """A token with no fam claim belongs to no session: it works, and logout ends that
    token alone."""
    account, first = carol
    sessionless = forged_access(account, fam=None)
    assert_access_works(client, sessionless, account.id)
    log_out(client, sessionless)
    assert_access_refused(client, sessionless)
    assert_access_works(client, refreshed(client, first.refresh).access, account.id)


# --- storage ---


def every_stored_text(engine) -> list[str]:
    """Every value of every row of every table in the database, as text."""
    values = []
    with engine.connect() as connection:
        quote = engine.dialect.identifier_preparer.quote
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {quote(table)}")):
                values += [str(value) for value in row]
    return values


def test_the_database_holds_no_raw_refresh_token(client, engine, carol, clock):
    account, first = carol
    issued = [first.refresh, login(client, account.email).refresh]
    second = refreshed(client, first.refresh)
    grace_pair = refreshed(client, first.refresh)  # a used token, presented again in time
    issued += [second.refresh, grace_pair.refresh]

    stored = every_stored_text(engine)
    for token in issued:
        assert not [value for value in stored if token in value]
        assert hashlib.sha256(token.encode()).hexdigest() in stored  # the scan sees the tables


# --- expiry and pruning ---


def test_a_refresh_token_expires_30_days_after_it_was_issued(client, carol, clock):
    account, first = carol
    other = login(client, account.email)
    clock.advance(days=30, seconds=-1)
    other_next = refreshed(client, other.refresh)  # the last second of its life
    clock.advance(seconds=1)  # exactly 30 days after signup and login
    assert_refresh_refused(client, first.refresh)
    # Expiry comes before the grace period, and an expired token is no replay: the session
    # of the token used a second ago goes on.
    assert_refresh_refused(client, other.refresh)
    assert_access_works(client, refreshed(client, other_next.refresh).access, account.id)


def test_a_session_that_keeps_refreshing_has_no_other_limit(client, carol, clock):
    account, pair = carol
    for _ in range(12):  # a year, refreshed every 29 days
        clock.advance(days=29)
        pair = refreshed(client, pair.refresh)
    assert_access_works(client, pair.access, account.id)


def test_the_lifetime_comes_from_refresh_token_expire_days(client, set_settings, clock):
    set_settings(refresh_token_expire_days=7)
    account = sign_up(client, "erin@example.com")
    pair = login(client, account.email)
    response = refresh(client, pair.refresh)
    assert (response.status_code, response.json()["refresh_expires_in"]) == (200, 7 * 86400)
    clock.advance(days=7)
    assert_refresh_refused(client, pair_of(response).refresh)


def test_used_and_expired_tokens_and_sessions_are_pruned(client, engine, carol, clock):
    account, pair = carol
    for _ in range(3):
        pair = refreshed(client, pair.refresh)
    forgotten = login(client, account.email)  # a session that is never used again
    assert (count_rows(engine, TokenFamily), count_rows(engine, RefreshToken)) == (2, 5)

    clock.advance(days=20)
    pair = refreshed(client, pair.refresh)  # used tokens are kept until they expire ...
    assert (count_rows(engine, TokenFamily), count_rows(engine, RefreshToken)) == (2, 6)

    clock.advance(days=10)  # ... then pruned, with the sessions whose tokens all expired
    pair = refreshed(client, pair.refresh)
    # Left: the token used today and its successor, in the one session still in use.
    assert (count_rows(engine, TokenFamily), count_rows(engine, RefreshToken)) == (1, 2)
    assert_access_refused(client, forgotten.access)
    assert_access_works(client, pair.access, account.id)
    assert_refresh_refused(client, forgotten.refresh)


def test_a_login_prunes_too(client, engine, carol, clock):
    account, _ = carol
    clock.advance(days=31)
    login(client, account.email)
    assert (count_rows(engine, TokenFamily), count_rows(engine, RefreshToken)) == (1, 1)


# --- errors ---


@pytest.mark.parametrize(
    "token", ["not-a-token", "x" * 256, "\x00", "Xq3V0m9rJ2kT8bYwL5nC1sD7fG4hP6aZ0eR2tU8iO3w"]
)
def test_an_unknown_refresh_token_is_401(client, token):
    assert_refresh_refused(client, token)


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"refresh_token": None},
        {"refresh_token": 42},
        {"refresh_token": ""},
        {"refresh_token": "x" * 257},
        {"refresh_token": "\ud800"},
    ],
)
def test_a_missing_or_malformed_body_is_422(client, body):
    # json.dumps writes a lone surrogate as the escape that a JSON body may carry.
    response = client.post(REFRESH_URL, content=json.dumps(body), headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_malformed_json_is_422(client):
    response = client.post(REFRESH_URL, content=b'{"refresh_token": ', headers=JSON)
    assert (response.status_code, response.json()["detail"][0]["type"]) == (422, "json_invalid")


def test_a_refresh_counts_against_the_auth_request_limit(client, carol, clock, monkeypatch):
    """A refused refresh does not use the token up: it works once the window has passed."""
    account, first = carol
    monkeypatch.setattr(
        limits, "settings", dataclasses.replace(settings, auth_requests_per_minute=2)
    )
    third = refreshed(client, refreshed(client, first.refresh).refresh)
    refused = refresh(client, third.refresh)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "Too many signups, logins, refreshes and password checks from your address;"
        " try again later"
    }
    assert int(refused.headers["Retry-After"]) > 0
    clock.advance(minutes=1)
    assert_access_works(client, refreshed(client, third.refresh).access, account.id)


def test_openapi_offers_refresh_to_try_out_without_authorization(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    operation = response.json()["paths"][REFRESH_URL]["post"]
    assert "security" not in operation
    assert set(operation["responses"]) == {"200", "401", "415", "422", "429"}
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RefreshRequest"
    }


# --- settings ---


def test_refresh_settings_default_to_30_days_and_10_seconds(monkeypatch):
    monkeypatch.delenv("REFRESH_TOKEN_EXPIRE_DAYS", raising=False)
    monkeypatch.delenv("REFRESH_TOKEN_GRACE_SECONDS", raising=False)
    loaded = Settings()
    assert (loaded.refresh_token_expire_days, loaded.refresh_token_grace_seconds) == (30, 10)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "REFRESH_TOKEN_EXPIRE_DAYS",
            "0",
            "REFRESH_TOKEN_EXPIRE_DAYS must be between 1 and 365, not 0",
        ),
        (
            "REFRESH_TOKEN_EXPIRE_DAYS",
            "a month",
            "REFRESH_TOKEN_EXPIRE_DAYS must be a whole number, not 'a month'",
        ),
        (
            "REFRESH_TOKEN_GRACE_SECONDS",
            "61",
            "REFRESH_TOKEN_GRACE_SECONDS must be between 0 and 60, not 61",
        ),
    ],
)
def test_a_bad_refresh_setting_stops_start_up(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=message):
        Settings()


# --- logs ---


def test_refresh_tokens_never_appear_in_the_log(client, carol, caplog, clock):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    caplog.set_level(logging.DEBUG, logger="todo.access")
    account, first = carol
    second = refreshed(client, first.refresh)
    within_grace = refreshed(client, first.refresh)
    clock.advance(seconds=10)
    assert_refresh_refused(client, first.refresh)  # the replay that ends the session
    assert_refresh_refused(client, second.refresh)
    other = login(client, account.email)
    # A careless client that also puts the token in the query string: the path alone is logged.
    response = client.post(
        REFRESH_URL, params={"refresh_token": other.refresh}, json={"refresh_token": other.refresh}
    )
    assert response.status_code == 200

    server_lines = [
        record.getMessage() for record in caplog.records if not record.name.startswith("httpx")
    ]
    assert [
        line.split()[:3] for line in server_lines if line.startswith("POST /api/auth/refresh")
    ] == [["POST", REFRESH_URL, status] for status in ("200", "200", "401", "401", "200")]
    for token in (first.refresh, second.refresh, within_grace.refresh, other.refresh):
        for line in server_lines:
            assert token not in line, line
