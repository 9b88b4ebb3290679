"""A user's tasks at /api/{user_id}/tasks.

Every route depends on OwnerDep, so the token's user must be the path's user (403
otherwise), and every query is scoped by user_id, so another user's task is a plain 404.
"""

import calendar
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import (
    Boolean,
    asc,
    bindparam,
    case,
    delete,
    desc,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, select

from auth import KEY_SET_UNAVAILABLE_RESPONSE, OwnerDep, invalid_credentials
from config import settings
from db import STATEMENT_TIMED_OUT, Now, SessionDep, limit_statement_time
from models import Task, TaskCount, TaskTag, User
from schemas import (
    LATEST_DATE,
    RECURRENCE_NEEDS_DUE_DATE,
    VALIDATION_ERROR,
    CompletionUpdate,
    IdPath,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskUpdate,
    UserIdPath,
    error_response,
)

# Every task route takes a user_id path parameter, so every one can answer 422, and runs
# statements whose cost grows with the user's tasks, so every one has a time budget.
OWNER_ERRORS = {
    401: error_response("Missing, invalid or expired token", "Could not validate credentials"),
    403: error_response(
        "The path's user_id is not the token's user", "You can only access your own tasks"
    ),
    503: {
        **error_response(
            "A database statement ran longer than STATEMENT_TIMEOUT_MS; or a Better Auth token "
            "while Better Auth's key set cannot be fetched (then with Retry-After)",
            STATEMENT_TIMED_OUT,
        ),
        "headers": KEY_SET_UNAVAILABLE_RESPONSE[503]["headers"],
    },
    **VALIDATION_ERROR,
}
TASK_ERRORS = {**OWNER_ERRORS, 404: error_response("Task not found", "Task not found")}


def too_many_tasks() -> HTTPException:
    limit = settings.max_tasks_per_user
    detail = f"Task limit reached: an account holds at most {limit} tasks; delete some first"
    return HTTPException(status.HTTP_409_CONFLICT, detail=detail)


TOO_MANY_TASKS = too_many_tasks().detail
TASK_LIMIT_ERROR = {409: error_response("The account already holds MAX_TASKS_PER_USER tasks", TOO_MANY_TASKS)}
# Completing a recurring task creates its next occurrence, which needs room under the limit.
COMPLETION_ERRORS = {
    **TASK_ERRORS,
    409: error_response(
        "Completing this recurring task would create its next occurrence, and the account "
        "already holds MAX_TASKS_PER_USER tasks; nothing was changed",
        TOO_MANY_TASKS,
    ),
}

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=OWNER_ERRORS)


PRIORITY_RANK = case({"low": 0, "medium": 1, "high": 2}, value=Task.priority)
SORT_KEYS = {
    "created": Task.created_at,
    "updated": Task.updated_at,
    "title": func.lower(Task.title),
    "due_date": Task.due_date,
    "priority": PRIORITY_RANK,
}
DEFAULT_ORDER = {"created": "desc", "updated": "desc", "title": "asc", "due_date": "asc", "priority": "desc"}


def task_filters(owner_id: int, query: TaskListQuery) -> list:
    filters = [Task.user_id == owner_id]
    if query.status != "all":
        filters.append(Task.completed == (query.status == "completed"))
    if query.priority is not None:
        filters.append(Task.priority == query.priority)
    if query.tag is not None:
        filters.append(exists().where(TaskTag.task_id == Task.id, TaskTag.name == query.tag))
    if query.q is not None:
        # autoescape makes %, _ and the escape character plain text in the pattern.
        filters.append(
            or_(
                Task.title.icontains(query.q, autoescape=True),
                Task.description.icontains(query.q, autoescape=True),
            )
        )
    if query.due_before is not None:
        filters.append(Task.due_date <= query.due_before)
    if query.due_after is not None:
        filters.append(Task.due_date >= query.due_after)
    return filters


def task_ordering(query: TaskListQuery) -> list:
    direction = asc if (query.order or DEFAULT_ORDER[query.sort]) == "asc" else desc
    undated_last = [Task.due_date.is_(None)] if query.sort == "due_date" else []
    # The id breaks ties, so pages never overlap or skip a task.
    return [*undated_last, direction(SORT_KEYS[query.sort]), direction(Task.id)]


