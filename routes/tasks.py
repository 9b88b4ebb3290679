"""A user's tasks at /api/{user_id}/tasks. Every query is scoped by user_id: another user's task
is a 404."""

import calendar
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import bindparam, case, delete, exists, func, inspect, literal, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, asc, col, desc, not_, or_, select

from auth import OwnerDep, invalid_credentials
from config import settings
from db import STATEMENT_TIMED_OUT, Now, limit_statement_time
from models import Task, TaskCount, TaskTag, User
from schemas import (
    JSON_BODY,
    LATEST_DATE,
    VALIDATION_ERROR,
    CompletionUpdate,
    IdPath,
    Responses,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskUpdate,
    UserIdPath,
    error_response,
    recurring_without_due_date,
)


def too_many_tasks() -> HTTPException:
    limit = settings.max_tasks_per_user
    return HTTPException(
        409, f"Task limit reached: an account holds at most {limit} tasks; delete some first"
    )


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
TASK_NOT_FOUND = "Task not found"
TASK_ERRORS: Responses = {404: error_response(TASK_NOT_FOUND, TASK_NOT_FOUND)}
FULL = too_many_tasks().detail
CREATE_ERRORS: Responses = {
    409: error_response("The account already holds MAX_TASKS_PER_USER tasks", FULL),
    **JSON_BODY,
}
COMPLETION_ERRORS = TASK_ERRORS | {
    409: error_response(
        "Completing a recurring task whose next occurrence would pass MAX_TASKS_PER_USER;"
        " nothing changes",
        FULL,
    ),
    **JSON_BODY,
}
router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=OWNER_ERRORS)
ListQuery = Annotated[TaskListQuery, Query()]

SORT_KEYS = {
    "created": (Task.created_at, "desc"),
    "updated": (Task.updated_at, "desc"),
    "title": (func.lower(Task.title), "asc"),
    "due_date": (Task.due_date, "asc"),
    "priority": (case({"low": 0, "medium": 1, "high": 2}, value=Task.priority), "desc"),
}
TASK_COLUMNS = inspect(Task).columns
PUBLIC_COLUMNS = [column for column in TASK_COLUMNS if column.name in TaskPublic.model_fields]
PUBLIC_NAMES = [column.name for column in PUBLIC_COLUMNS]
# Built once: every task response runs it.
TAGS_OF_TASKS = (
    select(TaskTag.task_id, TaskTag.name)
    .where(col(TaskTag.task_id).in_(bindparam("task_ids", expanding=True)))
    .order_by(col(TaskTag.task_id), col(TaskTag.name))
)


