"""The API in a real browser: Debian's headless Chromium, driven by Playwright, against a
real `uvicorn main:app`, with no way out of this machine: every request to an address that
is not loopback goes to a proxy address where nothing listens, so it fails, and each one is
recorded, so a test can assert that its pages asked for none. (Playwright's own request
interception would answer CORS preflights itself, so it is not used.)

- /docs and /redoc work with no internet: Swagger UI signs up with "Try it out",
  authorizes with email and password, creates and lists a task; ReDoc renders.
- CORS as a browser enforces it: a page from an allowed origin makes a preflighted POST
  with Authorization and JSON, and reads X-Total-Count and Location; it moves a task with
  If-Match and marks all complete with a PATCH on the list, each preflighted; a page from
  any other origin has its fetch rejected by the browser.

The frontend pages are served by a small HTTP server on this machine, as a dev server would
serve them: on http://localhost:5173 (Vite's port, in the default CORS_ORIGINS) when that port
is free, else on another port that the test adds to CORS_ORIGINS. (Chromium lets a page reach
a loopback API only when the page itself came from a loopback address.)
"""

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from helpers import PASSWORD, LiveServer, free_port, require_tool, send_body, sign_up

from config import DEFAULT_CORS_ORIGINS

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Locator,
        Page,
        Request,
        expect,
        sync_playwright,
    )
