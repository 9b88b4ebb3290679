"""/api/auth: sign up, log in, refresh, log out, read or delete the account, change the
password."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select, update

from auth import (
    HASHING_BUSY,
    PASSWORD_IN_BETTER_AUTH,
    CallerDep,
    PasswordCheck,
    create_access_token,
    hash_password,
    invalid_credentials,
    revoke_token,
)
from better_auth import KEY_SET_UNAVAILABLE
from config import settings
from db import Now, new_session, prune_expired
from limits import (
    TOO_MANY_AUTH_REQUESTS,
    TOO_MANY_FAILED_LOGINS,
    ClientAddress,
    limit_auth_requests,
)
from models import User, utc_now
from refresh_tokens import (
    INVALID_REFRESH_TOKEN,
    IssuedRefreshToken,
    end_every_family,
    end_family,
    rotate,
    start_family,
)
from routes.responses import JSON_BODY, VALIDATION_ERROR, Responses, error_response
from schemas import (
    PasswordChange,
    PasswordConfirmation,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    UserLogin,
    UserPublic,
)

EMAIL_ADDRESS = TypeAdapter(EmailStr)


def as_email(text: str) -> str:
    """The OAuth2 username as the JSON login reads its email; a non-email is only stripped."""
    try:
        return EMAIL_ADDRESS.validate_python(text)
    except ValidationError:
        return text.strip()


router = APIRouter(prefix="/api/auth", tags=["auth"])

NOT_AUTHENTICATED: Responses = {
    401: error_response("Missing, invalid or expired token", "Not authenticated"),
    503: error_response(
        "A Better Auth token, while Better Auth's key set cannot be fetched",
        KEY_SET_UNAVAILABLE,
        retry_after=True,
    ),
}
RATE_LIMITED = {
    429: error_response(
        "Too many signups, logins, refreshes and password checks from this address",
        TOO_MANY_AUTH_REQUESTS,
        retry_after=True,
    )
}
HASHING = {
    503: error_response(
        "Too many password hashes running or waiting", HASHING_BUSY, retry_after=True
    )
}
LOCKED_OUT = {
    429: error_response(
        "Too many failed logins for this email, or auth requests, from this address",
        TOO_MANY_FAILED_LOGINS,
        retry_after=True,
    )
}
PASSWORD_ERRORS = LOCKED_OUT | HASHING | VALIDATION_ERROR
EMAIL_TAKEN = "Email already registered"
SIGNUP_ERRORS = (
    {409: error_response(EMAIL_TAKEN, EMAIL_TAKEN), **JSON_BODY}
    | RATE_LIMITED
    | HASHING
    | VALIDATION_ERROR
)
REFRESH_ERRORS = (
    {401: error_response("Unknown, expired, used or ended refresh token", INVALID_REFRESH_TOKEN)}
    | RATE_LIMITED
    | VALIDATION_ERROR
    | JSON_BODY
)
LOGIN_FAILED = "Incorrect email or password"
LOGIN_ERRORS = {401: error_response(LOGIN_FAILED, LOGIN_FAILED)} | PASSWORD_ERRORS
CONFIRM_ERRORS = {
    401: error_response(
        "Missing, invalid or expired token, or incorrect password", "Incorrect password"
    ),
    403: error_response("A Better Auth account: it has no password here", PASSWORD_IN_BETTER_AUTH),
    **JSON_BODY,
} | PASSWORD_ERRORS
CHANGED_CONCURRENTLY = "The password was changed by another request at the same time; log in again"
PASSWORD_CHANGE_ERRORS = CONFIRM_ERRORS | {
    409: error_response("Another password change won the race", CHANGED_CONCURRENTLY)
}
# The OAuth2 form has no model of ours: its example goes on the request body.
FORM_EXAMPLE = {"example": {"username": "alice@example.com", "password": "correct horse battery"}}
FORM_BODY = {"requestBody": {"content": {"application/x-www-form-urlencoded": FORM_EXAMPLE}}}
OAuth2Form = Annotated[OAuth2PasswordRequestForm, Depends()]


async def prune_after_response(background: BackgroundTasks, now: Now) -> None:
    """Delete expired rows once the route has answered."""
    background.add_task(prune_expired, now)


PRUNED = [Depends(prune_after_response)]


def token_response(user: User, refresh: IssuedRefreshToken) -> TokenResponse:
    # The real clock, as PyJWT checks exp against it.
    return TokenResponse(
        access_token=create_access_token(user, utc_now(), refresh.family_id),
        expires_in=settings.access_token_expire_minutes * 60,
        refresh_token=refresh.token,
        refresh_expires_in=settings.refresh_token_expire_days * 24 * 60 * 60,
        user=UserPublic.model_validate(user),
    )


def authenticate(email: str, password: str, client: str, now: datetime) -> TokenResponse:
    with new_session() as session:
        limit_auth_requests(session, client, now)
        # PostgreSQL refuses a NUL, which the form's username may hold and no email has.
        by_email = select(User).where(User.email == email.lower())
        user = None if "\x00" in email else session.exec(by_email).first()
        # Run for an unknown email too: the timing tells nothing.
        check = PasswordCheck(session, client, now)
        if not check.matches(email, password, user.password_hash if user else None) or not user:
            raise invalid_credentials(LOGIN_FAILED)
        return token_response(user, start_family(session, user, now))


@router.post(
    "/signup",
    status_code=201,
    summary="Create an account",
    responses=SIGNUP_ERRORS,
    dependencies=PRUNED,
)
def signup(body: UserCreate, client: ClientAddress, now: Now) -> TokenResponse:
    """Create a user and return its tokens, so the client is logged in at once."""
    with new_session() as session:
        limit_auth_requests(session, client, now)
        user = User(
            email=body.email.lower(), name=body.name, password_hash=hash_password(body.password)
        )
        session.add(user)
        try:
            session.flush()
        except IntegrityError:  # the unique email index decides, even under races
            raise HTTPException(409, EMAIL_TAKEN) from None
        # Committed with its session: a signup failing from here leaves no account.
        return token_response(user, start_family(session, user, now))


@router.post("/login", summary="Log in", responses=LOGIN_ERRORS | JSON_BODY, dependencies=PRUNED)
def login(body: UserLogin, client: ClientAddress, now: Now) -> TokenResponse:
    """Exchange email and password for a bearer token and a refresh token."""
    return authenticate(body.email, body.password, client, now)


@router.post(
    "/token",
    summary="Log in (OAuth2 form)",
    description="The OAuth2 password flow (username is your email): "
    "the tokenUrl of Swagger UI's Authorize button.",
    responses=LOGIN_ERRORS,
    openapi_extra=FORM_BODY,
    dependencies=PRUNED,
)
def login_form(form: OAuth2Form, client: ClientAddress, now: Now) -> TokenResponse:
    return authenticate(as_email(form.username), form.password, client, now)


@router.post(
    "/refresh",
    summary="Trade a refresh token for new tokens",
    responses=REFRESH_ERRORS,
    dependencies=PRUNED,
)
def refresh(body: RefreshRequest, client: ClientAddress, now: Now) -> TokenResponse:
    """Use up the refresh token for a new pair in the same session. Presented again within its
    grace period it gives another pair (two tabs); after it, it ends the session."""
    with new_session() as session:
        limit_auth_requests(session, client, now)
        return token_response(*rotate(session, body.refresh_token, now))


@router.get(
    "/me", response_model=UserPublic, summary="The current user", responses=NOT_AUTHENTICATED
)
def get_me(caller: CallerDep) -> User:
    """The bearer token's account."""
    with caller.session() as (_, user):
        return user


