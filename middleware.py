"""The ASGI middlewares; the log set-up, which escapes control characters a client sends."""

import logging
import re
import secrets
import sys
import time
from traceback import TracebackException

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware as StarletteCORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from migrate import StartupError

# A newline forges a log line, ESC drives the terminal; lone surrogates are not UTF-8.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def escape_controls(text: str) -> str:
    return CONTROL_CHARACTERS.sub(
        lambda match: match.group().encode("unicode_escape").decode(), text
    )


def escaped_traceback(link: TracebackException) -> str:
    """Python's traceback, each exception's text (a client's, maybe) escaped."""
    text = ""
    if link.__cause__ is not None:
        text = escaped_traceback(link.__cause__) + (
            "\nThe above exception was the direct cause of the following exception:\n\n"
        )
    elif link.__context__ is not None and not link.__suppress_context__:
        text = escaped_traceback(link.__context__) + (
            "\nDuring handling of the above exception, another exception occurred:\n\n"
        )
    if link.stack:
        text += "Traceback (most recent call last):\n" + "".join(link.stack.format())
    for line in link.format_exception_only():
        text += escape_controls(line.rstrip("\n")) + "\n"
    return text


class EscapeControlCharacters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                escape_controls(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            chain = TracebackException.from_exception(record.exc_info[1])
            record.exc_text = escaped_traceback(chain).rstrip("\n")  # formatters print it as is
        return True


access_log = logging.getLogger("todo.access")
# uvicorn sets up only its own loggers; ours also propagates (to pytest's caplog).
if not access_log.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    )
    access_log.addHandler(handler)
    access_log.setLevel(logging.getLogger("uvicorn.access").getEffectiveLevel())  # --log-level
# uvicorn's repeats ours with the query string, which may hold a token.
logging.getLogger("uvicorn.access").disabled = True
error_log = logging.getLogger("uvicorn.error")
for logger in (access_log, error_log):
    logger.addFilter(EscapeControlCharacters())


def logged_path(scope: Scope) -> str:
    # Percent-encoded: a reader can paste it into a request.
    raw_path: bytes = scope.get("raw_path", scope["path"].encode())
    return raw_path.decode("ascii", "backslashreplace")


class PureASGIMiddleware:
    """handle() gets scope_type's scopes; others pass straight through."""

    scope_type = "http"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != self.scope_type:
            return await self.app(scope, receive, send)
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class AccessLog(PureASGIMiddleware):
    """A line per request, its id sent back as X-Request-ID; no query string, header or body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        sent_id = Headers(scope=scope).get("x-request-id", "")
        request_id = sent_id if SANE_REQUEST_ID.fullmatch(sent_id) else secrets.token_hex(8)
        status_code = 500  # if the app fails before it answers
        logged = False

        def log_line() -> None:
            nonlocal logged
            logged = True
            # A request on many tasks names how many (request.state.count), never which.
            count = scope.get("state", {}).get("count")
            access_log.info(
                "%s %s %d %.1fms request_id=%s%s",
                scope["method"],
                logged_path(scope),
                status_code,
                (time.perf_counter() - started) * 1000,
                request_id,
                "" if count is None else f" count={count}",
            )

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Before the last bytes: logged once the client has the response.
                log_line()
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            if not logged:  # the app failed, or the client left
                log_line()


class HeadAsGet(PureASGIMiddleware):
    """HEAD on any GET route (RFC 9110): the GET's status and headers, no body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class InternalErrorAsJson(PureASGIMiddleware):
    """A JSON 500 inside CORS and the access log (FastAPI's is outside both)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception:
            if response_started:
                raise  # too late for a 500: the server closes the connection
            error_log.exception("Unexpected error in %s %s", scope["method"], logged_path(scope))
            await JSONResponse({"detail": "Internal server error"}, 500)(scope, receive, send)


class BodySizeLimit(PureASGIMiddleware):
    """A JSON 413 (FastAPI's is text), by Content-Length or as the bytes arrive."""

    max_bytes = 64 * 1024
    too_large = f"Request body too large: the limit is {max_bytes} bytes"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": self.too_large}, 413)(scope, receive, send)
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI's handler answers it in JSON
                raise HTTPException(413, detail=self.too_large)
            return message

        await self.app(scope, receive_within_limit, send)


class StartupRefusal(PureASGIMiddleware):
    """A StartupError reaches uvicorn as its one-line reason, not a traceback."""

    scope_type = "lifespan"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_reason(message: Message) -> None:
            refusal = sys.exc_info()[1]  # Starlette sends the failure from its except block
            if message["type"] == "lifespan.startup.failed" and isinstance(refusal, StartupError):
                message = {**message, "message": str(refusal)}
            await send(message)

        await self.app(scope, receive, send_reason)


class CORSMiddleware(StarletteCORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in JSON."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if not name.startswith("content-")
        }
        return JSONResponse(
            {"detail": bytes(response.body).decode()}, response.status_code, headers
        )
