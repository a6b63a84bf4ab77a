"""Lifecycle tables (migration 0003): what each registrar holds, and the operators' second factors.

registrar_sync is the write-ahead record that keeps registrar, store and served config in agreement:
`held` is the credential generation whose SIP passwords the registrar holds after the last completed write;
`intent` is set before a write starts and cleared after it ended, so a write cut short (a killed process)
is known to have left the registrar in an unknown state; `lease_*` marks a switch to a pending generation
that a live process is serving right now (prepare_switch), which no other process may undo.
No row holds a secret (the accounts column names SIP users, never their passwords).
"""

from sqlalchemy import Column, DateTime, ForeignKey, Integer, LargeBinary, String, Table, Text

from provisioner.store.schema import metadata

registrar_sync = Table(
    "registrar_sync", metadata,
    Column("mac", String(12), ForeignKey("devices.mac", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(16), nullable=False),  # none | kamailio | asterisk | fritzbox, when last written
    Column("target", String(255), nullable=False),  # which registrar (kind, host, domain, database/file)
    Column("accounts", Text, nullable=False),  # JSON list of the SIP user names written there
    Column("held", Integer),  # generation the registrar holds; NULL: none (never written, or removed)
    Column("intent", String(8)),  # set | remove while a write is in flight
    Column("intent_generation", Integer),
    Column("intent_owner", String(128)),  # host:pid:start of the writing process
    Column("intent_at", DateTime(timezone=True)),
    Column("lease_generation", Integer),  # a switch to this pending generation is being served
    Column("lease_owner", String(128)),
    Column("lease_at", DateTime(timezone=True)),
    Column("served_before", String(64)),  # devices.served_hash when that switch began
    Column("error", String(255)),  # the last write's failure, for the operator (never a secret)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

operator_otp = Table(
    "operator_otp", metadata,
    Column("operator", String(64), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),  # AES-GCM of the TOTP seed, AAD "otp|<operator>"
    Column("last_step", Integer, nullable=False, default=0),  # a code is accepted once
    Column("created_at", DateTime(timezone=True), nullable=False),
)
