"""Helpdesk API tables (migration 0004): bearer tokens (hashed) and jobs (idempotency key, status, lease).

Neither table holds a secret of a device; a token row holds only the SHA-256 of the token.
"""

from sqlalchemy import Column, DateTime, ForeignKey, Index, String, Table, Text, UniqueConstraint

from provisioner.store.schema import BigId, metadata

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(60), nullable=False),  # audit actor "api:<name>"
    Column("role", String(16), nullable=False),  # viewer | helpdesk | admin
    Column("token_hash", String(64), nullable=False),  # SHA-256 hex of the token
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
)

api_jobs = Table(
    "api_jobs", metadata,
    Column("id", String(32), primary_key=True),  # random, unguessable
    Column("token_id", BigId, ForeignKey("api_tokens.id"), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("request_hash", String(64), nullable=False),  # SHA-256 of the normalized request body
    Column("action", String(16), nullable=False),  # reprovision | reset | unlock
    Column("mac", String(12), nullable=False),
    Column("params", Text, nullable=False),  # JSON: reason, wait_seconds
    Column("actor", String(64), nullable=False),  # api:<token name>
    Column("status", String(12), nullable=False),  # queued | running | done | failed
    Column("result", Text),  # JSON, allow-listed fields only
    Column("error", String(512)),
    Column("worker", String(96)),
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    UniqueConstraint("token_id", "idempotency_key", name="uq_api_jobs_token_key"),
    Index("ix_api_jobs_status_created", "status", "created_at"),
    Index("ix_api_jobs_mac_created", "mac", "created_at"),
)
