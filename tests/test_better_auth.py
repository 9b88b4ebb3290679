"""Better Auth tokens, without Node: an Ed25519 key made here, its key set served by a small
HTTP server on 127.0.0.1, and tokens with exactly the claims of Better Auth's jwt() plugin.
Plus the shared-secret kind. The interop test against a real Better Auth server is in
test_live_server.py.

Each test configures Better Auth by replacing better_auth.verifier (settings are read once
at import), with a clock of its own for the key set's refetch throttle.
"""

import hashlib
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import INVALID_TOKEN, free_port, send_body
from sqlmodel import Session, select

import better_auth
from main import app
from models import RevokedToken, User

ISSUER = "http://127.0.0.1:3000"  # Better Auth's base URL: its tokens' iss and aud
SHARED_SECRET = secrets.token_urlsafe(48)
KEY_SET_UNAVAILABLE = {"detail": "Better Auth's key set cannot be fetched; try again shortly"}


class SigningKey:
    """An Ed25519 key as Better Auth's jwt() plugin makes one, with its kid."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.kid = secrets.token_urlsafe(24)

    def public_jwk(self) -> dict:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "alg": "EdDSA", "kid": self.kid}


def better_auth_claims(
    sub: str, email: str = "ada@example.com", issued: datetime | None = None
) -> dict:
    """Exactly the claims of a jwt() plugin token (1.7.25): the user's fields, sub, iat,
    exp (15 minutes), iss and aud. No jti."""
    issued = issued or datetime.now(UTC)
    return {
        "iat": int(issued.timestamp()),
        "name": "Ada",
        "email": email,
        "emailVerified": False,
        "createdAt": "2026-03-01T12:00:00.000Z",
        "updatedAt": "2026-03-01T12:00:00.000Z",
        "id": sub,
        "sub": sub,
        "exp": int((issued + timedelta(minutes=15)).timestamp()),
        "iss": ISSUER,
        "aud": ISSUER,
    }


def sign(claims: dict, key: SigningKey, kid: str | None = None) -> str:
    # The plugin's header is {"alg": "EdDSA", "kid": ...}, without "typ".
    return jwt.encode(
        claims, key.private, algorithm="EdDSA", headers={"kid": kid or key.kid, "typ": None}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class KeySetServer:
    """Serves a JWKS on 127.0.0.1 and counts the requests for it. stall="silent" holds each
    request unanswered, stall="drip" sends its body one byte a second, as a Better Auth
    server that hangs or crawls would; either until release is set."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.body: bytes | None = None  # served instead of the keys, when set
        self.fetches = 0
        self.stall: str | None = None
        self.received = threading.Event()
        self.release = threading.Event()
        key_set = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key_set.fetches += 1
                key_set.received.set()
                body = key_set.body or json.dumps({"keys": key_set.keys}).encode()
                if key_set.stall == "silent":
                    key_set.release.wait(timeout=30)
                elif key_set.stall == "drip":
                    self.drip(body)
                else:
                    send_body(self, body, "application/json")

            def drip(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        if key_set.release.wait(timeout=1):
                            return
                except OSError:  # the client gave up and closed the connection
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/auth/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class MonotonicClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_set_server():
    server = KeySetServer()
    yield server
    server.close()


@pytest.fixture
def monotonic():
    return MonotonicClock()


def configure(monkeypatch, monotonic, url=None, jwks_url=None, secret=None) -> None:
    verifier = better_auth.BetterAuth(url, jwks_url, secret, clock=monotonic)
    monkeypatch.setattr(better_auth, "verifier", verifier)
    monkeypatch.setattr(better_auth, "logged_causes", set())


@pytest.fixture
def signing_key(client, key_set_server, monotonic, monkeypatch) -> SigningKey:
    """Better Auth configured with both kinds, and its key set serving one key."""
    key = SigningKey()
    key_set_server.keys = [key.public_jwk()]
    configure(monkeypatch, monotonic, ISSUER, key_set_server.url, SHARED_SECRET)
    return key


def me(client, token: str) -> dict:
    response = client.get("/api/auth/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def count_users(engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(User.id)).all())


# --- accounts ---


def test_the_first_token_creates_the_account_and_me_shows_both_ids(client, signing_key, engine):
    sub = (
        secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")[:32]
    )  # Better Auth's default form
    response = client.get(
        "/api/auth/me", headers=bearer(sign(better_auth_claims(sub), signing_key))
    )
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "id": body["id"],
        "email": None,
        "name": None,
        "created_at": body["created_at"],
        "better_auth_id": sub,
    }
    assert type(body["id"]) is int
    # Later tokens of the same sub are the same account.
    assert (
        me(
            client,
            sign(
                better_auth_claims(sub, issued=datetime.now(UTC) - timedelta(minutes=1)),
                signing_key,
            ),
        )["id"]
        == body["id"]
    )
    assert count_users(engine) == 1


@pytest.mark.parametrize(
    "sub", ["user_2f9c", "550e8400-e29b-41d4-a716-446655440000", "42", "a.b~c-d_e", "x" * 255]
)
def test_every_form_of_better_auth_id_reaches_its_tasks_by_that_id(client, signing_key, sub):
    token = sign(better_auth_claims(sub), signing_key)
    created = client.post(f"/api/{sub}/tasks", json={"title": "Buy milk"}, headers=bearer(token))
    assert created.status_code == 201
    task = created.json()
    assert task["user_id"] == me(client, token)["id"]  # task bodies keep our numeric ids
    assert created.headers["location"] == f"/api/{sub}/tasks/{task['id']}"
    listing = client.get(f"/api/{sub}/tasks", headers=bearer(token))
    assert listing.status_code == 200
    assert listing.json() == [task]


def test_the_numeric_id_of_a_better_auth_account_works_for_its_owner(client, signing_key):
    token = sign(better_auth_claims("ba-user"), signing_key)
    numeric_id = me(client, token)["id"]
    created = client.post(
        f"/api/{numeric_id}/tasks", json={"title": "Buy milk"}, headers=bearer(token)
    )
    assert created.status_code == 201
    assert created.headers["location"] == f"/api/{numeric_id}/tasks/{created.json()['id']}"
    by_better_auth_id = client.get(
        f"/api/ba-user/tasks/{created.json()['id']}", headers=bearer(token)
    )
    assert by_better_auth_id.status_code == 200
    assert by_better_auth_id.json() == created.json()


def test_a_better_auth_user_with_a_local_accounts_email_is_another_user(client, signing_key, alice):
    created = client.post(alice.tasks_url, json={"title": "Alice's"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    alices_task = created.json()
    token = sign(better_auth_claims("mallory", email=alice.email), signing_key)
    mallory = me(client, token)
    assert mallory["id"] != alice.id and mallory["email"] is None
    for path in (alice.tasks_url, f"{alice.tasks_url}/{alices_task['id']}"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 403
        assert response.json() == {"detail": "You can only access your own tasks"}
    # Her own path, another user's task id: a plain 404.
    response = client.get(f"/api/mallory/tasks/{alices_task['id']}", headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}
    for path in ("/api/mallory/tasks", f"/api/{mallory['id']}/tasks"):
        response = client.get(path, headers=alice.headers)
        assert response.status_code == 403
        assert response.json() == {"detail": "You can only access your own tasks"}
    alices_account = client.get("/api/auth/me", headers=alice.headers)
    assert (alices_account.status_code, alices_account.json()["email"]) == (200, alice.email)


def test_another_better_auth_users_path_is_403_by_either_form(client, signing_key):
    ada = sign(better_auth_claims("ada"), signing_key)
    grace = sign(better_auth_claims("grace"), signing_key)
    grace_id = me(client, grace)["id"]
    for path in ("/api/grace/tasks", f"/api/{grace_id}/tasks"):
        response = client.post(path, json={"title": "x"}, headers=bearer(ada))
        assert response.status_code == 403
        assert response.json() == {"detail": "You can only access your own tasks"}
    graces = client.get("/api/grace/tasks", headers=bearer(grace))
    assert (graces.status_code, graces.json()) == (200, [])


def test_two_first_requests_of_a_new_user_at_once_create_one_account(client, signing_key, engine):
    tokens = [
        sign(
            better_auth_claims("newcomer", issued=datetime.now(UTC) - timedelta(seconds=n)),
            signing_key,
        )
        for n in range(8)
    ]
    start = threading.Barrier(len(tokens))

    def first_request(token: str) -> tuple[int, int]:
        start.wait(timeout=10)
        response = client.get("/api/newcomer/tasks", headers=bearer(token))
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        answers = list(pool.map(first_request, tokens))
    assert answers == [(200, [])] * len(tokens)
    assert len({me(client, token)["id"] for token in tokens}) == 1
    assert count_users(engine) == 1


def test_the_shared_secret_kind_is_another_account_than_the_key_set_kind(client, signing_key):
    hs256 = jwt.encode(
        {
            "sub": "ada",
            "email": "ada@example.com",
            "exp": datetime.now(UTC) + timedelta(minutes=5),
        },
        SHARED_SECRET,
        algorithm="HS256",
    )
    eddsa = sign(better_auth_claims("ada"), signing_key)
    shared, key_set = me(client, hs256), me(client, eddsa)
    assert shared["better_auth_id"] == key_set["better_auth_id"] == "ada"
    assert shared["id"] != key_set["id"]
    task = client.post(
        "/api/ada/tasks", json={"title": "From the shared-secret token"}, headers=bearer(hs256)
    )
    assert task.status_code == 201
    key_set_accounts = client.get("/api/ada/tasks", headers=bearer(eddsa))
    assert (key_set_accounts.status_code, key_set_accounts.json()) == (200, [])


def test_an_account_without_a_password_here_cannot_change_or_delete_it_here(client, signing_key):
    token = sign(better_auth_claims("ada"), signing_key)
    created = client.post("/api/ada/tasks", json={"title": "kept"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    detail = (
        "This account signs in with Better Auth, which keeps its password: "
        "change the password or delete the user there"
    )
    change = client.put(
        "/api/auth/password",
        json={"current_password": "anything", "new_password": "a brand new one"},
        headers=bearer(token),
    )
    assert change.status_code == 403
    assert change.json() == {"detail": detail}
    deletion = client.request(
        "DELETE", "/api/auth/me", json={"password": "anything"}, headers=bearer(token)
    )
    assert deletion.status_code == 403
    assert deletion.json() == {"detail": detail}
    listing = client.get("/api/ada/tasks", headers=bearer(token))
    assert (listing.status_code, [task["title"] for task in listing.json()]) == (200, ["kept"])


def test_logout_revokes_a_better_auth_token_by_its_hash(client, signing_key, engine):
    token = sign(better_auth_claims("ada"), signing_key)
    other = sign(
        better_auth_claims("ada", issued=datetime.now(UTC) - timedelta(seconds=5)),
        signing_key,
    )
    response = client.post("/api/auth/logout", headers=bearer(token))
    assert response.status_code == 204
    assert response.content == b""
    for method, path in (
        ("GET", "/api/auth/me"),
        ("GET", "/api/ada/tasks"),
        ("POST", "/api/auth/logout"),
    ):
        refused = client.request(method, path, headers=bearer(token))
        assert refused.status_code == 401
        assert refused.json() == INVALID_TOKEN
        assert refused.headers["www-authenticate"] == "Bearer"
    # PyJWT also accepts the signature with padding appended: the same token, still out.
    for respelt in (token + "=", token + "=="):
        refused = client.get("/api/auth/me", headers=bearer(respelt))
        assert (refused.status_code, refused.json()) == (401, INVALID_TOKEN)
    assert me(client, other)["better_auth_id"] == "ada"  # her other tokens keep working
    signed_part = token.rsplit(".", 1)[0]
    with Session(engine) as session:
        assert session.exec(select(RevokedToken.jti)).all() == [
            hashlib.sha256(signed_part.encode()).hexdigest()
        ]


def test_a_logged_out_token_stays_out_while_the_clock_skew_allowance_still_accepts_it(
    client, signing_key
):
    just_expired = int(time.time()) - better_auth.CLOCK_SKEW_SECONDS // 2
    token = jwt.encode({"sub": "ada", "exp": just_expired}, SHARED_SECRET, algorithm="HS256")
    assert (
        me(client, token)["better_auth_id"] == "ada"
    )  # another machine's clock may be behind ours
    response = client.post(
        "/api/auth/logout", headers=bearer(token)
    )  # it also forgets tokens past their expiry
    assert (response.status_code, response.content) == (204, b"")
    refused = client.get("/api/auth/me", headers=bearer(token))
    assert (refused.status_code, refused.json()) == (401, INVALID_TOKEN)


# --- every task route, filter, sort, page and error, for both kinds of caller ---


def normalised(response, task_ids: dict, path_user: str) -> tuple:
    """A response with task ids numbered in order of appearance and the caller's ids
    replaced, so a local and a Better Auth caller's answers can be compared."""

    def task_number(task_id: int) -> str:
        return f"task{task_ids.setdefault(task_id, len(task_ids) + 1)}"

    def rewrite(value):
        if isinstance(value, dict):
            return {
                key: task_number(item)
                if key == "id"
                else "<me>"
                if key == "user_id"
                else rewrite(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [rewrite(item) for item in value]
        return value

    body = rewrite(response.json()) if response.content else None
    location = response.headers.get("location")
    if location is not None:
        prefix, task_id = location.rsplit("/", 1)
        location = (prefix.replace(f"/api/{path_user}/", "/api/<path>/"), task_number(int(task_id)))
    return response.status_code, body, response.headers.get("x-total-count"), location


def exercise_task_routes(client, path_user: str, headers: dict, other_path: str) -> list[tuple]:
    """Every task route with filters, sorting, paging and errors, in a fixed order."""
    url = f"/api/{path_user}/tasks"
    task_ids: dict = {}
    seen = []

    def call(method: str, path: str, **kwargs) -> dict | list | None:
        response = client.request(method, path, headers=headers, **kwargs)
        seen.append(normalised(response, task_ids, path_user))
        return response.json() if response.content else None

    specs = [
        {
            "title": "Pay rent",
            "priority": "high",
            "due_date": "2026-03-05T00:00:00Z",
            "tags": ["Home"],
            "recurrence": "monthly",
        },
        {"title": "buy milk", "description": "2% fat", "priority": "low", "tags": ["errand"]},
        {"title": "Call mum", "due_date": "2026-03-02T00:00:00Z", "tags": ["home", "family"]},
        {"title": "Ship_it", "description": "100% done", "priority": "high"},
    ]
    created = [call("POST", url, json=spec) for spec in specs]
    for params in (
        {},
        {"status": "pending"},
        {"priority": "high"},
        {"tag": "home"},
        {"q": "MILK"},
        {"q": "%"},
        {"due_before": "2026-03-03T00:00:00Z"},
        {"due_after": "2026-03-03T00:00:00Z"},
        {"sort": "title"},
        {"sort": "due_date"},
        {"sort": "priority", "order": "asc"},
        {"sort": "updated"},
        {"limit": 2},
        {"limit": 2, "offset": 2},
        {"offset": 10},
        {"limit": 0},
        {"sort": "colour"},
    ):
        call("GET", url, params=params)
    first, second = created[0]["id"], created[1]["id"]
    call("GET", f"{url}/{first}")
    call("PUT", f"{url}/{second}", json={"title": "Buy oat milk", "tags": ["shop"]})
    call("PATCH", f"{url}/{second}", json={"description": None, "priority": "medium"})
    call("PATCH", f"{url}/{second}", json={"recurrence": "daily"})  # no due date: 422
    call("PATCH", f"{url}/{first}/complete")  # a recurring task: its next occurrence appears
    call("PATCH", f"{url}/{first}/complete", json={"completed": True})
    call("GET", url, params={"status": "completed"})
    call("GET", url)
    call("DELETE", f"{url}/{second}")
    call("GET", f"{url}/{second}")
    call("DELETE", f"{url}/{second}")
    call("POST", url, json={"title": ""})
    call("POST", url, json={"title": "x", "recurrence": "weekly"})
    call("GET", f"{url}/0")
    call("GET", f"{other_path}/{first}")
    call("POST", other_path, json={"title": "x"})
    return seen


def test_every_task_route_answers_a_better_auth_caller_as_a_local_one(
    client, signing_key, clock, alice, bob
):
    local = exercise_task_routes(client, str(alice.id), alice.headers, bob.tasks_url)
    token = sign(better_auth_claims("ada"), signing_key)
    numeric_id = me(client, token)["id"]
    by_better_auth_id = exercise_task_routes(client, "ada", bearer(token), bob.tasks_url)
    token_2 = sign(better_auth_claims("grace"), signing_key)
    by_numeric_id = exercise_task_routes(
        client, str(me(client, token_2)["id"]), bearer(token_2), "/api/ada/tasks"
    )
    assert by_better_auth_id == local
    assert by_numeric_id == local
    assert [status for status, *_ in local].count(201) == 4  # the script did reach the handlers
    assert numeric_id != alice.id


# --- the key set ---


def test_the_key_set_is_fetched_on_first_use_and_then_cached(client, signing_key, key_set_server):
    assert (
        key_set_server.fetches == 0
    )  # nothing fetched at start-up: Better Auth may start after us
    for n in range(5):
        me(client, sign(better_auth_claims(f"user{n}"), signing_key))
    assert key_set_server.fetches == 1


def test_a_key_removed_from_the_key_set_is_trusted_until_the_key_set_is_max_age_old(
    client, signing_key, key_set_server, monotonic
):
    token = sign(better_auth_claims("ada"), signing_key)
    me(client, token)
    rotated = SigningKey()
    key_set_server.keys = [rotated.public_jwk()]  # the old key is withdrawn
    monotonic.now += better_auth.KEY_SET_MAX_AGE_SECONDS - 1
    assert (me(client, token)["better_auth_id"], key_set_server.fetches) == ("ada", 1)
    monotonic.now += 1
    response = client.get("/api/auth/me", headers=bearer(token))
    assert (response.status_code, response.json(), key_set_server.fetches) == (
        401,
        INVALID_TOKEN,
        2,
    )
    assert me(client, sign(better_auth_claims("ada"), rotated))["better_auth_id"] == "ada"
    assert key_set_server.fetches == 2


def test_a_rotated_key_is_fetched_when_a_token_names_it(
    client, signing_key, key_set_server, monotonic
):
    me(client, sign(better_auth_claims("ada"), signing_key))
    rotated = SigningKey()
    key_set_server.keys = [
        rotated.public_jwk(),
        signing_key.public_jwk(),
    ]  # Better Auth keeps the old key a while
    monotonic.now += better_auth.REFETCH_INTERVAL_SECONDS
    assert me(client, sign(better_auth_claims("ada"), rotated))["better_auth_id"] == "ada"
    assert key_set_server.fetches == 2
    assert me(client, sign(better_auth_claims("ada"), signing_key))["better_auth_id"] == "ada"
    assert key_set_server.fetches == 2


def test_made_up_key_ids_refetch_the_key_set_at_most_once_per_interval(
    client, signing_key, key_set_server, monotonic
):
    me(client, sign(better_auth_claims("ada"), signing_key))
    impostor = SigningKey()
    for round_number in range(3):
        for _ in range(30):
            token = sign(better_auth_claims("ada"), impostor, kid=secrets.token_urlsafe(12))
            response = client.get("/api/auth/me", headers=bearer(token))
            assert response.status_code == 401
            assert response.json() == INVALID_TOKEN
        # The first made-up kid of each interval refetches; the other 29 do not.
        assert key_set_server.fetches == 1 + round_number
        monotonic.now += better_auth.REFETCH_INTERVAL_SECONDS
    assert (
        me(client, sign(better_auth_claims("ada"), signing_key))["better_auth_id"] == "ada"
    )  # still cached


def test_an_unreachable_key_set_is_503_while_local_tokens_and_health_are_served(
    client, monotonic, monkeypatch, alice
):
    refused_url = f"http://127.0.0.1:{free_port()}/api/auth/jwks"  # nothing listens there
    configure(monkeypatch, monotonic, ISSUER, refused_url)
    token = sign(better_auth_claims("ada"), SigningKey())
    for _ in range(2):  # the second within the refetch interval: answered without a new attempt
        response = client.get("/api/ada/tasks", headers=bearer(token))
        assert response.status_code == 503
        assert response.json() == KEY_SET_UNAVAILABLE
        assert 1 <= int(response.headers["retry-after"]) <= better_auth.REFETCH_INTERVAL_SECONDS
    health = client.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    local = client.get(alice.tasks_url, headers=alice.headers)
    assert (local.status_code, local.json()) == (200, [])


@pytest.mark.parametrize(
    "body", [b"not json", b'{"keys": 5}', b"[" * 50_000], ids=["text", "no list", "deep"]
)
def test_a_key_set_that_cannot_be_read_is_503(client, monotonic, monkeypatch, key_set_server, body):
    configure(monkeypatch, monotonic, ISSUER, key_set_server.url)
    key_set_server.body = body
    response = client.get(
        "/api/auth/me", headers=bearer(sign(better_auth_claims("ada"), SigningKey()))
    )
    assert (response.status_code, response.json()) == (503, KEY_SET_UNAVAILABLE)


def test_a_key_set_that_appears_later_is_fetched_after_the_retry_interval(
    client, monotonic, monkeypatch, key_set_server
):
    key = SigningKey()
    configure(monkeypatch, monotonic, ISSUER, key_set_server.url)
    key_set_server.stall = "silent"  # Better Auth is not answering yet
    monkeypatch.setattr(better_auth, "FETCH_TIMEOUT_SECONDS", 0.2)
    token = sign(better_auth_claims("ada"), key)
    response = client.get("/api/auth/me", headers=bearer(token))
    assert response.status_code == 503
    assert response.json() == KEY_SET_UNAVAILABLE
    key_set_server.stall = None
    key_set_server.keys = [key.public_jwk()]
    key_set_server.release.set()
    monotonic.now += better_auth.REFETCH_INTERVAL_SECONDS
    assert me(client, token)["better_auth_id"] == "ada"
    assert key_set_server.fetches == 2


@pytest.mark.parametrize("stall", ["silent", "drip"], ids=["never answers", "drips its body"])
def test_a_stuck_key_set_fetch_is_503_by_the_deadline_while_other_requests_are_served(
    client, signing_key, key_set_server, monotonic, alice, stall
):
    key_set_server.stall = stall
    # Three kids, the key set's (tokens[0]'s) and two unknown ones: all wait for the one fetch.
    kids = [signing_key.kid, "kid1", "kid2"]
    tokens = [sign(better_auth_claims(f"user{n}"), signing_key, kid=kids[n % 3]) for n in range(12)]
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        started = time.monotonic()
        first = pool.submit(client.get, "/api/auth/me", headers=bearer(tokens[0]))
        assert key_set_server.received.wait(timeout=10)
        # More Better Auth requests while the fetch is stuck: they wait for it.
        others = [pool.submit(client.get, "/api/auth/me", headers=bearer(t)) for t in tokens[1:]]
        # Our own tokens and /health need no key set: answered at once meanwhile.
        unaffected = (("/health", {}, {"status": "ok"}), (alice.tasks_url, alice.headers, []))
        for path, headers, body in unaffected:
            asked = time.monotonic()
            response = client.get(path, headers=headers)
            assert (response.status_code, response.json()) == (200, body)
            assert time.monotonic() - asked < 1
        assert not first.done()
        responses = [request.result(timeout=30) for request in [first, *others]]
        elapsed = time.monotonic() - started
    assert elapsed < 4  # FETCH_TIMEOUT_SECONDS, and a margin
    for response in responses:
        assert (response.status_code, response.json()) == (503, KEY_SET_UNAVAILABLE)
        assert 1 <= int(response.headers["retry-after"]) <= better_auth.REFETCH_INTERVAL_SECONDS
    assert key_set_server.fetches == 1
    # Better Auth recovers: the first request after the refetch interval fetches the key set.
    key_set_server.stall = None
    monotonic.now += better_auth.REFETCH_INTERVAL_SECONDS
    assert me(client, tokens[0])["better_auth_id"] == "user0"
    assert key_set_server.fetches == 2


def test_a_cached_key_is_used_at_once_while_another_kids_fetch_is_stuck(
    client, signing_key, key_set_server, monotonic
):
    token = sign(better_auth_claims("ada"), signing_key)
    me(client, token)  # its key is cached
    key_set_server.stall = "silent"
    key_set_server.received.clear()
    monotonic.now += better_auth.REFETCH_INTERVAL_SECONDS
    unknown_kid = sign(better_auth_claims("grace"), SigningKey())
    with ThreadPoolExecutor(max_workers=1) as pool:
        stuck = pool.submit(client.get, "/api/auth/me", headers=bearer(unknown_kid))
        assert key_set_server.received.wait(timeout=10)
        asked = time.monotonic()
        assert me(client, token)["better_auth_id"] == "ada"
        assert time.monotonic() - asked < 1
        assert not stuck.done()
        response = stuck.result(timeout=30)
    assert (response.status_code, response.json()) == (503, KEY_SET_UNAVAILABLE)
    assert key_set_server.fetches == 2


def test_a_request_waiting_for_a_cancelled_fetch_fetches_the_key_set_itself(
    client, signing_key, key_set_server
):
    """A server may cancel a request whose client hung up, in the middle of its key set fetch.
    A request that was waiting for that fetch then fetches the key set itself: its valid token
    is never a 401. Both requests go to the app on the test client's event loop, so that the
    first one's task can be cancelled."""
    key_set_server.stall = "silent"
    token = sign(better_auth_claims("ada"), signing_key)
    key_set = better_auth.verifier.key_set
    responses = []

    async def fetching_request(http: httpx2.AsyncClient, hung_up: anyio.CancelScope) -> None:
        with hung_up:
            await http.get("/api/auth/me", headers=bearer(token))

    async def waiting_request(http: httpx2.AsyncClient) -> None:
        responses.append(await http.get("/api/auth/me", headers=bearer(token)))

    async def hang_up_while_another_waits() -> bool:
        hung_up = anyio.CancelScope()
        transport = httpx2.ASGITransport(app=app)
        async with (
            httpx2.AsyncClient(transport=transport, base_url="http://test") as http,
            anyio.create_task_group() as requests,
        ):
            requests.start_soon(fetching_request, http, hung_up)
            await anyio.to_thread.run_sync(key_set_server.received.wait, 10)
            requests.start_soon(waiting_request, http)
            with anyio.fail_after(2):  # within FETCH_TIMEOUT_SECONDS: the fetch is still stuck
                while key_set.fetching.statistics().tasks_waiting == 0:
                    await anyio.sleep(0.01)
            key_set_server.stall = None  # the next fetch is answered
            hung_up.cancel()
        return hung_up.cancelled_caught

    assert client.portal.call(hang_up_while_another_waits)
    assert len(responses) == 1
    assert (responses[0].status_code, responses[0].json()["better_auth_id"]) == (200, "ada")
    assert key_set_server.fetches == 2


# --- wrong tokens ---


def hs256_signed_with_the_public_key(key: SigningKey) -> str:
    """The classic confusion: HS256 with the public key (its JWK's x) as the secret."""
    public = key.public_jwk()["x"].encode()
    return jwt.encode(
        better_auth_claims("ada"), public, algorithm="HS256", headers={"kid": key.kid}
    )


def alg_none(key: SigningKey) -> str:
    return jwt.encode(better_auth_claims("ada"), None, algorithm="none", headers={"kid": key.kid})


def tampered(key: SigningKey) -> str:
    header, payload, signature = sign(better_auth_claims("ada"), key).split(".")
    claims = {**better_auth_claims("ada"), "sub": "grace"}
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return ".".join((header, forged_payload, signature))


def expired(key: SigningKey) -> str:
    return sign(better_auth_claims("ada", issued=datetime.now(UTC) - timedelta(hours=1)), key)


def claims_with(**changes) -> dict:
    claims = better_auth_claims("ada")
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


WRONG_TOKENS = {
    "bad signature": tampered,
    "another server's key under our kid": lambda key: sign(
        better_auth_claims("ada"), SigningKey(), kid=key.kid
    ),
    "another server's key and kid": lambda key: sign(better_auth_claims("ada"), SigningKey()),
    "wrong iss": lambda key: sign(claims_with(iss="http://127.0.0.1:4000"), key),
    "wrong aud": lambda key: sign(claims_with(aud="http://127.0.0.1:4000"), key),
    "no iss": lambda key: sign(claims_with(iss=None), key),
    "no aud": lambda key: sign(claims_with(aud=None), key),
    "expired": expired,
    "no exp": lambda key: sign(claims_with(exp=None), key),
    "no sub": lambda key: sign(claims_with(sub=None), key),
    "empty sub": lambda key: sign(claims_with(sub=""), key),
    "numeric sub": lambda key: sign(claims_with(sub=42), key),
    "sub not usable in a path": lambda key: sign(claims_with(sub="a/b"), key),
    "sub over 255 characters": lambda key: sign(claims_with(sub="a" * 256), key),
    "alg none": alg_none,
    "HS256 with the public key": hs256_signed_with_the_public_key,
    "no kid": lambda key: jwt.encode(better_auth_claims("ada"), key.private, algorithm="EdDSA"),
    "not a JWT": lambda key: "not-a-jwt",
}


@pytest.mark.parametrize("make_token", WRONG_TOKENS.values(), ids=WRONG_TOKENS.keys())
def test_wrong_better_auth_tokens_are_401(
    client, monotonic, monkeypatch, key_set_server, make_token
):
    key = SigningKey()
    key_set_server.keys = [key.public_jwk()]
    configure(
        monkeypatch, monotonic, ISSUER, key_set_server.url
    )  # no shared secret: HS256 is never accepted
    token = make_token(key)
    for method, path in (
        ("GET", "/api/auth/me"),
        ("GET", "/api/ada/tasks"),
        ("POST", "/api/auth/logout"),
    ):
        response = client.request(method, path, headers=bearer(token))
        assert response.status_code == 401
        assert response.json() == INVALID_TOKEN
        assert response.headers["www-authenticate"] == "Bearer"


SHARED_SECRET_TOKENS = {
    "another secret": lambda claims: jwt.encode(
        claims, secrets.token_urlsafe(48), algorithm="HS256"
    ),
    "expired": lambda claims: jwt.encode(
        {**claims, "exp": 1_700_000_000}, SHARED_SECRET, algorithm="HS256"
    ),
    "no exp": lambda claims: jwt.encode({"sub": "ada"}, SHARED_SECRET, algorithm="HS256"),
    "no sub": lambda claims: jwt.encode({"exp": claims["exp"]}, SHARED_SECRET, algorithm="HS256"),
    "empty sub": lambda claims: jwt.encode({**claims, "sub": ""}, SHARED_SECRET, algorithm="HS256"),
    "HS512": lambda claims: jwt.encode(claims, SHARED_SECRET, algorithm="HS512"),
}


@pytest.mark.parametrize(
    "make_token", SHARED_SECRET_TOKENS.values(), ids=SHARED_SECRET_TOKENS.keys()
)
def test_wrong_shared_secret_tokens_are_401(client, monotonic, monkeypatch, make_token):
    configure(monkeypatch, monotonic, secret=SHARED_SECRET)
    claims = {"sub": "ada", "email": "ada@example.com", "exp": int(time.time()) + 300}
    assert (
        me(client, jwt.encode(claims, SHARED_SECRET, algorithm="HS256"))["better_auth_id"] == "ada"
    )
    response = client.get("/api/ada/tasks", headers=bearer(make_token(claims)))
    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_better_auth_token_is_refused_when_better_auth_is_not_configured(
    client, key_set_server, signing_key, monkeypatch, monotonic
):
    configure(monkeypatch, monotonic)  # as with no BETTER_AUTH_* variable set
    for token in (
        sign(better_auth_claims("ada"), signing_key),
        jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, SHARED_SECRET),
    ):
        response = client.get("/api/ada/tasks", headers=bearer(token))
        assert response.status_code == 401
        assert response.json() == INVALID_TOKEN
    assert key_set_server.fetches == 0


def test_an_issuer_spelt_differently_is_logged_once_without_the_token(
    client, monotonic, monkeypatch, key_set_server, caplog
):
    key = SigningKey()
    key_set_server.keys = [key.public_jwk()]
    configure(monkeypatch, monotonic, "http://localhost:3000", key_set_server.url)
    tokens = [
        sign(better_auth_claims(f"user{n}"), key) for n in range(3)
    ]  # iss http://127.0.0.1:3000
    with caplog.at_level(logging.WARNING):
        for token in tokens:
            response = client.get("/api/auth/me", headers=bearer(token))
            assert response.status_code == 401
            assert response.json() == INVALID_TOKEN
    warnings = [
        record.getMessage() for record in caplog.records if "Better Auth" in record.getMessage()
    ]
    assert len(warnings) == 1
    assert "'http://127.0.0.1:3000'" in warnings[0] and "'http://localhost:3000'" in warnings[0]
    assert not any(token in caplog.text for token in tokens)


def test_the_user_id_path_parameter_is_a_string_pattern_in_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    parameters = response.json()["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]
    user_id = next(parameter for parameter in parameters if parameter["name"] == "user_id")
    assert user_id["in"] == "path" and user_id["required"] is True
    assert user_id["schema"] == {
        "type": "string",
        "pattern": "^[A-Za-z0-9._~-]{1,255}$",
        "title": "User Id",
        "description": "Your numeric id, or, for a Better Auth account, its Better Auth user id",
        "examples": ["1"],
    }