# The columns of TaskPublic (tags come from their own table), and their names.
PUBLIC_COLUMNS = [column for column in Task.__table__.columns if column.name in TaskPublic.model_fields]
PUBLIC_NAMES = [column.name for column in PUBLIC_COLUMNS]


def count_matches(session: Session, filters: list, query: TaskListQuery, page_size: int) -> int:
    """X-Total-Count. A page that is neither empty nor full, or an empty first page, ends
    at the last match, so it gives the count without a second query."""
    if 0 < page_size < query.limit or (page_size == 0 and query.offset == 0):
        return query.offset + page_size
    return session.exec(select(func.count()).select_from(Task).where(*filters)).one()


# Built once, not per call: SQLAlchemy then reuses the statement and its cache key, which
# halves the cost of a query that every task response makes.
TAGS_OF_TASKS = (
    select(TaskTag.task_id, TaskTag.name)
    .where(TaskTag.task_id.in_(bindparam("task_ids", expanding=True)))
    .order_by(TaskTag.task_id, TaskTag.name)
)


def load_tags(session: Session, task_ids: list[int]) -> dict[int, list[str]]:
    """Tags of many tasks in one query, each list sorted by name."""
    tags: dict[int, list[str]] = {task_id: [] for task_id in task_ids}
    for task_id, name in session.exec(TAGS_OF_TASKS, params={"task_ids": task_ids}):
        tags[task_id].append(name)
    return tags


def to_public(task: Task, tags: list[str]) -> dict:
    # A dict, not a TaskPublic: FastAPI validates it once against the response model.
    return {name: getattr(task, name) for name in PUBLIC_NAMES} | {"tags": tags}


def task_not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="Task not found")


def recurring_without_due_date() -> RequestValidationError:
    # The same error, in FastAPI's usual format, as TaskCreate's own check gives.
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body",), "msg": f"Value error, {RECURRENCE_NEEDS_DUE_DATE}"}]
    )


def get_owned_task(session: Session, owner_id: int, task_id: int) -> Task:
    task = session.exec(select(Task).where(Task.id == task_id, Task.user_id == owner_id)).first()
    if task is None:
        raise task_not_found()
    return task


def replace_tags(session: Session, task_id: int, names: list[str]) -> None:
    session.execute(delete(TaskTag).where(TaskTag.task_id == task_id))
    session.add_all(TaskTag(task_id=task_id, name=name) for name in names)


# Built once: they run on every create. Core statements on the table: nothing here needs
# the ORM's bookkeeping.
TASK_COUNTS = TaskCount.__table__
COUNT_ONE_MORE_TASK = (
    update(TASK_COUNTS)
    .where(TASK_COUNTS.c.user_id == bindparam("owner_id"), TASK_COUNTS.c.tasks < bindparam("limit"))
    .values(tasks=TASK_COUNTS.c.tasks + 1)
)
COUNT_ONE_LESS_TASK = (
    update(TASK_COUNTS).where(TASK_COUNTS.c.user_id == bindparam("owner_id")).values(tasks=TASK_COUNTS.c.tasks - 1)
)
# FOR KEY SHARE: what inserting a task takes on its user anyway; it conflicts only with
# deleting the user, never with another create or a password change.
LOCK_OWNER = select(User.id).where(User.id == bindparam("owner_id")).with_for_update(read=True, key_share=True)
OWNER_ID = bindparam("owner_id", type_=TASK_COUNTS.c.user_id.type)
TASKS_OF_OWNER = select(OWNER_ID, func.count()).select_from(Task).where(Task.user_id == OWNER_ID)
START_COUNTING = {
    name: dialect_insert(TASK_COUNTS)
    .from_select(["user_id", "tasks"], TASKS_OF_OWNER)
    .on_conflict_do_nothing(index_elements=["user_id"])
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}


