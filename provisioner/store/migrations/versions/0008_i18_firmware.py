"""firmware: image library, upgrade attempts, paused/halted rollouts (issue 18)

Revision ID: i18a
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "i18a"
down_revision = "0001"
branch_labels = ("i18",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "firmware_images",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("vendor", sa.String(32), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("token", sa.String(43), nullable=False, unique=True),
        sa.Column("approved", sa.Boolean, nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "firmware_attempts",
        sa.Column("mac", sa.String(12), primary_key=True),
        sa.Column("image_id", sa.String(16), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("from_version", sa.String(64), nullable=True),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offer_ip", sa.String(45), nullable=True),
        sa.Column("fetch_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_version", sa.String(64), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_firmware_attempts_site", "firmware_attempts", ["site", "vendor", "model"])
    op.create_table(
        "firmware_rollouts",
        sa.Column("site", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("state", sa.String(8), primary_key=True),
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("firmware_rollouts")
    op.drop_index("ix_firmware_attempts_site", "firmware_attempts")
    op.drop_table("firmware_attempts")
    op.drop_table("firmware_images")
