"""Zero-touch records (issue 19, migration 0007_i19): what was exported to DHCP servers, what is registered at
vendor redirection services, and which SIP PnP responders are running. Nothing secret in any of them."""

from sqlalchemy import Column, DateTime, Integer, String, Table, Text

from provisioner.store.schema import BigId, metadata

zt_dhcp_exports = Table(
    "zt_dhcp_exports", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("site", String(64), nullable=False, index=True),
    Column("format", String(16), nullable=False),
    Column("url", String(1024), nullable=False),  # the provisioning URL the export hands out
    Column("sha256", String(64), nullable=False),  # of the exported text
    Column("written_to", String(4096), nullable=True),  # the file, or null for stdout
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
)

zt_redirects = Table(
    "zt_redirects", metadata,
    Column("mac", String(12), primary_key=True),
    Column("service", String(32), primary_key=True),
    Column("site", String(64), nullable=True),
    Column("url", String(1024), nullable=True),  # the URL registered (null once removed)
    # registered | removed | remove-failed (decommission could not reach the service: `redirect remove` retries)
    Column("state", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

zt_pnp_responders = Table(
    "zt_pnp_responders", metadata,
    Column("instance", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("interfaces", Text, nullable=False),  # JSON list of "address/prefix" it listens on
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),  # heartbeat
)