def count_new_task(session: Session, owner_id: int) -> None:
    """Count one more task for the owner, or 409 when the account already holds
    MAX_TASKS_PER_USER. Concurrent creates cannot both take the last place: the
    conditional UPDATE is a write, so on SQLite it waits for the one write lock, and on
    PostgreSQL for the counter row's lock, and then sees the count the other left."""
    dialect = session.get_bind().dialect.name
    # Deleting the account locks the user row, then (by cascade) the counter row. Taking
    # them in the same order here keeps a create racing that deletion from deadlocking.
    if dialect == "postgresql" and session.execute(LOCK_OWNER, {"owner_id": owner_id}).first() is None:
        raise invalid_credentials()  # the account was deleted since the token was checked
    params = {"owner_id": owner_id, "limit": settings.max_tasks_per_user}
    if session.execute(COUNT_ONE_MORE_TASK, params).rowcount == 1:
        return
    # No counter yet (the account's tasks are counted once, here), or the limit is reached.
    session.execute(START_COUNTING[dialect], {"owner_id": owner_id})
    if session.execute(COUNT_ONE_MORE_TASK, params).rowcount != 1:
        raise too_many_tasks()


def next_due_date(due: datetime, recurrence: str) -> datetime:
    if recurrence == "daily":
        return due + timedelta(days=1)
    if recurrence == "weekly":
        return due + timedelta(weeks=1)
    year, month = (due.year + 1, 1) if due.month == 12 else (due.year, due.month + 1)
    last_day = calendar.monthrange(year, month)[1]
    return due.replace(year=year, month=month, day=min(due.day, last_day))  # 31 Jan -> 28/29 Feb


def create_next_occurrence(session: Session, task: Task, now: datetime) -> None:
    """Called when `task` has just become completed. The guarded UPDATE claims the one
    next occurrence atomically, so neither concurrent completions nor reopening and
    completing again can create a second one. A series ends where due dates would leave
    the range that every stored date keeps to (before the year 9999)."""
    if task.recurrence == "none":
        return
    next_due = next_due_date(task.due_date, task.recurrence)
    if next_due >= LATEST_DATE:
        return
    claimed = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.next_occurrence_created == false())
        .values(next_occurrence_created=True)
    )
    if claimed.rowcount != 1:
        return
    count_new_task(session, task.user_id)  # at the limit: 409, and the completion is undone
    tags = load_tags(session, [task.id])[task.id]
    next_task = Task(
        user_id=task.user_id,
        title=task.title,
        description=task.description,
        priority=task.priority,
        recurrence=task.recurrence,
        due_date=next_due,
        created_at=now,
        updated_at=now,
    )
    session.add(next_task)
    session.flush()
    session.add_all(TaskTag(task_id=next_task.id, name=name) for name in tags)


def set_completed(
    session: Session, owner_id: int, task_id: int, completed: bool | None, now: datetime
) -> Task | None:
    """Set (or, with None, toggle) completion in one atomic UPDATE, so concurrent requests
    never lose an update. Returns the task if its state changed, None if the task does not
    exist or already had that state."""
    new_state = not_(Task.completed) if completed is None else literal(completed, Boolean)
    timestamp = literal(now, Task.__table__.c.completed_at.type)
    statement = update(Task).where(Task.id == task_id, Task.user_id == owner_id)
    if completed is not None:
        statement = statement.where(Task.completed != completed)
    statement = statement.values(
        # Every right-hand side sees the row as it was before this UPDATE.
        completed=new_state,
        completed_at=case((new_state, timestamp), else_=None),
        updated_at=now,
    )
    task = session.execute(statement.returning(Task)).scalars().first()
    if task is not None and task.completed:
        create_next_occurrence(session, task, now)
    return task