@router.post(
    "/logout",
    status_code=204,
    summary="Log out this session",
    responses=NOT_AUTHENTICATED,
    dependencies=PRUNED,
)
def logout(caller: CallerDep) -> Response:
    """End this token's session on every worker: its refresh and access tokens. The user's
    other sessions keep working."""
    # The account is checked: a token already logged out is a 401.
    with caller.session() as (session, _):
        if caller.claims.family_id is not None:
            end_family(session, caller.claims.family_id)
        revoke_token(session, caller.claims)
    return Response(status_code=204)


@router.put(
    "/password",
    status_code=204,
    summary="Change the password",
    description="Set a new password (signup's rules). Every earlier token, this one too, ends.",
    responses=PASSWORD_CHANGE_ERRORS,
    dependencies=PRUNED,
)
def change_password(
    body: PasswordChange, caller: CallerDep, client: ClientAddress, now: Now
) -> Response:
    # The token first: a bad one is not counted.
    with caller.session() as (session, user):
        limit_auth_requests(session, client, now)
        PasswordCheck(session, client, now).confirm(user, body.current_password)
        # Compare-and-set on the checked generation: of concurrent changes only one wins.
        same_generation = update(User).where(
            col(User.id) == user.id, col(User.token_generation) == user.token_generation
        )
        bump = same_generation.values(
            password_hash=hash_password(body.new_password),
            token_generation=User.token_generation + 1,
        )
        if session.exec(bump).rowcount != 1:  # another change won, or the account was deleted
            deleted = session.exec(select(User.id).where(User.id == user.id)).first() is None
            session.rollback()
            if deleted:
                raise invalid_credentials()
            raise HTTPException(409, CHANGED_CONCURRENTLY)
        assert user.id is not None
        end_every_family(session, user.id)
        session.commit()
    return Response(status_code=204)


@router.delete(
    "/me",
    status_code=204,
    summary="Delete the account",
    description="Delete the account and its tasks. Its tokens end; the email can sign up again.",
    responses=CONFIRM_ERRORS,
    dependencies=PRUNED,
)
def delete_me(
    body: PasswordConfirmation, caller: CallerDep, client: ClientAddress, now: Now
) -> Response:
    with caller.session() as (session, user):
        limit_auth_requests(session, client, now)
        PasswordCheck(session, client, now).confirm(user, body.password)
        session.exec(delete(User).where(col(User.id) == user.id))
        session.commit()
    return Response(status_code=204)
