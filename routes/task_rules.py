"""The task operations the routes share: reading a task and its tags, the per-account limit,
completion and a recurring task's next occurrence, and the owner's lock."""

import calendar
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException
from sqlalchemy import bindparam, case, func, inspect, literal, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, not_, select

from auth import invalid_credentials
from config import settings
from models import Task, TaskCount, TaskTag, User
from schemas import LATEST_DATE, TaskPublic

TASK_NOT_FOUND = "Task not found"


def too_many_tasks() -> HTTPException:
    limit = settings.max_tasks_per_user
    return HTTPException(
        409, f"Task limit reached: an account holds at most {limit} tasks; delete some first"
    )


TASK_COLUMNS = inspect(Task).columns
PUBLIC_COLUMNS = [column for column in TASK_COLUMNS if column.name in TaskPublic.model_fields]
PUBLIC_NAMES = [column.name for column in PUBLIC_COLUMNS]
# A list page's: what it shows, and the version, last, for its ETag.
PAGE_COLUMNS = [*PUBLIC_COLUMNS, TASK_COLUMNS.version]
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
    # Read from the database, not the session's memory: it may have changed, or gone, since.
    task = session.get(Task, task_id, populate_existing=True)
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
    session: Session,
    owner: User,
    task_id: int,
    completed: bool | None,
    now: datetime,
    versions: list[int] | None = None,
) -> Task | None:
    """Set (None: toggle) completion in one atomic UPDATE, if the task is at one of `versions`
    (None: any); None if missing, at another version or already so."""
    new_state = not_(Task.completed) if completed is None else literal(completed)
    statement = update(Task).where(col(Task.id) == task_id, col(Task.user_id) == owner.id)
    if completed is not None:
        statement = statement.where(col(Task.completed) != completed)
    if versions is not None:
        statement = statement.where(col(Task.version).in_(versions))
    # Each right-hand side reads the row as it was before.
    completed_at = case((new_state, literal(now, TASK_COLUMNS.completed_at.type)), else_=None)
    changed = {"completed": new_state, "completed_at": completed_at, "updated_at": now}
    statement = statement.values(**changed, version=col(Task.version) + 1)
    task = session.exec(statement.returning(Task)).scalars().first()
    if task is not None and task.completed:
        create_next_occurrence(session, task, now)
    return task
