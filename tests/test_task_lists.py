"""Requests on a list as a whole through HTTP: complete or reopen many tasks, delete many, count
them, and move a task in the user's own order; on SQLite and PostgreSQL, and with two workers."""

import dataclasses
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx2
import pytest
from sqlmodel import Session, select

import routes.task_rules
from models import TaskTag

NO_SCOPE = [
    {
        "type": "value_error",
        "loc": ["query"],
        "msg": "Value error, Name the tasks to delete: a filter such as status=completed, "
        "or all=true",
        "ctx": {
            "error": "Name the tasks to delete: a filter such as status=completed, or all=true"
        },
    }
]


def listing(client, account, **params) -> list[dict]:
    response = client.get(
        account.tasks_url, headers=account.headers, params={"limit": 100, **params}
    )
    assert response.status_code == 200, response.text
    return response.json()


def titles(client, account, **params) -> list[str]:
    return [task["title"] for task in listing(client, account, **params)]


def total(client, account, **params) -> int:
    response = client.get(account.tasks_url, headers=account.headers, params=params)
    assert response.status_code == 200, response.text
    return int(response.headers["x-total-count"])


def counts(client, account, **params) -> dict[str, int]:
    response = client.get(f"{account.tasks_url}/counts", headers=account.headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def complete_many(client, account, completed: bool, **params) -> httpx2.Response:
    return client.patch(
        account.tasks_url, json={"completed": completed}, params=params, headers=account.headers
    )


def delete_many(client, account, **params) -> httpx2.Response:
    return client.delete(account.tasks_url, params=params, headers=account.headers)


def limit_tasks(monkeypatch, limit: int) -> None:
    limited = dataclasses.replace(routes.task_rules.settings, max_tasks_per_user=limit)
    monkeypatch.setattr(routes.task_rules, "settings", limited)


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "todo.access"]


# --- completing and reopening many ---


def test_mark_all_then_reopen_all_keeps_counts_and_makes_each_next_occurrence_once(
    client, alice, create, clock
):
    for title in ("milk", "bread", "eggs"):
        create(alice, title=title)
    due = "2026-03-02T09:00:00Z"
    create(alice, title="water plants", recurrence="daily", due_date=due, tags=["home"])
    create(alice, title="pay rent", recurrence="monthly", due_date=due)

    marked = complete_many(client, alice, True)
    assert (marked.status_code, marked.json()) == (200, {"changed": 5})
    pending = listing(client, alice, status="pending", sort="title", order="asc")
    assert [(task["title"], task["due_date"], task["tags"]) for task in pending] == [
        ("pay rent", "2026-04-02T09:00:00Z", []),
        ("water plants", "2026-03-03T09:00:00Z", ["home"]),
    ]
    assert counts(client, alice) == {
        "total": 7, "pending": 2, "completed": 5, "overdue": 0, "due_today": 0
    }  # fmt: skip

    reopened = complete_many(client, alice, False)
    assert (reopened.status_code, reopened.json()) == (200, {"changed": 5})
    assert counts(client, alice)["pending"] == 7

    # Again: the reopened ones made theirs already; the two new ones make one each.
    again = complete_many(client, alice, True)
    assert (again.status_code, again.json()) == (200, {"changed": 7})
    assert sorted(titles(client, alice, status="pending")) == ["pay rent", "water plants"]
    pending = listing(client, alice, status="pending", sort="title")
    assert [task["due_date"] for task in pending] == [
        "2026-05-02T09:00:00Z",
        "2026-03-04T09:00:00Z",
    ]
    assert counts(client, alice)["total"] == 9


def test_marking_all_past_the_task_limit_is_409_and_changes_nothing(
    client, alice, create, monkeypatch, clock
):
    limit_tasks(monkeypatch, 3)
    create(alice, title="plain")
    daily = create(alice, title="daily", recurrence="daily", due_date="2026-03-02T09:00:00Z")
    create(alice, title="weekly", recurrence="weekly", due_date="2026-03-02T09:00:00Z")
    url = f"{alice.tasks_url}/{daily['id']}"
    etag = client.get(url, headers=alice.headers).headers["etag"]

    refused = complete_many(client, alice, True)
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": "Task limit reached: an account holds at most 3 tasks; delete some first"
    }
    assert counts(client, alice) == {
        "total": 3, "pending": 3, "completed": 0, "overdue": 0, "due_today": 0
    }  # fmt: skip
    assert client.get(url, headers=alice.headers).headers["etag"] == etag

    # The plain one fits: no next occurrence to make.
    plain = complete_many(client, alice, True, q="plain")
    assert (plain.status_code, plain.json()) == (200, {"changed": 1})


