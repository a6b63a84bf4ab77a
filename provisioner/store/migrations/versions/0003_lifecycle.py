"""lifecycle: registrar write-ahead record (registrar_sync) and operators' TOTP seeds (operator_otp)

Revision ID: 0003
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("lifecycle",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registrar_sync",
        sa.Column("mac", sa.String(12), sa.ForeignKey("devices.mac", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("accounts", sa.Text, nullable=False),
        sa.Column("held", sa.Integer),
        sa.Column("intent", sa.String(8)),
        sa.Column("intent_generation", sa.Integer),
        sa.Column("intent_owner", sa.String(128)),
        sa.Column("intent_at", TS),
        sa.Column("lease_generation", sa.Integer),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_at", TS),
        sa.Column("served_before", sa.String(64)),
        sa.Column("error", sa.String(255)),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "operator_otp",
        sa.Column("operator", sa.String(64), primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("last_step", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("operator_otp")
    op.drop_table("registrar_sync")
