"""A user's tasks at /api/{user_id}/tasks. Every route depends on OwnerDep, so the token's user must be
the path's user (403 otherwise), and every query is scoped by user_id: another user's task is a plain 404."""

import calendar
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
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

from auth import OwnerDep, invalid_credentials
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


def too_many_tasks() -> HTTPException:
    limit = settings.max_tasks_per_user
    return HTTPException(
        409, f"Task limit reached: an account holds at most {limit} tasks; delete some first"
    )


# Every route takes the path's user_id (422) and runs statements under the time budget (503).
OWNER_ERRORS = {
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
TASK_NOT_FOUND = "Task not found"
TASK_ERRORS = {404: error_response(TASK_NOT_FOUND, TASK_NOT_FOUND)}
CREATE_ERRORS = {
    409: error_response(
        "The account already holds MAX_TASKS_PER_USER tasks", too_many_tasks().detail
    )
}
AT_LIMIT = "Completing a recurring task whose next occurrence would pass MAX_TASKS_PER_USER; nothing changes"
COMPLETION_ERRORS = TASK_ERRORS | {409: error_response(AT_LIMIT, too_many_tasks().detail)}
router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=OWNER_ERRORS)

# Each sort key, with its direction when the query names none.
SORT_KEYS = {
    "created": (Task.created_at, "desc"),
    "updated": (Task.updated_at, "desc"),
    "title": (func.lower(Task.title), "asc"),
    "due_date": (Task.due_date, "asc"),
    "priority": (case({"low": 0, "medium": 1, "high": 2}, value=Task.priority), "desc"),
}
PUBLIC_COLUMNS = [
    column for column in Task.__table__.columns if column.name in TaskPublic.model_fields
]
PUBLIC_NAMES = [column.name for column in PUBLIC_COLUMNS]


# Built once, as every task response runs it: SQLAlchemy reuses the statement and its cache key.
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


def to_public(session: Session, task: Task) -> dict:
    return task.model_dump() | {
        "tags": load_tags(session, [task.id])[task.id]
    }  # the response model filters it


def recurring_without_due_date() -> RequestValidationError:
    error = {
        "type": "value_error",
        "loc": ("body",),
        "msg": f"Value error, {RECURRENCE_NEEDS_DUE_DATE}",
    }
    return RequestValidationError([error])  # as TaskCreate's own check answers


def get_owned_task(session: Session, owner_id: int, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.user_id != owner_id:
        raise HTTPException(404, TASK_NOT_FOUND)
    return task


# Built once, as it runs on every create: building it per call cost more than running it.
COUNT_ONE_MORE_TASK = (
    update(TaskCount.__table__)
    .where(TaskCount.user_id == bindparam("owner_id"), TaskCount.tasks < bindparam("limit"))
    .values(tasks=TaskCount.tasks + 1)
)


def lock_owner(session: Session, owner_id: int) -> None:
    """The first statement of every task write: account deletion locks the user row, then (by cascade) its
    tasks and counter, so taking the user row first here too means waiting, never a deadlock. FOR KEY SHARE,
    as a task insert takes anyway, waits only for a deletion. SQLite has one write lock, so needs none."""
    if session.get_bind().dialect.name == "postgresql":
        owner = (
            select(User.id).where(User.id == owner_id).with_for_update(read=True, key_share=True)
        )
        if session.exec(owner).first() is None:
            raise invalid_credentials()  # the account was deleted since the token was checked


def count_new_task(session: Session, owner_id: int) -> None:
    """One more task for the owner, or 409 at MAX_TASKS_PER_USER; a concurrent create waits for the UPDATE's lock."""
    dialect = session.get_bind().dialect.name
    params = {"owner_id": owner_id, "limit": settings.max_tasks_per_user}
    if session.execute(COUNT_ONE_MORE_TASK, params).rowcount == 1:
        return
    # No counter yet (the account's tasks are counted once, here), or the limit is reached.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    tasks_of_owner = (
        select(literal(owner_id), func.count()).select_from(Task).where(Task.user_id == owner_id)
    )
    session.execute(
        insert(TaskCount).from_select(["user_id", "tasks"], tasks_of_owner).on_conflict_do_nothing()
    )
    if session.execute(COUNT_ONE_MORE_TASK, params).rowcount != 1:
        raise too_many_tasks()


