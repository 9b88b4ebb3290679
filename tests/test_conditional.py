"""Conditional and retried requests through HTTP: ETags on tasks and list pages, If-Match on
writes, If-None-Match on reads, and creates made safe to retry with an Idempotency-Key; on
SQLite and PostgreSQL, and with two uvicorn workers."""

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from sqlmodel import Session, select

import routes.task_rules
import routes.tasks
from models import IdempotencyKey

CHANGED = {
    "detail": "The task has changed since you read it: fetch it again (its ETag is in this answer)"
}
IN_FLIGHT = {"detail": "A create with this Idempotency-Key is still running; retry shortly"}


def titles(client, account, **params) -> list[str]:
    listing = client.get(account.tasks_url, headers=account.headers, params=params)
    assert listing.status_code == 200, listing.text
    return [task["title"] for task in listing.json()]


# --- ETags and If-Match ---


def test_two_devices_edit_one_task_and_the_stale_one_gets_412_then_succeeds_after_a_read(
    client, alice, create
):
    task = create(alice, title="Buy milk")
    url = f"{alice.tasks_url}/{task['id']}"
    phone = client.get(url, headers=alice.headers)
    laptop = client.get(url, headers=alice.headers)
    assert phone.headers["etag"] == laptop.headers["etag"] == '"1"'

    edited = client.patch(
        url, json={"title": "Buy oat milk"}, headers={**alice.headers, "If-Match": '"1"'}
    )
    assert (edited.status_code, edited.json()["title"]) == (200, "Buy oat milk")
    assert edited.headers["etag"] == '"2"'
    stale = client.patch(
        url, json={"title": "Buy milk, 2 l"}, headers={**alice.headers, "If-Match": '"1"'}
    )
    assert (stale.status_code, stale.json()) == (412, CHANGED)
    assert stale.headers["etag"] == '"2"'
    assert titles(client, alice) == ["Buy oat milk"]

    fresh = client.get(url, headers=alice.headers)
    retried = client.put(
        url,
        json={"title": "Buy oat milk, 2 l"},
        headers={**alice.headers, "If-Match": fresh.headers["etag"]},
    )
    assert (retried.status_code, retried.json()["title"]) == (200, "Buy oat milk, 2 l")
    assert retried.headers["etag"] == '"3"'


WRITES = {
    "a field": ("PATCH", "", {"priority": "high"}),
    "the tags": ("PUT", "", {"tags": ["new"]}),
    "its completion, by PUT": ("PUT", "", {"completed": True}),
    "its completion, by /complete": ("PATCH", "/complete", None),
    "a null that clears": ("PATCH", "", {"description": None}),
}


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES.values(), ids=WRITES)
def test_every_kind_of_write_changes_the_etag_and_a_read_does_not(
    client, alice, create, method, suffix, body
):
    task = create(alice, description="two litres")
    url = f"{alice.tasks_url}/{task['id']}"
    before = client.get(url, headers=alice.headers).headers["etag"]
    assert client.get(url, headers=alice.headers).headers["etag"] == before
    written = client.request(method, url + suffix, json=body, headers=alice.headers)
    assert written.status_code == 200, written.text
    after = client.get(url, headers=alice.headers)
    assert written.headers["etag"] == after.headers["etag"] != before
    assert after.json() == written.json()


def test_a_write_that_changes_nothing_keeps_the_etag(client, alice, create):
    task = create(alice, completed=True)
    url = f"{alice.tasks_url}/{task['id']}"
    again = client.patch(f"{url}/complete", json={"completed": True}, headers=alice.headers)
    assert (again.status_code, again.json()) == (200, task)
    assert again.headers["etag"] == client.get(url, headers=alice.headers).headers["etag"] == '"1"'


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status"),
    [
        ("PUT", "", {"title": "x"}, 200),
        ("PATCH", "", {"title": "x"}, 200),
        ("PATCH", "/complete", None, 200),
        ("DELETE", "", None, 204),
    ],
)
def test_if_match_guards_every_write(client, alice, create, method, suffix, body, status):
    task = create(alice, title="kept")
    url = f"{alice.tasks_url}/{task['id']}"
    for stale in ('"2"', 'W/"1"', '"2", "3"', "no-quotes"):
        refused = client.request(
            method, url + suffix, json=body, headers={**alice.headers, "If-Match": stale}
        )
        assert (refused.status_code, refused.json()) == (412, CHANGED), stale
        assert refused.headers["etag"] == '"1"'
    assert titles(client, alice) == ["kept"]
    for current in ('"3", "1"', "*"):
        written = client.request(
            method, url + suffix, json=body, headers={**alice.headers, "If-Match": current}
        )
        assert written.status_code == status, written.text
        if method == "DELETE":
            break


