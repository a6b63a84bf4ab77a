"""Firmware version strings as phones write them: "66.86.0.15", "7.6.2c", "7-5-5", "42.245.00.000.000".

Compared field by field: digits as numbers, letters as text after any number ("7.6.2" < "7.6.2c" < "7.6.3"),
'.', '-' and '_' all separate fields, and trailing zero fields do not count ("42.245" == "42.245.00.000.000").
"""

from __future__ import annotations

import functools
import re

from provisioner.firmware.model import FirmwareFacts

_FIELD = re.compile(r"\d+|[A-Za-z]+")
VERSION_TEXT = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}\Z")


@functools.lru_cache(maxsize=4096)
def key(version: str) -> tuple:
    out = [(0, int(f)) if f.isdigit() else (1, f.lower()) for f in _FIELD.findall(version)]
    while out and out[-1] == (0, 0):
        out.pop()
    return tuple(out)


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and key(a) == key(b)


def older(a: str, b: str) -> bool:
    """a is an older version than b."""
    return key(a) < key(b)


def from_file_name(facts: FirmwareFacts, name: str) -> str | None:
    """The version the vendor's naming puts in an image's file name, if it does."""
    rx = facts.file_version_rx
    m = rx.search(name) if rx else None
    if not m or not m.group("version"):
        return None
    v = m.group("version").replace("-", ".")
    return v if VERSION_TEXT.match(v) else None


def from_user_agent(facts: FirmwareFacts, ua: str | None, ua_firmware: str | None) -> str | None:
    """The comparable application version a User-Agent reports (None: it does not say, or it is not the
    application's, e.g. Polycom's updater)."""
    if not ua_firmware or not ua:
        return None
    if facts.ua_ignore_rx and facts.ua_ignore_rx.search(ua):
        return None
    rx = facts.ua_version_rx
    if rx is None:
        return ua_firmware
    m = rx.search(ua_firmware)
    return m.group("version") if m else None