def test_completing_many_changes_only_the_tasks_the_filters_select(client, alice, bob, create):
    chosen = create(alice, title="call mum", priority="high", tags=["family"])
    create(alice, title="call bank", priority="high")
    create(alice, title="write mum", priority="low", tags=["family"])
    bobs = create(bob, title="call mum", priority="high", tags=["family"])

    response = complete_many(client, alice, True, tag="family", priority="high", q="CALL")
    assert (response.status_code, response.json()) == (200, {"changed": 1})
    assert titles(client, alice, status="completed") == ["call mum"]
    changed = client.get(f"{alice.tasks_url}/{chosen['id']}", headers=alice.headers)
    assert changed.json()["completed_at"] is not None
    assert changed.headers["etag"] == '"2"'
    assert titles(client, bob, status="completed") == []
    assert client.get(f"{bob.tasks_url}/{bobs['id']}", headers=bob.headers).json() == bobs

    # Already so: nothing changes, nothing counts.
    repeated = complete_many(client, alice, True, tag="family", priority="high", q="CALL")
    assert (repeated.status_code, repeated.json()) == (200, {"changed": 0})
    due_filtered = complete_many(client, alice, True, due_before="2026-01-01T00:00:00Z")
    assert (due_filtered.status_code, due_filtered.json()) == (200, {"changed": 0})


@pytest.mark.parametrize(
    "body, params",
    [
        (None, {}),
        ({"completed": "yes"}, {}),
        ({"completed": True}, {"status": "done"}),
        ({"completed": True}, {"due_before": "tomorrow"}),
    ],
)
def test_a_malformed_request_on_many_tasks_is_422_and_changes_nothing(
    client, alice, create, body, params
):
    create(alice, title="stays pending")
    response = client.patch(alice.tasks_url, json=body, params=params, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] in ("body", "query")
    assert titles(client, alice, status="pending") == ["stays pending"]


# --- deleting many ---


def test_clear_completed_deletes_exactly_the_completed_tasks_and_their_tags(
    client, alice, bob, create, engine
):
    done = [create(alice, title=f"done {n}", tags=["old", f"n{n}"]) for n in range(3)]
    kept = create(alice, title="kept", tags=["old"])
    create(bob, title="bob's done", completed=True, tags=["old"])
    for task in done:
        client.patch(f"{alice.tasks_url}/{task['id']}/complete", headers=alice.headers)

    cleared = delete_many(client, alice, status="completed")
    assert (cleared.status_code, cleared.json()) == (200, {"deleted": 3})
    assert titles(client, alice) == ["kept"]
    assert titles(client, bob) == ["bob's done"]
    with Session(engine) as session:
        tagged = session.exec(select(TaskTag.task_id).where(TaskTag.name == "old")).all()
    assert kept["id"] in tagged
    assert not {task["id"] for task in done} & set(tagged)
    assert counts(client, alice)["total"] == 1


@pytest.mark.parametrize("params", [{}, {"status": "all"}, {"all": "false"}])
def test_a_delete_with_no_scope_is_422_and_deletes_nothing(client, alice, create, params):
    create(alice, title="precious", completed=True)
    response = delete_many(client, alice, **params)
    assert (response.status_code, response.json()) == (422, {"detail": NO_SCOPE})
    assert titles(client, alice) == ["precious"]


def test_all_true_with_a_filter_is_422(client, alice, create):
    create(alice, title="precious", completed=True)
    response = delete_many(client, alice, all="true", status="completed")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == (
        "Value error, all=true deletes every task: send it without filters"
    )
    assert titles(client, alice) == ["precious"]


def test_all_true_deletes_every_task_of_the_user_and_frees_the_task_limit(
    client, alice, bob, create, monkeypatch
):
    limit_tasks(monkeypatch, 2)
    create(alice, title="one")
    create(alice, title="two", tags=["x"])
    create(bob, title="bob's")
    deleted = delete_many(client, alice, all="true")
    assert (deleted.status_code, deleted.json()) == (200, {"deleted": 2})
    assert titles(client, alice) == []
    assert titles(client, bob) == ["bob's"]
    # The counter went down by two: two fit again, a third does not.
    create(alice, title="three")
    create(alice, title="four")
    refused = client.post(alice.tasks_url, json={"title": "five"}, headers=alice.headers)
    assert refused.status_code == 409
    assert refused.json()["detail"].startswith("Task limit reached")


