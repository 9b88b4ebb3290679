"""Accounts and tokens through HTTP: signup, login (JSON and the OAuth2 form), /me,
logout, password change, account deletion, and what makes a token valid."""

import json
import re
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from helpers import (
    INCORRECT_PASSWORD,
    INVALID_TOKEN,
    LOGIN_FAILED,
    MAX_ID,
    NEW_PASSWORD,
    WRONG,
    empty_tables,
)
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

import auth
import db
import migrate
import refresh_tokens
import routes.auth
from config import settings
from db import STATEMENT_TIMED_OUT
from models import RevokedToken, Task, TaskTag, User, utc_now

UTC_OFFSET = re.compile(r"(Z|\+00:00)$")


def access_token(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def count_rows(engine, table, *where) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table).where(*where)).one()


# --- signup ---


def test_signup_returns_token_and_public_user(client, password, me):
    response = client.post(
        "/api/auth/signup",
        json={"email": "Ada@Example.COM", "password": password, "name": "Ada"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 60 * 60
    assert set(body["user"]) == {"id", "email", "name", "created_at", "better_auth_id"}
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Ada"
    assert UTC_OFFSET.search(body["user"]["created_at"])
    assert password not in response.text and "$2b$" not in response.text
    mine = me(body["access_token"])
    assert mine.status_code == 200
    assert mine.json() == body["user"]


def test_signup_with_a_taken_email_in_any_case_is_409(client, alice, password):
    response = client.post(
        "/api/auth/signup", json={"email": "ALICE@example.com", "password": password}
    )
    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered"}


def test_a_signup_that_fails_after_the_account_row_leaves_no_account(
    client, password, login, monkeypatch
):
    def statement_interrupted(*args):
        interrupted = sqlite3.OperationalError("interrupted")
        interrupted.sqlite_errorcode = sqlite3.SQLITE_INTERRUPT  # as the statement budget raises it
        raise OperationalError("INSERT INTO refreshtoken ...", {}, interrupted)

    body = {"email": "carol@example.com", "password": password}
    with monkeypatch.context() as patch:
        patch.setattr(refresh_tokens, "issue_refresh_token", statement_interrupted)
        failed = client.post("/api/auth/signup", json=body)
    assert (failed.status_code, failed.json()) == (503, {"detail": STATEMENT_TIMED_OUT})
    unknown = login(body["email"], password)
    assert (unknown.status_code, unknown.json()) == (401, LOGIN_FAILED)
    retried = client.post("/api/auth/signup", json=body)
    assert (retried.status_code, retried.json()["user"]["email"]) == (201, body["email"])


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long enough"},
        {"password": "long enough"},
        {"email": "a@example.com"},
        {"email": "a@example.com", "password": "long enough", "name": "x" * 101},
        {"email": "a@example.com", "password": "long enough", "name": "   "},
    ],
)
def test_signup_rejects_bad_fields(client, body):
    response = client.post("/api/auth/signup", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize(
    "password",
    ["a" * 72, "é" * 36, "€" * 24, "a" * 8, "€" * 23 + "abc"],
    ids=["72-ascii", "72-two-byte", "72-three-byte", "8-ascii", "72-mixed"],
)
def test_passwords_of_8_to_72_utf8_bytes_work_at_signup_and_login(new_account, login, password):
    assert len(password.encode()) in (8, 72)
    new_account("bytes@example.com", password)
    response = login("bytes@example.com", password)
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "bytes@example.com"


@pytest.mark.parametrize(
    "password",
    ["a" * 73, "é" * 36 + "a", "€" * 24 + "a", "é" * 37, "a" * 7, "€" * 2],
    ids=["73-ascii", "73-two-byte", "73-three-byte", "74-two-byte", "7-ascii", "6-three-byte"],
)
def test_signup_rejects_passwords_outside_8_to_72_bytes(client, password):
    response = client.post(
        "/api/auth/signup", json={"email": "a@example.com", "password": password}
    )
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "8 to 72 bytes" in message
    assert password not in response.text  # validation errors never echo a password


# bcrypt stops reading at the first NUL, so a password with one is refused or never matches.
@pytest.mark.parametrize("password", ["\x00" * 8, "abc\x00defghijk", "correct horse battery\x00"])
def test_a_password_with_nul_is_422_at_signup(client, login, password):
    response = client.post(
        "/api/auth/signup", json={"email": "carol@example.com", "password": password}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (
        ["body", "password"],
        "Value error, Password must not contain NUL characters",
    )
    nobody = login("carol@example.com", "")
    assert (nobody.status_code, nobody.json()) == (401, LOGIN_FAILED)


def test_passwords_are_stored_as_bcrypt_hashes(alice, password, engine):
    with Session(engine) as session:
        stored = session.exec(select(User.password_hash)).one()
    assert stored.startswith("$2b$04$")  # BCRYPT_ROUNDS=4 in tests
    assert password not in stored


# --- login ---


def test_login_with_json_and_with_the_oauth2_form_at_the_token_url(client, alice, password, login):
    response = login("ALICE@example.com", password)
    assert response.status_code == 200
    assert response.json()["user"]["id"] == alice.id

    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    token_url = openapi.json()["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"][
        "password"
    ]["tokenUrl"]
    form = client.post(token_url, data={"username": "alice@example.com", "password": password})
    assert form.status_code == 200
    token = form.json()["access_token"]
    # What Swagger UI does after Authorize: call a task route with the token it got.
    tasks = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert tasks.status_code == 200
    assert tasks.json() == []


@pytest.mark.parametrize(
    "padded", [" alice@example.com", "alice@example.com ", "\tALICE@example.com "]
)
def test_both_logins_ignore_whitespace_around_the_email(alice, password, login, form_login, padded):
    for response in (form_login(padded, password), login(padded, password)):
        assert response.status_code == 200, response.text
        assert response.json()["user"]["id"] == alice.id


def test_both_logins_read_an_international_email_as_signup_stored_it(
    new_account, password, login, form_login
):
    account = new_account("amélie@bücher.example")  # composed é, and the domain in Unicode
    # A combining accent, and the domain in punycode.
    spelt_otherwise = "Ame\u0301lie@xn--bcher-kva.example"
    for response in (form_login(spelt_otherwise, password), login(spelt_otherwise, password)):
        assert (response.status_code, response.json()["user"]["id"]) == (200, account.id), (
            response.text
        )


@pytest.mark.parametrize(
    "email, typed",
    [
        ("alice@example.com", "wrong password"),
        ("nobody@example.com", "{password}"),
        ("alice@example.com", "{password}" + "x" * 80),  # over bcrypt's limit: a failed login
        ("alice@example.com", "{password}" + "é" * 40),
        ("alice@example.com", "{password}\x00"),  # bcrypt would stop reading at the NUL
        ("alice@example.com", "{password}\x00anything"),
    ],
    ids=[
        "wrong-password",
        "unknown-email",
        "too-long",
        "too-long-multibyte",
        "nul",
        "nul-then-more",
    ],
)
def test_failed_logins_get_one_message(alice, password, login, form_login, email, typed):
    typed = typed.format(password=password)
    for response in (login(email, typed), form_login(email, typed)):
        assert response.status_code == 401
        assert response.json() == LOGIN_FAILED
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_73_byte_password_does_not_log_in_as_its_first_72_bytes(new_account, login):
    password = "é" * 36  # 72 bytes
    new_account("trunc@example.com", password)
    response = login("trunc@example.com", password + "!")
    assert response.status_code == 401
    assert response.json() == LOGIN_FAILED


def test_unknown_email_still_costs_one_bcrypt_verification(alice, login, monkeypatch):
    checked = []
    real_checkpw = auth.bcrypt.checkpw
    monkeypatch.setattr(
        auth.bcrypt, "checkpw", lambda *args: checked.append(1) or real_checkpw(*args)
    )
    for email in ("nobody@example.com", "alice@example.com"):
        response = login(email, "wrong password")
        assert response.status_code == 401
        assert response.json() == LOGIN_FAILED
    assert len(checked) == 2


# --- tokens ---


def fresh_claims(token: str) -> dict:
    """The claims of a real token, freshly dated: valid until a test breaks one."""
    now = utc_now()
    claims = jwt.decode(token, options={"verify_signature": False})
    return {**claims, "iat": now, "exp": now + timedelta(minutes=5)}


def forge(claims: dict, secret: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret or settings.jwt_secret, algorithm=algorithm)


def without(claims: dict, name: str) -> dict:
    return {key: value for key, value in claims.items() if key != name}


def tampered_sub_token(token: str, other_id: int) -> str:
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["sub"] = str(other_id)
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{payload}.{signature}"


def test_token_claims_are_hs256_with_sub_iat_and_exp(alice):
    assert jwt.get_unverified_header(alice.token)["alg"] == "HS256"
    claims = jwt.decode(alice.token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == str(alice.id)
    assert claims["exp"] - claims["iat"] == 60 * 60


def test_a_token_signed_here_with_every_claim_works(bob, me):
    """The control for the forgeries below: only what each one breaks makes the difference."""
    response = me(forge(fresh_claims(bob.token)))
    assert (response.status_code, response.json()["id"]) == (200, bob.id)


FORGERIES = {
    "alg-none": lambda alice, bob: jwt.encode(fresh_claims(bob.token), None, algorithm="none"),
    "wrong-secret": lambda alice, bob: forge(fresh_claims(bob.token), secret="x" * 48),
    "hs512-with-our-secret": lambda alice, bob: forge(fresh_claims(bob.token), algorithm="HS512"),
    "expired": lambda alice, bob: forge(
        {**fresh_claims(bob.token), "iat": datetime(2020, 1, 1), "exp": datetime(2020, 1, 1, 1)}
    ),
    "non-numeric-sub": lambda alice, bob: forge({**fresh_claims(bob.token), "sub": "bob"}),
    "huge-sub": lambda alice, bob: forge({**fresh_claims(bob.token), "sub": str(2**64)}),
    "tampered-sub": lambda alice, bob: tampered_sub_token(alice.token, bob.id),
    "garbage": lambda alice, bob: "not.a.token",
    **{
        f"missing-{claim}": lambda alice, bob, claim=claim: forge(
            without(fresh_claims(bob.token), claim)
        )
        for claim in ("exp", "iat", "sub", "jti", "gen")
    },
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_tokens_are_401(client, alice, bob, bearer, forgery):
    token = FORGERIES[forgery](alice, bob)
    for path in ("/api/auth/me", bob.tasks_url):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401
        assert response.json() == INVALID_TOKEN
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("generation", [1, "0", True, None])
def test_a_token_of_another_generation_is_401(alice, me, generation):
    response = me(forge({**fresh_claims(alice.token), "gen": generation}))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("sub", [" 2 ", "+2", "0_2", "\u0662", "02", "2.0", "2 ", "0x2"])
def test_a_user_id_in_any_but_canonical_decimal_form_is_401(alice, bob, me, sub):
    assert bob.id == 2
    control = me(forge({**fresh_claims(bob.token), "sub": "2"}))
    assert (control.status_code, control.json()["id"]) == (200, 2)
    response = me(forge({**fresh_claims(bob.token), "sub": sub}))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("jti", ["\ud800", "caf\u00e9", "has space", "x" * 65, "", 5, None])
def test_a_token_id_that_is_not_a_plain_ascii_token_is_401(client, alice, me, bearer, jti):
    token = forge({**fresh_claims(alice.token), "jti": jti})
    for response in (me(token), client.post("/api/auth/logout", headers=bearer(token))):
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


def test_a_token_without_an_account_stamp_works_until_it_expires(alice, me):
    claims = without(fresh_claims(alice.token), "acct")
    response = me(forge(claims))
    assert (response.status_code, response.json()["id"]) == (200, alice.id)
    expired = {
        **claims,
        "iat": utc_now() - timedelta(hours=2),
        "exp": utc_now() - timedelta(hours=1),
    }
    response = me(forge(expired))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("stamp", [1, "same", True, 1.5])
def test_a_token_with_another_account_stamp_is_401(alice, me, stamp):
    claims = fresh_claims(alice.token)
    wrong = stamp if stamp != "same" else str(claims["acct"])
    response = me(forge({**claims, "acct": wrong}))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


def test_missing_token_is_401_not_authenticated(client, alice):
    for method, path in [
        ("GET", "/api/auth/me"),
        ("GET", alice.tasks_url),
        ("GET", f"{alice.tasks_url}/1"),
        ("POST", "/api/auth/logout"),
        ("PUT", "/api/auth/password"),
    ]:
        body = (
            {"current_password": "long enough", "new_password": NEW_PASSWORD}
            if method == "PUT"
            else None
        )
        response = client.request(method, path, json=body)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_token_of_a_deleted_user_is_401(alice, me, engine):
    with Session(engine) as session:
        session.delete(session.get(User, alice.id))
        session.commit()
    response = me(alice.token)
    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN


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
        migrate.migrate(fresh)
        monkeypatch.setattr(db, "engine", fresh)
        replacements.append(fresh)

    yield wipe
    for replacement in replacements:
        replacement.dispose()


def test_a_token_never_passes_to_a_new_account_with_the_same_id(
    client, alice, password, new_account, login, bearer, wipe_database
):
    task = client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
    assert task.status_code == 201
    wipe_database()
    newcomer = new_account("newcomer@example.com")
    assert newcomer.id == alice.id == 1
    created = client.post(newcomer.tasks_url, json={"title": "mine"}, headers=newcomer.headers)
    assert created.status_code == 201
    task_url = f"{newcomer.tasks_url}/{created.json()['id']}"
    requests = [
        ("GET", "/api/auth/me", None),
        ("POST", "/api/auth/logout", None),
        ("PUT", "/api/auth/password", {"current_password": password, "new_password": NEW_PASSWORD}),
        ("DELETE", "/api/auth/me", {"password": password}),
        ("GET", newcomer.tasks_url, None),
        ("POST", newcomer.tasks_url, {"title": "planted"}),
        ("GET", task_url, None),
        ("PUT", task_url, {"title": "changed"}),
        ("PATCH", task_url, {"title": "changed"}),
        ("PATCH", f"{task_url}/complete", None),
        ("DELETE", task_url, None),
    ]
    for method, url, body in requests:
        response = client.request(method, url, headers=bearer(alice.token), json=body)
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN), (method, url)
    listing = client.get(newcomer.tasks_url, headers=newcomer.headers)
    assert listing.status_code == 200
    assert [(task["title"], task["completed"]) for task in listing.json()] == [("mine", False)]
    still_there = login(newcomer.email, password)  # neither changed nor deleted
    assert (still_there.status_code, still_there.json()["user"]["id"]) == (200, newcomer.id)


# --- logout ---


def test_logout_ends_only_the_presented_token(client, alice, password, login, me):
    second = access_token(login(alice.email, password))
    response = client.post("/api/auth/logout", headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""

    ended = me(alice.token)
    assert (ended.status_code, ended.json()) == (401, INVALID_TOKEN)
    assert ended.headers["WWW-Authenticate"] == "Bearer"
    still_logged_in = me(second)
    assert still_logged_in.status_code == 200
    assert still_logged_in.json()["id"] == alice.id
    tasks = client.get(alice.tasks_url, headers=alice.headers)
    assert (tasks.status_code, tasks.json()) == (401, INVALID_TOKEN)


def test_logging_out_twice_is_401(client, alice):
    first = client.post("/api/auth/logout", headers=alice.headers)
    assert (first.status_code, first.content) == (204, b"")
    again = client.post("/api/auth/logout", headers=alice.headers)
    assert (again.status_code, again.json()) == (401, INVALID_TOKEN)


def test_revoked_tokens_are_pruned_once_they_would_have_expired(
    client, engine, clock, alice, password, login, me, bearer
):
    real_now = utc_now()
    # A token's expiry is checked on the real clock, so these sessions start on it.
    clock.now = real_now
    second_session = access_token(login(alice.email, password))
    third_session = access_token(login(alice.email, password))
    short_lived_claims = {
        **fresh_claims(second_session),
        "iat": real_now,
        "exp": real_now + timedelta(minutes=10),
        "jti": "short-lived",
    }
    short_logout = client.post("/api/auth/logout", headers=bearer(forge(short_lived_claims)))
    assert (short_logout.status_code, short_logout.content) == (204, b"")

    clock.now = real_now + timedelta(minutes=30)  # the short-lived token has expired by then
    logout = client.post("/api/auth/logout", headers=bearer(third_session))
    assert (logout.status_code, logout.content) == (204, b"")
    with Session(engine) as session:
        remaining = session.exec(select(RevokedToken.jti)).all()
    assert remaining == [jwt.decode(third_session, options={"verify_signature": False})["jti"]]
    ended = me(third_session)
    assert (ended.status_code, ended.json()) == (401, INVALID_TOKEN)


# --- password change ---


def test_password_change_ends_every_older_token(alice, password, login, me, change_password):
    second = access_token(login(alice.email, password))
    response = change_password(alice.token, password, NEW_PASSWORD)
    assert response.status_code == 204
    assert response.content == b""

    for old_token in (alice.token, second):
        ended = me(old_token)
        assert (ended.status_code, ended.json()) == (401, INVALID_TOKEN)
    old_password = login(alice.email, password)
    assert (old_password.status_code, old_password.json()) == (401, LOGIN_FAILED)
    fresh = login(alice.email, NEW_PASSWORD)
    assert fresh.status_code == 200, fresh.text
    mine = me(fresh.json()["access_token"])
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


def test_a_token_issued_in_the_same_second_as_the_change_tells_before_from_after(
    alice, password, login, me, change_password, monkeypatch
):
    one_second = utc_now().replace(microsecond=0)
    monkeypatch.setattr(routes.auth, "utc_now", lambda: one_second)  # every token gets this iat
    before = access_token(login(alice.email, password))
    changed = change_password(alice.token, password, NEW_PASSWORD)
    assert (changed.status_code, changed.content) == (204, b"")
    after = access_token(login(alice.email, NEW_PASSWORD))

    def issued_at(token):
        return jwt.decode(token, options={"verify_signature": False})["iat"]

    assert issued_at(before) == issued_at(after)
    refused, accepted = me(before), me(after)
    assert (refused.status_code, refused.json()) == (401, INVALID_TOKEN)
    assert (accepted.status_code, accepted.json()["id"]) == (200, alice.id)


def test_password_change_with_a_wrong_current_password_is_401(
    alice, password, login, me, change_password
):
    response = change_password(alice.token, WRONG, NEW_PASSWORD)
    assert (response.status_code, response.json()) == (401, INCORRECT_PASSWORD)
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)
    old, new = login(alice.email, password), login(alice.email, NEW_PASSWORD)
    assert (old.status_code, old.json()["user"]["id"]) == (200, alice.id)
    assert (new.status_code, new.json()) == (401, LOGIN_FAILED)


@pytest.mark.parametrize(
    "new_password, message",
    [
        ("short7!", "Password must be 8 to 72 bytes in UTF-8"),
        ("é" * 36 + "x", "Password must be 8 to 72 bytes in UTF-8"),
        ("\x00" * 8, "Password must not contain NUL characters"),
    ],
    ids=["7 bytes", "73 bytes", "NUL"],
)
def test_new_password_follows_the_signup_rules(
    alice, password, login, me, change_password, new_password, message
):
    response = change_password(alice.token, password, new_password)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "new_password"]
    assert message in error["msg"]
    assert new_password not in response.text
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)
    unchanged = login(alice.email, password)
    assert (unchanged.status_code, unchanged.json()["user"]["id"]) == (200, alice.id)


def test_a_72_byte_new_password_is_accepted(alice, password, login, change_password):
    longest = "é" * 36
    changed = change_password(alice.token, password, longest)
    assert (changed.status_code, changed.content) == (204, b"")
    response = login(alice.email, longest)
    assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)


