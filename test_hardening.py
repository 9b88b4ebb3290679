"""Hardening (issue 3): regressions for what fuzzing found, request logging, and the
live-server checks (crash safety, several workers)."""

from conftest import Account


# --- found by schemathesis (test_fuzz.py); each keeps a plain HTTP test here ---


def test_405_allow_header_names_every_method_of_the_path(client, alice: Account):
    response = client.options(f"{alice.tasks_url}/1", headers=alice.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "GET, PUT, PATCH, DELETE"


def test_body_that_is_not_utf8_is_malformed_json_422(client, alice: Account):
    response = client.post(
        alice.tasks_url,
        content=b'{"title": "\xff\xfe"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


def test_update_schema_offers_null_only_where_null_clears(client, alice: Account):
    # The schema said completed/title/priority/tags/recurrence could be null; the API says 422.
    update = client.get("/openapi.json").json()["components"]["schemas"]["TaskUpdate"]["properties"]
    nullable = {name for name, field in update.items() if {"type": "null"} in field.get("anyOf", [])}
    assert nullable == {"description", "due_date"}
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers).json()
    response = client.put(f"{alice.tasks_url}/{created['id']}", json={"completed": None}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "completed"]


def test_number_is_not_a_due_date(client, alice: Account):
    for due_date in (0, 1700000000, "1700000000", "0.5", True):
        response = client.post(alice.tasks_url, json={"title": "t", "due_date": due_date}, headers=alice.headers)
        assert response.status_code == 422, due_date
        assert response.json()["detail"][0]["loc"] == ["body", "due_date"]
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


def test_number_is_not_a_due_date_filter(client, alice: Account):
    response = client.get(alice.tasks_url, params={"due_before": "0.5"}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "due_before"]


def test_iso_due_dates_still_work(client, alice: Account):
    for sent, stored in (
        ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00Z"),
        ("2026-03-01T12:00:00", "2026-03-01T12:00:00Z"),
        ("2026-03-01T14:00:00+02:00", "2026-03-01T12:00:00Z"),
    ):
        response = client.post(alice.tasks_url, json={"title": "t", "due_date": sent}, headers=alice.headers)
        assert response.status_code == 201, response.text
        assert response.json()["due_date"].replace("+00:00", "Z") == stored
