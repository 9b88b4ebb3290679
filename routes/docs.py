"""/docs and /redoc, offline from fastapi-offline's files, and a front door at /."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
assets = StaticFiles(packages=[("fastapi_offline", "static")])
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Nothing from outside this server: ReDoc's bundle would fetch Redocly's logo from its CDN.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)
FRONT_DOOR = Path(__file__).with_name("front_door.html").read_text(encoding="utf-8")
router = APIRouter(include_in_schema=False)
# The OAuth2 login's return page.
router.add_api_route(OAUTH2_REDIRECT_URL, get_swagger_ui_oauth2_redirect_html)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    # The prefix a proxy serves the app under, if any.
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/")
def front_door() -> HTMLResponse:
    """Where to go next, for a person who opens the server's address."""
    return HTMLResponse(FRONT_DOOR)