@pytest.mark.parametrize("suffix", ["\x00", "\x00anything"])
def test_a_current_password_with_nul_never_matches(
    engine, alice, password, login, change_password, delete_me, suffix
):
    typed = password + suffix
    for response in (
        change_password(alice.token, typed, NEW_PASSWORD),
        delete_me(alice.token, typed),
    ):
        assert (response.status_code, response.json()) == (401, INCORRECT_PASSWORD)
    assert count_rows(engine, User) == 1
    unchanged = login(alice.email, password)
    assert (unchanged.status_code, unchanged.json()["user"]["id"]) == (200, alice.id)


CONCURRENT_CHANGES = 8


def test_a_password_change_overtaken_by_the_accounts_deletion_is_401(
    alice, password, change_password, delete_me, monkeypatch
):
    hash_new_password = routes.auth.hash_password

    def delete_the_account_then_hash(new_password: str) -> str:
        deleted = delete_me(alice.token, password)
        assert (deleted.status_code, deleted.content) == (204, b"")
        return hash_new_password(new_password)

    monkeypatch.setattr(routes.auth, "hash_password", delete_the_account_then_hash)
    response = change_password(alice.token, password, NEW_PASSWORD)
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


def test_of_concurrent_password_changes_exactly_one_succeeds(
    alice, password, login, change_password, monkeypatch
):
    # Every request has checked its token and the current password before any of them
    # writes: the barrier holds each one between hashing its new password and the UPDATE.
    everyone_hashed = threading.Barrier(CONCURRENT_CHANGES)
    real_hash = routes.auth.hash_password

    def hash_then_wait(new_password):
        hashed = real_hash(new_password)
        everyone_hashed.wait(timeout=30)
        return hashed

    monkeypatch.setattr(routes.auth, "hash_password", hash_then_wait)
    new_passwords = [f"new passphrase {number}" for number in range(CONCURRENT_CHANGES)]
    with ThreadPoolExecutor(CONCURRENT_CHANGES) as pool:
        responses = list(
            pool.map(lambda new: change_password(alice.token, password, new), new_passwords)
        )
    statuses = [response.status_code for response in responses]
    assert statuses.count(204) == 1, statuses
    conflict = {
        "detail": "The password was changed by another request at the same time; log in again"
    }
    assert all(
        (r.status_code, r.json()) == (409, conflict) for r in responses if r.status_code != 204
    )
    winner = new_passwords[statuses.index(204)]
    monkeypatch.setattr(routes.auth, "hash_password", real_hash)
    for tried in [password, *new_passwords]:
        response = login(alice.email, tried)
        if tried == winner:
            assert (response.status_code, response.json()["user"]["id"]) == (200, alice.id)
        else:
            assert (response.status_code, response.json()) == (401, LOGIN_FAILED), tried


