"""Second factor for revealing secrets: TOTP (pyotp), one seed per operator, sealed under --home.

A code is accepted once: the last used time step is remembered, so a code read over a shoulder cannot be
replayed within its 30 seconds.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pyotp

from provisioner.errors import InputError, OtpRefused
from provisioner.runtime import Runtime
from provisioner.secret import Secret

_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z")


def _dir(rt: Runtime) -> Path:
    d = rt.home / "otp"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _path(rt: Runtime, operator: str) -> Path:
    if not _NAME.match(operator):
        raise InputError(f"operator name {operator!r}: use letters, digits and . _ @ -")
    return _dir(rt) / f"{operator}.json"


def enroll(rt: Runtime, operator: str, issuer: str = "provisioner") -> str:
    """A new seed for `operator` (replacing any older one); returns the otpauth:// URI to scan."""
    seed = pyotp.random_base32()
    sealed = rt.keyring.seal(Secret(seed), f"otp|{operator}")
    path = _path(rt, operator)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"sealed": sealed.hex(), "last_step": 0}, f)
    os.replace(tmp, path)
    rt.store.audit(f"cli:{operator}", "otp.enrolled", None, "second factor enrolled for revealing secrets")
    return pyotp.TOTP(seed).provisioning_uri(name=operator, issuer_name=issuer)


def verify(rt: Runtime, operator: str, code: str) -> None:
    """Raises OtpRefused unless `code` is the operator's current (or previous) code, used for the first time."""
    path = _path(rt, operator)
    if not path.exists():
        raise OtpRefused(f"no second factor enrolled for {operator}: run `provisioner otp enroll` first")
    data = json.loads(path.read_text())
    seed = rt.keyring.open(bytes.fromhex(data["sealed"]), f"otp|{operator}")
    totp = pyotp.TOTP(seed.reveal())
    now = time.time()
    step = None
    for offset in (0, -1):  # this 30 s step or the one before (clock skew, typing)
        t = now + offset * totp.interval
        if totp.verify(code, for_time=t, valid_window=0):
            step = int(t // totp.interval)
            break
    if step is None or step <= data.get("last_step", 0):
        rt.store.audit(f"cli:{operator}", "otp.refused", None, "wrong or reused one-time code")
        raise OtpRefused("one-time code refused (wrong, expired or already used)")
    data["last_step"] = step
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