def test_a_request_on_many_tasks_logs_how_many_and_never_which(client, alice, create, caplog):
    for number in range(3):
        create(alice, title=f"secret plan {number}")
    caplog.set_level(logging.INFO, logger="todo.access")
    assert complete_many(client, alice, True).status_code == 200
    assert delete_many(client, alice, status="completed").status_code == 200
    marked, cleared = access_lines(caplog)
    assert marked.startswith(f"PATCH /api/{alice.id}/tasks 200 ")
    assert marked.endswith(" count=3")
    assert cleared.startswith(f"DELETE /api/{alice.id}/tasks 200 ")
    assert cleared.endswith(" count=3")
    assert "secret" not in caplog.text


# --- counts ---

# The clock's now is 2026-03-01T12:00Z: 21:00 in Tokyo, 04:00 in Los Angeles.
DUE = {
    "last week": "2026-02-22T12:00:00Z",  # overdue everywhere
    "this morning": "2026-03-01T07:00:00Z",  # overdue; today in UTC and Tokyo, not LA's
    "late tonight": "2026-03-01T23:30:00Z",  # today in UTC and LA; Tokyo's tomorrow
    "Tokyo's early": "2026-02-28T16:00:00Z",  # 01:00 on 1 March in Tokyo: today there only
    "next week": "2026-03-08T12:00:00Z",
}


@pytest.fixture
def varied_tasks(client, alice, create, clock):
    for number, (name, due) in enumerate(DUE.items()):
        for completed in (False, True):
            create(
                alice,
                title=f"{name} {'done' if completed else 'open'}",
                due_date=due,
                completed=completed,
                priority=("low", "medium", "high")[number % 3],
                tags=["work"] if number % 2 else [],
            )
    create(alice, title="no date")
    return clock


def test_counts_name_overdue_and_due_today_in_the_clients_time_zone(client, alice, varied_tasks):
    assert counts(client, alice) == {
        "total": 11, "pending": 6, "completed": 5, "overdue": 3, "due_today": 2
    }  # fmt: skip
    assert counts(client, alice, tz="Asia/Tokyo")["due_today"] == 2  # this morning, Tokyo's early
    assert counts(client, alice, tz="America/Los_Angeles")["due_today"] == 1  # late tonight
    assert counts(client, alice, tz="Asia/Tokyo", tag="work") == {
        "total": 4, "pending": 2, "completed": 2, "overdue": 2, "due_today": 2
    }  # fmt: skip


FILTERS = [
    {},
    {"status": "pending"},
    {"status": "completed"},
    {"priority": "high"},
    {"tag": "work"},
    {"q": "ToNiGhT"},
    {"due_before": "2026-03-01T00:00:00Z"},
    {"due_after": "2026-03-01T00:00:00Z", "priority": "low"},
]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_counts_match_the_lists_total_count_for_each_filter(
    client, alice, varied_tasks, filters, zone
):
    now = varied_tasks.now
    local_now = now.astimezone(ZoneInfo(zone))
    day_starts = local_now.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    day_ends = day_starts + timedelta(days=1) - timedelta(microseconds=1)
    just_before_now = (now - timedelta(microseconds=1)).isoformat()

    def listed(**more: str) -> int:
        """The list's X-Total-Count for the filters and `more` together."""
        if "status" in filters and "status" in more and filters["status"] != more["status"]:
            return 0
        narrowed = {**filters, **more}
        # The filters and the count's own bound on one side: the narrower one holds.
        for bound, pick in (("due_before", min), ("due_after", max)):
            given = [value for value in (filters.get(bound), more.get(bound)) if value]
            if given:
                narrowed[bound] = pick(given, key=datetime.fromisoformat)
        return total(client, alice, **narrowed)

    got = counts(client, alice, tz=zone, **filters)
    assert got == {
        "total": listed(),
        "pending": listed(status="pending"),
        "completed": listed(status="completed"),
        "overdue": listed(status="pending", due_before=just_before_now),
        "due_today": listed(
            status="pending", due_after=day_starts.isoformat(), due_before=day_ends.isoformat()
        ),
    }


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "", "UTC\x00"])
def test_an_unknown_time_zone_is_422(client, alice, zone):
    response = client.get(f"{alice.tasks_url}/counts", params={"tz": zone}, headers=alice.headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (
        ["query", "tz"],
        "Value error, must be an IANA time zone, such as Europe/Paris or UTC",
    )


def test_counts_answer_405_to_other_methods(client, alice):
    response = client.put(f"{alice.tasks_url}/counts", json={}, headers=alice.headers)
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})
    assert response.headers["allow"] == "GET, HEAD"


