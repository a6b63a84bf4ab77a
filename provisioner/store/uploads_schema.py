"""Files devices upload back (Yealink <mac>-local.cfg, Polycom <mac>-phone.cfg): settings changed on the
phone itself. Sealed like credentials, since a phone's local file can hold passwords."""

from sqlalchemy import Column, DateTime, ForeignKey, Index, LargeBinary, String, Table

from provisioner.store.schema import BigId, metadata

uploads = Table(
    "uploads", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("mac", String(12), ForeignKey("devices.mac", ondelete="CASCADE"), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source_ip", String(45), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # AES-GCM, AAD "mac|upload:<filename>|<sha256>"
    Index("ix_uploads_mac_at", "mac", "at"),
)
