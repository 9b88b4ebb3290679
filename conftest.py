"""Test setup: every test gets a fresh database, fast bcrypt, a random JWT secret, and a
clock it can set. Settings are read when the app is imported, so they are set first."""

import os
import secrets
import tempfile
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

os.environ["BCRYPT_ROUNDS"] = "4"
os.environ["JWT_SECRET"] = secrets.token_urlsafe(48)
os.environ.pop("CORS_ORIGINS", None)
os.environ.pop("ACCESS_TOKEN_EXPIRE_MINUTES", None)
# The app's own engine only serves start-up here: each test overrides the session.
os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='todo-tests-')}/startup.db"

import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlmodel import Session  # noqa: E402

import db  # noqa: E402
from main import app  # noqa: E402
from routes.tasks import request_time  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture
def engine(tmp_path):
    """A fresh SQLite file per test: a real file, so WAL and locking behave as in production."""
    test_engine = db.make_engine(f"sqlite:///{tmp_path / 'test.db'}")
    db.create_tables(test_engine)
    yield test_engine
    test_engine.dispose()


@pytest.fixture
def client(engine):
    def session_on_test_engine():
        with Session(engine, expire_on_commit=False) as session:
            yield session

    app.dependency_overrides[db.get_session] = session_on_test_engine
    with TestClient(app) as test_client:
        yield test_client
    app.dependency_overrides.clear()


class Clock:
    """Stands in for the request clock, so tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(client):
    fake = Clock()

    async def fake_request_time() -> datetime:
        return fake.now

    app.dependency_overrides[request_time] = fake_request_time
    return fake


class Account(NamedTuple):
    id: int
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def tasks_url(self) -> str:
        return f"/api/{self.id}/tasks"


def sign_up(client: TestClient, email: str, password: str = PASSWORD) -> Account:
    response = client.post("/api/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(body["user"]["id"], body["user"]["email"], body["access_token"])


@pytest.fixture
def alice(client) -> Account:
    return sign_up(client, "alice@example.com")


@pytest.fixture
def bob(client) -> Account:
    return sign_up(client, "bob@example.com")
