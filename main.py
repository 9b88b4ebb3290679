"""The Todo API application: run it with `uvicorn main:app`.

Wires the routers together and makes every error a JSON {"detail": ...} body. Serves the
interactive docs (/docs, /redoc) from files installed with fastapi-offline, so they work with
no internet, and a small index at / that links them.
"""

import logging
import re
import secrets
import sys
import time
import traceback
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware as StarletteCORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import settings
from db import STATEMENT_TIMED_OUT, SchemaError, check_database, engine, migrate, statement_ran_out_of_time
from routes import auth, tasks
from schemas import HealthStatus, error_response

MAX_BODY_BYTES = 64 * 1024

# C0 and C1 controls (a newline forges a log line, ESC drives the terminal), the Unicode
# line separators, and lone surrogates (which the log's UTF-8 stream cannot write).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape_controls(text: str) -> str:
    """Control characters as Python escapes (\\n, \\x1b), so the text stays on its line."""
    return CONTROL_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def escaped_traceback(error: BaseException) -> str:
    """The usual traceback, in which each exception's own text, where client input can
    end up, is escaped onto one line. The frames come from our source files and keep
    their line breaks."""
    chain = []
    link: traceback.TracebackException | None = traceback.TracebackException.from_exception(error)
    while link is not None:
        if link.__cause__ is not None:
            chain.append((link, "\nThe above exception was the direct cause of the following exception:\n\n"))
            link = link.__cause__
        elif link.__context__ is not None and not link.__suppress_context__:
            chain.append((link, "\nDuring handling of the above exception, another exception occurred:\n\n"))
            link = link.__context__
        else:
            chain.append((link, ""))
            link = None
    lines = []
    for link, joint in reversed(chain):
        lines.append(joint)
        if link.stack:
            lines += ["Traceback (most recent call last):\n", *link.stack.format()]
        lines += [escape_controls(line.rstrip("\n")) + "\n" for line in link.format_exception_only()]
    return "".join(lines).rstrip("\n")


class EscapeControlCharacters(logging.Filter):
    """Escapes control characters in every record of the logger it is added to: the message,
    its arguments, and the traceback. Clients choose paths, headers and much of what ends
    up in an exception's message, and none of it may start a line of its own in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(escape_controls(arg) if isinstance(arg, str) else arg for arg in record.args)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = escaped_traceback(record.exc_info[1])  # formatters use it as it is
        return True


access_log = logging.getLogger("todo.access")
if not access_log.handlers:
    # uvicorn configures only its own loggers, so ours gets a handler of its own, on
    # stderr. It still propagates, so a root handler (pytest's caplog) sees it too.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"))
    access_log.addHandler(_handler)
    # uvicorn has set its loggers up by now: follow its --log-level as its own access log
    # would (INFO by default; `--log-level warning` silences both).
    access_log.setLevel(logging.getLogger("uvicorn.access").getEffectiveLevel())
# uvicorn's own access line would repeat ours, without the request id and with the query
# string, which a careless client can fill with a token. The run command stays
# `uvicorn main:app`, so it is switched off here rather than with --no-access-log.
logging.getLogger("uvicorn.access").disabled = True

error_log = logging.getLogger("uvicorn.error")  # where uvicorn writes its own tracebacks
for logger in (access_log, error_log):
    if not any(isinstance(existing, EscapeControlCharacters) for existing in logger.filters):
        logger.addFilter(EscapeControlCharacters())

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def logged_path(scope: Scope) -> str:
    # raw_path is the path as the client sent it, still percent-encoded: what a reader of
    # the log can paste into a request again. The filter above escapes what is left.
    return scope.get("raw_path", scope["path"].encode()).decode("ascii", "backslashreplace")


class AccessLog:
    """One log line per request: method, path, status, duration in ms and request id.

    The request id is the client's X-Request-ID when it is a short plain token, and a
    fresh random one otherwise; either way it is echoed in the X-Request-ID response
    header. Only the path is logged: no query string, no header, no body, so passwords
    and tokens cannot reach the log. A pure ASGI middleware: it sits on every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode(
            "latin-1"
        )
        if not SANE_REQUEST_ID.fullmatch(request_id):
            request_id = secrets.token_hex(8)
        status_code = 500  # what the client gets if the app fails before it answers
        logged = False

        def log_line() -> None:
            nonlocal logged
            logged = True
            path = logged_path(scope)
            elapsed_ms = (time.perf_counter() - started) * 1000
            access_log.info(
                "%s %s %d %.1fms request_id=%s", scope["method"], path, status_code, elapsed_ms, request_id
            )

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last bytes go out, so the line is written by the time
                # the client has the whole response (tests read the log right after).
                log_line()
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            if not logged:  # the app failed, or the client went away, before the end
                log_line()


