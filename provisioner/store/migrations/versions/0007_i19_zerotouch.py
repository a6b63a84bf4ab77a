"""zero-touch: DHCP exports, redirect registrations, SIP PnP responder heartbeats (issue 19)

Revision ID: i19a
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "i19a"
down_revision = "0001"
branch_labels = ("i19",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "zt_dhcp_exports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("written_to", sa.String(4096), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index("ix_zt_dhcp_exports_site", "zt_dhcp_exports", ["site"])
    op.create_table(
        "zt_redirects",
        sa.Column("mac", sa.String(12), primary_key=True),
        sa.Column("service", sa.String(32), primary_key=True),
        sa.Column("site", sa.String(64), nullable=True),
        sa.Column("url", sa.String(1024), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "zt_pnp_responders",
        sa.Column("instance", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("interfaces", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("zt_pnp_responders")
    op.drop_table("zt_redirects")
    op.drop_index("ix_zt_dhcp_exports_site", "zt_dhcp_exports")
    op.drop_table("zt_dhcp_exports")
