"""For the lead to merge, then delete: test_portability.py's cases, where SQLite and
PostgreSQL could disagree (LIKE escapes, the server's time zone, integer widths, NUL
characters, unique-index races), each moved beside the behaviour it checks. The first
block goes to test_api.py, the second to test_auth.py; create, MAX_ID and PASSWORD come
from conftest.py once r14-t1's shared helpers are there (the local copies below go).
The create_tables race is in test_migrations.py.
"""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from sqlalchemy import make_url, text

import db
from config import settings
from conftest import TEST_DATABASE_URL, Account

MAX_ID = 2**63 - 1
BEYOND_32_BITS = 2**31


def create(client, owner: Account, title: str, **fields) -> dict:
    response = client.post(owner.tasks_url, headers=owner.headers, json={"title": title, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def listed(client, owner: Account, **params) -> tuple[list[str], int]:
    response = client.get(owner.tasks_url, headers=owner.headers, params=params)
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()], int(response.headers["X-Total-Count"])


# ======== for test_api.py (the task API): search, time zones, id widths ========


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("/", ["a/b"]),  # the escape character of SQLAlchemy's autoescape
        ("\\", ["a\\b"]),  # PostgreSQL's default LIKE escape character
        ('"', ['say "hi"']),
        ("A%B", ["a%b"]),
    ],
)
def test_search_treats_escape_characters_as_text(client, alice, q, expected):
    for title in ["a/b", "a\\b", 'say "hi"', "a%b", "ab", "axb"]:
        create(client, alice, title)

    assert listed(client, alice, q=q) == (expected, len(expected))


def test_search_and_title_sort_fold_the_case_of_any_letter(client, alice):
    for title in ["Éclair", "zebra", "ÄPFEL", "éCLAT"]:
        create(client, alice, title)

    assert listed(client, alice, q="écla", sort="title") == (["Éclair", "éCLAT"], 2)
    assert listed(client, alice, q="äpf") == (["ÄPFEL"], 1)
    # Lower-cased, then by code point: z (U+007A) < ä (U+00E4) < é (U+00E9).
    assert listed(client, alice, sort="title") == (["zebra", "ÄPFEL", "Éclair", "éCLAT"], 4)


@pytest.fixture
def new_york_engine(engine):
    """On PostgreSQL, an engine whose connections have TimeZone=America/New_York. SQLite
    has no such setting, so there it is the suite's own engine, and the test still checks
    the same answers."""
    if TEST_DATABASE_URL is None:
        yield engine
        return
    url = make_url(TEST_DATABASE_URL).update_query_dict({"options": "-c TimeZone=America/New_York"})
    new_york = db.make_engine(url.render_as_string(hide_password=False))
    with new_york.connect() as connection:
        assert connection.execute(text("SHOW TimeZone")).scalar_one() == "America/New_York"
    yield new_york
    new_york.dispose()


def test_date_times_are_utc_whatever_the_database_time_zone(client, alice, new_york_engine, monkeypatch):
    monkeypatch.setattr(db, "engine", new_york_engine)
    # 23:30 in New York on 1 March is 04:30 UTC on 2 March; an input without offset is UTC.
    late = create(client, alice, "late call", due_date="2026-03-01T23:30:00-05:00")
    naive = create(client, alice, "naive", due_date="2026-03-02T04:30:00")
    completed = client.patch(f"{alice.tasks_url}/{late['id']}/complete", headers=alice.headers)
    listing = client.get(alice.tasks_url, headers=alice.headers)

    assert completed.status_code == 200 and listing.status_code == 200
    assert late["due_date"] in ("2026-03-02T04:30:00Z", "2026-03-02T04:30:00+00:00")
    assert naive["due_date"] == late["due_date"]
    for task in (late, naive, completed.json(), *listing.json()):
        for field in ("created_at", "updated_at", "due_date", "completed_at"):
            assert task[field] is None or task[field].endswith(("Z", "+00:00")), (field, task[field])
    assert completed.json()["completed_at"] is not None
    # Bounds are inclusive and compare instants, not New York wall-clock times.
    both = listed(client, alice, due_after="2026-03-02T04:30:00Z", due_before="2026-03-01T23:30:00-05:00")
    assert (sorted(both[0]), both[1]) == (["late call", "naive"], 2)
    assert listed(client, alice, due_before="2026-03-02T04:29:59Z") == ([], 0)
    assert listed(client, alice, due_after="2026-03-01T23:30:01-05:00") == ([], 0)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("GET", "", None), ("PUT", "", {"title": "x"}), ("PATCH", "", {"title": "x"}), ("DELETE", "", None),
     ("PATCH", "/complete", None)],
)
def test_ids_past_32_bits_are_404_on_every_task_route(client, alice, method, suffix, body):
    for task_id in (BEYOND_32_BITS, MAX_ID):
        url = f"{alice.tasks_url}/{task_id}{suffix}"
        response = client.request(method, url, headers=alice.headers, json=body)
        assert (response.status_code, response.json()) == (404, {"detail": "Task not found"})


# ======== for test_auth.py (signup, login, token checks) ========


def test_a_token_for_a_user_id_past_32_bits_is_401(client, alice):
    now = datetime.now(timezone.utc)
    token = jwt.encode(
        {"sub": str(MAX_ID), "iat": now, "exp": now + timedelta(minutes=5)}, settings.jwt_secret, "HS256"
    )

    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert (response.status_code, response.json()) == (401, {"detail": "Could not validate credentials"})


def test_form_login_with_a_nul_byte_is_a_failed_login(client, alice):
    form = {"username": "alice@example.com\x00", "password": "correct horse battery"}

    response = client.post("/api/auth/token", data=form)

    assert (response.status_code, response.json()) == (401, {"detail": "Incorrect email or password"})


def test_racing_signups_of_one_email_give_one_201_and_409s(client):
    racers = 6
    start = threading.Barrier(racers)

    def sign_up(_: int):
        start.wait()
        return client.post("/api/auth/signup", json={"email": "race@example.com", "password": "long enough"})

    with ThreadPoolExecutor(max_workers=racers) as pool:
        responses = list(pool.map(sign_up, range(racers)))

    assert Counter(response.status_code for response in responses) == {201: 1, 409: racers - 1}
    refused = [response.json() for response in responses if response.status_code == 409]
    assert refused == [{"detail": "Email already registered"}] * (racers - 1)