class InternalErrorAsJson:
    """An unexpected exception becomes 500 {"detail": "Internal server error"} here, inside
    CORS and the access log, so the response still carries the CORS headers and the
    X-Request-ID that the log line names. The traceback goes to the server log only.

    (FastAPI's handler for Exception runs in Starlette's outermost middleware, outside
    both, so a browser would see a CORS failure instead of the JSON body.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response_started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception:
            if response_started:
                raise  # too late for a clean 500: the server closes the connection
            error_log.exception("Unexpected error in %s %s", scope["method"], logged_path(scope))
            response = JSONResponse({"detail": "Internal server error"}, status_code=500)
            await response(scope, receive, send)


class BodySizeLimit:
    """413 {"detail": ...} for a request body over max_bytes, before any of it is stored.

    FastAPI's own max_body_size answers in plain text, so this small ASGI middleware does
    the same job in JSON: it refuses an oversized Content-Length at once, and counts the
    bytes of a streamed (chunked) body as they arrive.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> HTTPException:
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"Request body too large: the limit is {self.max_bytes} bytes",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = self.too_large()
            response = JSONResponse({"detail": error.detail}, status_code=error.status_code)
            return await response(scope, receive, send)
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()  # FastAPI's handler turns it into the JSON 413
            return message

        await self.app(scope, receive_within_limit, send)


class StartupRefusal:
    """Reports a start-up refused with SchemaError (db.migrate) to uvicorn as its one-line reason.

    Starlette reports any failure of the lifespan as the full traceback, which uvicorn
    prints; a database that this release must not touch is an answer, not a crash.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_reason(message: Message) -> None:
            refusal = sys.exc_info()[1]  # Starlette sends the failure from inside its except block
            if message["type"] == "lifespan.startup.failed" and isinstance(refusal, SchemaError):
                message = {**message, "message": str(refusal)}
            await send(message)

        await self.app(scope, receive, send_reason)


class CORSMiddleware(StarletteCORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in JSON like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value for name, value in response.headers.items() if name not in ("content-type", "content-length")
        }
        return JSONResponse({"detail": bytes(response.body).decode()}, response.status_code, headers)


@asynccontextmanager
async def lifespan(app: FastAPI):
    before, now = await to_thread.run_sync(migrate, engine)  # blocking I/O stays off the event loop
    if before != now:
        error_log.info("Upgraded the database schema from revision %s to %s", before or "none (new database)", now)
    yield
    engine.dispose()


def operation_id(route: APIRoute) -> str:
    """The route's name (its function's, unless the decorator sets name=) in camelCase:
    `list_tasks` becomes `listTasks`. Generated clients name their functions after it."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


app = FastAPI(
    title="Todo API",
    version="1.0.0",
    summary="A multi-user todo backend: sign up, log in, and manage your own tasks.",
    lifespan=lifespan,
    generate_unique_id_function=operation_id,
    docs_url=None,  # served below, from local files instead of a CDN
    redoc_url=None,
)
app.add_middleware(StartupRefusal)  # acts on the lifespan only
# Added before CORS, so CORS wraps them and even a 413 or a 500 carries the CORS headers.
app.add_middleware(InternalErrorAsJson)
app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
app.add_middleware(
    CORSMiddleware,
    allow_origins=settings.cors_origins,
    allow_credentials=False,  # bearer tokens travel in a header, never in cookies
    allow_methods=["*"],
    allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
    expose_headers=["X-Total-Count", "Location", "X-Request-ID"],
)
app.add_middleware(AccessLog)  # added last, so it is outermost and sees the final status
app.include_router(auth.router)
app.include_router(tasks.router)


