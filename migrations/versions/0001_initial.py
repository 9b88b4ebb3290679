"""The schema of the first release: users, tasks and their tags, revoked tokens, rate-limit events.

A database made by that release, before migrations existed, has exactly these tables and no
alembic_version table: migrate.migrate recognises it and stamps it with this revision.

Plain SQLAlchemy types, so that the DDL stays what it is when the app's types change:
String renders as SQLModel's AutoString does, and DateTime(timezone=True) is the column
under SQLModel's UTCDateTime (DATETIME on SQLite, timestamptz on PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None

# 64-bit ids: BIGINT/BIGSERIAL on PostgreSQL; SQLite's INTEGER is already 64-bit, and only
# INTEGER PRIMARY KEY can be AUTOINCREMENT (models.Id).
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ratelimitevent",
        sa.Column("id", Id, nullable=False),
        sa.Column("bucket", sa.String(length=64), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ratelimitevent_bucket_expires", "ratelimitevent", ["bucket", "expires_at"])
    op.create_index("ix_ratelimitevent_expires_at", "ratelimitevent", ["expires_at"])

    op.create_table(
        "revokedtoken",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_revokedtoken_expires_at", "revokedtoken", ["expires_at"])

    op.create_table(
        "user",
        sa.Column("id", Id, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("token_generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "task",
        sa.Column("id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.String(length=6), nullable=False),
        sa.Column("due_date", Timestamp, nullable=True),
        sa.Column("recurrence", sa.String(length=7), nullable=False),
        sa.Column("next_occurrence_created", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint(
            "recurrence = 'none' OR due_date IS NOT NULL", name="recurring_task_has_due_date"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_user_created", "task", ["user_id", "created_at", "id"])

    op.create_table(
        "tasktag",
        sa.Column("task_id", Id, nullable=False),
        sa.Column("name", sa.String(length=30), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "name"),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("tasktag")
    op.drop_index("ix_task_user_created", table_name="task")
    op.drop_table("task")
    op.drop_table("user")
    op.drop_index("ix_revokedtoken_expires_at", table_name="revokedtoken")
    op.drop_table("revokedtoken")
    op.drop_index("ix_ratelimitevent_expires_at", table_name="ratelimitevent")
    op.drop_index("ix_ratelimitevent_bucket_expires", table_name="ratelimitevent")
    op.drop_table("ratelimitevent")
