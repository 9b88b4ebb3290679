"""The task API through HTTP: create, read, list (filter, search, sort, page), update,
delete, complete, tags, recurrence, and ownership (another user's path 403, their task 404)."""

import re

import httpx2
import pytest
from fastapi.routing import APIRoute
from helpers import INVALID_TOKEN, MAX_ID, TEST_DATABASE_URL
from sqlalchemy import event, text
from sqlmodel import Session, select

import db
import routes.task_lists
import routes.tasks
from models import TaskTag

BEYOND_32_BITS = 2**31
UTC_OFFSET = re.compile(r"(Z|\+00:00)$")


def titles(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


# --- ownership: 403 for another user's path, 404 for another user's task ---

FORBIDDEN = {"detail": "You can only access your own tasks"}
EVERY_TASK_ROUTE = [
    ("GET", "/{id}", None),
    ("PUT", "/{id}", {"title": "mine now"}),
    ("PATCH", "/{id}", {"title": "mine now"}),
    ("DELETE", "/{id}", None),
    ("PATCH", "/{id}/complete", None),
    ("PUT", "/{id}/position", {"to": "top"}),
]


@pytest.mark.parametrize("method, suffix, body", EVERY_TASK_ROUTE)
def test_another_users_task_is_404_and_unchanged(client, alice, bob, create, method, suffix, body):
    bobs = create(bob, title="bob's secret")
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
def test_another_users_path_is_403(client, alice, bob, create, method, suffix, body):
    bobs = create(bob)
    response = client.request(
        method, bob.tasks_url + suffix.format(id=bobs["id"]), json=body, headers=alice.headers
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "You can only access your own tasks"}
    assert titles(client.get(bob.tasks_url, headers=bob.headers)) == ["Task"]


# Every route of the tasks router, read from it: a route added later is tested too.
TASK_ROUTES = sorted(
    (method, route.path_format)
    for router in (routes.tasks.router, routes.task_lists.router)
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
)
# Malformed for every task route: a task id that is no number, a page of 0, an unknown status,
# an empty title, a completion that is no boolean.
MALFORMED = {"params": {"limit": "0", "status": "soon"}, "json": {"title": "", "completed": "yes"}}


@pytest.mark.parametrize("method, path", TASK_ROUTES)
def test_another_users_path_is_403_whatever_the_rest_of_the_request_holds(
    client, alice, bob, method, path
):
    def malformed_on(account) -> httpx2.Response:
        url = path.format(user_id=account.id, task_id="abc")
        return client.request(method, url, headers=alice.headers, **MALFORMED)

    others = malformed_on(bob)
    assert (others.status_code, others.json()) == (403, FORBIDDEN)
    own = malformed_on(alice)
    assert own.status_code == 422, own.text
    malformed = ("greater_than_equal", "int_parsing", "literal_error", "string_too_short")
    assert own.json()["detail"][0]["type"] in malformed


@pytest.mark.parametrize("method, path", TASK_ROUTES)
def test_a_logged_out_token_is_401_on_every_task_route(client, alice, create, method, path):
    task = create(alice)
    logout = client.post("/api/auth/logout", headers=alice.headers)
    assert logout.status_code == 204
    url = path.format(user_id=alice.id, task_id=task["id"])
    # Valid for every task route, so only the token can fail.
    valid = {
        "params": {"status": "completed"},
        "json": {"title": "x", "completed": True, "to": "top"},
    }
    response = client.request(method, url, headers=alice.headers, **valid)
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


@pytest.mark.parametrize("task_id", ["abc", "1.5", "0", "-1", str(2**63), str(2**64)])
def test_bad_task_ids_are_422(client, alice, task_id):
    for method in ("GET", "DELETE", "PUT"):
        response = client.request(
            method, f"{alice.tasks_url}/{task_id}", json={}, headers=alice.headers
        )
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


def test_a_missing_task_of_ones_own_is_404(client, alice, max_id):
    response = client.get(f"{alice.tasks_url}/{max_id}", headers=alice.headers)
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


def test_tags_are_stripped_lower_cased_and_merged(client, alice, create):
    task = create(alice, tags=[" Home", "home ", "URGENT", "errand"])
    assert task["tags"] == ["errand", "home", "urgent"]
    fetched = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
    assert fetched.status_code == 200
    assert fetched.json()["tags"] == ["errand", "home", "urgent"]


def test_a_tag_is_one_tag_however_its_accents_are_typed(client, alice, create):
    task = create(
        alice, tags=["e\u0301te\u0301", "été"]
    )  # a combining accent, and the accented letter
    assert task["tags"] == ["été"]
    listing = client.get(alice.tasks_url, params={"tag": "E\u0301TE\u0301"}, headers=alice.headers)
    assert (listing.status_code, listing.json()) == (200, [task])


def test_a_tag_that_lengthens_when_lower_cased_is_measured_after(client, alice, create):
    response = client.post(
        alice.tasks_url, json={"title": "x", "tags": ["İ" * 30]}, headers=alice.headers
    )
    assert response.status_code == 422
    assert "at most 30 characters once lower-cased" in response.json()["detail"][0]["msg"]
    assert create(alice, tags=["İ" * 15])["tags"] == ["i̇" * 15]


@pytest.mark.parametrize(
    "sent, stored",
    [
        ("2026-05-01T09:30:00Z", "2026-05-01T09:30:00Z"),
        ("2026-05-01T09:30:00", "2026-05-01T09:30:00Z"),  # no offset: taken as UTC
        ("2026-05-01T09:30:00+02:00", "2026-05-01T07:30:00Z"),
    ],
)
def test_iso_due_dates_are_stored_and_returned_in_utc(client, alice, create, sent, stored):
    task = create(alice, due_date=sent)
    assert task["due_date"] == stored
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.status_code == 200
    [listed] = listing.json()
    for field in ("due_date", "created_at", "updated_at"):
        assert UTC_OFFSET.search(listed[field]), listed[field]
    assert listed["due_date"] == stored


def test_a_number_is_not_a_due_date(client, alice):
    for due_date in (0, 1700000000, "1700000000", "0.5", True):
        response = client.post(
            alice.tasks_url, json={"title": "t", "due_date": due_date}, headers=alice.headers
        )
        assert response.status_code == 422, due_date
        assert response.json()["detail"][0]["loc"] == ["body", "due_date"]
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert (listing.status_code, listing.json()) == (200, [])


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
    bobs = client.get(bob.tasks_url, headers=bob.headers)
    assert (bobs.status_code, bobs.json()) == (200, [])


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


def test_boundary_lengths_are_accepted(alice, create):
    task = create(
        alice,
        title="x" * 200,
        description="d" * 1000,
        tags=["t" * 30] + [f"t{i}" for i in range(9)],
    )
    assert len(task["title"]) == 200 and len(task["description"]) == 1000
    assert len(task["tags"]) == 10


# --- listing: filters, search, sorting, paging ---


@pytest.fixture
def varied_tasks(client, alice, clock, create):
    """Five tasks created a minute apart, with every field varied."""
    specs = [
        {
            "title": "Pay rent",
            "priority": "high",
            "due_date": "2026-03-05T00:00:00Z",
            "tags": ["home"],
        },
        {
            "title": "buy milk",
            "description": "2% fat, 'organic'",
            "priority": "low",
            "tags": ["errand"],
        },
        {"title": "Call mum", "due_date": "2026-03-02T00:00:00Z", "tags": ["home", "family"]},
        {"title": "Ship_it", "description": "100% done", "priority": "high"},
        {"title": "apply patch", "due_date": "2026-03-10T00:00:00Z"},
    ]
    created = []
    for spec in specs:
        created.append(create(alice, **spec))
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
        (
            {"due_after": "2026-03-02T00:00:00", "due_before": "2026-03-05T00:00:00"},
            ["Call mum", "Pay rent"],
        ),
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
        (
            {"sort": "created", "order": "asc"},
            ["Pay rent", "buy milk", "Call mum", "Ship_it", "apply patch"],
        ),
        ({"sort": "updated"}, ["buy milk", "apply patch", "Ship_it", "Call mum", "Pay rent"]),
        ({"sort": "title"}, ["apply patch", "buy milk", "Call mum", "Pay rent", "Ship_it"]),
        (
            {"sort": "title", "order": "desc"},
            ["Ship_it", "Pay rent", "Call mum", "buy milk", "apply patch"],
        ),
        ({"sort": "due_date"}, ["Call mum", "Pay rent", "apply patch", "buy milk", "Ship_it"]),
        (
            {"sort": "due_date", "order": "desc"},
            ["apply patch", "Pay rent", "Call mum", "Ship_it", "buy milk"],
        ),
        ({"sort": "priority"}, ["Ship_it", "Pay rent", "apply patch", "Call mum", "buy milk"]),
        (
            {"sort": "priority", "order": "asc"},
            ["buy milk", "Call mum", "apply patch", "Pay rent", "Ship_it"],
        ),
    ],
)
def test_list_sorting(client, alice, varied_tasks, params, expected):
    assert titles(client.get(alice.tasks_url, params=params, headers=alice.headers)) == expected


