"""The Todo API (`uvicorn main:app`): its middleware, routers, error handlers and /health."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match

from config import settings
from db import STATEMENT_TIMED_OUT, database_answers, engine, statement_ran_out_of_time
from middleware import (
    AccessLog,
    BodySizeLimit,
    CORSMiddleware,
    HeadAsGet,
    InternalErrorAsJson,
    StartupRefusal,
    error_log,
)
from migrate import migrate
from routes import auth, docs, task_lists, tasks
from routes.responses import BODY_NOT_JSON, error_response
from schemas import HealthStatus


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    before, now = await to_thread.run_sync(migrate, engine)
    if before != now:
        error_log.info(
            "Upgraded the database schema from revision %s to %s",
            before or "none (new database)",
            now,
        )
    yield
    engine.dispose()


def operation_id(route: APIRoute) -> str:
    """The route's name in camelCase (`listTasks`), for generated clients' functions."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


app = FastAPI(
    title="Todo API",
    version="1.0.0",
    summary="A multi-user todo backend: sign up, log in, and manage your own tasks.",
    lifespan=lifespan,
    generate_unique_id_function=operation_id,
    docs_url=None,
    redoc_url=None,  # routes/docs.py serves both from local files, not a CDN
)
# Each wraps those above: CORS covers the 500 and 413, the access log sees the final status.
app.add_middleware(HeadAsGet)
app.add_middleware(StartupRefusal)  # acts on the lifespan only
app.add_middleware(InternalErrorAsJson)
app.add_middleware(BodySizeLimit)
app.add_middleware(
    CORSMiddleware,
    allow_origins=settings.cors_origins,
    allow_credentials=False,  # bearer tokens go in a header, never in cookies
    allow_methods=["*"],
    allow_headers=[
        "Authorization",
        "Content-Type",
        "X-Request-ID",
        "If-Match",
        "If-None-Match",
        "Idempotency-Key",
    ],
    expose_headers=["X-Total-Count", "Location", "X-Request-ID", "ETag"],
)
app.add_middleware(AccessLog)
app.include_router(auth.router)
app.include_router(tasks.router)
app.include_router(task_lists.router)
app.include_router(docs.router)
app.mount(docs.ASSETS_URL, docs.assets, name="docs-assets")


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI reads a body as JSON only when its Content-Type says so (application/json or
    # +json); any other body reaches the model as raw bytes. Name the header, not the shape.
    if any(
        error["loc"] == ("body",) and isinstance(error.get("input"), bytes)
        for error in exc.errors()
    ):
        return JSONResponse({"detail": BODY_NOT_JSON}, 415)
    # FastAPI's format without the echoed "input": it may be a password.
    detail = jsonable_encoder(
        [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()],
        custom_encoder={Exception: str},
    )
    return JSONResponse({"detail": detail}, 422)


@app.exception_handler(OperationalError)
async def statement_timed_out(request: Request, exc: OperationalError) -> JSONResponse:
    if not statement_ran_out_of_time(exc):
        raise exc  # InternalErrorAsJson's 500
    return JSONResponse({"detail": STATEMENT_TIMED_OUT}, 503)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    error: dict[str, object] | None = None
    if exc.status_code == 400 and isinstance(exc.__context__, MultiPartException):
        # Starlette's 400 for a form it cannot parse (too many fields, no boundary).
        error = {
            "type": "form_invalid",
            "loc": ("body",),
            "msg": "Form body could not be parsed",
            "ctx": {"error": exc.detail},
        }
    elif exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI's bare 400 for JSON it cannot parse (not UTF-8, too deep, too many digits).
        error = {
            "type": "json_invalid",
            "loc": ("body", getattr(exc.__cause__, "start", 0)),
            "msg": "JSON decode error",
            "ctx": {"error": "The body is not JSON that can be parsed, in UTF-8"},
        }
    if error:
        return await validation_error(request, RequestValidationError([error]))
    if exc.status_code == 405:
        # Starlette names the first matching route's methods; here each is a route.
        methods = [
            method
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in app.routes
            )
        ]
        if "GET" in methods:
            methods.insert(1, "HEAD")  # HeadAsGet answers it
        # None: a mounted app's 405 (the docs' files), whose Allow is right.
        if methods:
            exc.headers = {"Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


# Its own thread and connection: /health answers as fast under a burst as idle.
HEALTH_CHECK = CapacityLimiter(1)


@app.get(
    "/health",
    response_model=HealthStatus,
    tags=["health"],
    summary="Health check",
    responses={503: error_response("The database does not answer", "Database unavailable")},
)
async def health() -> HealthStatus:
    """200 when the API is up and its database answers a query."""
    if not await to_thread.run_sync(database_answers, limiter=HEALTH_CHECK):
        raise HTTPException(503, detail="Database unavailable")
    return HealthStatus()
