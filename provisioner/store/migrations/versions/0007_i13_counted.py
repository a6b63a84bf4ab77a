"""fetch_events.counted: whether a refusal counted against its source (a phone's normal boot never does)

Revision ID: i13a
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "i13a"
down_revision = "0001"
branch_labels = ("i13",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fetch_events") as batch:
        batch.add_column(sa.Column("counted", sa.Boolean()))


def downgrade() -> None:
    with op.batch_alter_table("fetch_events") as batch:
        batch.drop_column("counted")
