"""Second factor for revealing secrets: TOTP (pyotp), one seed per operator, sealed in the store.

The seed is sealed with the master key (AES-GCM, AAD "otp|<operator>") in the operator_otp table, so
replicas on one PostgreSQL share it. A code is accepted once: the last used time step is kept and moved
forward with a conditional UPDATE, so a code read over a shoulder cannot be replayed within its
30 seconds, not even on another replica.
"""

from __future__ import annotations

import json
import re
import time

import pyotp
import sqlalchemy as sa

from provisioner.errors import InputError, OtpRefused
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from provisioner.store import utcnow
from provisioner.store.lifecycle_schema import operator_otp

_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z")


def _check_name(operator: str) -> str:
    if not _NAME.match(operator or ""):
        raise InputError(f"operator name {operator!r}: use letters, digits and . _ @ -")
    return operator


def enroll(rt: Runtime, operator: str, issuer: str = "provisioner", actor: str | None = None) -> str:
    """A new seed for `operator` (replacing any older one); returns the otpauth:// URI to scan."""
    _check_name(operator)
    seed = pyotp.random_base32()
    sealed = rt.keyring.seal(Secret(seed), f"otp|{operator}")
    store = rt.store
    with store.write() as c:
        c.execute(operator_otp.delete().where(operator_otp.c.operator == operator))
        c.execute(operator_otp.insert().values(operator=operator, sealed=sealed, last_step=0, created_at=utcnow()))
        store.append_audit(c, actor or f"cli:{operator}", "otp.enrolled", None,
                           "second factor enrolled for revealing secrets", {"operator": operator})
    return pyotp.TOTP(seed).provisioning_uri(name=operator, issuer_name=issuer)


def _legacy_import(rt: Runtime, operator: str) -> None:
    """A seed enrolled by an earlier version lived in <home>/otp/<operator>.json: move it into the store."""
    path = rt.home / "otp" / f"{operator}.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    sealed = bytes.fromhex(data["sealed"])
    rt.keyring.open(sealed, f"otp|{operator}")  # refuses a file sealed with another key
    with rt.store.write() as c:
        if c.execute(sa.select(operator_otp.c.operator).where(operator_otp.c.operator == operator)).first() is None:
            c.execute(operator_otp.insert().values(operator=operator, sealed=sealed,
                                                   last_step=int(data.get("last_step", 0)), created_at=utcnow()))
    path.unlink()


def verify(rt: Runtime, operator: str, code: str) -> None:
    """Raises OtpRefused unless `code` is the operator's current (or previous) code, used for the first time."""
    _check_name(operator)
    store = rt.store
    _legacy_import(rt, operator)
    with store.engine.connect() as c:
        row = c.execute(sa.select(operator_otp).where(operator_otp.c.operator == operator)).first()
    if row is None:
        store.audit(f"cli:{operator}", "otp.refused", None, "no second factor enrolled", {"operator": operator})
        raise OtpRefused(f"no second factor enrolled for {operator}: run `provisioner otp enroll` first")
    totp = pyotp.TOTP(rt.keyring.open(row.sealed, f"otp|{operator}").reveal())
    now = time.time()
    step = None
    code = (code or "").strip()
    for offset in (0, -1):  # this 30 s step or the one before (clock skew, typing)
        t = now + offset * totp.interval
        if totp.verify(code, for_time=t, valid_window=0):
            step = int(t // totp.interval)
            break
    accepted = False
    if step is not None:
        with store.write() as c:
            accepted = c.execute(operator_otp.update().where(operator_otp.c.operator == operator,
                                                             operator_otp.c.last_step < step)
                                 .values(last_step=step)).rowcount == 1
    if not accepted:
        store.audit(f"cli:{operator}", "otp.refused", None, "wrong or reused one-time code", {"operator": operator})
        raise OtpRefused("one-time code refused (wrong, expired or already used)")