def readable_context(context: dict) -> dict:
    return {key: str(value) if isinstance(value, Exception) else value for key, value in context.items()}


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's usual format, minus the echoed "input": it could be a password. A value
    # error keeps its exception in ctx, which JSON would show as {}: its message instead.
    errors = [
        {key: readable_context(value) if key == "ctx" else value for key, value in error.items() if key != "input"}
        for error in exc.errors()
    ]
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": jsonable_encoder(errors)}
    )


@app.exception_handler(OperationalError)
async def statement_timed_out(request: Request, exc: OperationalError) -> JSONResponse:
    if not statement_ran_out_of_time(exc):
        raise exc  # an unexpected database error: InternalErrorAsJson's 500
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": STATEMENT_TIMED_OUT}
    )


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own 405 names only the
    methods of the first route that matched the path, and each method here is its own route."""
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    )


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI answers a bare 400 when the JSON parser itself fails: a body that is not
        # UTF-8, nesting too deep to parse, an integer over Python's digit limit. That is
        # malformed JSON like any other: 422.
        unparsable = {
            "type": "json_invalid",
            "loc": ("body", getattr(exc.__cause__, "start", 0)),
            "msg": "JSON decode error",
            "ctx": {"error": "The body is not JSON that can be parsed, in UTF-8"},
        }
        return await validation_error(request, RequestValidationError([unparsable]))
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        exc = StarletteHTTPException(exc.status_code, exc.detail, {"Allow": allowed_methods(request)})
    return await http_exception_handler(request, exc)


@app.get(
    "/health",
    response_model=HealthStatus,
    tags=["health"],
    summary="Health check",
    responses={503: error_response("The database does not answer", "Database unavailable")},
)
async def health() -> HealthStatus:
    """200 when the API is up and its database answers a query."""
    if not await check_database():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="Database unavailable")
    return HealthStatus()


# Monitors often probe with HEAD. Left out of the schema: it is GET without the body.
app.add_api_route("/health", health, methods=["HEAD"], response_model=HealthStatus, include_in_schema=False)


# Swagger UI's and ReDoc's JavaScript and CSS, as the fastapi-offline package ships them.
DOCS_ASSETS_URL = "/docs/assets"
# The docs pages may load nothing from outside this server. ReDoc's bundle would fetch its
# "API docs by Redocly" logo from Redocly's CDN; this keeps the pages entirely offline.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)
app.mount(
    DOCS_ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"
)


def under_root(request: Request, path: str) -> str:
    """`path` as the browser must ask for it, behind a proxy that mounts the app at a prefix."""
    return request.scope.get("root_path", "").rstrip("/") + path


def offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
    return page


@app.get("/docs", include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    return offline(
        get_swagger_ui_html(
            openapi_url=under_root(request, app.openapi_url),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=under_root(request, f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=under_root(request, f"{DOCS_ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=under_root(request, f"{DOCS_ASSETS_URL}/favicon.png"),
            oauth2_redirect_url=under_root(request, app.swagger_ui_oauth2_redirect_url),
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
    )


@app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@app.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    return offline(
        get_redoc_html(
            openapi_url=under_root(request, app.openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=under_root(request, f"{DOCS_ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=under_root(request, f"{DOCS_ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )
    )


FRONT_DOOR = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Todo API</title>
<link rel="icon" href="docs/assets/favicon.png">
</head>
<body>
<h1>Todo API</h1>
<p>This is an API: its endpoints are under <code>/api</code>. Start here:</p>
<ul>
<li><a href="docs">/docs</a>: interactive documentation (Swagger UI), to try every endpoint</li>
<li><a href="redoc">/redoc</a>: the same documentation to read (ReDoc)</li>
<li><a href="openapi.json">/openapi.json</a>: the OpenAPI schema, to generate a client</li>
<li><a href="health">/health</a>: is the API up and its database answering?</li>
</ul>
</body>
</html>
"""


@app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def front_door() -> HTMLResponse:
    """What a person who opens the server's address in a browser sees: where to go next."""
    return HTMLResponse(FRONT_DOOR)