def next_due_date(due: datetime, recurrence: str) -> datetime:
    if recurrence in ("daily", "weekly"):
        return due + timedelta(days=1 if recurrence == "daily" else 7)
    year, month = (due.year + 1, 1) if due.month == 12 else (due.year, due.month + 1)
    last_day = calendar.monthrange(year, month)[1]
    return due.replace(year=year, month=month, day=min(due.day, last_day))  # 31 Jan -> 28/29 Feb


def create_next_occurrence(session: Session, task: Task, now: datetime) -> None:
    """For a task just completed; the guarded UPDATE claims its one next occurrence against any concurrent change."""
    if task.recurrence == "none":
        return
    next_due = next_due_date(task.due_date, task.recurrence)
    claim = update(Task).where(Task.id == task.id, Task.next_occurrence_created == false())
    # A series ends before its dates leave the storable years.
    if (
        next_due >= LATEST_DATE
        or session.execute(claim.values(next_occurrence_created=True)).rowcount != 1
    ):
        return
    count_new_task(session, task.user_id)  # at the limit: 409, and the completion is undone
    tags = load_tags(session, [task.id])[task.id]
    copied = task.model_dump(include={"user_id", "title", "description", "priority", "recurrence"})
    next_task = Task(**copied, due_date=next_due, created_at=now, updated_at=now)
    session.add(next_task)
    session.flush()
    session.add_all(TaskTag(task_id=next_task.id, name=name) for name in tags)


def set_completed(
    session: Session, owner_id: int, task_id: int, completed: bool | None, now: datetime
) -> Task | None:
    """Set (None: toggle) completion in one atomic UPDATE; None if the task is missing or already in that state."""
    new_state = not_(Task.completed) if completed is None else literal(completed, Boolean)
    statement = update(Task).where(Task.id == task_id, Task.user_id == owner_id)
    if completed is not None:
        statement = statement.where(Task.completed != completed)
    # Every right-hand side sees the row as it was before this UPDATE.
    completed_at = case((new_state, literal(now, Task.__table__.c.completed_at.type)), else_=None)
    statement = statement.values(completed=new_state, completed_at=completed_at, updated_at=now)
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
    """Filter, search, sort and page the user's tasks. X-Total-Count counts the matches before limit and offset."""
    limit_statement_time(session)
    filters = [Task.user_id == owner.id]
    if query.status != "all":
        filters.append(Task.completed == (query.status == "completed"))
    if query.priority is not None:
        filters.append(Task.priority == query.priority)
    if query.tag is not None:
        filters.append(exists().where(TaskTag.task_id == Task.id, TaskTag.name == query.tag))
    if query.q is not None:  # autoescape: %, _ and the escape character match themselves
        filters.append(
            or_(
                *(
                    text.icontains(query.q, autoescape=True)
                    for text in (Task.title, Task.description)
                )
            )
        )
    if query.due_before is not None:
        filters.append(Task.due_date <= query.due_before)
    if query.due_after is not None:
        filters.append(Task.due_date >= query.due_after)
    key, natural_order = SORT_KEYS[query.sort]
    direction = asc if (query.order or natural_order) == "asc" else desc
    undated_last = [Task.due_date.is_(None)] if query.sort == "due_date" else []
    ordering = [
        *undated_last,
        direction(key),
        direction(Task.id),
    ]  # the id breaks ties: pages never overlap
    # Plain rows zipped into dicts, not Task objects: no identity map or change tracking per row.
    page = select(*PUBLIC_COLUMNS).where(*filters).order_by(*ordering)
    rows = session.exec(page.offset(query.offset).limit(query.limit)).all()
    # A page neither empty nor full (or an empty first page) ends at the last match: no COUNT needed.
    if 0 < len(rows) < query.limit or (not rows and query.offset == 0):
        total = query.offset + len(rows)
    else:
        total = session.exec(select(func.count()).select_from(Task).where(*filters)).one()
    response.headers["X-Total-Count"] = str(total)
    tags = load_tags(session, [row.id for row in rows])
    return [dict(zip(PUBLIC_NAMES, row), tags=tags[row.id]) for row in rows]


