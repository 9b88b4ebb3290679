"""Request and response models. Input models name only what a client may set; unknown fields
are ignored."""

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

BCRYPT_MAX_BYTES = 72  # bcrypt refuses longer passwords
PASSWORD_MIN_BYTES = 8
MAX_ID = 2**63 - 1
EARLIEST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_DATE = datetime(9999, 1, 1, tzinfo=UTC)  # leaves room to advance by a month
TAG_MAX_LENGTH = 30
RECURRENCE_NEEDS_DUE_DATE = "A recurring task needs a due_date"
NO_SCOPE = "Name the tasks to delete: a filter such as status=completed, or all=true"
ALL_WITH_FILTERS = "all=true deletes every task: send it without filters"
EXAMPLE_TIME = "2026-03-01T12:00:00Z"
EXAMPLE_REFRESH_TOKEN = "Xq3V0m9rJ2kT8bYwL5nC1sD7fG4hP6aZ0eR2tU8iO3w"
EXAMPLE_USER = {"id": 1, "email": "alice@example.com", "name": "Alice", "created_at": EXAMPLE_TIME}

Priority = Literal["low", "medium", "high"]
Recurrence = Literal["none", "daily", "weekly", "monthly"]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
USER_ID_PATTERN = r"^[A-Za-z0-9._~-]{1,255}$"
UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        examples=["1"],
        description="Your numeric id, or, for a Better Auth account, its Better Auth user id",
    ),
]


def plain_text(value: str) -> str:
    # JSON can carry NUL and lone surrogates, which PostgreSQL and UTF-8 reject.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def utc_date_time(value: object) -> datetime:
    """ISO 8601 only (pydantic would take a number as Unix time); no offset means UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                "must be an ISO 8601 date-time, such as 2026-03-01T12:00:00Z"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO 8601 date-time string")
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST_DATE <= value < LATEST_DATE:
        raise ValueError("must be between the years 1900 and 9998")
    return value.astimezone(UTC)


def stored_tag(tag: str) -> str:
    # NFC: "é" typed either way is one tag. Lower-casing can lengthen a tag ("İ") past max_length.
    tag = unicodedata.normalize("NFC", tag)
    if len(tag) > TAG_MAX_LENGTH:
        raise ValueError(f"a tag can have at most {TAG_MAX_LENGTH} characters once lower-cased")
    return tag


def time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # a path, a folder, no such zone
        raise ValueError("must be an IANA time zone, such as Europe/Paris or UTC") from None
    return name


def password_within_bcrypt_limits(password: str) -> str:
    try:
        size = len(password.encode())
    except UnicodeEncodeError:
        raise ValueError("Password must be valid Unicode text") from None
    if "\x00" in password:  # bcrypt stops at a NUL: eight NULs would be the empty password
        raise ValueError("Password must not contain NUL characters")
    if not PASSWORD_MIN_BYTES <= size <= BCRYPT_MAX_BYTES:
        raise ValueError(
            f"Password must be {PASSWORD_MIN_BYTES} to {BCRYPT_MAX_BYTES} bytes in UTF-8 "
            f"(this one is {size}); bcrypt cannot use more than {BCRYPT_MAX_BYTES}"
        )
    return password


PlainText = AfterValidator(plain_text)  # after the length checks, on stripped text
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), PlainText
]
Description = Annotated[str, StringConstraints(max_length=1000), PlainText]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), PlainText
]
TagText = StringConstraints(
    strip_whitespace=True, to_lower=True, min_length=1, max_length=TAG_MAX_LENGTH
)
TagName = Annotated[str, TagText, AfterValidator(stored_tag), PlainText]
Tags = Annotated[
    list[TagName], Field(max_length=10), AfterValidator(lambda tags: list(dict.fromkeys(tags)))
]
UtcDateTime = Annotated[datetime, BeforeValidator(utc_date_time)]
NewPassword = Annotated[str, AfterValidator(password_within_bcrypt_limits)]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(time_zone)]


def example(**fields: Any) -> ConfigDict:
    """A model's "Try it out" example; no None: FastAPI drops it."""
    return ConfigDict(json_schema_extra={"examples": [fields]})


class HealthStatus(BaseModel):
    model_config = example(status="ok")
    status: Literal["ok"] = "ok"


class UserCreate(BaseModel):
    model_config = example(
        email="alice@example.com", password="correct horse battery", name="Alice"
    )
    email: EmailStr
    password: NewPassword
    name: Name | None = None


class UserLogin(BaseModel):
    model_config = example(email="alice@example.com", password="correct horse battery")
    email: EmailStr
    password: str  # any length: too long is a failed login


class PasswordChange(BaseModel):
    model_config = example(
        current_password="correct horse battery", new_password="a brand new passphrase"
    )
    current_password: str  # any length, as at login
    new_password: NewPassword


class PasswordConfirmation(BaseModel):
    model_config = example(password="correct horse battery")
    password: str


class UserPublic(BaseModel):
    model_config = example(**EXAMPLE_USER) | ConfigDict(from_attributes=True)
    id: int
    email: str | None  # None for a Better Auth account
    name: str | None
    created_at: datetime
    better_auth_id: str | None = None  # its tokens' sub


