"""Better Auth accounts: a user is either local (email and password hash) or a Better Auth
user (issuer and Better Auth id, unique together), never both.

email and password_hash become nullable; the check constraint keeps them required for
every local account, and email stays unique (NULLs never collide in a unique constraint).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_better_auth"
down_revision = "0003_task_count"

LOCAL_OR_BETTER_AUTH = (
    "(better_auth_id IS NULL AND better_auth_issuer IS NULL"
    " AND email IS NOT NULL AND password_hash IS NOT NULL)"
    " OR (better_auth_id IS NOT NULL AND better_auth_issuer IS NOT NULL"
    " AND email IS NULL AND password_hash IS NULL)"
)


def upgrade() -> None:
    # On SQLite the batch rebuilds the table, which would drop AUTOINCREMENT without this.
    with op.batch_alter_table("user", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("email", existing_type=sa.String(length=320), nullable=True)
        batch.alter_column("password_hash", existing_type=sa.String(), nullable=True)
        batch.add_column(sa.Column("better_auth_issuer", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("better_auth_id", sa.String(length=255), nullable=True))
        batch.create_unique_constraint(
            "uq_user_better_auth", ["better_auth_issuer", "better_auth_id"]
        )
        batch.create_check_constraint("user_is_local_or_better_auth", LOCAL_OR_BETTER_AUTH)


def downgrade() -> None:
    # The older schema has no place for a Better Auth account (no email, no password), so
    # those accounts go, with their tasks, tags and task counts. Explicitly: foreign keys
    # are off on SQLite while migrating, so ON DELETE CASCADE would not run.
    better_auth_users = 'SELECT id FROM "user" WHERE better_auth_id IS NOT NULL'
    better_auth_tasks = f"SELECT id FROM task WHERE user_id IN ({better_auth_users})"
    op.execute(f"DELETE FROM tasktag WHERE task_id IN ({better_auth_tasks})")
    op.execute(f"DELETE FROM task WHERE user_id IN ({better_auth_users})")
    op.execute(f"DELETE FROM taskcount WHERE user_id IN ({better_auth_users})")
    op.execute('DELETE FROM "user" WHERE better_auth_id IS NOT NULL')
    with op.batch_alter_table("user", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("user_is_local_or_better_auth", type_="check")
        batch.drop_constraint("uq_user_better_auth", type_="unique")
        batch.drop_column("better_auth_id")
        batch.drop_column("better_auth_issuer")
        batch.alter_column("password_hash", existing_type=sa.String(), nullable=False)
        batch.alter_column("email", existing_type=sa.String(length=320), nullable=False)
