"""Bans shared by every `serve` process and replica of one store (migration i15a)."""

from sqlalchemy import Column, DateTime, Index, Integer, String, Table

from provisioner.store.schema import metadata

guard_bans = Table(
    "guard_bans", metadata,
    Column("key", String(64), primary_key=True),  # a source address, or "net:<prefix>" for a network
    Column("banned_until", DateTime(timezone=True), nullable=False),
    Column("level", Integer, nullable=False),  # bans of this key within the last day (escalation)
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_guard_bans_updated_at", "updated_at"),
)
