"""The error answers every route may give, and their descriptions in the OpenAPI schema."""

from typing import Any

from pydantic import BaseModel

from db import STATEMENT_TIMED_OUT
from schemas import example


class ErrorMessage(BaseModel):
    model_config = example(detail="Task not found")
    detail: str


class FieldError(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    ctx: dict[str, Any] | None = None


class ValidationErrorMessage(BaseModel):
    """FastAPI's list of errors, without the echoed input (it could be a password)."""

    model_config = example(
        detail=[
            {
                "type": "string_too_short",
                "loc": ["body", "title"],
                "msg": "String should have at least 1 character",
                "ctx": {"min_length": 1},
            }
        ]
    )
    detail: list[FieldError]


Responses = dict[int | str, dict[str, Any]]
VALIDATION_ERROR: Responses = {
    422: {"model": ValidationErrorMessage, "description": "Validation Error"}
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}


def error_response(description: str, detail: str, *, retry_after: bool = False) -> dict[str, Any]:
    content = {"application/json": {"example": {"detail": detail}}}
    headers = {"headers": RETRY_AFTER} if retry_after else {}
    return {"model": ErrorMessage, "description": description, "content": content, **headers}


BODY_NOT_JSON = "Send the body as JSON, with the header Content-Type: application/json"
# On every route that takes a JSON body: main.py's answer to a body not declared as JSON.
JSON_BODY: Responses = {
    415: error_response("The body's Content-Type is not application/json", BODY_NOT_JSON)
}


# Every task route's: the owner dependency's answers, the statement budget's, validation's.
OWNER_ERRORS: Responses = {
    401: error_response("Missing, invalid or expired token", "Could not validate credentials"),
    403: error_response(
        "The path's user_id is not the token's user", "You can only access your own tasks"
    ),
    503: error_response(
        "A statement ran past STATEMENT_TIMEOUT_MS, or Better Auth's key set cannot be fetched",
        STATEMENT_TIMED_OUT,
        retry_after=True,
    ),
    **VALIDATION_ERROR,
}
