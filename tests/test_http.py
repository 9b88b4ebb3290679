"""HTTP conventions that hold on every route: the error format (404, 405, 413, 422, 500),
bodies the parser cannot read, CORS, the request id, the access log and what it never
holds, /health, the front door and the docs pages, and the OpenAPI description of errors."""

import logging
import re
import secrets

import pytest
from fastapi import Request

import auth
import db
from main import app

# --- the error format ---


def test_an_unknown_path_is_404_json(client):
    response = client.get("/api/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("DELETE", "/health", "GET, HEAD"),
        ("OPTIONS", "{tasks_url}/1", "GET, HEAD, PUT, PATCH, DELETE"),
        ("POST", "/docs/assets/swagger-ui.css", "GET, HEAD"),
    ],
    ids=["health", "a-task", "a-docs-asset"],
)
def test_a_method_the_path_lacks_is_405_naming_every_method_it_has(
    client, alice, method, path, allowed
):
    response = client.request(method, path.format(tasks_url=alice.tasks_url), headers=alice.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/docs/assets/swagger-ui.css",
        "/api/auth/me",
        "{tasks_url}",
        "{tasks_url}?status=pending&limit=1",
        "{tasks_url}/{task_id}",
    ],
)
def test_every_get_route_answers_head_with_its_headers_and_no_body(client, alice, create, path):
    path = path.format(tasks_url=alice.tasks_url, task_id=create(alice)["id"])
    get = client.get(path, headers=alice.headers)
    head = client.head(path, headers=alice.headers)
    assert (head.status_code, head.content) == (get.status_code, b"")
    assert get.status_code == 200 and get.content
    different = {"date", "x-request-id", "last-modified", "etag"}  # per response, or the file's own
    assert {name: value for name, value in head.headers.items() if name not in different} == {
        name: value for name, value in get.headers.items() if name not in different
    }


def test_a_value_error_422_names_its_message_in_ctx_not_an_empty_object(client, alice):
    response = client.post(alice.tasks_url, json={"title": "a\x00b"}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "value_error",
                "loc": ["body", "title"],
                "msg": "Value error, must not contain NUL characters",
                "ctx": {"error": "must not contain NUL characters"},
            }
        ]
    }


@pytest.mark.parametrize(
    "raw, content_type, error",
    [
        (b"{not json", "application/json", "json_invalid"),
        (b'{"title": "\xff\xfe"}', "application/json", "json_invalid"),
        (b"[" * 5000 + b"]" * 5000, "application/json", "json_invalid"),
        (b'{"title": "x", "priority": ' + b"9" * 5000 + b"}", "application/json", "json_invalid"),
        (b"[1, 2]", "application/json", "model_attributes_type"),
    ],
    ids=["malformed", "not-utf-8", "nested-too-deep", "integer-too-long", "not-an-object"],
)
def test_a_body_sent_as_json_that_is_not_a_json_object_is_422_and_stores_nothing(
    client, alice, raw, content_type, error
):
    response = client.post(
        alice.tasks_url, content=raw, headers={**alice.headers, "Content-Type": content_type}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == error
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


# The answer a fetch() with a string body and no Content-Type header gets: it sends text/plain.
NOT_JSON = {"detail": "Send the body as JSON, with the header Content-Type: application/json"}
# Each operation whose body is JSON, collected once from the app.
JSON_BODY_OPERATIONS = [
    (method.upper(), path)
    for path, operations in app.openapi()["paths"].items()
    for method, operation in operations.items()
    if "application/json" in operation.get("requestBody", {}).get("content", {})
]


@pytest.mark.parametrize(
    "raw, content_type",
    [
        (b'{"title": "Buy milk"}', None),
        (b'{"title": "Buy milk"}', "text/plain;charset=UTF-8"),
        (b"title=Buy+milk", "application/x-www-form-urlencoded"),
    ],
    ids=["no-content-type", "text-plain", "form-urlencoded"],
)
def test_a_body_not_sent_as_json_is_415_naming_the_header_and_stores_nothing(
    client, alice, raw, content_type
):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(alice.tasks_url, content=raw, headers={**alice.headers, **headers})
    assert response.status_code == 415
    assert response.json() == NOT_JSON
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


@pytest.mark.parametrize(
    "method, path",
    JSON_BODY_OPERATIONS,
    ids=[f"{method} {path}" for method, path in JSON_BODY_OPERATIONS],
)
def test_every_route_with_a_json_body_answers_a_text_body_with_415(
    client, alice, create, method, path
):
    url = path.format(user_id=alice.id, task_id=create(alice)["id"])
    headers = {**alice.headers, "Content-Type": "text/plain"}
    response = client.request(method, url, content=b"{}", headers=headers)
    assert response.status_code == 415
    assert response.json() == NOT_JSON


def test_the_oauth2_form_route_takes_its_form_and_answers_json_naming_its_fields(
    client, alice, password
):
    fields = {"username": alice.email, "password": password}
    form = client.post("/api/auth/token", data=fields)
    assert form.status_code == 200
    assert form.json()["user"]["email"] == alice.email
    response = client.post("/api/auth/token", json=fields)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"type": "missing", "loc": ["body", "username"], "msg": "Field required"},
            {"type": "missing", "loc": ["body", "password"], "msg": "Field required"},
        ]
    }