def test_a_change_whose_token_is_already_outdated_is_401(alice, password, login, change_password):
    first = change_password(alice.token, password, NEW_PASSWORD)
    assert (first.status_code, first.content) == (204, b"")
    response = change_password(alice.token, NEW_PASSWORD, "yet another passphrase")
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    current = login(alice.email, NEW_PASSWORD)
    assert (current.status_code, current.json()["user"]["id"]) == (200, alice.id)


# --- account deletion ---


def test_delete_me_removes_the_user_tasks_and_tags(
    client, engine, alice, bob, password, me, delete_me
):
    for title in ("one", "two"):
        created = client.post(
            alice.tasks_url, headers=alice.headers, json={"title": title, "tags": ["a", "b"]}
        )
        assert created.status_code == 201, created.text
    bobs = client.post(bob.tasks_url, headers=bob.headers, json={"title": "bob's", "tags": ["a"]})
    assert bobs.status_code == 201, bobs.text

    response = delete_me(alice.token, password)
    assert response.status_code == 204
    assert response.content == b""

    ended = me(alice.token)
    assert (ended.status_code, ended.json()) == (401, INVALID_TOKEN)
    assert count_rows(engine, User, User.id == alice.id) == 0
    assert count_rows(engine, Task, Task.user_id == alice.id) == 0
    assert count_rows(engine, TaskTag) == 1  # bob's only
    still_there = client.get(f"{bob.tasks_url}/{bobs.json()['id']}", headers=bob.headers)
    assert (still_there.status_code, still_there.json()["tags"]) == (200, ["a"])


