"""Sign up, log in (JSON, or the OAuth2 form that Swagger UI's Authorize button sends),
and read the current user."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from auth import CurrentUser, create_access_token, hash_password, verify_password
from config import settings
from db import SessionDep
from models import User, utc_now
from schemas import (
    VALIDATION_ERROR,
    TokenResponse,
    UserCreate,
    UserLogin,
    UserPublic,
    error_response,
)

router = APIRouter(prefix="/api/auth", tags=["auth"])

LOGIN_FAILED = {
    401: error_response("Incorrect email or password", "Incorrect email or password"),
    **VALIDATION_ERROR,
}
NOT_AUTHENTICATED = {401: error_response("Missing, invalid or expired token", "Not authenticated")}
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


def token_response(user: User) -> TokenResponse:
    return TokenResponse(
        access_token=create_access_token(user.id, utc_now()),
        expires_in=settings.access_token_expire_minutes * 60,
        user=UserPublic.model_validate(user),
    )


def authenticate(session: SessionDep, email: str, password: str) -> TokenResponse:
    # The OAuth2 form's username is not validated as an email, and PostgreSQL refuses a
    # NUL in text; no stored email has one, so such a login simply fails.
    user = None
    if "\x00" not in email:
        user = session.exec(select(User).where(User.email == email.lower())).first()
    if not verify_password(password, user.password_hash if user else None):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect email or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token_response(user)


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenResponse,
    summary="Create an account",
    responses={
        409: error_response("Email already registered", "Email already registered"),
        **VALIDATION_ERROR,
    },
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


@router.post("/login", response_model=TokenResponse, summary="Log in", responses=LOGIN_FAILED)
def login(body: UserLogin, session: SessionDep) -> TokenResponse:
    """Exchange email and password for a bearer token."""
    return authenticate(session, body.email, body.password)


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="Log in (OAuth2 form)",
    responses=LOGIN_FAILED,
    openapi_extra=FORM_EXAMPLE,
)
def login_form(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep
) -> TokenResponse:
    """The OAuth2 password flow: a form with username (your email) and password.
    This is the tokenUrl that Swagger UI's Authorize button uses."""
    return authenticate(session, form.username, form.password)


@router.get("/me", response_model=UserPublic, summary="The current user", responses=NOT_AUTHENTICATED)
def read_me(user: CurrentUser) -> User:
    """Return the account that the bearer token belongs to."""
    return user