def test_paging_is_stable_when_sort_keys_tie(client, alice, clock, create):
    ids = [create(alice, title=f"same {i}", priority="medium")["id"] for i in range(7)]
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
                assert seen == (sorted(ids) if order == "asc" else sorted(ids, reverse=True)), (
                    sort,
                    order,
                )
            assert sorted(seen) == sorted(ids), (sort, order)


def test_limit_defaults_to_50_and_offset_past_the_end_is_empty(client, alice, create):
    for i in range(55):
        create(alice, title=f"t{i}")
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
        {"due_before": "0.5"},  # a number is not a date
        {"due_after": "2026-13-01"},
        {"tag": "x" * 31},
        {"q": "x" * 201},
    ],
)
def test_invalid_list_parameters_are_422(client, alice, params):
    response = client.get(alice.tasks_url, params=params, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", *params]


def test_lists_never_include_other_users_tasks(client, alice, bob, create):
    create(bob, title="bob's", tags=["home"])
    create(alice, title="alice's", tags=["home"])
    response = client.get(alice.tasks_url, params={"tag": "home", "q": "'s"}, headers=alice.headers)
    assert titles(response) == ["alice's"]
    assert response.headers["x-total-count"] == "1"


# --- updating ---


def test_put_changes_only_the_fields_present(client, alice, clock, create):
    task = create(alice, title="Old", description="keep me", priority="low", tags=["a"])
    clock.advance(minutes=5)
    response = client.put(
        f"{alice.tasks_url}/{task['id']}", json={"title": "New"}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json() == {**task, "title": "New", "updated_at": "2026-03-01T12:05:00Z"}


def test_patch_is_the_same_as_put(client, alice, clock, create):
    task = create(alice, title="Old")
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


def test_explicit_null_clears_description_and_due_date(client, alice, create):
    task = create(alice, description="text", due_date="2026-04-01T00:00:00Z")
    response = client.put(
        f"{alice.tasks_url}/{task['id']}",
        json={"description": None, "due_date": None},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert response.json()["description"] is None and response.json()["due_date"] is None


def test_the_update_schema_offers_null_only_where_null_clears(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    update = response.json()["components"]["schemas"]["TaskUpdate"]["properties"]
    nullable = {
        name for name, field in update.items() if {"type": "null"} in field.get("anyOf", [])
    }
    assert nullable == {"description", "due_date"}


def test_tags_are_replaced_or_cleared(client, alice, create):
    task = create(alice, tags=["a", "b"])
    url = f"{alice.tasks_url}/{task['id']}"
    replaced = client.put(url, json={"tags": ["b", "C"]}, headers=alice.headers)
    assert (replaced.status_code, replaced.json()["tags"]) == (200, ["b", "c"])
    cleared = client.put(url, json={"tags": []}, headers=alice.headers)
    assert (cleared.status_code, cleared.json()["tags"]) == (200, [])
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
def test_invalid_updates_are_422_and_change_nothing(client, alice, create, changes):
    task = create(alice, title="Keep", tags=["a"])
    # A rule between fields (a recurrence needs a due_date) is an error of the whole body.
    where = ["body"] if changes == {"recurrence": "daily"} else ["body", *changes]
    for method in ("PUT", "PATCH"):
        response = client.request(
            method, f"{alice.tasks_url}/{task['id']}", json=changes, headers=alice.headers
        )
        assert response.status_code == 422
        [error, *_] = response.json()["detail"]
        assert error["msg"] and error["loc"][:2] == where, error
    unchanged = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
    assert (unchanged.status_code, unchanged.json()) == (200, task)


def test_clearing_the_due_date_of_a_recurring_task_is_422(client, alice, create):
    task = create(alice, due_date="2026-04-01T00:00:00Z", recurrence="daily")
    response = client.put(
        f"{alice.tasks_url}/{task['id']}", json={"due_date": None}, headers=alice.headers
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, A recurring task needs a due_date"
    unchanged = client.get(f"{alice.tasks_url}/{task['id']}", headers=alice.headers)
    assert (unchanged.status_code, unchanged.json()) == (200, task)


# --- deleting ---


def test_delete_is_204_then_404(client, alice, create, engine):
    task = create(alice, tags=["home"])
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


def test_task_ids_are_never_reused(client, alice, create):
    first = create(alice)
    last = create(alice)
    deleted = client.delete(f"{alice.tasks_url}/{last['id']}", headers=alice.headers)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert create(alice)["id"] > last["id"] > first["id"]


# --- completing ---


def test_complete_without_a_body_toggles(client, alice, clock, create):
    task = create(alice)
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


def test_complete_with_a_body_sets_and_repeating_changes_nothing(client, alice, clock, create):
    task = create(alice)
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


def test_completing_through_put_sets_completed_at(client, alice, clock, create):
    task = create(alice)
    clock.advance(hours=2)
    response = client.put(
        f"{alice.tasks_url}/{task['id']}", json={"completed": True}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json()["completed"] is True
    assert response.json()["completed_at"] == "2026-03-01T14:00:00Z"


@pytest.mark.parametrize("body", [{"completed": "maybe"}, {"completed": None}, {}, [True]])
def test_complete_with_a_bad_body_is_422(client, alice, create, body):
    task = create(alice)
    response = client.patch(
        f"{alice.tasks_url}/{task['id']}/complete", json=body, headers=alice.headers
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


NOT_JSON_BOOLEANS = ["yes", "on", "true", 1, "1", 0, 0.0, "false", "off"]


@pytest.mark.parametrize("value", NOT_JSON_BOOLEANS)
def test_completed_is_only_json_true_or_false_on_every_route(client, alice, create, value):
    task = create(alice)
    url = f"{alice.tasks_url}/{task['id']}"
    for method, target in [
        ("PATCH", f"{url}/complete"),
        ("PUT", url),
        ("PATCH", url),
        ("POST", alice.tasks_url),
    ]:
        body = {"title": "Task", "completed": value} if method == "POST" else {"completed": value}
        response = client.request(method, target, json=body, headers=alice.headers)
        assert response.status_code == 422, (method, target)
        error = response.json()["detail"][0]  # PUT and PATCH add that null is not allowed either
        assert (error["type"], error["loc"][:2]) == ("bool_type", ["body", "completed"])
    unchanged = client.get(alice.tasks_url, headers=alice.headers)
    assert unchanged.json() == [task]


def test_a_task_can_be_created_completed(client, alice, clock, create):
    response = client.post(
        alice.tasks_url, json={"title": "Imported", "completed": True}, headers=alice.headers
    )
    assert response.status_code == 201
    assert response.json()["completed"] is True
    assert response.json()["completed_at"] == "2026-03-01T12:00:00Z"
    pending = create(alice, completed=False)
    assert (pending["completed"], pending["completed_at"]) == (False, None)
    stored = client.get(f"{alice.tasks_url}/{response.json()['id']}", headers=alice.headers)
    assert stored.json() == response.json()


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
def test_completing_a_recurring_task_creates_the_next_occurrence(
    client, alice, create, recurrence, due, next_due
):
    task = create(
        alice,
        title="Water plants",
        description="all of them",
        priority="high",
        tags=["home"],
        due_date=due,
        recurrence=recurrence,
    )
    done = client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)
    assert done.status_code == 200 and done.json()["completed"] is True
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    assert pending.status_code == 200
    [follower] = pending.json()
    assert follower["id"] > task["id"]
    assert {k: follower[k] for k in ("title", "description", "priority", "tags", "recurrence")} == {
        "title": "Water plants",
        "description": "all of them",
        "priority": "high",
        "tags": ["home"],
        "recurrence": recurrence,
    }
    assert follower["due_date"] == next_due
    assert follower["completed"] is False and follower["completed_at"] is None


def test_a_recurring_task_created_completed_spawns_its_next_occurrence_once(
    client, alice, clock, create
):
    done = create(
        alice,
        title="Water plants",
        description="all of them",
        priority="high",
        tags=["home"],
        due_date="2026-01-31T09:00:00Z",
        recurrence="monthly",
        completed=True,
    )
    assert (done["completed"], done["completed_at"]) == (True, "2026-03-01T12:00:00Z")
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    [follower] = pending.json()
    assert follower == {
        **done,
        "id": follower["id"],
        "completed": False,
        "completed_at": None,
        "due_date": "2026-02-28T09:00:00Z",
    }
    url = f"{alice.tasks_url}/{done['id']}/complete"
    for body in (
        {"completed": False},
        {"completed": True},
    ):  # reopening and completing again: no second one
        response = client.patch(url, json=body, headers=alice.headers)
        assert (response.status_code, response.json()["completed"]) == (200, body["completed"])
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.headers["x-total-count"] == "2"


def test_reopening_and_completing_again_does_not_spawn_twice(client, alice, create):
    task = create(alice, due_date="2026-03-01T09:00:00Z", recurrence="daily")
    url = f"{alice.tasks_url}/{task['id']}"
    for method, target, body, completed in [
        ("PATCH", f"{url}/complete", None, True),
        ("PATCH", f"{url}/complete", {"completed": False}, False),
        ("PUT", url, {"completed": True}, True),
        ("PATCH", url, {"completed": False}, False),
        ("PATCH", f"{url}/complete", {"completed": True}, True),
    ]:
        response = client.request(method, target, json=body, headers=alice.headers)
        assert (response.status_code, response.json()["completed"]) == (200, completed)
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.headers["x-total-count"] == "2"


def test_completing_through_put_spawns_and_plain_tasks_never_do(client, alice, create):
    recurring = create(alice, title="r", due_date="2026-03-01T09:00:00Z", recurrence="weekly")
    plain = create(alice, title="p", due_date="2026-03-01T09:00:00Z")
    for task in (recurring, plain):
        response = client.put(
            f"{alice.tasks_url}/{task['id']}", json={"completed": True}, headers=alice.headers
        )
        assert (response.status_code, response.json()["completed"]) == (200, True)
    assert titles(
        client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    ) == ["r"]


def test_a_recurring_series_ends_before_the_year_9999(client, alice, create):
    task = create(alice, due_date="9998-11-30T00:00:00Z", recurrence="monthly")
    done = client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)
    assert (done.status_code, done.json()["completed"]) == (200, True)
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    [follower] = pending.json()
    assert follower["due_date"] == "9998-12-30T00:00:00Z"
    last = client.patch(f"{alice.tasks_url}/{follower['id']}/complete", headers=alice.headers)
    assert last.status_code == 200 and last.json()["completed"] is True
    pending = client.get(alice.tasks_url, params={"status": "pending"}, headers=alice.headers)
    assert pending.json() == [] and pending.headers["x-total-count"] == "0"


# --- where SQLite and PostgreSQL may differ: LIKE escapes, case folding, time zones, id widths ---


def listed(client, owner, **params) -> tuple[list[str], int]:
    response = client.get(owner.tasks_url, headers=owner.headers, params=params)
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()], int(response.headers["X-Total-Count"])


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("/", ["a/b"]),  # the escape character of SQLAlchemy's autoescape
        ("\\", ["a\\b"]),  # PostgreSQL's default LIKE escape character
        ('"', ['say "hi"']),
        ("A%B", ["a%b"]),
    ],
)
def test_search_treats_escape_characters_as_text(client, alice, create, q, expected):
    for title in ["a/b", "a\\b", 'say "hi"', "a%b", "ab", "axb"]:
        create(alice, title=title)

    assert listed(client, alice, q=q) == (expected, len(expected))


def test_search_and_title_sort_fold_the_case_of_any_letter(client, alice, create):
    for title in ["Éclair", "zebra", "ÄPFEL", "éCLAT"]:
        create(alice, title=title)

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
    new_york = db.make_engine(TEST_DATABASE_URL)

    @event.listens_for(new_york, "connect")
    def set_time_zone(dbapi_connection, connection_record) -> None:
        # SET, not a startup option: PgBouncer passes TimeZone on to every server it lends.
        dbapi_connection.execute("SET TimeZone = 'America/New_York'")
        dbapi_connection.commit()

    with new_york.connect() as connection:
        assert connection.execute(text("SHOW TimeZone")).scalar_one() == "America/New_York"
    yield new_york
    new_york.dispose()


def test_date_times_are_utc_whatever_the_database_time_zone(
    client, alice, create, new_york_engine, monkeypatch
):
    monkeypatch.setattr(db, "engine", new_york_engine)
    # 23:30 in New York on 1 March is 04:30 UTC on 2 March; an input without offset is UTC.
    late = create(alice, title="late call", due_date="2026-03-01T23:30:00-05:00")
    naive = create(alice, title="naive", due_date="2026-03-02T04:30:00")
    completed = client.patch(f"{alice.tasks_url}/{late['id']}/complete", headers=alice.headers)
    listing = client.get(alice.tasks_url, headers=alice.headers)

    assert completed.status_code == 200 and listing.status_code == 200
    assert late["due_date"] in ("2026-03-02T04:30:00Z", "2026-03-02T04:30:00+00:00")
    assert naive["due_date"] == late["due_date"]
    for task in (late, naive, completed.json(), *listing.json()):
        for field in ("created_at", "updated_at", "due_date", "completed_at"):
            assert task[field] is None or task[field].endswith(("Z", "+00:00")), (
                field,
                task[field],
            )
    assert completed.json()["completed_at"] is not None
    # Bounds are inclusive and compare instants, not New York wall-clock times.
    both = listed(
        client, alice, due_after="2026-03-02T04:30:00Z", due_before="2026-03-01T23:30:00-05:00"
    )
    assert (sorted(both[0]), both[1]) == (["late call", "naive"], 2)
    assert listed(client, alice, due_before="2026-03-02T04:29:59Z") == ([], 0)
    assert listed(client, alice, due_after="2026-03-01T23:30:01-05:00") == ([], 0)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PUT", "", {"title": "x"}),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
        ("PATCH", "/complete", None),
    ],
)
def test_ids_past_32_bits_are_404_on_every_task_route(client, alice, method, suffix, body):
    for task_id in (BEYOND_32_BITS, MAX_ID):
        url = f"{alice.tasks_url}/{task_id}{suffix}"
        response = client.request(method, url, headers=alice.headers, json=body)
        assert (response.status_code, response.json()) == (404, {"detail": "Task not found"})