# --- manual order ---


def move(client, account, task_id: int, headers: dict | None = None, **place) -> httpx2.Response:
    url = f"{account.tasks_url}/{task_id}/position"
    return client.put(url, json=place, headers={**account.headers, **(headers or {})})


def ordered_ids(client, account, **params) -> list[int]:
    return [task["id"] for task in listing(client, account, sort="position", **params)]


def apply_move(order: list[int], task_id: int, place: dict) -> None:
    """What a move does to a list of ids in order."""
    order.remove(task_id)
    if place.get("to") == "top":
        order.insert(0, task_id)
    elif place.get("to") == "bottom":
        order.append(task_id)
    elif "before" in place:
        order.insert(order.index(place["before"]), task_id)
    else:
        order.insert(order.index(place["after"]) + 1, task_id)


def random_place(chance: random.Random, order: list[int], task_id: int) -> dict:
    kind = chance.choice(["before", "after", "to"])
    if kind == "to":
        return {"to": chance.choice(["top", "bottom"])}
    return {kind: chance.choice([other for other in order if other != task_id])}


def test_new_tasks_go_to_the_end_of_the_order_and_desc_reverses_it(client, alice, create):
    ids = [create(alice, title=f"task {number}")["id"] for number in range(4)]
    assert ordered_ids(client, alice) == ids
    assert ordered_ids(client, alice, order="desc") == ids[::-1]


def test_fifty_random_moves_give_the_expected_order_and_pages_cover_it_once(client, alice, create):
    order = [create(alice, title=f"task {number}")["id"] for number in range(20)]
    chance = random.Random(24)
    for _ in range(50):
        task_id = chance.choice(order)
        place = random_place(chance, order, task_id)
        response = move(client, alice, task_id, **place)
        assert response.status_code == 200, (place, response.text)
        assert response.json()["id"] == task_id
        apply_move(order, task_id, place)
    assert ordered_ids(client, alice) == order
    paged = [
        task["id"]
        for offset in range(0, 21, 7)
        for task in listing(client, alice, sort="position", limit=7, offset=offset)
    ]
    assert paged == order


def test_many_moves_into_one_gap_keep_the_order(client, alice, create):
    """Each move halves the gap after the first task; the order spreads out when it is used up."""
    order = [create(alice, title=f"task {number}")["id"] for number in range(4)]
    first = order[0]
    for number in range(60):
        task_id = order[-1] if number % 2 else order[-2]
        response = move(client, alice, task_id, after=first)
        assert response.status_code == 200, response.text
        apply_move(order, task_id, {"after": first})
        assert ordered_ids(client, alice) == order


def test_a_move_changes_the_tasks_etag_and_the_pages_and_takes_if_match(client, alice, create):
    first, second = create(alice, title="first"), create(alice, title="second")
    page = client.get(alice.tasks_url, params={"sort": "position"}, headers=alice.headers)

    stale = move(client, alice, second["id"], headers={"If-Match": '"7"'}, to="top")
    assert stale.status_code == 412
    assert stale.headers["etag"] == '"1"'
    assert ordered_ids(client, alice) == [first["id"], second["id"]]

    moved = move(client, alice, second["id"], headers={"If-Match": '"1"'}, before=first["id"])
    assert moved.status_code == 200
    assert moved.headers["etag"] == '"2"'
    assert {key: value for key, value in moved.json().items() if key != "updated_at"} == {
        key: value for key, value in second.items() if key != "updated_at"
    }
    assert ordered_ids(client, alice) == [second["id"], first["id"]]
    again = client.get(
        alice.tasks_url,
        params={"sort": "position"},
        headers={**alice.headers, "If-None-Match": page.headers["etag"]},
    )
    assert again.status_code == 200
    assert again.headers["etag"] != page.headers["etag"]


