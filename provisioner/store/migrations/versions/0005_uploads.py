"""uploads: settings files devices send back (local overrides), sealed

Revision ID: 0005
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = ("uploads",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("mac", sa.String(12), sa.ForeignKey("devices.mac", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_ip", sa.String(45), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_uploads_mac_at", "uploads", ["mac", "at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_mac_at", "uploads")
    op.drop_table("uploads")
