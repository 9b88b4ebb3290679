"""The framework ceiling: the fastest this stack can answer a list of 20 tasks.

One plain `def` endpoint, no auth and no database, returning 20 tasks through the same
response model as GET /api/{user_id}/tasks. bench/run.py serves it with the same uvicorn
settings as the real app, so the ratio between the two is the price of our own code.
"""

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI

# schemas.py lives at the repository root, so it is importable only once the root is on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from schemas import TaskPublic  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
TASKS = [
    {
        "id": number,
        "user_id": 1,
        "title": f"Task {number}",
        "description": f"The description of task {number}",
        "completed": False,
        "priority": "medium",
        "due_date": None,
        "tags": ["bench"],
        "recurrence": "none",
        "created_at": START + timedelta(minutes=number),
        "updated_at": START + timedelta(minutes=number),
        "completed_at": None,
    }
    for number in range(1, 21)
]

app = FastAPI()


@app.get("/tasks", response_model=list[TaskPublic])
def list_tasks() -> list[dict]:
    return TASKS