@pytest.mark.parametrize(
    "place, loc, message",
    [
        (
            {},
            ["body"],
            'Value error, Name one place: {"before": id}, {"after": id} or {"to": "top"}',
        ),
        (
            {"before": 1, "to": "top"},
            ["body"],
            'Value error, Name one place: {"before": id}, {"after": id} or {"to": "top"}',
        ),
        ({"to": "middle"}, ["body", "to"], "Input should be 'top' or 'bottom'"),
        ({"after": 0}, ["body", "after"], "Input should be greater than or equal to 1"),
        ({"before": 2**63 - 1}, ["body", "before"], "Value error, No task of yours has this id"),
    ],
)
def test_a_move_to_no_place_is_422_and_moves_nothing(client, alice, create, place, loc, message):
    ids = [create(alice)["id"] for _ in range(2)]
    response = move(client, alice, ids[1], **place)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (loc, message)
    assert ordered_ids(client, alice) == ids


def test_a_move_next_to_itself_keeps_the_order(client, alice, create):
    ids = [create(alice)["id"] for _ in range(3)]
    for place in ({"before": ids[1]}, {"after": ids[1]}):
        response = move(client, alice, ids[1], **place)
        assert (response.status_code, response.json()["id"]) == (200, ids[1])
        assert ordered_ids(client, alice) == ids


def test_a_move_next_to_another_users_task_is_422_and_tells_nothing(client, alice, bob, create):
    mine, bobs = create(alice), create(bob)
    response = move(client, alice, mine["id"], after=bobs["id"])
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, No task of yours has this id"


def test_twenty_concurrent_moves_beside_completions_and_creates_keep_one_order(
    client, alice, create
):
    """Moves, completions of recurring tasks (each makes its next one) and creates at once:
    no deadlock, no task twice or lost from the order."""
    due = "2026-03-02T09:00:00Z"
    order = [create(alice, recurrence="daily", due_date=due)["id"] for _ in range(10)]
    chance = random.Random(7)
    moves = [(task_id, random_place(chance, order, task_id)) for task_id in order * 2]
    start = threading.Barrier(35)

    def one_request(number: int) -> httpx2.Response:
        start.wait(timeout=30)
        if number < 20:
            task_id, place = moves[number]
            return move(client, alice, task_id, **place)
        if number < 30:
            url = f"{alice.tasks_url}/{order[number - 20]}/complete"
            return client.patch(url, json={"completed": True}, headers=alice.headers)
        return client.post(alice.tasks_url, json={"title": "new"}, headers=alice.headers)

    with ThreadPoolExecutor(max_workers=35) as pool:
        answers = list(pool.map(one_request, range(35)))
    assert [answer.status_code for answer in answers] == [200] * 30 + [201] * 5, [
        answer.text for answer in answers if answer.status_code >= 300
    ]
    in_order = ordered_ids(client, alice)
    assert len(in_order) == len(set(in_order)) == 25
    paged = [
        task["id"]
        for offset in range(0, 25, 7)
        for task in listing(client, alice, sort="position", limit=7, offset=offset)
    ]
    assert paged == in_order


def test_with_two_workers_concurrent_moves_and_creates_keep_one_total_order(
    two_workers_client, new_account
):
    http = two_workers_client
    account = new_account("w@example.com", via=http)
    auth, tasks_url = account.headers, account.tasks_url
    ids = []
    for number in range(10):
        created = http.post(tasks_url, json={"title": f"task {number}"}, headers=auth)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    chance = random.Random(20)
    places = [
        {"to": chance.choice(["top", "bottom"])}
        if number % 3 == 0
        else {chance.choice(["before", "after"]): chance.choice(ids)}
        for number in range(24)
    ]

    def move_or_create(number: int) -> httpx2.Response:
        if number % 6 == 5:  # a create now and then: it takes a place too
            return http.post(tasks_url, json={"title": f"new {number}"}, headers=auth)
        task_id = ids[number % len(ids)]
        return http.put(f"{tasks_url}/{task_id}/position", json=places[number], headers=auth)

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(move_or_create, range(24)))  # 20 moves, 4 creates
    assert sorted(answer.status_code for answer in answers) == [200] * 20 + [201] * 4, [
        answer.text for answer in answers if answer.status_code >= 400
    ]
    listed = http.get(tasks_url, params={"sort": "position", "limit": 100}, headers=auth)
    assert listed.status_code == 200
    assert len(listed.json()) == 14
    assert len({task["id"] for task in listed.json()}) == 14
    paged = [
        task["id"]
        for offset in range(0, 14, 7)
        for task in http.get(
            tasks_url,
            params={"sort": "position", "limit": 7, "offset": offset},
            headers=auth,
        ).json()
    ]
    assert paged == [task["id"] for task in listed.json()]
