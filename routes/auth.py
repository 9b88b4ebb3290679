"""Sign up, log in (JSON, or the OAuth2 form that Swagger UI's Authorize button sends),
read the current user, and log out.

Signups and logins count against the abuse limits in limits.py."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from auth import (
    CurrentUser,
    TokenClaimsDep,
    create_access_token,
    hash_password,
    revoke_token,
    verify_password,
)
from config import settings
from db import SessionDep
from limits import (
    TOO_MANY_AUTH_REQUESTS,
    TOO_MANY_FAILED_LOGINS,
    AbuseLimits,
    LimitsDep,
    clear_login_failures,
    count_auth_request,
    count_login_attempt,
)
from models import User, utc_now
from routes.tasks import Now
from schemas import (
    VALIDATION_ERROR,
    TokenResponse,
    UserCreate,
    UserLogin,
    UserPublic,
    error_response,
)

router = APIRouter(prefix="/api/auth", tags=["auth"])

NOT_AUTHENTICATED = {401: error_response("Missing, invalid or expired token", "Not authenticated")}


def too_many_requests_response(description: str, detail: str) -> dict:
    retry_after = {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
    return {**error_response(description, detail), "headers": {"Retry-After": retry_after}}


LIMITED_AUTH_REQUESTS = {
    429: too_many_requests_response("Too many signups and logins from this address", TOO_MANY_AUTH_REQUESTS)
}
LOGIN_ERRORS = {
    401: error_response("Incorrect email or password", "Incorrect email or password"),
    429: too_many_requests_response(
        "Too many failed logins for this email from this address, "
        "or too many signups and logins from this address",
        TOO_MANY_FAILED_LOGINS,
    ),
    **VALIDATION_ERROR,
}
# The OAuth2 form has no model of our own, so its example sits on the request body itself.
FORM_EXAMPLE = {
    "requestBody": {
        "content": {
            "application/x-www-form-urlencoded": {
                "example": {"username": "alice@example.com", "password": "correct horse battery"}
            }
        }
    }
}


def client_address(request: Request) -> str:
    """The socket peer's address. Behind a reverse proxy, uvicorn replaces it with the
    X-Forwarded-For client only when the proxy is listed in --forwarded-allow-ips."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


def limit_auth_requests(session: SessionDep, limits: LimitsDep, client: ClientAddress, now: Now) -> None:
    count_auth_request(session, limits, client, now)


def token_response(user: User) -> TokenResponse:
    # The token's own clock is the real one: PyJWT checks exp against it.
    return TokenResponse(
        access_token=create_access_token(user, utc_now()),
        expires_in=settings.access_token_expire_minutes * 60,
        user=UserPublic.model_validate(user),
    )


def authenticate(
    session: Session, limits: AbuseLimits, client: str, now: datetime, email: str, password: str
) -> TokenResponse:
    failures = count_login_attempt(session, limits, email, client, now)
    # The OAuth2 form's username is not validated as an email, and PostgreSQL refuses a
    # NUL in text; no stored email has one, so such a login simply fails.
    user = None
    if "\x00" not in email:
        user = session.exec(select(User).where(User.email == email.lower())).first()
    if not verify_password(password, user.password_hash if user else None):
        raise HTTPException(  # the attempt stays counted
            status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect email or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    clear_login_failures(session, failures)
    return token_response(user)


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenResponse,
    summary="Create an account",
    responses={
        409: error_response("Email already registered", "Email already registered"),
        **LIMITED_AUTH_REQUESTS,
        **VALIDATION_ERROR,
    },
    dependencies=[Depends(limit_auth_requests)],
)
def signup(body: UserCreate, session: SessionDep) -> TokenResponse:
    """Create a user and return a bearer token for it, so the client is logged in at once."""
    user = User(
        email=body.email.lower(), name=body.name, password_hash=hash_password(body.password)
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:  # the unique email index is the one source of truth, even under races
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail="Email already registered") from None
    return token_response(user)


@router.post(
    "/login",
    response_model=TokenResponse,
    summary="Log in",
    responses=LOGIN_ERRORS,
    dependencies=[Depends(limit_auth_requests)],
)
def login(
    body: UserLogin, session: SessionDep, limits: LimitsDep, client: ClientAddress, now: Now
) -> TokenResponse:
    """Exchange email and password for a bearer token."""
    return authenticate(session, limits, client, now, body.email, body.password)


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="Log in (OAuth2 form)",
    responses=LOGIN_ERRORS,
    openapi_extra=FORM_EXAMPLE,
    dependencies=[Depends(limit_auth_requests)],
)
def login_form(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    limits: LimitsDep,
    client: ClientAddress,
    now: Now,
) -> TokenResponse:
    """The OAuth2 password flow: a form with username (your email) and password.
    This is the tokenUrl that Swagger UI's Authorize button uses."""
    return authenticate(session, limits, client, now, form.username, form.password)


@router.get("/me", response_model=UserPublic, summary="The current user", responses=NOT_AUTHENTICATED)
def read_me(user: CurrentUser) -> User:
    """Return the account that the bearer token belongs to."""
    return user


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out this token",
    responses=NOT_AUTHENTICATED,
)
def logout(claims: TokenClaimsDep, user: CurrentUser, session: SessionDep, now: Now) -> Response:
    """End the presented token at once, on every worker. The user's other tokens keep working."""
    revoke_token(session, claims, now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
