"""The interactive docs (/docs, /redoc) from files installed with fastapi-offline, so they work
with no internet, and a small index at / that links them."""

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
assets = StaticFiles(packages=[("fastapi_offline", "static")])  # Swagger UI's and ReDoc's JavaScript and CSS
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Nothing from outside this server: ReDoc's bundle would fetch Redocly's logo from its CDN.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
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

router = APIRouter(include_in_schema=False)


def url(request: Request, path: str) -> str:
    """`path` as the browser must ask for it, behind a proxy that mounts the app at a prefix."""
    return request.scope.get("root_path", "").rstrip("/") + path


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=url(request, request.app.openapi_url),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
        swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
        swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
        oauth2_redirect_url=url(request, OAUTH2_REDIRECT_URL),
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=url(request, request.app.openapi_url),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
        redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.api_route("/", methods=["GET", "HEAD"])
def front_door() -> HTMLResponse:
    """What a person who opens the server's address in a browser sees: where to go next."""
    return HTMLResponse(FRONT_DOOR)