@pytest.mark.parametrize(
    "content, content_type, reason",
    [
        (
            "&".join(f"f{number}=x" for number in range(1001)),
            "application/x-www-form-urlencoded",
            "Too many fields. Maximum number of fields is 1000.",
        ),
        ("username=carol&password=x", "multipart/form-data", "Missing boundary in multipart."),
    ],
    ids=["too-many-fields", "multipart-without-boundary"],
)
def test_a_form_that_cannot_be_parsed_is_422(client, content, content_type, reason):
    response = client.post(
        "/api/auth/token", content=content, headers={"Content-Type": content_type}
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "form_invalid",
                "loc": ["body"],
                "msg": "Form body could not be parsed",
                "ctx": {"error": reason},
            }
        ]
    }


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_64_kib_are_413_and_store_nothing(client, alice, chunked):
    body = b'{"title": "big", "description": "' + b"x" * (64 * 1024) + b'"}'
    content = iter([body[:1000], body[1000:]]) if chunked else body
    response = client.post(
        alice.tasks_url,
        content=content,
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large: the limit is 65536 bytes"}
    listing = client.get(alice.tasks_url, headers=alice.headers)
    assert listing.json() == [] and listing.headers["x-total-count"] == "0"


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


# --- OpenAPI: every route names its errors ---

AUTH_ROUTE_STATUSES = {
    ("post", "/api/auth/logout"): {"204", "401", "503"},
    ("put", "/api/auth/password"): {"204", "401", "403", "409", "415", "422", "429", "503"},
    ("delete", "/api/auth/me"): {"204", "401", "403", "415", "422", "429", "503"},
    ("post", "/api/auth/signup"): {"201", "409", "415", "422", "429", "503"},
    ("post", "/api/auth/login"): {"200", "401", "415", "422", "429", "503"},
    ("post", "/api/auth/token"): {"200", "401", "422", "429", "503"},
}


def test_openapi_documents_every_route_and_its_errors(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["type"] == "oauth2"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation["tags"] and operation["summary"], (method, path)
            assert {"200", "201", "204"} & set(operation["responses"]), (method, path)
            if path.startswith("/api/{user_id}"):
                assert operation["security"] == [{"OAuth2PasswordBearer": []}]
                assert {"401", "403", "422"} <= set(operation["responses"]), (method, path)
            if "{task_id}" in path:
                assert "404" in operation["responses"], (method, path)
            # 415 exactly where the body is JSON: the answer to a body not sent as JSON.
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                media = operation["responses"]["415"]["content"]["application/json"]
                assert media["example"] == NOT_JSON, (method, path)
            else:
                assert "415" not in operation["responses"], (method, path)
    for (method, path), statuses in AUTH_ROUTE_STATUSES.items():
        operation = schema["paths"][path][method]
        assert operation["tags"] == ["auth"]
        assert set(operation["responses"]) == statuses, (method, path)
        for retry_later in {"429", "503"} & statuses:
            assert "Retry-After" in operation["responses"][retry_later]["headers"], (method, path)
    for method, path in [
        ("post", "/api/auth/logout"),
        ("put", "/api/auth/password"),
        ("delete", "/api/auth/me"),
    ]:
        assert schema["paths"][path][method]["security"] == [{"OAuth2PasswordBearer": []}]


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
    listing = client.get(
        alice.tasks_url, headers={**alice.headers, "Origin": "http://localhost:3000"}
    )
    assert listing.status_code == 200
    exposed = {
        h.strip().lower() for h in listing.headers["access-control-expose-headers"].split(",")
    }
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
    listing = client.get(
        alice.tasks_url, headers={**alice.headers, "Origin": "https://evil.example"}
    )
    assert listing.status_code == 200 and "access-control-allow-origin" not in listing.headers


# --- the request id and the access log ---


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "todo.access"]


def test_one_access_line_per_request_with_method_path_status_duration_and_id(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    response = client.get(
        alice.tasks_url, params={"q": "milk"}, headers={**alice.headers, "X-Request-ID": "req-42"}
    )
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


# A percent-encoded CR LF, a forged log line, and a terminal escape (clear the screen).
FORGED_PATH_SEGMENT = "1%0D%0ACRITICAL%20admin%20login%20succeeded%1B[2J"
RAW_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def formatted_log(caplog, *names: str) -> str:
    """The records of these loggers as a handler writes them, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records if record.name in names)


def test_client_text_never_writes_control_characters_into_the_log(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="todo.access")
    caplog.set_level(logging.INFO, logger="uvicorn.error")

    note = "note\x1b]0;owned\x07"

    def broken_database(request: Request):
        # An unexpected failure whose message carries what the client sent.
        raise RuntimeError(f"no database for {request.scope['path']} ({request.headers['x-note']})")

    app.dependency_overrides[auth.get_path_owner] = broken_database
    failed = client.get(
        f"/api/{FORGED_PATH_SEGMENT}/tasks", headers={**alice.headers, "X-Note": note}
    )
    assert (failed.status_code, failed.json()) == (500, {"detail": "Internal server error"})
    app.dependency_overrides.clear()
    missing = client.get(f"/{FORGED_PATH_SEGMENT}")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})

    lines = formatted_log(caplog, "todo.access", "uvicorn.error").split("\n")
    assert [line for line in lines if RAW_CONTROLS.search(line)] == []
    assert [line for line in lines if line.startswith("CRITICAL")] == []
    error_lines = [
        line for line in lines if line.startswith("ERROR uvicorn.error: Unexpected error in GET")
    ]
    assert error_lines == [
        f"ERROR uvicorn.error: Unexpected error in GET /api/{FORGED_PATH_SEGMENT}/tasks"
    ]
    decoded = "1\\r\\nCRITICAL admin login succeeded\\x1b[2J"
    message = f"RuntimeError: no database for /api/{decoded}/tasks (note\\x1b]0;owned\\x07)"
    assert message in lines  # the exception's message, escaped on one line of the traceback
    assert "Traceback (most recent call last):" in lines
    assert [line.split(" request_id=")[0].rsplit(" ", 1)[0] for line in access_lines(caplog)] == [
        f"GET /api/{FORGED_PATH_SEGMENT}/tasks 500",
        f"GET /{FORGED_PATH_SEGMENT} 404",
    ]


def test_control_characters_in_any_logged_text_are_escaped(caplog):
    """The filter covers every call on these loggers, uvicorn's own included."""
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    try:
        try:
            raise ValueError("inner\nCRITICAL forged")
        except ValueError as inner:
            raise KeyError("outer\r\x1b[2J") from inner
    except KeyError:
        logging.getLogger("uvicorn.error").exception("%s\n%s", "line\nbreak", "\u2028\x85\ud800")
    lines = formatted_log(caplog, "uvicorn.error").split("\n")
    assert lines[0] == "ERROR uvicorn.error: line\\nbreak\\n\\u2028\\x85\\ud800"
    assert "ValueError: inner\\nCRITICAL forged" in lines
    assert "KeyError: 'outer\\r\\x1b[2J'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines.index("ValueError: inner\\nCRITICAL forged") < lines.index(
        "KeyError: 'outer\\r\\x1b[2J'"
    )
    assert not any(RAW_CONTROLS.search(line) or "\u2028" in line for line in lines)


def test_no_password_token_or_authorization_in_any_log_line(client, bearer, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    caplog.set_level(logging.DEBUG, logger="todo.access")  # it has a level of its own
    password = "hunter2-" + secrets.token_urlsafe(12)
    signup = client.post(
        "/api/auth/signup", json={"email": "carol@example.com", "password": password}
    )
    assert signup.status_code == 201
    token = signup.json()["access_token"]
    user_id = signup.json()["user"]["id"]
    login = client.post(
        "/api/auth/login", json={"email": "carol@example.com", "password": password}
    )
    assert login.status_code == 200
    form = client.post(
        "/api/auth/token", data={"username": "carol@example.com", "password": password}
    )
    assert form.status_code == 200
    wrong = client.post(
        "/api/auth/login", json={"email": "carol@example.com", "password": password + "x"}
    )
    assert wrong.status_code == 401
    short = client.post("/api/auth/signup", json={"email": "dave@example.com", "password": "pw"})
    assert short.status_code == 422
    me = client.get("/api/auth/me", headers=bearer(token))
    assert me.status_code == 200
    # A careless client that puts the token in the query string: the path alone is logged.
    listed = client.get(
        f"/api/{user_id}/tasks",
        params={"access_token": token, "q": password},
        headers=bearer(token),
    )
    assert listed.status_code == 200
    forged = client.get("/api/auth/me", headers=bearer(f"{token}x"))
    assert forged.status_code == 401
    secrets_sent = [
        password,
        "pw",
        token,
        login.json()["access_token"],
        form.json()["access_token"],
    ]
    # Every server-side logger; httpx2 is the test's own client, which logs the URL it asked for.
    lines = [
        record.getMessage() for record in caplog.records if not record.name.startswith("httpx")
    ]
    assert len(access_lines(caplog)) == 8
    for line in lines:
        assert "Bearer" not in line and "Authorization" not in line.title(), line
        assert "access_token" not in line, line
        for secret in secrets_sent:
            assert secret not in line, line


# --- /health ---


def test_health_checks_the_database(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_is_503_when_the_database_does_not_answer(client, tmp_path, monkeypatch):
    monkeypatch.setattr(
        db, "engine", db.make_engine(f"sqlite:///{tmp_path}/missing-dir/nothing.db")
    )
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}


# --- the front door and the docs pages ---


def test_the_front_door_links_the_docs_the_schema_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    links = re.findall(r'<a href="([^"]+)"', page.text)
    assert links == ["docs", "redoc", "openapi.json", "health"]
    for link in links:
        linked = client.get(f"/{link}")
        assert linked.status_code == 200, link
        if link == "openapi.json":
            assert "/" not in linked.json()["paths"]  # the front door is not part of the API


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