def test_a_deleted_email_can_sign_up_again_and_old_tokens_stay_dead(
    alice, password, new_account, me, delete_me
):
    deleted = delete_me(alice.token, password)
    assert (deleted.status_code, deleted.content) == (204, b"")
    again = new_account(alice.email, NEW_PASSWORD)
    assert again.id != alice.id
    ended = me(alice.token)
    assert (ended.status_code, ended.json()) == (401, INVALID_TOKEN)
    mine = me(again.token)
    assert (mine.status_code, mine.json()["email"]) == (200, alice.email)


def test_delete_me_with_a_wrong_password_is_401_and_deletes_nothing(
    client, engine, alice, me, delete_me
):
    created = client.post(alice.tasks_url, headers=alice.headers, json={"title": "keep me"})
    assert created.status_code == 201, created.text
    response = delete_me(alice.token, WRONG)
    assert (response.status_code, response.json()) == (401, INCORRECT_PASSWORD)
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)
    assert count_rows(engine, Task, Task.user_id == alice.id) == 1


def test_delete_me_needs_the_password(client, alice, me):
    response = client.request("DELETE", "/api/auth/me", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    mine = me(alice.token)
    assert (mine.status_code, mine.json()["id"]) == (200, alice.id)


# --- where SQLite and PostgreSQL may differ: integer widths, NUL, unique-index races ---


def test_a_token_for_a_user_id_past_32_bits_is_401(client, alice):
    now = datetime.now(UTC)
    token = jwt.encode(
        {"sub": str(MAX_ID), "iat": now, "exp": now + timedelta(minutes=5)},
        settings.jwt_secret,
        "HS256",
    )

    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert (response.status_code, response.json()) == (
        401,
        {"detail": "Could not validate credentials"},
    )


def test_form_login_with_a_nul_byte_is_a_failed_login(client, alice):
    form = {"username": "alice@example.com\x00", "password": "correct horse battery"}

    response = client.post("/api/auth/token", data=form)

    assert (response.status_code, response.json()) == (
        401,
        {"detail": "Incorrect email or password"},
    )


def test_racing_signups_of_one_email_give_one_201_and_409s(client):
    racers = 6
    start = threading.Barrier(racers)

    def sign_up(_: int):
        start.wait()
        return client.post(
            "/api/auth/signup", json={"email": "race@example.com", "password": "long enough"}
        )

    with ThreadPoolExecutor(max_workers=racers) as pool:
        responses = list(pool.map(sign_up, range(racers)))

    assert Counter(response.status_code for response in responses) == {201: 1, 409: racers - 1}
    refused = [response.json() for response in responses if response.status_code == 409]
    assert refused == [{"detail": "Email already registered"}] * (racers - 1)
