"""The behaviours that differ most between databases, checked on whichever one the suite
runs on (see conftest.py): .ci/run runs this file on SQLite and on PostgreSQL, and the
same assertions must hold on both."""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from sqlalchemy import make_url, text
from sqlmodel import Session

import db
from config import settings
from conftest import TEST_DATABASE_URL, Account
from main import app

MAX_ID = 2**63 - 1
ON_POSTGRESQL = TEST_DATABASE_URL is not None


def create(client, owner: Account, title: str, **fields) -> dict:
    response = client.post(owner.tasks_url, headers=owner.headers, json={"title": title, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def listed(client, owner: Account, **params) -> tuple[list[dict], int]:
    response = client.get(owner.tasks_url, headers=owner.headers, params=params)
    assert response.status_code == 200, response.text
    return response.json(), int(response.headers["X-Total-Count"])


def titles(tasks: list[dict]) -> list[str]:
    return [task["title"] for task in tasks]


SEARCHABLE = ["100% done", "100 percent", "snake_case", "snakeXcase", "it's mine", 'say "hi"', "a/b", "ab"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("%", ["100% done"]),
        ("_", ["snake_case"]),
        ("'", ["it's mine"]),
        ('"', ['say "hi"']),
        ("/", ["a/b"]),  # the escape character SQLAlchemy's autoescape uses
        ("SNAKE", ["snake_case", "snakeXcase"]),
        ("IT'S", ["it's mine"]),
    ],
)
def test_search_is_case_insensitive_and_treats_wildcards_and_quotes_as_text(client, alice, q, expected):
    for title in SEARCHABLE:
        create(client, alice, title)

    tasks, total = listed(client, alice, q=q, sort="title")

    assert titles(tasks) == sorted(expected, key=str.lower)
    assert total == len(expected)


def test_search_matches_the_description_too(client, alice):
    create(client, alice, "plain", description="50% OFF")
    create(client, alice, "other", description="50 off")

    tasks, total = listed(client, alice, q="% off")

    assert (titles(tasks), total) == (["plain"], 1)


def test_tag_filter_returns_only_tasks_with_that_tag(client, alice, bob):
    create(client, alice, "both", tags=["Work", "home"])
    create(client, alice, "work only", tags=["work"])
    create(client, alice, "untagged")
    create(client, bob, "bob's work", tags=["work"])

    work, work_total = listed(client, alice, tag="WORK", sort="title")
    home, home_total = listed(client, alice, tag="home")

    assert (titles(work), work_total) == (["both", "work only"], 2)
    assert (titles(home), home_total) == (["both"], 1)
    assert work[0]["tags"] == ["home", "work"]


def test_priority_sort_is_high_to_low_with_ties_by_id(client, alice):
    for title, priority in [("l1", "low"), ("h1", "high"), ("m1", "medium"), ("h2", "high"), ("l2", "low")]:
        create(client, alice, title, priority=priority)

    descending, _ = listed(client, alice, sort="priority")
    ascending, _ = listed(client, alice, sort="priority", order="asc")

    assert titles(descending) == ["h2", "h1", "m1", "l2", "l1"]
    assert titles(ascending) == ["l1", "l2", "m1", "h1", "h2"]


def test_title_sort_ignores_case(client, alice):
    for title in ["banana", "Apple", "cherry", "apricot", "Banana split"]:
        create(client, alice, title)

    tasks, _ = listed(client, alice, sort="title")

    assert titles(tasks) == ["Apple", "apricot", "banana", "Banana split", "cherry"]


def test_due_date_sort_puts_undated_tasks_last_in_both_orders(client, alice):
    create(client, alice, "undated 1")
    create(client, alice, "march", due_date="2026-03-10T09:00:00Z")
    create(client, alice, "january", due_date="2026-01-10T09:00:00+02:00")
    create(client, alice, "undated 2")
    create(client, alice, "february", due_date="2026-02-10T09:00:00Z")

    ascending, _ = listed(client, alice, sort="due_date")
    descending, _ = listed(client, alice, sort="due_date", order="desc")

    assert titles(ascending) == ["january", "february", "march", "undated 1", "undated 2"]
    assert titles(descending) == ["march", "february", "january", "undated 2", "undated 1"]


def test_paging_is_stable_when_sort_keys_tie(client, clock, alice):
    # The clock stands still, so every task has the same created_at and only the id orders them.
    created = [create(client, alice, f"task {number}")["id"] for number in range(7)]

    pages = [listed(client, alice, limit=3, offset=offset) for offset in (0, 3, 6)]

    assert [task["id"] for tasks, _ in pages for task in tasks] == sorted(created, reverse=True)
    assert [total for _, total in pages] == [7, 7, 7]
    assert listed(client, alice, limit=3, offset=MAX_ID) == ([], 7)


def test_parallel_toggles_lose_no_update(client, alice):
    task = create(client, alice, "flip me")
    url = f"{alice.tasks_url}/{task['id']}/complete"

    def toggle(_: int):
        return client.patch(url, headers=alice.headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(toggle, range(100)))

    assert Counter(response.status_code for response in responses) == {200: 100}
    # Each toggle saw the state the previous one left: half completed it, half reopened it.
    assert Counter(response.json()["completed"] for response in responses) == {True: 50, False: 50}
    final = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
    assert final.status_code == 200
    assert (final.json()["completed"], final.json()["completed_at"]) == (False, None)


def test_ids_are_never_reused_after_delete(client, alice):
    first, second, third = (create(client, alice, f"task {n}")["id"] for n in range(3))
    for task_id in (second, third):
        response = client.delete(f"{alice.tasks_url}/{task_id}", headers=alice.headers)
        assert (response.status_code, response.content) == (204, b"")

    newest = create(client, alice, "after the deletes")["id"]

    assert newest > third > second > first
    missing = client.get(f"{alice.tasks_url}/{third}", headers=alice.headers)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Task not found"})


def assert_utc_with_offset(task: dict) -> None:
    for field in ("created_at", "updated_at", "due_date", "completed_at"):
        value = task[field]
        assert value is None or value.endswith(("Z", "+00:00")), (field, value)


@pytest.fixture
def new_york_session(engine):
    """Sessions whose database time zone is America/New_York. On PostgreSQL this is the
    TimeZone setting of each connection; SQLite has no such setting, so there it is the
    suite's own engine and the test checks the same answers."""
    if not ON_POSTGRESQL:
        yield engine
        return
    url = make_url(TEST_DATABASE_URL).update_query_dict({"options": "-c TimeZone=America/New_York"})
    new_york = db.make_engine(url.render_as_string(hide_password=False))
    with new_york.connect() as connection:
        assert connection.execute(text("SHOW TimeZone")).scalar_one() == "America/New_York"
    yield new_york
    new_york.dispose()


def test_date_times_are_utc_whatever_the_database_time_zone(client, alice, new_york_session):
    def session_in_new_york():
        with Session(new_york_session, expire_on_commit=False) as session:
            yield session

    app.dependency_overrides[db.get_session] = session_in_new_york
    # 23:30 in New York on 1 March is 04:30 UTC on 2 March; a naive input counts as UTC.
    task = create(client, alice, "late call", due_date="2026-03-01T23:30:00-05:00")
    naive = create(client, alice, "naive", due_date="2026-03-02T04:30:00")
    completed = client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)
    assert completed.status_code == 200

    assert task["due_date"] in ("2026-03-02T04:30:00Z", "2026-03-02T04:30:00+00:00")
    assert naive["due_date"] == task["due_date"]
    for one in (task, naive, completed.json()):
        assert_utc_with_offset(one)
    tasks, total = listed(client, alice)
    assert total == 2
    for one in tasks:
        assert_utc_with_offset(one)
    # The bounds are inclusive, and compared as instants, not as New York wall-clock times.
    inside, _ = listed(
        client, alice, due_after="2026-03-02T04:30:00Z", due_before="2026-03-01T23:30:00-05:00"
    )
    before, _ = listed(client, alice, due_before="2026-03-02T04:29:59Z")
    after, _ = listed(client, alice, due_after="2026-03-02T04:30:01+00:00")
    assert sorted(titles(inside)) == ["late call", "naive"]
    assert (before, after) == ([], [])


