"""The v1 contract, driven through HTTP: auth, ownership, validation, tasks, errors, CORS
and concurrency. Fixtures (client, clock, alice, bob) live in conftest.py."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlmodel import Session, select

import auth
import db
from config import settings
from conftest import PASSWORD, sign_up
from models import Task, TaskTag, User

UTC_OFFSET = re.compile(r"(Z|\+00:00)$")


def create(client, account, **fields):
    response = client.post(account.tasks_url, json={"title": "Task", **fields}, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()


def titles(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


# --- sign up and log in ---


def test_signup_returns_token_and_public_user(client):
    response = client.post(
        "/api/auth/signup",
        json={"email": "Ada@Example.COM", "password": PASSWORD, "name": "Ada"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 60 * 60
    assert set(body["user"]) == {"id", "email", "name", "created_at", "better_auth_id"}
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Ada"
    assert UTC_OFFSET.search(body["user"]["created_at"])
    assert PASSWORD not in response.text and "$2b$" not in response.text
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == body["user"]


def test_signup_with_a_taken_email_in_any_case_is_409(client, alice):
    response = client.post("/api/auth/signup", json={"email": "ALICE@example.com", "password": PASSWORD})
    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered"}


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"password": PASSWORD},
        {"email": "a@example.com"},
        {"email": "a@example.com", "password": PASSWORD, "name": "x" * 101},
        {"email": "a@example.com", "password": PASSWORD, "name": "   "},
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
def test_passwords_of_8_to_72_utf8_bytes_work_at_signup_and_login(client, password):
    assert len(password.encode()) in (8, 72)
    sign_up(client, "bytes@example.com", password)
    response = client.post("/api/auth/login", json={"email": "bytes@example.com", "password": password})
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "bytes@example.com"


@pytest.mark.parametrize(
    "password",
    ["a" * 73, "é" * 36 + "a", "€" * 24 + "a", "é" * 37, "a" * 7, "€" * 2],
    ids=["73-ascii", "73-two-byte", "73-three-byte", "74-two-byte", "7-ascii", "6-three-byte"],
)
def test_signup_rejects_passwords_outside_8_to_72_bytes(client, password):
    response = client.post("/api/auth/signup", json={"email": "a@example.com", "password": password})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "8 to 72 bytes" in message
    assert password not in response.text  # validation errors never echo a password


def test_login_with_json_and_with_the_oauth2_form_at_the_token_url(client, alice):
    response = client.post("/api/auth/login", json={"email": "ALICE@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["user"]["id"] == alice.id

    scheme = client.get("/openapi.json").json()["components"]["securitySchemes"]
    token_url = scheme["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"]
    form = client.post(token_url, data={"username": "alice@example.com", "password": PASSWORD})
    assert form.status_code == 200
    token = form.json()["access_token"]
    # What Swagger UI does after Authorize: call a task route with the token it got.
    tasks = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert tasks.status_code == 200
    assert tasks.json() == []


@pytest.mark.parametrize(
    "email, password",
    [
        ("alice@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
        ("alice@example.com", PASSWORD + "x" * 80),  # over bcrypt's limit: a failed login
        ("alice@example.com", PASSWORD + "é" * 40),
    ],
    ids=["wrong-password", "unknown-email", "too-long", "too-long-multibyte"],
)
def test_failed_logins_get_one_message(client, alice, email, password):
    for path, payload in [
        ("/api/auth/login", {"json": {"email": email, "password": password}}),
        ("/api/auth/token", {"data": {"username": email, "password": password}}),
    ]:
        response = client.post(path, **payload)
        assert response.status_code == 401
        assert response.json() == {"detail": "Incorrect email or password"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_73_byte_password_does_not_log_in_as_its_first_72_bytes(client):
    password = "é" * 36  # 72 bytes
    sign_up(client, "trunc@example.com", password)
    response = client.post("/api/auth/login", json={"email": "trunc@example.com", "password": password + "!"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Incorrect email or password"}


def test_unknown_email_still_costs_one_bcrypt_verification(client, alice, monkeypatch):
    checked = []
    real_checkpw = auth.bcrypt.checkpw
    monkeypatch.setattr(auth.bcrypt, "checkpw", lambda *args: checked.append(1) or real_checkpw(*args))
    for email in ("nobody@example.com", "alice@example.com"):
        response = client.post("/api/auth/login", json={"email": email, "password": "wrong password"})
        assert response.status_code == 401
        assert response.json() == {"detail": "Incorrect email or password"}
    assert len(checked) == 2


def test_passwords_are_stored_as_bcrypt_hashes(client, alice, engine):
    with Session(engine) as session:
        stored = session.exec(select(User.password_hash)).one()
    assert stored.startswith("$2b$04$")  # BCRYPT_ROUNDS=4 in tests
    assert PASSWORD not in stored


# --- tokens ---


def forge(claims: dict, secret: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret or settings.jwt_secret, algorithm=algorithm)


def fresh_claims(account) -> dict:
    """The claims of the account's real token, freshly dated: valid until a test breaks one."""
    now = datetime.now(timezone.utc)
    claims = jwt.decode(account.token, options={"verify_signature": False})
    return {**claims, "iat": now, "exp": now + timedelta(minutes=5)}


def without(claims: dict, name: str) -> dict:
    return {key: value for key, value in claims.items() if key != name}


