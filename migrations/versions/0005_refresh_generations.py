"""Refresh-token generations: each refresh token's depth in its family's chain, so that a
pair issued in the grace period dies once the family has moved on without it.

Existing tokens start at generation 0: a family's unused token rotates as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_refresh_generations"
down_revision = "0004_better_auth"


def upgrade() -> None:
    with op.batch_alter_table("refreshtoken") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("refreshtoken") as batch:
        batch.drop_column("generation")
