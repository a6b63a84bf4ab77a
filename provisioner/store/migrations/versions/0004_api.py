"""helpdesk API: bearer tokens (hashed) and jobs (idempotency key, status, lease)

Revision ID: 0004
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = ("api",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("last_used_at", TS),
        sa.Column("revoked_at", TS),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_table(
        "api_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_id", BigId, sa.ForeignKey("api_tokens.id"), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("mac", sa.String(12), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.String(512)),
        sa.Column("worker", sa.String(96)),
        sa.Column("lease_until", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint("token_id", "idempotency_key", name="uq_api_jobs_token_key"),
    )
    op.create_index("ix_api_jobs_status_created", "api_jobs", ["status", "created_at"])
    op.create_index("ix_api_jobs_mac_created", "api_jobs", ["mac", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_api_jobs_mac_created", "api_jobs")
    op.drop_index("ix_api_jobs_status_created", "api_jobs")
    op.drop_table("api_jobs")
    op.drop_table("api_tokens")