def alg_none_token(claims: dict) -> str:
    return jwt.encode(claims, None, algorithm="none")  # unsigned: must never be accepted


def tampered_sub_token(account, other_id: int) -> str:
    header, _, signature = account.token.split(".")
    claims = jwt.decode(account.token, options={"verify_signature": False})
    claims["sub"] = str(other_id)
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{payload}.{signature}"


FORGERIES = {
    "alg-none": lambda alice, bob: alg_none_token(fresh_claims(bob)),
    "wrong-secret": lambda alice, bob: forge(fresh_claims(bob), secret="x" * 48),
    "hs512-with-our-secret": lambda alice, bob: forge(fresh_claims(bob), algorithm="HS512"),
    "expired": lambda alice, bob: forge(
        {**fresh_claims(bob), "iat": datetime(2020, 1, 1), "exp": datetime(2020, 1, 1, 1)}
    ),
    "missing-exp": lambda alice, bob: forge(without(fresh_claims(bob), "exp")),
    "missing-iat": lambda alice, bob: forge(without(fresh_claims(bob), "iat")),
    "missing-sub": lambda alice, bob: forge(without(fresh_claims(bob), "sub")),
    "non-numeric-sub": lambda alice, bob: forge({**fresh_claims(bob), "sub": "bob"}),
    "huge-sub": lambda alice, bob: forge({**fresh_claims(bob), "sub": str(2**64)}),
    "tampered-sub": lambda alice, bob: tampered_sub_token(alice, bob.id),
    "garbage": lambda alice, bob: "not.a.token",
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_tokens_are_401(client, alice, bob, forgery):
    token = FORGERIES[forgery](alice, bob)
    for path in ("/api/auth/me", bob.tasks_url):
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.json() == {"detail": "Could not validate credentials"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_forging_helper_makes_valid_tokens_until_a_claim_is_broken(client, bob):
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {forge(fresh_claims(bob))}"})
    assert response.status_code == 200
    assert response.json()["id"] == bob.id


def test_missing_token_is_401_not_authenticated(client, alice):
    for path in ("/api/auth/me", alice.tasks_url, f"{alice.tasks_url}/1"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_token_of_a_deleted_user_is_401(client, alice, engine):
    with Session(engine) as session:
        session.delete(session.get(User, alice.id))
        session.commit()
    response = client.get("/api/auth/me", headers=alice.headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}


def test_token_claims_are_hs256_with_sub_iat_and_exp(client, alice):
    assert jwt.get_unverified_header(alice.token)["alg"] == "HS256"
    claims = jwt.decode(alice.token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == str(alice.id)
    assert claims["exp"] - claims["iat"] == 60 * 60


# --- ownership: 403 for another user's path, 404 for another user's task ---

EVERY_TASK_ROUTE = [
    ("GET", "/{id}", None),
    ("PUT", "/{id}", {"title": "mine now"}),
    ("PATCH", "/{id}", {"title": "mine now"}),
    ("DELETE", "/{id}", None),
    ("PATCH", "/{id}/complete", None),
]


@pytest.mark.parametrize("method, suffix, body", EVERY_TASK_ROUTE)
def test_another_users_task_is_404_and_unchanged(client, alice, bob, method, suffix, body):
    bobs = create(client, bob, title="bob's secret")
    url = alice.tasks_url + suffix.format(id=bobs["id"])
    response = client.request(method, url, json=body, headers=alice.headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}
    unchanged = client.get(f"{bob.tasks_url}/{bobs['id']}", headers=bob.headers)
    assert unchanged.status_code == 200
    assert unchanged.json() == bobs


@pytest.mark.parametrize(
    "method, suffix, body", [("GET", "", None), ("POST", "", {"title": "x"}), *EVERY_TASK_ROUTE]
)
def test_another_users_path_is_403(client, alice, bob, method, suffix, body):
    bobs = create(client, bob)
    response = client.request(
        method, bob.tasks_url + suffix.format(id=bobs["id"]), json=body, headers=alice.headers
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "You can only access your own tasks"}
    assert titles(client.get(bob.tasks_url, headers=bob.headers)) == ["Task"]


@pytest.mark.parametrize("task_id", ["abc", "1.5", "0", "-1", str(2**63), str(2**64)])
def test_bad_task_ids_are_422(client, alice, task_id):
    for method in ("GET", "DELETE", "PUT"):
        response = client.request(method, f"{alice.tasks_url}/{task_id}", json={}, headers=alice.headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "task_id"]


@pytest.mark.parametrize("user_id", ["abc", "0", "-5", "2", str(2**64), "a" * 255])
def test_a_user_id_that_is_not_the_callers_is_403(client, alice, user_id):
    response = client.get(f"/api/{user_id}/tasks", headers=alice.headers)
    assert response.status_code == 403
    assert response.json() == {"detail": "You can only access your own tasks"}


# Longer than 255 characters, or outside [A-Za-z0-9._~-]: no account can have such an id.
@pytest.mark.parametrize("user_id", ["a" * 256, "a%20b", "a!b", "%C3%A9", "1%00"])
def test_a_user_id_that_can_never_be_valid_is_422(client, alice, user_id):
    response = client.get(f"/api/{user_id}/tasks", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


def test_a_missing_task_of_ones_own_is_404(client, alice):
    response = client.get(f"{alice.tasks_url}/{2**63 - 1}", headers=alice.headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}


# --- creating and reading tasks ---


def test_create_returns_the_task_with_location_and_defaults(client, alice, clock):
    response = client.post(alice.tasks_url, json={"title": "  Buy milk  "}, headers=alice.headers)
    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"{alice.tasks_url}/{task['id']}"
    assert task == {
        "id": task["id"],
        "user_id": alice.id,
        "title": "Buy milk",
        "description": None,
        "completed": False,
        "priority": "medium",
        "due_date": None,
        "tags": [],
        "recurrence": "none",
        "created_at": "2026-03-01T12:00:00Z",
        "updated_at": "2026-03-01T12:00:00Z",
        "completed_at": None,
    }
    fetched = client.get(response.headers["location"], headers=alice.headers)
    assert fetched.status_code == 200
    assert fetched.json() == task


def test_tags_are_stripped_lower_cased_and_merged(client, alice):
    task = create(client, alice, tags=[" Home", "home ", "URGENT", "errand"])
    assert task["tags"] == ["errand", "home", "urgent"]
    fetched = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
    assert fetched.json()["tags"] == ["errand", "home", "urgent"]


def test_due_dates_are_stored_and_returned_in_utc(client, alice):
    naive = create(client, alice, due_date="2026-05-01T09:30:00")
    offset = create(client, alice, due_date="2026-05-01T09:30:00+02:00")
    assert naive["due_date"] == "2026-05-01T09:30:00Z"
    assert offset["due_date"] == "2026-05-01T07:30:00Z"
    for task in client.get(alice.tasks_url, headers=alice.headers).json():
        for field in ("due_date", "created_at", "updated_at"):
            assert UTC_OFFSET.search(task[field]), task[field]


def test_fields_a_client_may_not_set_never_take_effect(client, alice, bob, clock):
    sneaky = {
        "title": "mine",
        "id": 999,
        "user_id": bob.id,
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
        "completed_at": "2000-01-01T00:00:00Z",
    }
    created = client.post(alice.tasks_url, json=sneaky, headers=alice.headers)
    assert created.status_code == 201
    task = created.json()
    assert task["id"] != 999 and task["user_id"] == alice.id
    assert task["created_at"] == task["updated_at"] == "2026-03-01T12:00:00Z"
    assert task["completed_at"] is None

    clock.advance(hours=1)
    updated = client.put(f"{alice.tasks_url}/{task['id']}", json=sneaky, headers=alice.headers)
    assert updated.status_code == 200
    assert updated.json()["id"] == task["id"] and updated.json()["user_id"] == alice.id
    assert updated.json()["created_at"] == "2026-03-01T12:00:00Z"
    assert updated.json()["completed_at"] is None
    assert client.get(bob.tasks_url, headers=bob.headers).json() == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": "   "},
        {"title": ""},
        {"title": "x" * 201},
        {"title": 5},
        {"title": None},
        {"title": "a\u0000b"},
        {"title": "ok", "description": "x" * 1001},
        {"title": "ok", "priority": "urgent"},
        {"title": "ok", "recurrence": "yearly"},
        {"title": "ok", "recurrence": "daily"},
        {"title": "ok", "tags": [f"t{i}" for i in range(11)]},
        {"title": "ok", "tags": ["x" * 31]},
        {"title": "ok", "tags": ["  "]},
        {"title": "ok", "tags": "home"},
        {"title": "ok", "due_date": "tomorrow"},
        {"title": "ok", "due_date": "0001-01-01T00:00:00+05:00"},
        {"title": "ok", "due_date": "9999-12-31T23:00:00-05:00"},
    ],
)
def test_invalid_task_bodies_are_422_and_store_nothing(client, alice, body):
    response = client.post(alice.tasks_url, json=body, headers=alice.headers)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list) and response.json()["detail"][0]["msg"]
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


def test_boundary_lengths_are_accepted(client, alice):
    task = create(
        client,
        alice,
        title="x" * 200,
        description="d" * 1000,
        tags=["t" * 30] + [f"t{i}" for i in range(9)],
    )
    assert len(task["title"]) == 200 and len(task["description"]) == 1000
    assert len(task["tags"]) == 10


@pytest.mark.parametrize(
    "raw, content_type",
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"title=x", "text/plain")],
)
def test_malformed_bodies_are_422(client, alice, raw, content_type):
    response = client.post(
        alice.tasks_url, content=raw, headers={**alice.headers, "Content-Type": content_type}
    )
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


