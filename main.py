"""The Todo API application: run it with `uvicorn main:app`.

Wires the routers together and makes every error a JSON {"detail": ...} body.
"""

import logging
import re
import secrets
import time
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import settings
from db import STATEMENT_TIMED_OUT, check_database, create_tables, engine, statement_ran_out_of_time
from routes import auth, tasks
from schemas import HealthStatus, error_response

MAX_BODY_BYTES = 64 * 1024

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

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
            # raw_path is still percent-encoded, so a crafted path cannot forge log lines.
            path = scope.get("raw_path", scope["path"].encode()).decode("ascii", "backslashreplace")
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
            error_log.exception("Unexpected error in %s %s", scope["method"], scope["path"])
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


@asynccontextmanager
async def lifespan(app: FastAPI):
    await to_thread.run_sync(create_tables, engine)  # blocking I/O stays off the event loop
    yield
    engine.dispose()


app = FastAPI(
    title="Todo API",
    version="1.0.0",
    summary="A multi-user todo backend: sign up, log in, and manage your own tasks.",
    lifespan=lifespan,
)
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


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's usual format, minus the echoed "input": it could be a password.
    errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
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


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


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
