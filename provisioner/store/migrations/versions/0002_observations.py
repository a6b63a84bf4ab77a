"""observations: what discovery (mDNS, SNMP, SIP PnP, SSDP, passive) saw, for adopt

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("observations",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("found_by", sa.String(16), nullable=False),
        sa.Column("mac", sa.String(12)),
        sa.Column("ip", sa.String(45)),
        sa.Column("vendor", sa.String(32)),
        sa.Column("model", sa.String(64)),
        sa.Column("firmware", sa.String(64)),
        sa.Column("kind", sa.String(16)),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("factory_default", sa.String(255)),
        sa.Column("details", sa.Text, nullable=False),
    )
    op.create_index("ix_observations_mac_at", "observations", ["mac", "at"])
    op.create_index("ix_observations_at", "observations", ["at"])


def downgrade() -> None:
    op.drop_index("ix_observations_at", "observations")
    op.drop_index("ix_observations_mac_at", "observations")
    op.drop_table("observations")