# --- listing: filters, search, sorting, paging ---


@pytest.fixture
def varied_tasks(client, alice, clock):
    """Five tasks created a minute apart, with every field varied."""
    specs = [
        {"title": "Pay rent", "priority": "high", "due_date": "2026-03-05T00:00:00Z", "tags": ["home"]},
        {"title": "buy milk", "description": "2% fat, 'organic'", "priority": "low", "tags": ["errand"]},
        {"title": "Call mum", "due_date": "2026-03-02T00:00:00Z", "tags": ["home", "family"]},
        {"title": "Ship_it", "description": "100% done", "priority": "high"},
        {"title": "apply patch", "due_date": "2026-03-10T00:00:00Z"},
    ]
    created = []
    for spec in specs:
        created.append(create(client, alice, **spec))
        clock.advance(minutes=1)
    done = client.patch(f"{alice.tasks_url}/{created[1]['id']}/complete", headers=alice.headers)
    assert done.status_code == 200
    return created


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, ["apply patch", "Ship_it", "Call mum", "buy milk", "Pay rent"]),
        ({"status": "completed"}, ["buy milk"]),
        ({"status": "pending"}, ["apply patch", "Ship_it", "Call mum", "Pay rent"]),
        ({"status": "all"}, ["apply patch", "Ship_it", "Call mum", "buy milk", "Pay rent"]),
        ({"priority": "high"}, ["Ship_it", "Pay rent"]),
        ({"tag": "home"}, ["Call mum", "Pay rent"]),
        ({"tag": " HOME "}, ["Call mum", "Pay rent"]),
        ({"tag": "nope"}, []),
        ({"q": "MILK"}, ["buy milk"]),
        ({"q": "pa"}, ["apply patch", "Pay rent"]),
        ({"q": "%"}, ["Ship_it", "buy milk"]),
        ({"q": "_"}, ["Ship_it"]),
        ({"q": "'organic'"}, ["buy milk"]),
        ({"q": "2% f"}, ["buy milk"]),
        ({"due_before": "2026-03-05T00:00:00Z"}, ["Call mum", "Pay rent"]),
        ({"due_after": "2026-03-05T00:00:00Z"}, ["apply patch", "Pay rent"]),
        ({"due_after": "2026-03-02T00:00:00", "due_before": "2026-03-05T00:00:00"}, ["Call mum", "Pay rent"]),
        ({"status": "pending", "priority": "high", "q": "rent"}, ["Pay rent"]),
    ],
)
def test_list_filters(client, alice, varied_tasks, params, expected):
    response = client.get(alice.tasks_url, params=params, headers=alice.headers)
    assert titles(response) == expected
    assert response.headers["x-total-count"] == str(len(expected))


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"sort": "created"}, ["apply patch", "Ship_it", "Call mum", "buy milk", "Pay rent"]),
        ({"sort": "created", "order": "asc"}, ["Pay rent", "buy milk", "Call mum", "Ship_it", "apply patch"]),
        ({"sort": "updated"}, ["buy milk", "apply patch", "Ship_it", "Call mum", "Pay rent"]),
        ({"sort": "title"}, ["apply patch", "buy milk", "Call mum", "Pay rent", "Ship_it"]),
        ({"sort": "title", "order": "desc"}, ["Ship_it", "Pay rent", "Call mum", "buy milk", "apply patch"]),
        ({"sort": "due_date"}, ["Call mum", "Pay rent", "apply patch", "buy milk", "Ship_it"]),
        ({"sort": "due_date", "order": "desc"}, ["apply patch", "Pay rent", "Call mum", "Ship_it", "buy milk"]),
        ({"sort": "priority"}, ["Ship_it", "Pay rent", "apply patch", "Call mum", "buy milk"]),
        ({"sort": "priority", "order": "asc"}, ["buy milk", "Call mum", "apply patch", "Pay rent", "Ship_it"]),
    ],
)
def test_list_sorting(client, alice, varied_tasks, params, expected):
    assert titles(client.get(alice.tasks_url, params=params, headers=alice.headers)) == expected