@router.get("", response_model=list[TaskPublic], summary="List tasks")
def list_tasks(
    owner: OwnerDep,
    session: SessionDep,
    query: Annotated[TaskListQuery, Query()],
    response: Response,
) -> list[dict]:
    """Filter, search, sort and page the user's tasks. X-Total-Count is the number of
    tasks matching the filters before limit and offset."""
    limit_statement_time(session)
    filters = task_filters(owner.id, query)
    # Plain rows of the public columns, not Task objects: the list only reads them, and
    # building an ORM object per row (identity map, change tracking) costs more than the
    # query itself.
    rows = session.exec(
        select(*PUBLIC_COLUMNS)
        .where(*filters)
        .order_by(*task_ordering(query))
        .offset(query.offset)
        .limit(query.limit)
    ).all()
    response.headers["X-Total-Count"] = str(count_matches(session, filters, query, len(rows)))
    tags = load_tags(session, [row.id for row in rows])
    # dict(zip(...)) is several times faster than Row._asdict() on every row of every page.
    return [dict(zip(PUBLIC_NAMES, row), tags=tags[row.id]) for row in rows]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    summary="Create a task",
    responses=TASK_LIMIT_ERROR,
)
def create_task(
    user_id: UserIdPath, body: TaskCreate, owner: OwnerDep, session: SessionDep, now: Now, response: Response
) -> dict:
    """Create a task. The Location header is the new task's URL, with the user id as the
    request's path has it (numeric, or a Better Auth id). A task created completed gets
    completed_at, and if it recurs, its next occurrence, as completing it would."""
    task = Task.model_validate(
        body.model_dump(exclude={"tags"}),
        update={
            "user_id": owner.id,
            "created_at": now,
            "updated_at": now,
            "completed_at": now if body.completed else None,
        },
    )
    try:
        count_new_task(session, owner.id)
        session.add(task)
        session.flush()  # assigns the id that the tags refer to
    except IntegrityError:  # the owner's account was deleted since the token was checked
        raise invalid_credentials() from None
    session.add_all(TaskTag(task_id=task.id, name=name) for name in body.tags)
    if task.completed:
        session.flush()  # the next occurrence copies the tags from the table
        create_next_occurrence(session, task, now)
    session.commit()
    response.headers["Location"] = f"/api/{user_id}/tasks/{task.id}"
    return to_public(task, sorted(body.tags))


@router.get("/{task_id}", response_model=TaskPublic, summary="Get a task", responses=TASK_ERRORS)
def get_task(task_id: IdPath, owner: OwnerDep, session: SessionDep) -> dict:
    """Return one task."""
    task = get_owned_task(session, owner.id, task_id)
    return to_public(task, load_tags(session, [task.id])[task.id])


@router.put("/{task_id}", response_model=TaskPublic, summary="Update a task", responses=COMPLETION_ERRORS)
@router.patch(
    "/{task_id}",
    name="patch_task",  # its own operationId: the function serves PUT as well
    response_model=TaskPublic,
    summary="Update a task (same as PUT)",
    responses=COMPLETION_ERRORS,
)
def update_task(
    task_id: IdPath, body: TaskUpdate, owner: OwnerDep, session: SessionDep, now: Now
) -> dict:
    """Change the fields present in the body; absent fields keep their values. An
    explicit null clears description or due_date."""
    task = get_owned_task(session, owner.id, task_id)
    changes = body.model_dump(exclude_unset=True)
    completed = changes.pop("completed", None)
    tags = changes.pop("tags", None)
    task.sqlmodel_update(changes)
    if task.recurrence != "none" and task.due_date is None:
        raise recurring_without_due_date()
    task.updated_at = now
    session.add(task)
    # The first write: from here on this transaction holds the row. Between our read and
    # it, a concurrent request may have deleted the task, or changed it so that ours
    # breaks the recurrence rule (the database's CHECK constraint refuses that row).
    try:
        session.flush()
    except StaleDataError:
        raise task_not_found() from None
    except IntegrityError:
        raise recurring_without_due_date() from None
    if tags is not None:
        replace_tags(session, task.id, tags)
    if completed is not None:
        set_completed(session, owner.id, task.id, completed, now)
        session.refresh(task)  # that UPDATE changed the row behind the ORM's back
    session.commit()
    return to_public(task, load_tags(session, [task.id])[task.id])


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task",
    responses=TASK_ERRORS,
)
def delete_task(task_id: IdPath, owner: OwnerDep, session: SessionDep) -> Response:
    """Delete a task and its tags. Its id is never given to another task."""
    result = session.execute(delete(Task).where(Task.id == task_id, Task.user_id == owner.id))
    if result.rowcount == 0:
        raise task_not_found()
    session.execute(COUNT_ONE_LESS_TASK, {"owner_id": owner.id})
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    summary="Complete, reopen or toggle a task",
    responses=COMPLETION_ERRORS,
)
def complete_task(
    task_id: IdPath,
    owner: OwnerDep,
    session: SessionDep,
    now: Now,
    body: CompletionUpdate | None = None,
) -> dict:
    """With no body, toggle completion. With {"completed": true|false}, set it, so
    repeating the request changes nothing. Completing a recurring task creates its next
    occurrence, once."""
    task = set_completed(session, owner.id, task_id, body.completed if body else None, now)
    if task is None:  # missing (404), or already in the requested state
        task = get_owned_task(session, owner.id, task_id)
    session.commit()
    return to_public(task, load_tags(session, [task.id])[task.id])