except ImportError:  # the suite still runs without it; the fixture below says what is missing
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium sends loopback requests directly and every other one to the proxy, where
# nothing listens. Nothing in the background may reach out: no updates, no sync, no
# first-run pages.
CHROMIUM_ARGS = [
    "--proxy-server=http://127.0.0.1:9",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TIMEOUT_MS = 20_000
VITE_PORT = 5173  # http://localhost:5173 is in the default CORS_ORIGINS
FRONTEND_PAGE = (
    "<!doctype html><html><head><title>frontend</title></head><body>frontend</body></html>"
)

# Run inside a page: what became of one fetch. A browser that refuses the request (CORS,
# no network) rejects it with a TypeError.
FETCH_OUTCOME = """
async ({ url, init }) => {
  try {
    const response = await fetch(url, init);
    return `read ${response.status}`;
  } catch (error) {
    return `${error.name}: ${error.message}`;
  }
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    require_tool(
        sync_playwright is not None,
        "needs the playwright package (pip install -r requirements.txt)",
    )
    require_tool(Path(CHROMIUM).exists(), "needs Chromium (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


class OfflineContext:
    """A browser context that records every request its pages make to an address outside
    this machine (the browser's proxy setting makes each of them fail), and every error
    that a page's scripts leave uncaught."""

    def __init__(self, browser: "Browser") -> None:
        self.context: BrowserContext = browser.new_context()
        self.context.set_default_timeout(TIMEOUT_MS)
        self.blocked: list[str] = []
        self.script_errors: list[str] = []
        self.context.on("requestfinished", self.note)
        self.context.on("requestfailed", self.note)

    def note(self, request: "Request") -> None:
        url = urlsplit(request.url)
        # One that the page's own Content-Security-Policy refused never left the browser.
        if (
            url.scheme in ("http", "https", "ws", "wss")
            and url.hostname not in LOCAL_HOSTS
            and request.failure != "csp"
        ):
            self.blocked.append(f"{request.url} ({request.failure})")

    def new_page(self) -> "Page":
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.script_errors.append(f"{page.url}: {error}"))
        page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
        return page


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[LiveServer]:
    """One API server with the default settings for the pages that need no other: they
    read, but for the Swagger UI test, which signs up an email of its own."""
    with LiveServer(tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest.fixture
def offline(browser) -> Iterator[OfflineContext]:
    context = OfflineContext(browser)
    yield context
    context.context.close()


def test_the_browser_cannot_reach_outside_this_machine(offline, api):
    page = offline.new_page()
    page.goto(f"{api.url}/")
    outcome = page.evaluate(FETCH_OUTCOME, {"url": "http://example.invalid/", "init": {}})
    assert outcome == "TypeError: Failed to fetch"
    assert offline.blocked == ["http://example.invalid/ (net::ERR_PROXY_CONNECTION_FAILED)"]


# --- the docs pages, offline ---


def try_it_out(page: "Page", operation_id: str, tag: str) -> "Locator":
    """Open one operation in Swagger UI and press "Try it out"; returns its block."""
    block = page.locator(f"#operations-{tag}-{operation_id}")
    block.locator(".opblock-summary").first.click()
    block.get_by_role("button", name="Try it out").click()
    return block


def execute(page: "Page", block: "Locator", url_glob: str):
    with page.expect_response(url_glob) as response_info:
        block.get_by_role("button", name="Execute").click()
    return response_info.value


def test_swagger_ui_signs_up_authorizes_creates_and_lists_with_no_internet(offline, api):
    email = "swagger@example.com"
    page = offline.new_page()
    page.goto(f"{api.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Todo API")

    signup = try_it_out(page, "signup", "auth")
    signup.locator("textarea.body-param__text").fill(
        json.dumps({"email": email, "password": PASSWORD})
    )
    signed_up = execute(page, signup, "**/api/auth/signup")
    assert signed_up.status == 201
    user_id = signed_up.json()["user"]["id"]
    expect(
        signup.locator(".live-responses-table tbody .response-col_status").first
    ).to_contain_text("201")

    page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".modal-ux")
    dialog.locator("#oauth_username").fill(email)
    dialog.locator("#oauth_password").fill(PASSWORD)
    with page.expect_response("**/api/auth/token") as token_info:
        dialog.locator(".auth-btn-wrapper button.authorize").click()
    assert token_info.value.status == 200
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    dialog.locator(".btn-done").click()

    create = try_it_out(page, "createTask", "tasks")
    create.locator('input[placeholder="user_id"]').fill(str(user_id))
    create.locator("textarea.body-param__text").fill(json.dumps({"title": "Made in Swagger UI"}))
    created = execute(page, create, f"**/api/{user_id}/tasks")
    assert created.status == 201, created.text()
    assert created.request.headers["authorization"].startswith("Bearer ")
    assert created.json()["title"] == "Made in Swagger UI"

    listing = try_it_out(page, "listTasks", "tasks")
    listing.locator('input[placeholder="user_id"]').fill(str(user_id))
    listed = execute(page, listing, f"**/api/{user_id}/tasks*")
    assert listed.status == 200
    assert [task["title"] for task in listed.json()] == ["Made in Swagger UI"]
    assert listed.headers["x-total-count"] == "1"
    assert offline.blocked == [] and offline.script_errors == []


def test_redoc_renders_with_no_internet(offline, api):
    page = offline.new_page()
    page.goto(f"{api.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("Todo API")
    # ReDoc anchors each operation by its operationId.
    expect(page.locator('h2:has(a[href="#tag/tasks/operation/listTasks"])')).to_contain_text(
        "List tasks"
    )
    assert offline.blocked == [] and offline.script_errors == []


def test_the_front_door_leads_to_the_docs(offline, api):
    page = offline.new_page()
    page.goto(f"{api.url}/")
    page.get_by_role("link", name="/docs").click()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Todo API")
    assert page.url == f"{api.url}/docs"
    assert offline.blocked == [] and offline.script_errors == []


# --- CORS, enforced by the browser ---


class FrontendPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        send_body(self, FRONTEND_PAGE.encode(), "text/html; charset=utf-8")

    def log_message(self, *args: object) -> None:
        pass  # pytest shows a failing test's output; these lines would only crowd it


def serve_frontend(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), FrontendPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def allowed_frontend() -> Iterator[tuple[str, dict[str, str]]]:
    """(origin, settings for the API server): a page on localhost:5173, which the default
    CORS_ORIGINS allows, or on a free port that the settings add to the default list."""
    try:
        server, env = serve_frontend(VITE_PORT), {}
    except OSError:  # something else listens on 5173
        server = serve_frontend(free_port())
        env = {"CORS_ORIGINS": f"{DEFAULT_CORS_ORIGINS},http://localhost:{server.server_port}"}
    yield f"http://localhost:{server.server_port}", env
    server.shutdown()
    server.server_close()


@pytest.fixture
def other_frontend() -> Iterator[str]:
    """The origin of a page on a free port: in no CORS_ORIGINS list of these tests."""
    server = serve_frontend(free_port())
    yield f"http://localhost:{server.server_port}"
    server.shutdown()
    server.server_close()


# Run inside a frontend page: sign up, create a task (a POST with Authorization and JSON,
# so the browser sends a preflight first), then list, reading the exposed headers.
FRONTEND_ROUND_TRIP = """
async ({ api, email, password }) => {
  const signup = await fetch(`${api}/api/auth/signup`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  const account = await signup.json();
  const tasks = `${api}/api/${account.user.id}/tasks`;
  const auth = { Authorization: `Bearer ${account.access_token}` };
  const create = () => fetch(tasks, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json", "Idempotency-Key": "page-1" },
    body: JSON.stringify({ title: "From the frontend" }),
  });
  const created = await create();
  const retried = await create();
  const task = `${api}${created.headers.get("Location")}`;
  const edit = (etag) => fetch(task, {
    method: "PATCH",
    headers: { ...auth, "Content-Type": "application/json", "If-Match": etag },
    body: JSON.stringify({ title: "Edited in the page" }),
  });
  const stale = await edit('"0"');
  const edited = await edit(created.headers.get("ETag"));
  const cached = await fetch(task, {
    headers: { ...auth, "If-None-Match": edited.headers.get("ETag") },
  });
  const listed = await fetch(`${tasks}?status=pending`, { headers: auth });
  return {
    userId: account.user.id,
    signup: signup.status,
    created: [created.status, retried.status],
    location: created.headers.get("Location"),
    etags: [created.headers.get("ETag"), stale.headers.get("ETag"), edited.headers.get("ETag")],
    writes: [stale.status, edited.status],
    cached: cached.status,
    listed: listed.status,
    totalCount: listed.headers.get("X-Total-Count"),
    titles: (await listed.json()).map((task) => task.title),
  };
}
"""


def frontend_page(offline: OfflineContext, origin: str) -> "Page":
    page = offline.new_page()
    page.goto(f"{origin}/")
    assert page.evaluate("window.origin") == origin
    return page


def test_a_page_from_an_allowed_origin_calls_the_api_with_a_preflight(
    offline, allowed_frontend, live_server
):
    origin, settings = allowed_frontend
    server = live_server(env=settings)
    page = frontend_page(offline, origin)
    result = page.evaluate(
        FRONTEND_ROUND_TRIP, {"api": server.url, "email": "vite@example.com", "password": PASSWORD}
    )
    log = server.log()
    user_id = result["userId"]
    # The page reads the ETag and sends If-Match, If-None-Match and Idempotency-Key.
    assert result == {
        "userId": user_id,
        "signup": 201,
        "created": [201, 201],
        "location": f"/api/{user_id}/tasks/1",
        "etags": ['"1"', '"1"', '"2"'],
        "writes": [412, 200],
        "cached": 304,
        "listed": 200,
        "totalCount": "1",
        "titles": ["Edited in the page"],
    }
    # The browser asked first: the preflight is in the server's access log.
    assert f"OPTIONS /api/{user_id}/tasks 200" in log
    assert offline.blocked == [] and offline.script_errors == []


# Run inside a frontend page: a TodoMVC page's requests on a list it found. It reads the last
# task's ETag, drags that task above the first (a PUT with If-Match), lists in the user's
# order, then marks all complete (a PATCH on the collection) and lists the completed ones.
FRONTEND_LIST_REQUESTS = """
async ({ tasks, token, moving, above }) => {
  const auth = { Authorization: `Bearer ${token}` };
  const json = { ...auth, "Content-Type": "application/json" };
  const titles = async (query) => {
    const listed = await fetch(`${tasks}?${query}`, { headers: auth });
    return [listed.status, (await listed.json()).map((task) => task.title)];
  };
  const read = await fetch(`${tasks}/${moving}`, { headers: auth });
  const moved = await fetch(`${tasks}/${moving}/position`, {
    method: "PUT",
    headers: { ...json, "If-Match": read.headers.get("ETag") },
    body: JSON.stringify({ before: above }),
  });
  const reordered = await titles("sort=position");
  const markedAll = await fetch(tasks, {
    method: "PATCH",
    headers: json,
    body: JSON.stringify({ completed: true }),
  });
  return {
    read: [read.status, read.headers.get("ETag")],
    moved: [moved.status, moved.headers.get("ETag"), (await moved.json()).title],
    reordered,
    markedAll: [markedAll.status, await markedAll.json()],
    completed: await titles("status=completed&sort=position"),
  };
}
"""
LOGGED_REQUEST = re.compile(r"todo\.access \[\d+\]: (\S+ \S+ \d+) ")


def test_a_page_from_an_allowed_origin_moves_a_task_and_marks_all_complete(
    offline, allowed_frontend, live_server
):
    origin, settings = allowed_frontend
    server = live_server(env=settings)
    # The list the page finds, made outside it: so the page's PATCH is its first request to
    # the collection URL, and a POST's preflight, which Chromium caches per URL, cannot
    # stand in for the PATCH's own.
    with httpx2.Client(base_url=server.url) as http:
        account = sign_up(http, "todomvc@example.com")
        made = [
            http.post(account.tasks_url, json={"title": title}, headers=account.headers)
            for title in ("Wash up", "Shop", "Cook")
        ]
    assert [response.status_code for response in made] == [201, 201, 201]
    wash_up, _, cook = (response.json()["id"] for response in made)
    page = frontend_page(offline, origin)
    result = page.evaluate(
        FRONTEND_LIST_REQUESTS,
        {
            "tasks": f"{server.url}{account.tasks_url}",
            "token": account.token,
            "moving": cook,
            "above": wash_up,
        },
    )
    requests = LOGGED_REQUEST.findall(server.log())
    assert result == {
        "read": [200, '"1"'],
        "moved": [200, '"2"', "Cook"],
        "reordered": [200, ["Cook", "Wash up", "Shop"]],
        "markedAll": [200, {"changed": 3}],
        "completed": [200, ["Cook", "Wash up", "Shop"]],
    }
    # The browser asked first: the request logged just before each write is its preflight.
    position = f"{account.tasks_url}/{cook}/position"
    for method, path in [("PUT", position), ("PATCH", account.tasks_url)]:
        just_before = requests[requests.index(f"{method} {path} 200") - 1]
        assert just_before == f"OPTIONS {path} 200"
    assert offline.blocked == [] and offline.script_errors == []


@pytest.mark.parametrize(
    "init",
    [
        {},  # a simple GET: sent, but the browser hides the answer
        {
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": "{}",
        },  # preflighted
    ],
    ids=["simple-get", "preflighted-post"],
)
def test_a_page_from_another_origin_is_blocked_by_the_browser(offline, other_frontend, api, init):
    earlier_log = len(api.log())
    page = frontend_page(offline, other_frontend)
    url = f"{api.url}/health" if not init else f"{api.url}/api/auth/signup"
    outcome = page.evaluate(FETCH_OUTCOME, {"url": url, "init": init})
    log = api.log()[earlier_log:]  # this test's lines: the server served others before
    assert outcome == "TypeError: Failed to fetch"
    if init:  # the preflight was refused, so the POST itself never reached the server
        assert "OPTIONS /api/auth/signup 400" in log and "POST /api/auth/signup" not in log
    assert offline.blocked == [] and offline.script_errors == []


def test_cors_origins_star_lets_a_page_from_any_origin_call_the_api(
    offline, other_frontend, live_server
):
    server = live_server(env={"CORS_ORIGINS": "*"})
    page = frontend_page(offline, other_frontend)
    result = page.evaluate(
        FRONTEND_ROUND_TRIP,
        {"api": server.url, "email": "anywhere@example.com", "password": PASSWORD},
    )
    preflight = httpx2.options(
        f"{server.url}/api/auth/signup",
        headers={"Origin": "https://any.example", "Access-Control-Request-Method": "POST"},
    )
    assert (result["created"], result["totalCount"], result["titles"]) == (
        [201, 201],
        "1",
        ["Edited in the page"],
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    assert offline.blocked == [] and offline.script_errors == []