class TokenResponse(BaseModel):
    model_config = example(
        access_token="eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        ".eyJzdWIiOiIxIiwiaWF0IjoxNzcyMzY2NDAwLCJleHAiOjE3NzIzNzAwMDB9.c2lnbmF0dXJl",
        token_type="bearer",
        expires_in=3600,
        refresh_token=EXAMPLE_REFRESH_TOKEN,
        refresh_expires_in=2592000,
        user=EXAMPLE_USER,
    )
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int  # seconds
    refresh_token: str
    refresh_expires_in: int  # seconds
    user: UserPublic


class RefreshRequest(BaseModel):
    model_config = example(refresh_token=EXAMPLE_REFRESH_TOKEN)
    refresh_token: str = Field(min_length=1, max_length=256)  # any other is simply unknown


class TaskCreate(BaseModel):
    model_config = example(
        title="Pay rent",
        description="Transfer to the landlord",
        priority="high",
        due_date="2026-04-01T09:00:00Z",
        tags=["home", "money"],
        recurrence="monthly",
    )
    title: Title
    description: Description | None = None
    priority: Priority = "medium"
    due_date: UtcDateTime | None = None
    tags: Tags = []
    recurrence: Recurrence = "none"
    completed: StrictBool = False

    @model_validator(mode="after")
    def recurrence_needs_due_date(self) -> "TaskCreate":
        if self.recurrence != "none" and self.due_date is None:
            raise ValueError(RECURRENCE_NEEDS_DUE_DATE)
        return self


class TaskUpdate(BaseModel):
    """Every field optional: PUT and PATCH change only the fields sent."""

    model_config = example(
        title="Pay rent and bills", priority="medium", tags=["home", "money", "bills"]
    )
    # SkipJsonSchema: None means "absent", so the schema offers no null and reject_null refuses
    # one. A null description or due_date clears it.
    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    completed: StrictBool | SkipJsonSchema[None] = None
    priority: Priority | SkipJsonSchema[None] = None
    due_date: UtcDateTime | None = None
    tags: Tags | SkipJsonSchema[None] = None
    recurrence: Recurrence | SkipJsonSchema[None] = None

    @field_validator("title", "completed", "priority", "tags", "recurrence")
    @classmethod
    def reject_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


class CompletionUpdate(BaseModel):
    model_config = example(completed=True)
    completed: StrictBool


class TaskPublic(BaseModel):
    model_config = example(
        id=42,
        user_id=1,
        title="Pay rent",
        description="Transfer to the landlord",
        completed=True,
        priority="high",
        due_date="2026-04-01T09:00:00Z",
        tags=["home", "money"],
        recurrence="monthly",
        created_at=EXAMPLE_TIME,
        updated_at="2026-03-30T18:15:00Z",
        completed_at="2026-03-30T18:15:00Z",
    )
    id: int
    user_id: int
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_date: datetime | None
    tags: list[str]
    recurrence: Recurrence
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class TaskFilters(BaseModel):
    """The list's filters: what a list, the counts and the requests on many tasks select."""

    status: Literal["all", "pending", "completed"] = "all"
    priority: Priority | None = None
    tag: TagName | None = None
    q: Annotated[str, StringConstraints(max_length=200), PlainText] | None = None
    due_before: UtcDateTime | None = None
    due_after: UtcDateTime | None = None

    def any_set(self) -> bool:
        """Whether any filter is set: with none, every task is selected."""
        fields = TaskFilters.model_fields.items()
        return any(getattr(self, name) != field.default for name, field in fields)


class TaskListQuery(TaskFilters):
    sort: Literal["created", "updated", "title", "due_date", "priority", "position"] = "created"
    order: Literal["asc", "desc"] | None = None  # absent: the natural order of each sort
    limit: int = Field(default=50, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=MAX_ID)


class TaskCountsQuery(TaskFilters):
    tz: TimeZone = Field(default="UTC", description="The time zone of due_today's today")


class TaskDeletion(TaskFilters):
    all: bool = Field(default=False, description="true, and no filter: delete every task")

    @model_validator(mode="after")
    def scoped(self) -> "TaskDeletion":
        if self.any_set() == self.all:  # no scope at all, or two
            raise ValueError(ALL_WITH_FILTERS if self.all else NO_SCOPE)
        return self


class TaskCounts(BaseModel):
    model_config = example(total=12, pending=5, completed=7, overdue=1, due_today=2)
    total: int
    pending: int
    completed: int
    overdue: int  # pending, due before now
    due_today: int  # pending, due between the day's midnights in tz


class TasksChanged(BaseModel):
    model_config = example(changed=3)
    changed: int


class TasksDeleted(BaseModel):
    model_config = example(deleted=7)
    deleted: int


class TaskMove(BaseModel):
    """Exactly one of: before a task, after a task, or to the top or the bottom."""

    model_config = example(to="top")
    before: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    after: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    to: Literal["top", "bottom"] | None = None

    @model_validator(mode="after")
    def one_place(self) -> "TaskMove":
        if len(self.model_dump(exclude_none=True)) != 1:
            raise ValueError('Name one place: {"before": id}, {"after": id} or {"to": "top"}')
        return self