def load_tags(session: Session, task_ids: list[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {task_id: [] for task_id in task_ids}
    # Core rows: no ORM objects.
    for task_id, name in session.connection().execute(TAGS_OF_TASKS, {"task_ids": task_ids}):
        tags[task_id].append(name)
    return tags


def add_tags(session: Session, task: Task, names: list[str]) -> None:
    assert task.id is not None
    session.add_all(TaskTag(task_id=task.id, name=name) for name in names)


def to_public(session: Session, task: Task) -> dict[str, Any]:
    assert task.id is not None
    # The response model drops the fields TaskPublic lacks.
    return task.model_dump() | {"tags": load_tags(session, [task.id])[task.id]}


def get_owned_task(session: Session, owner: User, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.user_id != owner.id:
        raise HTTPException(404, TASK_NOT_FOUND)
    return task


TASK_COUNTS = TaskCount.metadata.tables["taskcount"]
COUNT_ONE_MORE_TASK = (
    update(TASK_COUNTS)
    .where(TASK_COUNTS.c.user_id == bindparam("owner_id"), TASK_COUNTS.c.tasks < bindparam("limit"))
    .values(tasks=TASK_COUNTS.c.tasks + 1)
)


def lock_owner(session: Session, owner: User) -> None:
    """First in every task write, in account deletion's lock order: no deadlock. KEY SHARE waits
    only for a deletion; SQLite has one writer."""
    if session.get_bind().dialect.name == "postgresql":
        owner_row = select(User.id).where(User.id == owner.id)
        if session.exec(owner_row.with_for_update(read=True, key_share=True)).first() is None:
            raise invalid_credentials()  # the account was deleted meanwhile


def count_new_task(session: Session, owner_id: int) -> None:
    """One more task, or 409 at the limit; concurrent creates queue on the UPDATE."""
    params = {"owner_id": owner_id, "limit": settings.max_tasks_per_user}
    if session.exec(COUNT_ONE_MORE_TASK, params=params).rowcount == 1:
        return
    # No counter yet (made here, from a COUNT), or the limit is reached.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    counted = select(literal(owner_id), func.count()).where(Task.user_id == owner_id)
    session.exec(
        insert(TaskCount).from_select(["user_id", "tasks"], counted).on_conflict_do_nothing()
    )
    if session.exec(COUNT_ONE_MORE_TASK, params=params).rowcount != 1:
        raise too_many_tasks()


def next_due_date(due: datetime, recurrence: str) -> datetime:
    if recurrence != "monthly":
        return due + timedelta(days=1 if recurrence == "daily" else 7)
    year, month = (due.year + 1, 1) if due.month == 12 else (due.year, due.month + 1)
    last_day = calendar.monthrange(year, month)[1]
    return due.replace(year=year, month=month, day=min(due.day, last_day))  # 31 Jan -> 28/29 Feb


def create_next_occurrence(session: Session, task: Task, now: datetime) -> None:
    """For a task just completed; a guarded UPDATE claims its one next occurrence."""
    if task.recurrence == "none":
        return
    assert task.id is not None and task.due_date is not None  # recurring: a CHECK
    next_due = next_due_date(task.due_date, task.recurrence)
    claim = update(Task).where(col(Task.id) == task.id, not_(Task.next_occurrence_created))
    claimed = claim.values(next_occurrence_created=True)
    # A series ends before its dates leave the storable years.
    if next_due >= LATEST_DATE or session.exec(claimed).rowcount != 1:
        return
    count_new_task(session, task.user_id)  # at the limit: 409, and the completion is undone
    copied = task.model_dump(include={"user_id", "title", "description", "priority", "recurrence"})
    next_task = Task(**copied, due_date=next_due, created_at=now, updated_at=now)
    session.add(next_task)
    session.flush()
    add_tags(session, next_task, load_tags(session, [task.id])[task.id])


def set_completed(
    session: Session, owner: User, task_id: int, completed: bool | None, now: datetime
) -> Task | None:
    """Set (None: toggle) completion in one atomic UPDATE; None if missing or already so."""
    new_state = not_(Task.completed) if completed is None else literal(completed)
    statement = update(Task).where(col(Task.id) == task_id, col(Task.user_id) == owner.id)
    if completed is not None:
        statement = statement.where(col(Task.completed) != completed)
    # Each right-hand side reads the row as it was before.
    completed_at = case((new_state, literal(now, TASK_COLUMNS.completed_at.type)), else_=None)
    statement = statement.values(completed=new_state, completed_at=completed_at, updated_at=now)
    task = session.exec(statement.returning(Task)).scalars().first()
    if task is not None and task.completed:
        create_next_occurrence(session, task, now)
    return task


@router.get(
    "",
    response_model=list[TaskPublic],
    summary="List tasks",
    description="Filter, search, sort and page the tasks. "
    "X-Total-Count counts the matches on every page.",
)
def list_tasks(owner: OwnerDep, query: ListQuery, response: Response) -> list[dict[str, Any]]:
    with owner.session() as (session, user):
        limit_statement_time(session)
        filters = [col(Task.user_id) == user.id]
        if query.status != "all":
            filters.append(col(Task.completed) == (query.status == "completed"))
        if query.priority is not None:
            filters.append(col(Task.priority) == query.priority)
        if query.tag is not None:
            filters.append(
                exists().where(col(TaskTag.task_id) == Task.id, col(TaskTag.name) == query.tag)
            )
        if query.q is not None:  # autoescape: % and _ match themselves
            texts = col(Task.title), col(Task.description)
            filters.append(or_(*(text.icontains(query.q, autoescape=True) for text in texts)))
        if query.due_before is not None:
            filters.append(col(Task.due_date) <= query.due_before)
        if query.due_after is not None:
            filters.append(col(Task.due_date) >= query.due_after)
        key, natural_order = SORT_KEYS[query.sort]
        direction = asc if (query.order or natural_order) == "asc" else desc
        undated_last = [col(Task.due_date).is_(None)] if query.sort == "due_date" else []
        # The id breaks ties: pages never overlap.
        ordering = [*undated_last, direction(key), direction(Task.id)]
        # Rows through Core: no ORM bookkeeping per row.
        page = select(*PUBLIC_COLUMNS).where(*filters).order_by(*ordering)
        rows = session.connection().execute(page.offset(query.offset).limit(query.limit)).all()
        # A partial page, or an empty first one, holds the last match: no COUNT.
        if 0 < len(rows) < query.limit or (not rows and query.offset == 0):
            total = query.offset + len(rows)
        else:
            total = session.exec(select(func.count()).select_from(Task).where(*filters)).one()
        tags = load_tags(session, [row.id for row in rows])
    response.headers["X-Total-Count"] = str(total)
    return [dict(zip(PUBLIC_NAMES, row, strict=True), tags=tags[row.id]) for row in rows]


@router.post(
    "",
    status_code=201,
    response_model=TaskPublic,
    summary="Create a task",
    description="Create a task; Location is its URL. "
    "A task created completed is treated as if completed just after.",
    responses=CREATE_ERRORS,
)
def create_task(
    user_id: UserIdPath, body: TaskCreate, owner: OwnerDep, now: Now, response: Response
) -> dict[str, Any]:
    times = {"created_at": now, "updated_at": now, "completed_at": now if body.completed else None}
    with owner.session() as (session, user):
        task = Task.model_validate(
            body.model_dump(exclude={"tags"}), update={"user_id": user.id, **times}
        )
        try:
            lock_owner(session, user)
            count_new_task(session, task.user_id)
            session.add(task)
            session.flush()
        except IntegrityError:  # the account was deleted meanwhile
            raise invalid_credentials() from None
        add_tags(session, task, body.tags)
        if task.completed:
            session.flush()  # the next occurrence copies these tags
            create_next_occurrence(session, task, now)
        session.commit()
    response.headers["Location"] = f"/api/{user_id}/tasks/{task.id}"
    return task.model_dump() | {"tags": sorted(body.tags)}


@router.get("/{task_id}", response_model=TaskPublic, summary="Get a task", responses=TASK_ERRORS)
def get_task(task_id: IdPath, owner: OwnerDep) -> dict[str, Any]:
    """Return one task."""
    with owner.session() as (session, user):
        return to_public(session, get_owned_task(session, user, task_id))


@router.put(
    "/{task_id}", response_model=TaskPublic, summary="Update a task", responses=COMPLETION_ERRORS
)
@router.patch(
    "/{task_id}",
    name="patch_task",  # its own operationId
    response_model=TaskPublic,
    summary="Update a task (same as PUT)",
    responses=COMPLETION_ERRORS,
)
def update_task(task_id: IdPath, body: TaskUpdate, owner: OwnerDep, now: Now) -> dict[str, Any]:
    """Change the fields sent; a null clears description or due_date."""
    with owner.session() as (session, user):
        lock_owner(session, user)
        task = get_owned_task(session, user, task_id)
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
        except IntegrityError:  # the CHECK: the row may have changed since our read
            raise recurring_without_due_date() from None
        if tags is not None:
            session.exec(delete(TaskTag).where(col(TaskTag.task_id) == task_id))
            add_tags(session, task, tags)
        if completed is not None:
            set_completed(session, user, task_id, completed, now)
            session.refresh(task)  # changed behind the ORM's back
        session.commit()
        return to_public(session, task)


@router.delete("/{task_id}", status_code=204, summary="Delete a task", responses=TASK_ERRORS)
def delete_task(task_id: IdPath, owner: OwnerDep) -> Response:
    """Delete a task and its tags. Its id is never given to another task."""
    with owner.session() as (session, user):
        lock_owner(session, user)
        # No read first: of two concurrent deletions only one counts the task off.
        owned = delete(Task).where(col(Task.id) == task_id, col(Task.user_id) == user.id)
        if session.exec(owned).rowcount == 0:
            raise HTTPException(404, TASK_NOT_FOUND)
        counter = update(TaskCount).where(col(TaskCount.user_id) == user.id)
        session.exec(counter.values(tasks=TaskCount.tasks - 1))
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
    task_id: IdPath, owner: OwnerDep, now: Now, body: CompletionUpdate | None = None
) -> dict[str, Any]:
    with owner.session() as (session, user):
        lock_owner(session, user)
        task = set_completed(session, user, task_id, body.completed if body else None, now)
        if task is None:  # missing (404), or already in the requested state
            task = get_owned_task(session, user, task_id)
        session.commit()
        return to_public(session, task)
