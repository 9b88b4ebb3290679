"""Conditional and retried requests (RFC 9110 and the Idempotency-Key draft): a task's ETag is its
version, a list page's is a hash of what it shows; If-Match guards writes, If-None-Match saves a
read; an Idempotency-Key makes a create safe to retry. The rules: API.md, "Conditional requests"."""

import hashlib
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Header, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, insert, select, update

from models import IdempotencyKey, Task
from routes.responses import Responses, error_response

CHANGED = "The task has changed since you read it: fetch it again (its ETag is in this answer)"
IN_FLIGHT = "A create with this Idempotency-Key is still running; retry shortly"
OTHER_BODY = "This Idempotency-Key was already used with another request body"
KEY_LIFETIME = timedelta(hours=24)
# A first request still running after this long died with its process: a retry takes over.
ABANDONED_AFTER = timedelta(minutes=1)
ETAG = {"ETag": {"description": "The task's current version", "schema": {"type": "string"}}}
PRECONDITION_FAILED: Responses = {
    412: error_response("If-Match names another version of the task", CHANGED) | {"headers": ETAG}
}
NOT_MODIFIED: Responses = {304: {"description": "Not modified: If-None-Match names this ETag"}}
IfMatch = Annotated[
    str | None,
    Header(description="Write only if the task is still at one of these ETags (or `*`)"),
]
IfNoneMatch = Annotated[
    str | None, Header(description="Answer 304 without a body if the ETag is still this one")
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x20-\x7e]{1,255}$",
        description="Any 1-255 printable ASCII characters: a retry with the same key and body "
        "within 24 hours answers the first create's 201 again, and creates nothing",
    ),
]


def task_etag(version: int) -> str:
    return f'"{version}"'


def page_etag(total: int, shown: list[tuple[int, int]]) -> str:
    """A list page's ETag: its count and its tasks' ids and versions, in order."""
    digest = hashlib.sha256(repr((total, shown)).encode()).hexdigest()
    return f'"{digest[:32]}"'


def tags_of(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",")]


def none_match(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match: a weak comparison, so W/"1" names "1" too."""
    if if_none_match is None:
        return False
    names = {tag.removeprefix("W/") for tag in tags_of(if_none_match)}
    return "*" in names or etag in names


def expected_versions(if_match: str | None) -> list[int] | None:
    """The versions an If-Match allows (a strong comparison: W/ tags name none); None: any."""
    if if_match is None or if_match.strip() == "*":
        return None
    return [int(tag[1:-1]) for tag in tags_of(if_match) if tag[1:-1].isdigit() and tag[0] == '"']


def precondition_failed(task: Task) -> HTTPException:
    return HTTPException(412, CHANGED, headers={"ETag": task_etag(task.version)})


def check_version(task: Task, versions: list[int] | None) -> None:
    if versions is not None and task.version not in versions:
        raise precondition_failed(task)


def not_modified(etag: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=304, headers={"ETag": etag, **(headers or {})})


def hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def claim_key(
    session: Session, user_id: int, key: str, request: str, now: datetime
) -> IdempotencyKey | None:
    """This request's claim on its key, committed, so a retry sees it: None when the create is
    this request's to make; the stored answer when it was made; else 409 (still running) or
    422 (another body)."""
    pk = {"user_id": user_id, "key_hash": hashed(key)}
    claim = {"request_hash": hashed(request), "answer": None, "location": None, "created_at": now}
    claim |= {"expires_at": now + KEY_LIFETIME}
    try:
        session.exec(insert(IdempotencyKey).values(**pk, **claim))
        session.commit()
        return None
    except IntegrityError:  # used before, or by a request running now
        session.rollback()
    # Expired, or abandoned by a request that died: this request takes it over.
    stale = (col(IdempotencyKey.expires_at) <= now) | (
        col(IdempotencyKey.answer).is_(None)
        & (col(IdempotencyKey.created_at) < now - ABANDONED_AFTER)
    )
    keyed = [col(IdempotencyKey.user_id) == user_id, col(IdempotencyKey.key_hash) == pk["key_hash"]]
    if session.exec(update(IdempotencyKey).where(*keyed, stale).values(**claim)).rowcount == 1:
        session.commit()
        return None
    used = session.exec(select(IdempotencyKey).where(*keyed)).first()
    session.rollback()
    if used is None or used.answer is None:  # running now (or gone this instant)
        raise HTTPException(409, IN_FLIGHT, headers={"Retry-After": "1"})
    if used.request_hash != claim["request_hash"]:  # a 422 in the shape of every other one
        error = {"type": "value_error", "loc": ("header", "Idempotency-Key"), "msg": OTHER_BODY}
        raise RequestValidationError([error])
    return used


def keep_answer(session: Session, user_id: int, key: str, answer: str, location: str) -> None:
    """Part of the create's transaction: the claim gets its answer as the task commits."""
    keyed = [col(IdempotencyKey.user_id) == user_id, col(IdempotencyKey.key_hash) == hashed(key)]
    session.exec(update(IdempotencyKey).where(*keyed).values(answer=answer, location=location))


def release_key(session: Session, user_id: int, key: str) -> None:
    """A create that failed gives its key back, so a retry can make the task."""
    session.rollback()
    keyed = [col(IdempotencyKey.user_id) == user_id, col(IdempotencyKey.key_hash) == hashed(key)]
    session.exec(delete(IdempotencyKey).where(*keyed, col(IdempotencyKey.answer).is_(None)))
    session.commit()
