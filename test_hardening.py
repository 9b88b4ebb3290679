"""Hardening (issue 3): regressions for what fuzzing found, request logging, and the
live-server checks (crash safety, several workers)."""

import logging
import re
import secrets

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


# --- request logging ---


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "todo.access"]


def test_one_access_line_per_request_with_method_path_status_duration_and_id(client, alice: Account, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    response = client.get(alice.tasks_url, params={"q": "milk"}, headers={**alice.headers, "X-Request-ID": "req-42"})
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["x-request-id"] == "req-42"
    [line] = access_lines(caplog)
    assert re.fullmatch(rf"GET {alice.tasks_url} 200 \d+\.\dms request_id=req-42", line), line


def test_request_id_is_generated_when_missing_or_not_a_short_token(client, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    sent = [None, "", "has space", "x" * 65, "semi;colon", "Bearer abc"]
    echoed = []
    for request_id in sent:
        headers = {} if request_id is None else {"X-Request-ID": request_id}
        response = client.get("/health", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        echoed.append(response.headers["x-request-id"])
    assert all(re.fullmatch(r"[0-9a-f]{16}", request_id) for request_id in echoed), echoed
    assert len(set(echoed)) == len(sent)
    assert [line.rsplit("request_id=", 1)[1] for line in access_lines(caplog)] == echoed


def test_no_password_token_or_authorization_in_any_log_line(client, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    password = "hunter2-" + secrets.token_urlsafe(12)
    signup = client.post("/api/auth/signup", json={"email": "carol@example.com", "password": password})
    assert signup.status_code == 201
    token = signup.json()["access_token"]
    user_id = signup.json()["user"]["id"]
    login = client.post("/api/auth/login", json={"email": "carol@example.com", "password": password})
    assert login.status_code == 200
    form = client.post("/api/auth/token", data={"username": "carol@example.com", "password": password})
    assert form.status_code == 200
    wrong = client.post("/api/auth/login", json={"email": "carol@example.com", "password": password + "x"})
    assert wrong.status_code == 401
    short = client.post("/api/auth/signup", json={"email": "dave@example.com", "password": "pw"})
    assert short.status_code == 422
    bearer = {"Authorization": f"Bearer {token}"}
    me = client.get("/api/auth/me", headers=bearer)
    assert me.status_code == 200
    # A careless client that puts the token in the query string: the path alone is logged.
    listed = client.get(f"/api/{user_id}/tasks", params={"access_token": token, "q": password}, headers=bearer)
    assert listed.status_code == 200
    forged = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}x"})
    assert forged.status_code == 401
    secrets_sent = [password, "pw", token, login.json()["access_token"], form.json()["access_token"]]
    # Every server-side logger; httpx2 is the test's own client, which logs the URL it asked for.
    lines = [record.getMessage() for record in caplog.records if not record.name.startswith("httpx")]
    assert len(access_lines(caplog)) == 8
    for line in lines:
        assert "Bearer" not in line and "Authorization" not in line.title(), line
        assert "access_token" not in line, line
        for secret in secrets_sent:
            assert secret not in line, line
