"""A user's tasks at /api/{user_id}/tasks. Every query is scoped by user_id: another user's task
is a 404. The shared operations are in task_rules.py, the conditional requests in
preconditions.py."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import case, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import asc, col, delete, desc, select, update
from starlette.convertors import StringConvertor, register_url_convertor

from auth import OwnerDep, invalid_credentials
from db import Now, limit_statement_time
from models import Task, TaskTag
from routes.preconditions import (
    ETAG,
    NOT_MODIFIED,
    PRECONDITION_FAILED,
    IdempotencyKeyHeader,
    IfMatch,
    IfNoneMatch,
    check_version,
    claim_key,
    expected_versions,
    keep_answer,
    none_match,
    not_modified,
    page_etag,
    precondition_failed,
    release_key,
    task_etag,
)
from routes.responses import JSON_BODY, OWNER_ERRORS, Responses, error_response
from routes.task_rules import (
    PAGE_COLUMNS,
    PUBLIC_NAMES,
    TASK_NOT_FOUND,
    add_tags,
    count_fewer_tasks,
    count_new_tasks,
    create_next_occurrences,
    get_owned_task,
    insert_task,
    load_tags,
    lock_owner,
    recurring_without_due_date,
    set_completed,
    task_filters,
    to_public,
    too_many_tasks,
)
from schemas import (
    CompletionUpdate,
    IdPath,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskUpdate,
    UserIdPath,
)

TASK_ERRORS: Responses = {404: error_response(TASK_NOT_FOUND, TASK_NOT_FOUND)}
FULL = too_many_tasks().detail
CREATE_ERRORS: Responses = {
    409: error_response(
        "The account already holds MAX_TASKS_PER_USER tasks, or a create with this "
        "Idempotency-Key is still running (with Retry-After)",
        FULL,
        retry_after=True,
    ),
    **JSON_BODY,
}
READ: Responses = TASK_ERRORS | NOT_MODIFIED | {200: {"headers": ETAG}}
WRITE: Responses = TASK_ERRORS | PRECONDITION_FAILED | {200: {"headers": ETAG}}
COMPLETION_ERRORS = WRITE | {
    409: error_response(
        "Completing a recurring task whose next occurrence would pass MAX_TASKS_PER_USER;"
        " nothing changes",
        FULL,
    ),
    **JSON_BODY,
}


class TaskIdSegment(StringConvertor):
    """/{task_id} stops short of /counts (task_lists.py): a method /counts lacks is a 405 there,
    not this route's 422. Any other segment still gets FastAPI's int check and its 422."""

    regex = "(?!counts$)[^/]+"


register_url_convertor("task_id", TaskIdSegment())
TASK = "/{task_id:task_id}"
router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=OWNER_ERRORS)
ListQuery = Annotated[TaskListQuery, Query()]

SORT_KEYS = {
    "created": (Task.created_at, "desc"),
    "updated": (Task.updated_at, "desc"),
    "title": (func.lower(Task.title), "asc"),
    "due_date": (Task.due_date, "asc"),
    "priority": (case({"low": 0, "medium": 1, "high": 2}, value=Task.priority), "desc"),
    "position": (Task.position, "asc"),
}


@router.get(
    "",
    response_model=list[TaskPublic],
    summary="List tasks",
    description="Filter, search, sort and page the tasks. "
    "X-Total-Count counts the matches on every page.",
    responses=NOT_MODIFIED | {200: {"headers": ETAG}},
)
def list_tasks(
    owner: OwnerDep, query: ListQuery, response: Response, if_none_match: IfNoneMatch = None
) -> Any:
    with owner.session() as (session, user):
        limit_statement_time(session)
        filters = task_filters(user, query)
        key, natural_order = SORT_KEYS[query.sort]
        direction = asc if (query.order or natural_order) == "asc" else desc
        undated_last = [col(Task.due_date).is_(None)] if query.sort == "due_date" else []
        # The id breaks ties: pages never overlap.
        ordering = [*undated_last, direction(key), direction(Task.id)]
        # Rows through Core: no ORM bookkeeping per row. The version, last, makes the ETag.
        page = select(*PAGE_COLUMNS).where(*filters).order_by(*ordering)
        rows = session.connection().execute(page.offset(query.offset).limit(query.limit)).all()
        # A partial page, or an empty first one, holds the last match: no COUNT.
        if 0 < len(rows) < query.limit or (not rows and query.offset == 0):
            total = query.offset + len(rows)
        else:
            total = session.exec(select(func.count()).select_from(Task).where(*filters)).one()
        etag = page_etag(total, [(row.id, row.version) for row in rows])
        if none_match(if_none_match, etag):
            return not_modified(etag, {"X-Total-Count": str(total)})
        tags = load_tags(session, [row.id for row in rows])
    response.headers["X-Total-Count"] = str(total)
    response.headers["ETag"] = etag
    shown = PUBLIC_NAMES
    return [dict(zip(shown, row, strict=False), tags=tags[row.id]) for row in rows]


@router.post(
    "",
    status_code=201,
    response_model=TaskPublic,
    summary="Create a task",
    description="Create a task; Location is its URL. A task created completed is treated as if "
    "completed just after. With an Idempotency-Key, a retry answers the first 201 again.",
    responses=CREATE_ERRORS | {201: {"headers": ETAG}},
)
def create_task(
    user_id: UserIdPath,
    body: TaskCreate,
    owner: OwnerDep,
    now: Now,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    times = {"created_at": now, "updated_at": now, "completed_at": now if body.completed else None}
    with owner.session() as (session, user):
        assert user.id is not None
        if idempotency_key is not None:
            request = body.model_dump_json()
            if used := claim_key(session, user.id, idempotency_key, request, now):
                headers = {"Location": str(used.location), "ETag": task_etag(1)}
                return Response(used.answer, 201, headers, media_type="application/json")
        fields = body.model_dump(exclude={"tags"}) | times
        try:
            try:
                lock_owner(session, user)
                count_new_tasks(session, user.id)
                task = insert_task(session, user.id, fields)
            except IntegrityError:  # the account was deleted meanwhile
                raise invalid_credentials() from None
            add_tags(session, task.id, body.tags)
            if task.completed:
                create_next_occurrences(session, user.id, [task.id], now)
            created = {**task._mapping, "tags": sorted(body.tags)}
            location = f"/api/{user_id}/tasks/{task.id}"
            if idempotency_key is not None:
                answer = TaskPublic.model_validate(created).model_dump_json()
                keep_answer(session, user.id, idempotency_key, answer, location)
            session.commit()
        except BaseException:
            if idempotency_key is not None:
                release_key(session, user.id, idempotency_key)
            raise
    response.headers["Location"] = location
    response.headers["ETag"] = task_etag(task.version)
    return created


@router.get(TASK, response_model=TaskPublic, summary="Get a task", responses=READ)
def get_task(
    task_id: IdPath, owner: OwnerDep, response: Response, if_none_match: IfNoneMatch = None
) -> Any:
    """Return one task."""
    with owner.session() as (session, user):
        task = get_owned_task(session, user, task_id)
        response.headers["ETag"] = etag = task_etag(task.version)
        if none_match(if_none_match, etag):
            return not_modified(etag)
        return to_public(session, task)


@router.put(TASK, response_model=TaskPublic, summary="Update a task", responses=COMPLETION_ERRORS)
@router.patch(
    TASK,
    name="patch_task",  # its own operationId
    response_model=TaskPublic,
    summary="Update a task (same as PUT)",
    responses=COMPLETION_ERRORS,
)
def update_task(
    task_id: IdPath,
    body: TaskUpdate,
    owner: OwnerDep,
    now: Now,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Change the fields sent; a null clears description or due_date."""
    changes = body.model_dump(exclude_unset=True)
    completed, tags = changes.pop("completed", None), changes.pop("tags", None)
    with owner.session() as (session, user):
        lock_owner(session, user)
        task = get_owned_task(session, user, task_id)
        check_version(task, expected_versions(if_match))
        after = task.model_dump() | changes
        if after["recurrence"] != "none" and after["due_date"] is None:
            raise recurring_without_due_date()
        # The version read: a write that raced in since is a 412 with If-Match, else it is
        # overwritten, as it was before conditional requests.
        unchanged = [col(Task.version) == task.version] if if_match is not None else []
        write = update(Task).where(
            col(Task.id) == task_id, col(Task.user_id) == user.id, *unchanged
        )
        write = write.values(**changes, updated_at=now, version=col(Task.version) + 1)
        try:
            written = session.exec(write.returning(Task)).scalars().first()
        except IntegrityError:  # the CHECK: the row changed since our read
            raise recurring_without_due_date() from None
        if written is None:  # deleted, or changed, since our read
            raise precondition_failed(get_owned_task(session, user, task_id))
        if tags is not None:
            session.exec(delete(TaskTag).where(col(TaskTag.task_id) == task_id))
            add_tags(session, task_id, tags)
        if completed is not None:
            set_completed(session, user, task_id, completed, now)
        session.commit()
        response.headers["ETag"] = task_etag(written.version)
        return to_public(session, written)


