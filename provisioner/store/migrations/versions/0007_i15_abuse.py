"""abuse resistance (issue 15): enrolment bound to an address, shared bans, a keyed audit chain

- devices.enrol_ip: a window reopened by a remote reset enrols only from this address (NULL: the site's
  networks);
- guard_bans: bans decided by one `serve` process, seen by every process and replica within a second;
- audit_head.keyed_from / audit_head.seal: entries from `keyed_from` on are HMAC-SHA256 with a key from
  the keyring (earlier ones, written before this revision, stay SHA-256 and are covered by the first
  keyed entry); the seal is an HMAC over the head, so cutting entries off the end needs the key too.

Revision ID: i15a
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "i15a"
down_revision = "0001"
branch_labels = ("i15",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("enrol_ip", sa.String(45)))
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("keyed_from", sa.BigInteger))
        batch.add_column(sa.Column("seal", sa.String(64)))
    op.create_table(
        "guard_bans",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("banned_until", TS, nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_guard_bans_updated_at", "guard_bans", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_guard_bans_updated_at", "guard_bans")
    op.drop_table("guard_bans")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("seal")
        batch.drop_column("keyed_from")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("enrol_ip")
