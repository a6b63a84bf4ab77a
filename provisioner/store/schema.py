"""Tables (SQLAlchemy Core). Portable types only: the same schema runs on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint)

metadata = MetaData()

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements)
BigId = BigInteger().with_variant(Integer(), "sqlite")

devices = Table(
    "devices", metadata,
    Column("mac", String(12), primary_key=True),
    Column("vendor", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("site", String(64), nullable=False),
    # discovered | enrolling | provisioned | rotating | reset-pending | locked | decommissioned
    Column("state", String(24), nullable=False),
    Column("generation", Integer, nullable=False, default=1),  # active credential generation
    Column("enrol_opened_at", DateTime(timezone=True)),
    Column("enrol_expires_at", DateTime(timezone=True)),
    Column("enrolled_at", DateTime(timezone=True)),
    Column("enrolled_from", String(45)),
    Column("last_seen", DateTime(timezone=True)),
    Column("last_ip", String(45)),
    Column("last_ua", String(255)),
    Column("served_hash", String(64)),
    Column("desired_hash", String(64)),
    Column("pending_hash", String(64)),  # desired hash of the pending generation while rotating
    Column("lock_reason", String(255)),
    Column("inputs_hash", String(64)),  # fingerprint of what desired_hash was computed from (0006)
    Column("enrol_ip", String(45)),  # the open window enrols from this address only; NULL: the site (i15a)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

credentials = Table(
    "credentials", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("mac", String(12), ForeignKey("devices.mac", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),  # provisioning | admin | user | sip:<extension>
    Column("generation", Integer, nullable=False),
    Column("status", String(12), nullable=False),  # active | pending | retired | discarded
    Column("sealed", LargeBinary, nullable=False),  # AES-GCM nonce + ciphertext, AAD mac|name|generation
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
    UniqueConstraint("mac", "name", "generation", name="uq_credentials_mac_name_generation"),
    Index("ix_credentials_mac_status", "mac", "status"),
)

fetch_events = Table(
    "fetch_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("mac", String(12)),  # null when the request named no device we know
    Column("source_ip", String(45), nullable=False),
    Column("transport", String(8), nullable=False),  # https | tftp
    Column("filename", String(255), nullable=False),
    Column("status", Integer, nullable=False),
    Column("hash", String(64)),
    Column("user_agent", String(255)),
    Column("reason", String(255), nullable=False),
    # the refusal counted against the source (serve/guard.py); null for rows written before this column
    Column("counted", Boolean),
    Index("ix_fetch_events_mac_at", "mac", "at"),
    Index("ix_fetch_events_at", "at"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(64)),
    Column("why", String(512)),
    Column("details", Text),  # JSON; never a secret
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

# One row: the head of the audit hash chain; locked while appending so replicas append in turn.
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("keyed_from", BigInteger),  # first entry whose hash is keyed (HMAC), i15a
    Column("seal", String(64)),  # HMAC over (last_id, last_hash, keyed_from): the head cannot be rolled back
)