def test_paging_is_stable_when_sort_keys_tie(client, alice, clock):
    ids = [create(client, alice, title=f"same {i}", priority="medium")["id"] for i in range(7)]
    for sort in ("created", "updated", "title", "priority", "due_date"):
        for order in ("asc", "desc"):
            seen = []
            for offset in range(0, 7, 3):
                page = client.get(
                    alice.tasks_url,
                    params={"sort": sort, "order": order, "limit": 3, "offset": offset},
                    headers=alice.headers,
                )
                assert page.status_code == 200
                assert page.headers["x-total-count"] == "7"
                seen += [task["id"] for task in page.json()]
            if sort != "title":  # equal keys: the id decides, in the requested direction
                assert seen == (sorted(ids) if order == "asc" else sorted(ids, reverse=True)), (sort, order)
            assert sorted(seen) == sorted(ids), (sort, order)


def test_limit_defaults_to_50_and_offset_past_the_end_is_empty(client, alice):
    for i in range(55):
        create(client, alice, title=f"t{i}")
    first = client.get(alice.tasks_url, headers=alice.headers)
    assert len(first.json()) == 50 and first.headers["x-total-count"] == "55"
    rest = client.get(alice.tasks_url, params={"offset": 50}, headers=alice.headers)
    assert len(rest.json()) == 5
    past = client.get(alice.tasks_url, params={"offset": 1000}, headers=alice.headers)
    assert past.json() == [] and past.headers["x-total-count"] == "55"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"priority": "urgent"},
        {"sort": "name"},
        {"order": "up"},
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": 2**63},
        {"due_before": "soon"},
        {"due_after": "2026-13-01"},
        {"tag": "x" * 31},
        {"q": "x" * 201},
    ],
)
def test_invalid_list_parameters_are_422(client, alice, params):
    response = client.get(alice.tasks_url, params=params, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_lists_never_include_other_users_tasks(client, alice, bob):
    create(client, bob, title="bob's", tags=["home"])
    create(client, alice, title="alice's", tags=["home"])
    response = client.get(alice.tasks_url, params={"tag": "home", "q": "'s"}, headers=alice.headers)
    assert titles(response) == ["alice's"]
    assert response.headers["x-total-count"] == "1"


# --- updating ---


def test_put_changes_only_the_fields_present(client, alice, clock):
    task = create(client, alice, title="Old", description="keep me", priority="low", tags=["a"])
    clock.advance(minutes=5)
    response = client.put(f"{alice.tasks_url}/{task['id']}", json={"title": "New"}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == {**task, "title": "New", "updated_at": "2026-03-01T12:05:00Z"}


def test_patch_is_the_same_as_put(client, alice, clock):
    task = create(client, alice, title="Old")
    clock.advance(minutes=1)
    changes = {
        "title": "New",
        "description": "now described",
        "priority": "high",
        "due_date": "2026-04-01T08:00:00+01:00",
        "tags": ["Work", "work", "deep"],
        "recurrence": "weekly",
    }
    response = client.patch(f"{alice.tasks_url}/{task['id']}", json=changes, headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == {
        **task,
        **changes,
        "due_date": "2026-04-01T07:00:00Z",
        "tags": ["deep", "work"],
        "updated_at": "2026-03-01T12:01:00Z",
    }


def test_explicit_null_clears_description_and_due_date(client, alice):
    task = create(client, alice, description="text", due_date="2026-04-01T00:00:00Z")
    response = client.put(
        f"{alice.tasks_url}/{task['id']}", json={"description": None, "due_date": None}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json()["description"] is None and response.json()["due_date"] is None


def test_tags_are_replaced_or_cleared(client, alice):
    task = create(client, alice, tags=["a", "b"])
    url = f"{alice.tasks_url}/{task['id']}"
    assert client.put(url, json={"tags": ["b", "C"]}, headers=alice.headers).json()["tags"] == ["b", "c"]
    assert client.put(url, json={"tags": []}, headers=alice.headers).json()["tags"] == []
    listing = client.get(alice.tasks_url, params={"tag": "b"}, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


@pytest.mark.parametrize(
    "changes",
    [
        {"title": None},
        {"title": "  "},
        {"completed": None},
        {"priority": None},
        {"priority": "urgent"},
        {"tags": None},
        {"recurrence": None},
        {"recurrence": "daily"},  # the task has no due_date
        {"description": "x" * 1001},
    ],
)
def test_invalid_updates_are_422_and_change_nothing(client, alice, changes):
    task = create(client, alice, title="Keep", tags=["a"])
    for method in ("PUT", "PATCH"):
        response = client.request(method, f"{alice.tasks_url}/{task['id']}", json=changes, headers=alice.headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["msg"]
    assert client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers).json() == task


def test_clearing_the_due_date_of_a_recurring_task_is_422(client, alice):
    task = create(client, alice, due_date="2026-04-01T00:00:00Z", recurrence="daily")
    response = client.put(f"{alice.tasks_url}/{task['id']}", json={"due_date": None}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, A recurring task needs a due_date"
    assert client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers).json() == task


# --- deleting ---


def test_delete_is_204_then_404(client, alice, engine):
    task = create(client, alice, tags=["home"])
    url = f"{alice.tasks_url}/{task['id']}"
    response = client.delete(url, headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""
    for method in ("GET", "DELETE"):
        again = client.request(method, url, headers=alice.headers)
        assert again.status_code == 404
        assert again.json() == {"detail": "Task not found"}
    with Session(engine) as session:
        assert session.exec(select(TaskTag)).all() == []  # tags went with the task


def test_task_ids_are_never_reused(client, alice):
    first = create(client, alice)
    last = create(client, alice)
    assert client.delete(f"{alice.tasks_url}/{last['id']}", headers=alice.headers).status_code == 204
    assert create(client, alice)["id"] > last["id"] > first["id"]


# --- completing ---


def test_complete_without_a_body_toggles(client, alice, clock):
    task = create(client, alice)
    url = f"{alice.tasks_url}/{task['id']}/complete"
    clock.advance(minutes=1)
    done = client.patch(url, headers=alice.headers)
    assert done.status_code == 200
    assert done.json() == {
        **task,
        "completed": True,
        "completed_at": "2026-03-01T12:01:00Z",
        "updated_at": "2026-03-01T12:01:00Z",
    }
    clock.advance(minutes=1)
    reopened = client.patch(url, headers=alice.headers)
    assert reopened.status_code == 200
    assert reopened.json() == {**task, "updated_at": "2026-03-01T12:02:00Z"}


def test_complete_with_a_body_sets_and_repeating_changes_nothing(client, alice, clock):
    task = create(client, alice)
    url = f"{alice.tasks_url}/{task['id']}/complete"
    clock.advance(minutes=1)
    first = client.patch(url, json={"completed": True}, headers=alice.headers)
    clock.advance(minutes=1)
    second = client.patch(url, json={"completed": True}, headers=alice.headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.json()["completed_at"] == "2026-03-01T12:01:00Z"
    reopened = client.patch(url, json={"completed": False}, headers=alice.headers)
    assert reopened.status_code == 200
    assert reopened.json()["completed"] is False and reopened.json()["completed_at"] is None


def test_completing_through_put_sets_completed_at(client, alice, clock):
    task = create(client, alice)
    clock.advance(hours=2)
    response = client.put(f"{alice.tasks_url}/{task['id']}", json={"completed": True}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["completed"] is True
    assert response.json()["completed_at"] == "2026-03-01T14:00:00Z"


@pytest.mark.parametrize("body", [{"completed": "maybe"}, {"completed": None}, {}, [True]])
def test_complete_with_a_bad_body_is_422(client, alice, body):
    task = create(client, alice)
    response = client.patch(f"{alice.tasks_url}/{task['id']}/complete", json=body, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


NOT_JSON_BOOLEANS = ["yes", "on", "true", 1, "1", 0, 0.0, "false", "off"]


@pytest.mark.parametrize("value", NOT_JSON_BOOLEANS)
def test_completed_is_only_json_true_or_false_on_every_route(client, alice, value):
    task = create(client, alice)
    url = f"{alice.tasks_url}/{task['id']}"
    for method, target in [("PATCH", f"{url}/complete"), ("PUT", url), ("PATCH", url), ("POST", alice.tasks_url)]:
        body = {"title": "Task", "completed": value} if method == "POST" else {"completed": value}
        response = client.request(method, target, json=body, headers=alice.headers)
        assert response.status_code == 422, (method, target)
        error = response.json()["detail"][0]  # PUT and PATCH add that null is not allowed either
        assert (error["type"], error["loc"][:2]) == ("bool_type", ["body", "completed"])
    unchanged = client.get(alice.tasks_url, headers=alice.headers)
    assert unchanged.json() == [task]


def test_a_task_can_be_created_completed(client, alice, clock):
    response = client.post(alice.tasks_url, json={"title": "Imported", "completed": True}, headers=alice.headers)
    assert response.status_code == 201
    assert response.json()["completed"] is True
    assert response.json()["completed_at"] == "2026-03-01T12:00:00Z"
    pending = create(client, alice, completed=False)
    assert (pending["completed"], pending["completed_at"]) == (False, None)
    stored = client.get(f"{alice.tasks_url}/{response.json()['id']}", headers=alice.headers)
    assert stored.json() == response.json()


def test_a_recurring_task_created_completed_spawns_its_next_occurrence_once(client, alice, clock):
    done = create(
        client, alice, title="Water plants", description="all of them", priority="high", tags=["home"],
        due_date="2026-01-31T09:00:00Z", recurrence="monthly", completed=True,
    )
    assert (done["completed"], done["completed_at"]) == (True, "2026-03-01T12:00:00Z")
    [follower] = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers).json()
    assert follower == {
        **done, "id": follower["id"], "completed": False, "completed_at": None, "due_date": "2026-02-28T09:00:00Z",
    }
    url = f"{alice.tasks_url}/{done['id']}/complete"
    for body in ({"completed": False}, {"completed": True}):  # reopening and completing again: no second one
        assert client.patch(url, json=body, headers=alice.headers).status_code == 200
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.headers["x-total-count"] == "2"


# --- recurring tasks ---


@pytest.mark.parametrize(
    "recurrence, due, next_due",
    [
        ("daily", "2026-03-01T09:00:00Z", "2026-03-02T09:00:00Z"),
        ("weekly", "2026-03-01T09:00:00Z", "2026-03-08T09:00:00Z"),
        ("monthly", "2026-01-15T09:00:00Z", "2026-02-15T09:00:00Z"),
        ("monthly", "2027-01-31T09:00:00Z", "2027-02-28T09:00:00Z"),
        ("monthly", "2028-01-31T09:00:00Z", "2028-02-29T09:00:00Z"),
        ("monthly", "2026-12-31T23:30:00Z", "2027-01-31T23:30:00Z"),
    ],
)
def test_completing_a_recurring_task_creates_the_next_occurrence(client, alice, recurrence, due, next_due):
    task = create(
        client, alice, title="Water plants", description="all of them", priority="high",
        tags=["home"], due_date=due, recurrence=recurrence,
    )
    done = client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)
    assert done.status_code == 200 and done.json()["completed"] is True
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers).json()
    assert len(pending) == 1
    follower = pending[0]
    assert follower["id"] > task["id"]
    assert {k: follower[k] for k in ("title", "description", "priority", "tags", "recurrence")} == {
        "title": "Water plants", "description": "all of them", "priority": "high",
        "tags": ["home"], "recurrence": recurrence,
    }
    assert follower["due_date"] == next_due
    assert follower["completed"] is False and follower["completed_at"] is None


def test_reopening_and_completing_again_does_not_spawn_twice(client, alice):
    task = create(client, alice, due_date="2026-03-01T09:00:00Z", recurrence="daily")
    url = f"{alice.tasks_url}/{task['id']}"
    for request in [
        lambda: client.patch(f"{url}/complete", headers=alice.headers),
        lambda: client.patch(f"{url}/complete", json={"completed": False}, headers=alice.headers),
        lambda: client.put(url, json={"completed": True}, headers=alice.headers),
        lambda: client.patch(url, json={"completed": False}, headers=alice.headers),
        lambda: client.patch(f"{url}/complete", json={"completed": True}, headers=alice.headers),
    ]:
        assert request().status_code == 200
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.headers["x-total-count"] == "2"


def test_completing_through_put_spawns_and_plain_tasks_never_do(client, alice):
    recurring = create(client, alice, title="r", due_date="2026-03-01T09:00:00Z", recurrence="weekly")
    plain = create(client, alice, title="p", due_date="2026-03-01T09:00:00Z")
    for task in (recurring, plain):
        response = client.put(f"{alice.tasks_url}/{task['id']}", json={"completed": True}, headers=alice.headers)
        assert response.status_code == 200
    assert titles(client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)) == ["r"]


# --- health, docs and errors everywhere ---


def test_health_checks_the_database(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_answers_head_like_get_without_a_body(client):
    response = client.head("/health")
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-type"] == "application/json"
    wrong_method = client.delete("/health")
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong_method.headers["allow"] == "GET, HEAD"


def test_health_is_503_when_the_database_does_not_answer(client, tmp_path, monkeypatch):
    monkeypatch.setattr(db, "engine", db.make_engine(f"sqlite:///{tmp_path}/missing-dir/nothing.db"))
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}


def test_unknown_routes_and_methods_answer_json(client):
    missing = client.get("/api/nothing/here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    wrong_method = client.delete("/health")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"detail": "Method Not Allowed"}


def test_an_unexpected_failure_is_a_bare_500_with_cors_and_request_id(
    client, alice, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(db, "engine", db.make_engine(f"sqlite:///{tmp_path}/empty.db"))  # no tables
    response = client.get(
        alice.tasks_url,
        headers={**alice.headers, "Origin": "http://localhost:3000", "X-Request-ID": "probe-500"},
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert "Traceback" not in response.text and "SELECT" not in response.text
    # A browser can read it, and its id names the log line that holds the traceback.
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert response.headers["x-request-id"] == "probe-500"
    assert "no such table" in caplog.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_64_kib_are_413_and_store_nothing(client, alice, chunked):
    body = b'{"title": "big", "description": "' + b"x" * (64 * 1024) + b'"}'
    content = iter([body[:1000], body[1000:]]) if chunked else body
    response = client.post(
        alice.tasks_url, content=content, headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large: the limit is 65536 bytes"}
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


def test_openapi_documents_every_route(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["type"] == "oauth2"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation["tags"] and operation["summary"], (method, path)
            assert "200" in operation["responses"] or "201" in operation["responses"] or "204" in operation["responses"]
            if path.startswith("/api/{user_id}"):
                assert operation["security"] == [{"OAuth2PasswordBearer": []}]
                assert {"401", "403", "422"} <= set(operation["responses"]), (method, path)
            if "{task_id}" in path:
                assert "404" in operation["responses"], (method, path)


def test_the_front_door_links_the_docs_the_schema_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    links = re.findall(r'<a href="([^"]+)"', page.text)
    assert links == ["docs", "redoc", "openapi.json", "health"]
    for link in links:
        assert client.get(f"/{link}").status_code == 200, link
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == page.headers["content-length"]
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_file_from_the_app_itself(client, page):
    response = client.get(page)
    assert response.status_code == 200 and re.search(r"[\"']/openapi.json[\"']", response.text)
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert assets and all(asset.startswith("/docs/assets/") for asset in assets), assets
    assert "http://" not in response.text and "https://" not in response.text
    # ...and the browser may load nothing from anywhere else.
    assert response.headers["content-security-policy"].startswith("default-src 'self';")
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset


def test_swagger_ui_keeps_its_oauth2_redirect_page(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "'/docs/oauth2-redirect'" in docs.text
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text


# --- CORS ---


def test_cors_allows_configured_origins_without_credentials(client, alice):
    preflight = client.options(
        alice.tasks_url,
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "access-control-allow-credentials" not in preflight.headers
    listing = client.get(alice.tasks_url, headers={**alice.headers, "Origin": "http://localhost:3000"})
    assert listing.status_code == 200
    exposed = {h.strip().lower() for h in listing.headers["access-control-expose-headers"].split(",")}
    assert {"x-total-count", "location", "x-request-id"} <= exposed


def test_cors_ignores_other_origins(client, alice):
    preflight = client.options(
        alice.tasks_url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 400
    assert preflight.headers["content-type"] == "application/json"
    assert preflight.json() == {"detail": "Disallowed CORS origin"}
    assert "access-control-allow-origin" not in preflight.headers
    listing = client.get(alice.tasks_url, headers={**alice.headers, "Origin": "https://evil.example"})
    assert listing.status_code == 200 and "access-control-allow-origin" not in listing.headers


# --- concurrency, on a real SQLite file through the real ASGI stack in many threads ---


def test_200_parallel_creates_all_land(client, alice):
    def create_one(i: int) -> int:
        response = client.post(alice.tasks_url, json={"title": f"t{i}", "tags": ["load"]}, headers=alice.headers)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = list(pool.map(create_one, range(200)))
    assert len(set(ids)) == 200
    listing = client.get(alice.tasks_url, params={"tag": "load", "limit": 100}, headers=alice.headers)
    assert listing.headers["x-total-count"] == "200"


def test_100_parallel_toggles_lose_no_update(client, alice):
    plain = create(client, alice, title="plain")
    recurring = create(client, alice, title="recurring", due_date="2026-03-01T00:00:00Z", recurrence="daily")

    def toggle(task_id: int) -> bool:
        response = client.patch(f"{alice.tasks_url}/{task_id}/complete", headers=alice.headers)
        assert response.status_code == 200, response.text
        return response.json()["completed"]

    for task in (plain, recurring):
        with ThreadPoolExecutor(max_workers=32) as pool:
            states = list(pool.map(toggle, [task["id"]] * 100))
        # Every toggle saw a different state: 50 completed it and 50 reopened it.
        assert states.count(True) == 50 and states.count(False) == 50
        final = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
        assert final.json()["completed"] is False and final.json()["completed_at"] is None
    # Fifty completions of the recurring task, and still exactly one next occurrence.
    assert client.get(alice.tasks_url, headers=alice.headers).headers["x-total-count"] == "3"


def test_mixed_parallel_traffic_never_reports_a_locked_database(client, alice):
    recurring = create(client, alice, title="r", due_date="2026-03-01T00:00:00Z", recurrence="daily")
    url = f"{alice.tasks_url}/{recurring['id']}"

    def one_request(i: int) -> int:
        kind = i % 4
        if kind == 0:
            response = client.put(url, json={"title": f"edit {i}", "tags": [f"tag{i}"]}, headers=alice.headers)
        elif kind == 1:
            response = client.post(alice.tasks_url, json={"title": f"new {i}"}, headers=alice.headers)
        elif kind == 2:
            response = client.patch(f"{url}/complete", json={"completed": i % 8 == 2}, headers=alice.headers)
        else:
            response = client.get(alice.tasks_url, headers=alice.headers)
        assert response.status_code < 300, response.text
        return response.status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(one_request, range(400)))
    assert statuses.count(201) == 100
    # The original, 100 creates, and exactly one next occurrence of the recurring task.
    assert client.get(alice.tasks_url, headers=alice.headers).headers["x-total-count"] == "102"


# --- races between a read and a write, and inputs at the edges ---


@pytest.fixture
def another_request_commits_after_the_read(engine, monkeypatch):
    """Makes the next update of a task read it, then lets a concurrent request commit
    `change` to that row, then go on: the interleaving of two real requests, on demand."""
    import routes.tasks

    def install(change):
        read = routes.tasks.get_owned_task

        def read_then_race(session, owner_id, task_id):
            task = read(session, owner_id, task_id)
            with Session(engine) as other:
                other.execute(change(task_id))
                other.commit()
            return task

        monkeypatch.setattr(routes.tasks, "get_owned_task", read_then_race)

    return install


def test_concurrent_updates_cannot_leave_a_recurring_task_without_a_due_date(
    client, alice, another_request_commits_after_the_read
):
    task = create(client, alice, due_date="2026-04-01T00:00:00Z")
    another_request_commits_after_the_read(
        lambda task_id: sql_update(Task).where(Task.id == task_id).values(recurrence="daily")
    )
    response = client.put(f"{alice.tasks_url}/{task['id']}", json={"due_date": None}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, A recurring task needs a due_date"
    stored = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers).json()
    assert stored["recurrence"] == "daily" and stored["due_date"] == "2026-04-01T00:00:00Z"
    done = client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)
    assert done.status_code == 200 and done.json()["completed"] is True


def test_updating_a_task_deleted_meanwhile_is_404(client, alice, another_request_commits_after_the_read):
    task = create(client, alice, tags=["home"])
    another_request_commits_after_the_read(lambda task_id: sql_delete(Task).where(Task.id == task_id))
    response = client.put(f"{alice.tasks_url}/{task['id']}", json={"tags": ["work"]}, headers=alice.headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}


def test_creating_while_the_account_is_deleted_never_fails_with_500(client, alice):
    def create_one(_: int) -> int:
        return client.post(alice.tasks_url, json={"title": "racing"}, headers=alice.headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        creates = pool.map(create_one, range(24))
        deleted = client.request("DELETE", "/api/auth/me", json={"password": PASSWORD}, headers=alice.headers)
        statuses = set(creates)
    assert deleted.status_code == 204
    assert statuses <= {201, 401}


def test_a_tag_that_lengthens_when_lower_cased_is_measured_after(client, alice):
    response = client.post(alice.tasks_url, json={"title": "x", "tags": ["İ" * 30]}, headers=alice.headers)
    assert response.status_code == 422
    assert "at most 30 characters once lower-cased" in response.json()["detail"][0]["msg"]
    assert create(client, alice, tags=["İ" * 15])["tags"] == ["i̇" * 15]


def test_a_recurring_series_ends_before_the_year_9999(client, alice):
    task = create(client, alice, due_date="9998-11-30T00:00:00Z", recurrence="monthly")
    assert client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers).status_code == 200
    [follower] = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers).json()
    assert follower["due_date"] == "9998-12-30T00:00:00Z"
    last = client.patch(f"{alice.tasks_url}/{follower['id']}/complete", headers=alice.headers)
    assert last.status_code == 200 and last.json()["completed"] is True
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    assert pending.json() == [] and pending.headers["x-total-count"] == "0"


@pytest.mark.parametrize(
    "raw",
    [b"[" * 5000 + b"]" * 5000, b'{"title": "x", "priority": ' + b"9" * 5000 + b"}", b'{"title": "\xff"}'],
    ids=["nested-too-deep", "integer-too-long", "not-utf-8"],
)
def test_json_the_parser_cannot_read_is_422(client, alice, raw):
    response = client.post(
        alice.tasks_url, content=raw, headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