@router.delete(
    TASK,
    status_code=204,
    summary="Delete a task",
    responses=TASK_ERRORS | PRECONDITION_FAILED,
)
def delete_task(task_id: IdPath, owner: OwnerDep, if_match: IfMatch = None) -> Response:
    """Delete a task and its tags. Its id is never given to another task."""
    versions = expected_versions(if_match)
    with owner.session() as (session, user):
        lock_owner(session, user)
        # No read first: of two concurrent deletions only one counts the task off.
        owned = delete(Task).where(col(Task.id) == task_id, col(Task.user_id) == user.id)
        if versions is not None:
            owned = owned.where(col(Task.version).in_(versions))
        if session.exec(owned).rowcount == 0:  # missing (404), or at another version (412)
            raise precondition_failed(get_owned_task(session, user, task_id))
        count_fewer_tasks(session, user, 1)
        session.commit()
    return Response(status_code=204)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    summary="Complete, reopen or toggle a task",
    description='No body toggles; {"completed": true|false} sets it. '
    "Completing a recurring task creates its next one, once.",
    responses=COMPLETION_ERRORS,
)
def complete_task(
    task_id: IdPath,
    owner: OwnerDep,
    now: Now,
    response: Response,
    body: CompletionUpdate | None = None,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    versions = expected_versions(if_match)
    with owner.session() as (session, user):
        lock_owner(session, user)
        completed = body.completed if body else None
        task = set_completed(session, user, task_id, completed, now, versions)
        if task is None:  # missing (404), at another version (412), or already in that state
            task = get_owned_task(session, user, task_id)
            check_version(task, versions)
        session.commit()
        response.headers["ETag"] = task_etag(task.version)
        return to_public(session, task)
