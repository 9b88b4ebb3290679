"""Requests on a user's list as a whole: complete or delete many tasks at once, count them, and
move one within the user's own order. Many tasks change in a few statements, never a loop of
per-task ones; the access log names how many (request.state.count), never which."""

from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import ColumnElement, ScalarSelect
from sqlmodel import col, delete, func, not_, select, update

from auth import OwnerDep
from db import Now, limit_statement_time
from models import Task, TaskCount
from routes.preconditions import IfMatch, check_version, expected_versions, task_etag
from routes.responses import JSON_BODY, OWNER_ERRORS, error_response
from routes.task_rules import (
    TASKS,
    completion_changes,
    count_fewer_tasks,
    create_next_occurrences,
    get_owned_task,
    lock_owner,
    new_position,
    task_filters,
    to_public,
)
from routes.tasks import FULL, WRITE
from schemas import (
    CompletionUpdate,
    IdPath,
    TaskCounts,
    TaskCountsQuery,
    TaskDeletion,
    TaskFilters,
    TaskMove,
    TaskPublic,
    TasksChanged,
    TasksDeleted,
)

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=OWNER_ERRORS)
FILTERS = "The list's filters select the tasks (status, priority, tag, q, due_before, due_after)"


@router.patch(
    "",
    response_model=TasksChanged,
    summary="Complete or reopen many tasks",
    description=f"{FILTERS}; with none, every task. Answers how many changed. A recurring task "
    "completed here gets its next occurrence, once. All or nothing.",
    responses=JSON_BODY
    | {409: error_response("The next occurrences would pass MAX_TASKS_PER_USER", FULL)},
)
def complete_tasks(
    owner: OwnerDep,
    filters: Annotated[TaskFilters, Query()],
    body: CompletionUpdate,
    now: Now,
    request: Request,
) -> TasksChanged:
    with owner.session() as (session, user):
        assert user.id is not None
        limit_statement_time(session)
        lock_owner(session, user, alone=True)
        change = update(Task).where(
            *task_filters(user, filters), col(Task.completed) != body.completed
        )
        change = change.values(completion_changes(body.completed, now))
        # Which of them may owe a next occurrence: only those go on to claim one.
        recurs = (TASKS.c.recurrence != "none") & ~TASKS.c.next_occurrence_created
        changed = session.connection().execute(change.returning(TASKS.c.id, recurs)).all()
        if body.completed:
            recurring = [task_id for task_id, may_recur in changed if may_recur]
            create_next_occurrences(session, user.id, recurring, now)
        session.commit()
    request.state.count = len(changed)
    return TasksChanged(changed=len(changed))


@router.delete(
    "",
    response_model=TasksDeleted,
    summary="Delete many tasks",
    description=f"{FILTERS}: status=completed clears the completed ones. Every task takes "
    "all=true and no filter; neither a filter nor all=true is a 422. Answers how many went.",
)
def delete_tasks(
    owner: OwnerDep, scope: Annotated[TaskDeletion, Query()], request: Request
) -> TasksDeleted:
    with owner.session() as (session, user):
        limit_statement_time(session)
        lock_owner(session, user, alone=True)
        # Their tags go with them: ON DELETE CASCADE.
        owned = delete(Task).where(*task_filters(user, scope))
        deleted = session.connection().execute(owned).rowcount
        count_fewer_tasks(session, user, deleted)
        session.commit()
    request.state.count = deleted
    return TasksDeleted(deleted=deleted)


@router.get(
    "/counts",
    response_model=TaskCounts,
    summary="Count tasks",
    description="Total, pending, completed, overdue (pending, due before now) and due today "
    "(pending, due on today's date in `tz`), optionally within the list's filters.",
)
def count_tasks(
    owner: OwnerDep, query: Annotated[TaskCountsQuery, Query()], now: Now
) -> TaskCounts:
    zone = ZoneInfo(query.tz)
    today = now.astimezone(zone).date()
    day_starts, next_day_starts = (
        datetime.combine(day, time(), zone).astimezone(UTC)
        for day in (today, today + timedelta(days=1))
    )
    pending, due = not_(Task.completed), col(Task.due_date)
    overdue, due_today = (pending, due < now), (pending, due >= day_starts, due < next_day_starts)
    with owner.session() as (session, user):
        limit_statement_time(session)
        filters = task_filters(user, query)
        if query.any_set():  # one pass over the tasks the filters select
            counts = select(
                func.count().label("total"),
                func.count().filter(pending).label("pending"),
                func.count().filter(*overdue).label("overdue"),
                func.count().filter(*due_today).label("due_today"),
            ).where(*filters)
        else:
            # The counter every create and delete keeps (once made), and ranges of
            # ix_task_user_completed_due over the pending tasks: the done ones are not read.
            def count(*more: ColumnElement[bool]) -> ScalarSelect[int]:
                return (
                    select(func.count()).select_from(Task).where(*filters, *more).scalar_subquery()
                )

            counter = select(TaskCount.tasks).where(col(TaskCount.user_id) == user.id)
            counts = select(
                func.coalesce(counter.scalar_subquery(), count()).label("total"),
                count(pending).label("pending"),
                count(*overdue).label("overdue"),
                count(*due_today).label("due_today"),
            )
        counted = session.connection().execute(counts).one()
    return TaskCounts(
        total=counted.total,
        pending=counted.pending,
        completed=counted.total - counted.pending,
        overdue=counted.overdue,
        due_today=counted.due_today,
    )


@router.put(
    "/{task_id}/position",
    response_model=TaskPublic,
    summary="Move a task in the user's order",
    description='{"before": id}, {"after": id}, or {"to": "top" | "bottom"}: its place in '
    "sort=position. A new task goes to the bottom.",
    responses=WRITE | JSON_BODY,
)
def move_task(
    task_id: IdPath,
    body: TaskMove,
    owner: OwnerDep,
    now: Now,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    versions = expected_versions(if_match)
    with owner.session() as (session, user):
        lock_owner(session, user, alone=True)
        task = get_owned_task(session, user, task_id)
        check_version(task, versions)
        place = new_position(session, task, body)
        moved = update(Task).where(col(Task.id) == task_id)
        moved = moved.values(position=place, updated_at=now, version=col(Task.version) + 1)
        task = session.exec(moved.returning(Task)).scalars().one()
        session.commit()
        response.headers["ETag"] = task_etag(task.version)
        return to_public(session, task)
