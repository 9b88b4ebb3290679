"""The task operations the routes share: reading a task and its tags, the per-account limit,
completion and a recurring task's next occurrence, and the owner's lock."""

import calendar
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from sqlalchemy import (
    ColumnElement,
    Row,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, not_, or_, select

from auth import invalid_credentials
from config import settings
from models import Id, Task, TaskCount, TaskTag, User
from schemas import LATEST_DATE, RECURRENCE_NEEDS_DUE_DATE, TaskFilters, TaskMove, TaskPublic

TASK_NOT_FOUND = "Task not found"
NO_SUCH_TASK = "No task of yours has this id"


def recurring_without_due_date() -> RequestValidationError:
    """TaskCreate's 422, for an update that leaves a task in that state."""
    message = f"Value error, {RECURRENCE_NEEDS_DUE_DATE}"
    return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": message}])


def too_many_tasks() -> HTTPException:
    limit = settings.max_tasks_per_user
    return HTTPException(
        409, f"Task limit reached: an account holds at most {limit} tasks; delete some first"
    )


TASKS, TASK_TAGS = Task.metadata.tables["task"], TaskTag.metadata.tables["tasktag"]
PUBLIC_COLUMNS = [column for column in TASKS.c if column.name in TaskPublic.model_fields]
PUBLIC_NAMES = [column.name for column in PUBLIC_COLUMNS]
# A list page's: what it shows, and the version, last, for its ETag.
PAGE_COLUMNS = [*PUBLIC_COLUMNS, TASKS.c.version]
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


def add_tags(session: Session, task_id: int, names: list[str]) -> None:
    if names:
        session.connection().execute(
            insert(TASK_TAGS), [{"task_id": task_id, "name": name} for name in names]
        )


def to_public(session: Session, task: Task) -> dict[str, Any]:
    assert task.id is not None
    # The response model drops the fields TaskPublic lacks.
    return task.model_dump() | {"tags": load_tags(session, [task.id])[task.id]}


def task_filters(owner: User, query: TaskFilters) -> list[ColumnElement[bool]]:
    """The owner's tasks that the list's filters select."""
    filters = [col(Task.user_id) == owner.id]
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
    return filters


def get_owned_task(session: Session, owner: User, task_id: int) -> Task:
    # Read from the database, not the session's memory: it may have changed, or gone, since.
    task = session.get(Task, task_id, populate_existing=True)
    if task is None or task.user_id != owner.id:
        raise HTTPException(404, TASK_NOT_FOUND)
    return task


TASK_COUNTS = TaskCount.metadata.tables["taskcount"]
# One statement for 1 or n more; its row lock also gives concurrent creates their turns at the
# end of the order.
COUNT_MORE_TASKS = (
    update(TASK_COUNTS)
    .where(
        TASK_COUNTS.c.user_id == bindparam("owner_id"),
        TASK_COUNTS.c.tasks + bindparam("count") <= bindparam("limit"),
    )
    .values(tasks=TASK_COUNTS.c.tasks + bindparam("count"))
)
POSITION_GAP = 2**20  # between neighbours: a move takes the middle, rewriting no other task


def lock_owner(session: Session, owner: User, *, alone: bool = False) -> None:
    """First in every task write, in account deletion's lock order: no deadlock. KEY SHARE waits
    only for a deletion. `alone` (a move, a request on many tasks) waits for the owner's other
    task writes and holds them off, so it reads and writes many rows without a lock cycle with
    them. SQLite has one writer: `alone` takes it now, so what follows reads what is current."""
    if session.get_bind().dialect.name == "postgresql":
        owner_row = select(User.id).where(User.id == owner.id)
        locked = owner_row.with_for_update(read=not alone, key_share=not alone)
        if session.exec(locked).first() is None:
            raise invalid_credentials()  # the account was deleted meanwhile
    elif alone:
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")


def count_new_tasks(session: Session, owner_id: int, count: int = 1) -> None:
    """`count` more tasks, or 409 past the limit."""
    params = {"owner_id": owner_id, "count": count, "limit": settings.max_tasks_per_user}
    if session.exec(COUNT_MORE_TASKS, params=params).rowcount == 1:
        return
    # No counter yet (made here, from a COUNT), or the limit is reached.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    counted = select(literal(owner_id), func.count()).where(Task.user_id == owner_id)
    session.exec(
        insert(TaskCount).from_select(["user_id", "tasks"], counted).on_conflict_do_nothing()
    )
    if session.exec(COUNT_MORE_TASKS, params=params).rowcount != 1:
        raise too_many_tasks()


def count_fewer_tasks(session: Session, owner: User, count: int) -> None:
    """After deleting `count` of the owner's tasks (a counter not made yet stays unmade)."""
    counter = update(TASK_COUNTS).where(TASK_COUNTS.c.user_id == owner.id)
    session.connection().execute(counter.values(tasks=TASK_COUNTS.c.tasks - count))


# A create's one INSERT, built once, that finds the task's place at the end of the order itself
# and returns the row: no ORM flush, no other statement while the counter's lock is held
# (bench/README.md, "create").
INSERT_TASK = (
    insert(TASKS)
    .values(
        position=select(func.coalesce(func.max(TASKS.c.position), 0) + POSITION_GAP)
        .where(TASKS.c.user_id == bindparam("owner_id"))
        .scalar_subquery()
    )
    .returning(*TASKS.c)
)


def insert_task(session: Session, owner_id: int, fields: dict[str, Any]) -> Row[Any]:
    """A new task of the owner, with `fields`, at the end of the order: after count_new_tasks."""
    row = {"user_id": owner_id, "next_occurrence_created": False, "version": 1, **fields}
    return session.connection().execute(INSERT_TASK, {"owner_id": owner_id, **row}).one()


def end_positions(session: Session, owner_id: int, count: int) -> list[int]:
    """The next `count` places at the end of the owner's order: after count_new_tasks."""
    last = select(func.max(Task.position)).where(col(Task.user_id) == owner_id)
    end = session.exec(last).one() or 0
    return [end + POSITION_GAP * number for number in range(1, count + 1)]


def new_position(session: Session, task: Task, move: TaskMove) -> int:
    """The place `move` names for `task`: between two neighbours, or a gap past the first or
    last task. After lock_owner(..., alone=True): the owner's order holds still meanwhile."""
    others = [col(Task.user_id) == task.user_id, col(Task.id) != task.id]
    if move.to is not None:
        end = func.min(Task.position) if move.to == "top" else func.max(Task.position)
        edge = session.exec(select(end).where(*others)).one()
        if edge is None:  # the only task
            return task.position
        return edge - POSITION_GAP if move.to == "top" else edge + POSITION_GAP
    before = move.before is not None
    owned = [col(Task.user_id) == task.user_id, col(Task.id) == (move.before or move.after)]
    mark = session.exec(select(col(Task.position)).where(*owned)).first()
    if mark is None:
        loc = ("body", "before" if before else "after")
        error = {"type": "value_error", "loc": loc, "msg": f"Value error, {NO_SUCH_TASK}"}
        raise RequestValidationError([error])
    nearest, beyond = (
        (func.max, col(Task.position) < mark) if before else (func.min, col(Task.position) > mark)
    )
    neighbour = session.exec(select(nearest(Task.position)).where(*others, beyond)).one()
    if neighbour is None:  # the first or the last: a gap's room beyond it
        neighbour = mark - 2 * POSITION_GAP if before else mark + 2 * POSITION_GAP
    low, high = sorted((neighbour, mark))
    if high - low < 2:  # no room between: spread the order out, then look again
        spread_out(session, task.user_id)
        session.refresh(task)
        return new_position(session, task, move)
    return (low + high) // 2


def spread_out(session: Session, owner_id: int) -> None:
    """Every task of the owner POSITION_GAP apart, in the same order, a new version each. Each
    row's place must stay unique as it changes: first all above every old and new place."""
    owned = TASKS.c.user_id == owner_id
    extent = select(func.max(TASKS.c.position), func.count()).where(owned)
    highest, count = session.connection().execute(extent).one()
    base = max(highest, count * POSITION_GAP)
    rank = func.row_number().over(order_by=TASKS.c.position).label("rank")
    ranked = select(TASKS.c.id, rank).where(owned).subquery()
    above = update(TASKS).where(TASKS.c.id == ranked.c.id).values(position=base + ranked.c.rank)
    session.connection().execute(above)
    spread = {"position": (TASKS.c.position - base) * POSITION_GAP, "version": TASKS.c.version + 1}
    session.connection().execute(update(TASKS).where(owned).values(**spread))


def next_due_date(due: datetime, recurrence: str) -> datetime:
    if recurrence != "monthly":
        return due + timedelta(days=1 if recurrence == "daily" else 7)
    year, month = (due.year + 1, 1) if due.month == 12 else (due.year, due.month + 1)
    last_day = calendar.monthrange(year, month)[1]
    return due.replace(year=year, month=month, day=min(due.day, last_day))  # 31 Jan -> 28/29 Feb


def create_next_occurrences(
    session: Session, owner_id: int, task_ids: list[int], now: datetime
) -> None:
    """For tasks just completed: a guarded UPDATE claims each one's one next occurrence, and
    they are made in a few statements, however many, or none if they pass the limit (409)."""
    connection = session.connection()  # Core statements: no ORM object per task
    unclaimed = [TASKS.c.recurrence != "none", ~TASKS.c.next_occurrence_created]
    copied = ("id", "title", "description", "priority", "recurrence", "due_date")
    claim = update(TASKS).values(next_occurrence_created=True)
    claim = claim.returning(*(TASKS.c[name] for name in copied))
    claimed = [
        row
        # In batches: a statement's parameters are limited (32,766 on SQLite).
        for start in range(0, len(task_ids), 10_000)
        for row in connection.execute(
            claim.where(TASKS.c.id.in_(task_ids[start : start + 10_000]), *unclaimed)
        )
    ]
    # A series ends before its dates leave the storable years.
    series = [
        (row, due)
        for row in claimed
        if (due := next_due_date(row.due_date, row.recurrence)) < LATEST_DATE
    ]
    if not series:
        return
    count_new_tasks(session, owner_id, len(series))  # past the limit: 409, and nothing changes
    places = end_positions(session, owner_id, len(series))
    rows = [
        {"user_id": owner_id, "title": row.title, "description": row.description,
         "priority": row.priority, "recurrence": row.recurrence, "due_date": due,
         "completed": False, "next_occurrence_created": False, "created_at": now,
         "updated_at": now, "version": 1, "position": place}
        for (row, due), place in zip(series, places, strict=True)
    ]  # fmt: skip
    # Matched by their places, unique per owner: an INSERT's RETURNING in the rows' order would
    # cost SQLite a statement per row.
    made_at = insert(TASKS).returning(TASKS.c.position, TASKS.c.id)
    made: dict[int, int] = dict(connection.execute(made_at, rows).all())
    copies = [
        {"new": made[place], "old": row.id} for (row, _), place in zip(series, places, strict=True)
    ]
    old_tags = TASK_TAGS.select().where(TASK_TAGS.c.task_id == bindparam("old"))
    tags_of_old = old_tags.with_only_columns(bindparam("new", type_=Id), TASK_TAGS.c.name)
    connection.execute(insert(TASK_TAGS).from_select(["task_id", "name"], tags_of_old), copies)


def completion_changes(completed: bool | None, now: datetime) -> dict[str, Any]:
    """The columns an UPDATE that sets (None: toggles) completion writes. Each right-hand side
    reads the row as it was before."""
    new_state = not_(Task.completed) if completed is None else literal(completed)
    completed_at = case((new_state, literal(now, TASKS.c.completed_at.type)), else_=None)
    return {
        "completed": new_state,
        "completed_at": completed_at,
        "updated_at": now,
        "version": TASKS.c.version + 1,
    }


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
    statement = update(Task).where(col(Task.id) == task_id, col(Task.user_id) == owner.id)
    if completed is not None:
        statement = statement.where(col(Task.completed) != completed)
    if versions is not None:
        statement = statement.where(col(Task.version).in_(versions))
    statement = statement.values(completion_changes(completed, now))
    task = session.exec(statement.returning(Task)).scalars().first()
    if task is not None and task.completed:
        assert task.id is not None
        create_next_occurrences(session, task.user_id, [task.id], now)
    return task