def test_if_match_on_a_missing_or_another_users_task_is_404(client, alice, bob, create):
    bobs = create(bob)
    for task_id in (bobs["id"], 10**9):
        for method in ("PUT", "DELETE"):
            response = client.request(
                method,
                f"{alice.tasks_url}/{task_id}",
                json={"title": "x"},
                headers={**alice.headers, "If-Match": "*"},
            )
            assert (response.status_code, response.json()) == (404, {"detail": "Task not found"})


def test_of_concurrent_writes_with_one_if_match_exactly_one_succeeds(client, alice, create):
    task = create(alice)
    url = f"{alice.tasks_url}/{task['id']}"
    start = threading.Barrier(10)

    def write(number: int) -> httpx2.Response:
        start.wait(timeout=30)
        headers = {**alice.headers, "If-Match": '"1"'}
        return client.patch(url, json={"title": f"writer {number}"}, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(write, range(10)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [412] * 9, [response.text for response in responses]
    [winner] = [response.json()["title"] for response in responses if response.status_code == 200]
    assert titles(client, alice) == [winner]


# --- If-None-Match ---


def test_an_unchanged_task_is_304_without_a_body(client, alice, create):
    task = create(alice)
    url = f"{alice.tasks_url}/{task['id']}"
    for tag in ('"1"', 'W/"1"', '"7", "1"', "*"):
        cached = client.get(url, headers={**alice.headers, "If-None-Match": tag})
        assert (cached.status_code, cached.content) == (304, b""), tag
        assert cached.headers["etag"] == '"1"'
    client.patch(url, json={"title": "changed"}, headers=alice.headers)
    changed = client.get(url, headers={**alice.headers, "If-None-Match": '"1"'})
    assert (changed.status_code, changed.json()["title"]) == (200, "changed")


PAGE_CHANGES = {
    "a new task": lambda client, alice, tasks: client.post(
        alice.tasks_url, json={"title": "new"}, headers=alice.headers
    ),
    "a changed title": lambda client, alice, tasks: client.patch(
        f"{alice.tasks_url}/{tasks[0]['id']}", json={"title": "renamed"}, headers=alice.headers
    ),
    "a deleted task": lambda client, alice, tasks: client.delete(
        f"{alice.tasks_url}/{tasks[1]['id']}", headers=alice.headers
    ),
    "a changed tag": lambda client, alice, tasks: client.put(
        f"{alice.tasks_url}/{tasks[1]['id']}", json={"tags": ["other"]}, headers=alice.headers
    ),
}


@pytest.mark.parametrize("change", PAGE_CHANGES.values(), ids=PAGE_CHANGES)
def test_an_unchanged_list_page_is_304_and_any_change_it_shows_is_200(
    client, alice, create, change
):
    tasks = [create(alice, title=f"task {number}", tags=["home"]) for number in range(3)]
    params = {"sort": "title", "limit": 2}
    first = client.get(alice.tasks_url, headers=alice.headers, params=params)
    etag = first.headers["etag"]
    cached = client.get(
        alice.tasks_url, headers={**alice.headers, "If-None-Match": etag}, params=params
    )
    assert (cached.status_code, cached.content) == (304, b"")
    assert (cached.headers["etag"], cached.headers["x-total-count"]) == (etag, "3")

    assert change(client, alice, tasks).status_code in (200, 201, 204)
    polled = client.get(
        alice.tasks_url, headers={**alice.headers, "If-None-Match": etag}, params=params
    )
    assert polled.status_code == 200 and polled.headers["etag"] != etag
    assert polled.json() == client.get(alice.tasks_url, headers=alice.headers, params=params).json()


def test_a_change_to_the_total_alone_changes_the_list_etag(client, alice, create):
    create(alice, title="a")
    params = {"sort": "title", "limit": 1}
    etag = client.get(alice.tasks_url, headers=alice.headers, params=params).headers["etag"]
    create(alice, title="b")  # not on this page, but the total changes
    polled = client.get(
        alice.tasks_url, headers={**alice.headers, "If-None-Match": etag}, params=params
    )
    assert (polled.status_code, polled.headers["x-total-count"]) == (200, "2")
    assert [task["title"] for task in polled.json()] == ["a"]


# --- Idempotency-Key on create ---


def create_with_key(client, account, key: str | bytes, **fields) -> httpx2.Response:
    headers = {**account.headers, "Idempotency-Key": key}
    return client.post(account.tasks_url, json={"title": "Pay rent", **fields}, headers=headers)


def test_a_create_retried_with_its_key_makes_one_task_and_answers_alike(client, alice):
    answers = [create_with_key(client, alice, "order-7f3a", tags=["home"]) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [201] * 3
    assert len({answer.content for answer in answers}) == 1
    assert len({answer.headers["location"] for answer in answers}) == 1
    assert {answer.headers["etag"] for answer in answers} == {'"1"'}
    assert titles(client, alice) == ["Pay rent"]


def test_a_key_used_with_another_body_is_422_and_creates_nothing(client, alice):
    assert create_with_key(client, alice, "k1").status_code == 201
    other = create_with_key(client, alice, "k1", title="Pay the rent")
    assert other.status_code == 422
    assert other.json()["detail"] == [
        {
            "type": "value_error",
            "loc": ["header", "Idempotency-Key"],
            "msg": "This Idempotency-Key was already used with another request body",
        }
    ]
    assert titles(client, alice) == ["Pay rent"]


def test_keys_are_per_user(client, alice, bob):
    mine, theirs = create_with_key(client, alice, "k1"), create_with_key(client, bob, "k1")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert titles(client, alice) == titles(client, bob) == ["Pay rent"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tin", "é".encode()])
def test_a_malformed_key_is_422(client, alice, key):
    response = create_with_key(client, alice, key)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert titles(client, alice) == []


def test_a_retry_while_the_first_still_runs_is_409_with_retry_after(client, alice, monkeypatch):
    first_running, retried = threading.Event(), threading.Event()
    count = routes.task_rules.count_new_tasks

    def count_then_wait(*args):
        first_running.set()
        assert retried.wait(timeout=30)
        return count(*args)

    monkeypatch.setattr(routes.tasks, "count_new_tasks", count_then_wait)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(create_with_key, client, alice, "k1")
        assert first_running.wait(timeout=30)
        monkeypatch.setattr(routes.tasks, "count_new_tasks", count)
        retry = create_with_key(client, alice, "k1")
        retried.set()
        assert first.result(timeout=30).status_code == 201
    assert (retry.status_code, retry.json()) == (409, IN_FLIGHT)
    assert retry.headers["retry-after"] == "1"
    assert titles(client, alice) == ["Pay rent"]
    assert create_with_key(client, alice, "k1").json() == first.result().json()


def test_a_failed_create_gives_its_key_back(client, alice, monkeypatch):
    one_task = dataclasses.replace(routes.task_rules.settings, max_tasks_per_user=1)
    monkeypatch.setattr(routes.task_rules, "settings", one_task)
    assert create_with_key(client, alice, "first").status_code == 201
    refused = create_with_key(client, alice, "second", title="one too many")
    assert refused.status_code == 409
    client.delete(f"{alice.tasks_url}/{titles_ids(client, alice)[0]}", headers=alice.headers)
    retried = create_with_key(client, alice, "second", title="one too many")
    assert (retried.status_code, retried.json()["title"]) == (201, "one too many")


def titles_ids(client, account) -> list[int]:
    return [task["id"] for task in client.get(account.tasks_url, headers=account.headers).json()]


def test_a_key_lives_24_hours_and_is_then_pruned(client, engine, alice, clock, password):
    first = create_with_key(client, alice, "k1")
    clock.advance(hours=23, minutes=59)
    assert create_with_key(client, alice, "k1").json() == first.json()
    clock.advance(minutes=2)  # the key has expired: the same key makes a new task
    later = create_with_key(client, alice, "k1")
    assert (later.status_code, titles(client, alice)) == (201, ["Pay rent", "Pay rent"])
    assert later.json()["id"] != first.json()["id"]

    clock.advance(hours=25)
    login = client.post("/api/auth/login", json={"email": alice.email, "password": password})
    assert login.status_code == 200  # pruning runs after it has answered
    with Session(engine) as session:
        assert session.exec(select(IdempotencyKey)).all() == []


def test_a_claim_abandoned_by_a_request_that_died_is_taken_over_after_a_minute(
    client, engine, alice, clock
):
    assert create_with_key(client, alice, "k1").status_code == 201
    with Session(engine) as session:  # as a process killed mid-create leaves its claim
        claim = session.exec(select(IdempotencyKey)).one()
        claim.answer, claim.location = None, None
        session.add(claim)
        session.commit()
    assert (create_with_key(client, alice, "k1").json(), titles(client, alice)) == (
        IN_FLIGHT,
        ["Pay rent"],
    )
    clock.advance(minutes=1, seconds=1)
    taken_over = create_with_key(client, alice, "k1")
    assert taken_over.status_code == 201
    assert titles(client, alice) == ["Pay rent", "Pay rent"]


def test_twenty_concurrent_creates_with_one_key_make_one_task(client, alice):
    start = threading.Barrier(20)

    def create_once(_: int) -> httpx2.Response:
        start.wait(timeout=30)
        return create_with_key(client, alice, "burst")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(create_once, range(20)))
    created = [answer for answer in answers if answer.status_code == 201]
    assert {answer.status_code for answer in answers} <= {201, 409}
    assert len({answer.content for answer in created}) == 1
    assert titles(client, alice) == ["Pay rent"]


def test_with_two_workers_one_key_makes_one_task_and_one_if_match_one_write(
    two_workers_client, new_account
):
    http = two_workers_client
    account = new_account("w@example.com", via=http)
    auth, tasks_url = account.headers, account.tasks_url

    def create(_: int) -> httpx2.Response:
        headers = {**auth, "Idempotency-Key": "two-workers"}
        return http.post(tasks_url, json={"title": "once"}, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        creates = list(pool.map(create, range(20)))
    assert {answer.status_code for answer in creates} <= {201, 409}
    listing = http.get(tasks_url, headers=auth)
    assert [task["title"] for task in listing.json()] == ["once"]

    task_url = f"{tasks_url}/{listing.json()[0]['id']}"

    def write(number: int) -> httpx2.Response:
        headers = {**auth, "If-Match": '"1"'}
        return http.patch(task_url, json={"title": f"writer {number}"}, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        writes = list(pool.map(write, range(20)))
    assert sorted(answer.status_code for answer in writes) == [200] + [412] * 19


# --- browsers and the schema ---


def test_a_browser_may_send_the_conditional_headers_and_read_the_etag(client, alice, create):
    preflight = client.options(
        alice.tasks_url,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, if-match, if-none-match, "
            "idempotency-key",
        },
    )
    assert preflight.status_code == 200, preflight.text
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"if-match", "if-none-match", "idempotency-key"} <= set(
        allowed.replace(" ", "").split(",")
    )
    task = create(alice)
    read = client.get(
        f"{alice.tasks_url}/{task['id']}",
        headers={**alice.headers, "Origin": "http://localhost:3000"},
    )
    assert "etag" in read.headers["access-control-expose-headers"].lower()


def test_openapi_documents_the_conditional_headers_and_answers(client):
    paths = client.get("/openapi.json").json()["paths"]
    task, tasks = paths["/api/{user_id}/tasks/{task_id}"], paths["/api/{user_id}/tasks"]

    def headers_of(operation: dict) -> set[str]:
        return {
            parameter["name"]
            for parameter in operation["parameters"]
            if parameter["in"] == "header"
        }

    assert headers_of(task["get"]) == headers_of(tasks["get"]) == {"if-none-match"}
    for method in ("put", "patch", "delete"):
        assert headers_of(task[method]) == {"if-match"}
        assert "412" in task[method]["responses"]
    assert headers_of(paths["/api/{user_id}/tasks/{task_id}/complete"]["patch"]) == {"if-match"}
    assert headers_of(tasks["post"]) == {"Idempotency-Key"}
    assert {"409", "201"} <= set(tasks["post"]["responses"])
    assert "304" in task["get"]["responses"] and "304" in tasks["get"]["responses"]
    assert "ETag" in task["get"]["responses"]["200"]["headers"]