@router.post(
    "", status_code=201, response_model=TaskPublic, summary="Create a task", responses=CREATE_ERRORS
)
def create_task(
    user_id: UserIdPath,
    body: TaskCreate,
    owner: OwnerDep,
    session: SessionDep,
    now: Now,
    response: Response,
) -> dict:
    """Create a task; Location is its URL. A task created completed is treated as if completed just after."""
    times = {"created_at": now, "updated_at": now, "completed_at": now if body.completed else None}
    task = Task.model_validate(
        body.model_dump(exclude={"tags"}), update={"user_id": owner.id, **times}
    )
    try:
        lock_owner(session, owner.id)
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
    return task.model_dump() | {"tags": sorted(body.tags)}


@router.get("/{task_id}", response_model=TaskPublic, summary="Get a task", responses=TASK_ERRORS)
def get_task(task_id: IdPath, owner: OwnerDep, session: SessionDep) -> dict:
    """Return one task."""
    return to_public(session, get_owned_task(session, owner.id, task_id))


@router.put(
    "/{task_id}", response_model=TaskPublic, summary="Update a task", responses=COMPLETION_ERRORS
)
@router.patch(
    "/{task_id}",
    name="patch_task",
    response_model=TaskPublic,
    summary="Update a task (same as PUT)",
    responses=COMPLETION_ERRORS,
)  # name: its own operationId, as the function serves PUT too
def update_task(
    task_id: IdPath, body: TaskUpdate, owner: OwnerDep, session: SessionDep, now: Now
) -> dict:
    """Change the fields present in the body; an explicit null clears description or due_date."""
    lock_owner(session, owner.id)
    task = get_owned_task(session, owner.id, task_id)
    changes = body.model_dump(exclude_unset=True)
    completed, tags = changes.pop("completed", None), changes.pop("tags", None)
    task.sqlmodel_update(changes | {"updated_at": now})
    if task.recurrence != "none" and task.due_date is None:
        raise recurring_without_due_date()
    session.add(task)
    try:  # the first write: from here on this transaction holds the row
        session.flush()
    except StaleDataError:  # deleted since our read
        raise HTTPException(404, TASK_NOT_FOUND) from None
    except IntegrityError:  # the CHECK constraint: the row may have changed since our read
        raise recurring_without_due_date() from None
    if tags is not None:
        session.execute(delete(TaskTag).where(TaskTag.task_id == task.id))
        session.add_all(TaskTag(task_id=task.id, name=name) for name in tags)
    if completed is not None:
        set_completed(session, owner.id, task.id, completed, now)
        session.refresh(task)  # that UPDATE changed the row behind the ORM's back
    session.commit()
    return to_public(session, task)


@router.delete("/{task_id}", status_code=204, summary="Delete a task", responses=TASK_ERRORS)
def delete_task(task_id: IdPath, owner: OwnerDep, session: SessionDep) -> Response:
    """Delete a task and its tags. Its id is never given to another task."""
    lock_owner(session, owner.id)
    # One DELETE, not a read and a delete: of two concurrent deletions only one counts the task off.
    if (
        session.execute(delete(Task).where(Task.id == task_id, Task.user_id == owner.id)).rowcount
        == 0
    ):
        raise HTTPException(404, TASK_NOT_FOUND)
    session.execute(
        update(TaskCount).where(TaskCount.user_id == owner.id).values(tasks=TaskCount.tasks - 1)
    )
    session.commit()
    return Response(status_code=204)


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
    """No body toggles; {"completed": true|false} sets it. Completing a recurring task creates its next one, once."""
    lock_owner(session, owner.id)
    task = set_completed(session, owner.id, task_id, body.completed if body else None, now)
    if task is None:  # missing (404), or already in the requested state
        task = get_owned_task(session, owner.id, task_id)
    session.commit()
    return to_public(session, task)