METHODS_ON_A_TASK = [
    ("GET", "", None),
    ("PUT", "", {"title": "taken"}),
    ("PATCH", "", {"title": "taken"}),
    ("DELETE", "", None),
    ("PATCH", "/complete", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), METHODS_ON_A_TASK)
def test_another_users_task_and_path_answer_404_and_403(client, alice, bob, method, suffix, body):
    bobs_task = create(client, bob, "bob's secret")

    def send(owner: Account, task_id: int):
        url = f"{owner.tasks_url}/{task_id}{suffix}"
        return client.request(method, url, headers=alice.headers, json=body)

    for task_id in (bobs_task["id"], 2**31, MAX_ID):  # past a 32-bit id column, too
        response = send(alice, task_id)
        assert (response.status_code, response.json()) == (404, {"detail": "Task not found"})
    forbidden = send(bob, bobs_task["id"])
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "You can only access your own tasks"}
    unchanged = client.get(f"{bob.tasks_url}/{bobs_task['id']}", headers=bob.headers)
    assert (unchanged.status_code, unchanged.json()) == (200, bobs_task)


def test_token_of_a_user_id_beyond_any_row_is_401(client, alice):
    now = datetime.now(timezone.utc)
    claims = {"sub": str(MAX_ID), "iat": now, "exp": now + timedelta(minutes=5)}
    token = jwt.encode(claims, settings.jwt_secret, algorithm="HS256")

    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert (response.status_code, response.json()) == (401, {"detail": "Could not validate credentials"})


def test_form_login_with_a_nul_byte_is_a_failed_login_not_a_500(client, alice):
    response = client.post("/api/auth/token", data={"username": "alice\x00@example.com", "password": "x" * 8})

    assert (response.status_code, response.json()) == (401, {"detail": "Incorrect email or password"})


def test_concurrent_signups_of_one_email_give_one_201_and_409s(client):
    barrier = threading.Barrier(8)

    def signup(_: int):
        barrier.wait()
        return client.post("/api/auth/signup", json={"email": "race@example.com", "password": "long enough"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(signup, range(8)))

    assert Counter(response.status_code for response in responses) == {201: 1, 409: 7}
    assert all(r.json() == {"detail": "Email already registered"} for r in responses if r.status_code == 409)
