"""Firmware records (issue 18, migration 0008_i18): the image library, each device's upgrade attempts, and the
rollouts paused by the helpdesk or halted on failures. Nothing secret in any of them (an image's URL token
only makes its path unguessable; devices are identified before anything is served)."""

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, String, Table, Text

from provisioner.store.schema import metadata

firmware_images = Table(
    "firmware_images", metadata,
    Column("id", String(16), primary_key=True),  # the first 16 hex digits of the sha256
    Column("sha256", String(64), nullable=False, unique=True),
    Column("vendor", String(32), nullable=False),
    Column("models", Text, nullable=False),  # JSON list of the profile's model names
    Column("version", String(64), nullable=False),
    Column("filename", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("token", String(43), nullable=False, unique=True),  # the unguessable part of /fw/<token>/<file>
    Column("approved", Boolean, nullable=False),  # latest-approved considers approved images only
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("added_by", String(128), nullable=False),
)

firmware_attempts = Table(
    "firmware_attempts", metadata,
    Column("mac", String(12), primary_key=True),
    Column("image_id", String(16), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("vendor", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("target", String(64), nullable=False),  # the image's version
    Column("from_version", String(64), nullable=True),  # what the device reported when it was first offered
    Column("offered_at", DateTime(timezone=True), nullable=False),
    Column("offer_ip", String(45), nullable=True),  # where the device fetched the offer from
    Column("fetch_started_at", DateTime(timezone=True), nullable=True),
    Column("fetched_at", DateTime(timezone=True), nullable=True),  # the whole image went out
    Column("reported_version", String(64), nullable=True),  # the last version the device reported after it
    Column("reported_at", DateTime(timezone=True), nullable=True),
    Column("result", String(16), nullable=False),  # offered | fetched | upgraded | failed
    Column("reason", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_firmware_attempts_site", "site", "vendor", "model"),
)

firmware_rollouts = Table(
    "firmware_rollouts", metadata,
    Column("site", String(64), primary_key=True),
    Column("scope", String(100), primary_key=True),  # "*", "<vendor>" or "<vendor>/<model>"
    Column("state", String(8), primary_key=True),  # paused (helpdesk) | halted (failure ratio passed)
    Column("target", String(64), primary_key=True),  # the version a halt is for; "*" for a pause
    Column("reason", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
