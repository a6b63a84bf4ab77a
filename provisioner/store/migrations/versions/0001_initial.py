"""initial schema: devices, credentials, fetch events, audit log

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("mac", sa.String(12), primary_key=True),
        sa.Column("vendor", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("enrol_opened_at", TS),
        sa.Column("enrol_expires_at", TS),
        sa.Column("enrolled_at", TS),
        sa.Column("enrolled_from", sa.String(45)),
        sa.Column("last_seen", TS),
        sa.Column("last_ip", sa.String(45)),
        sa.Column("last_ua", sa.String(255)),
        sa.Column("served_hash", sa.String(64)),
        sa.Column("desired_hash", sa.String(64)),
        sa.Column("pending_hash", sa.String(64)),
        sa.Column("lock_reason", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "credentials",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("mac", sa.String(12), sa.ForeignKey("devices.mac", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retired_at", TS),
        sa.UniqueConstraint("mac", "name", "generation", name="uq_credentials_mac_name_generation"),
    )
    op.create_index("ix_credentials_mac_status", "credentials", ["mac", "status"])
    op.create_table(
        "fetch_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("mac", sa.String(12)),
        sa.Column("source_ip", sa.String(45), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64)),
        sa.Column("user_agent", sa.String(255)),
        sa.Column("reason", sa.String(255), nullable=False),
    )
    op.create_index("ix_fetch_events_mac_at", "fetch_events", ["mac", "at"])
    op.create_index("ix_fetch_events_at", "fetch_events", ["at"])
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64)),
        sa.Column("why", sa.String(512)),
        sa.Column("details", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(sa.table("audit_head", sa.column("id"), sa.column("last_id"), sa.column("last_hash")),
                   [{"id": 1, "last_id": 0, "last_hash": "0" * 64}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_log")
    op.drop_index("ix_fetch_events_at", "fetch_events")
    op.drop_index("ix_fetch_events_mac_at", "fetch_events")
    op.drop_table("fetch_events")
    op.drop_index("ix_credentials_mac_status", "credentials")
    op.drop_table("credentials")
    op.drop_table("devices")
