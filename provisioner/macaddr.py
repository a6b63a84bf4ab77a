"""MAC addresses in one canonical form: 12 lower-case hex digits, no separators."""

from __future__ import annotations

import re

_SEP = re.compile(r"[:\-.\s]")


def normalize_mac(text: str) -> str:
    raw = _SEP.sub("", str(text)).lower()
    if not re.fullmatch(r"[0-9a-f]{12}", raw):
        raise ValueError(f"{text!r} is not a MAC address (12 hex digits, separators : - . allowed)")
    if int(raw[:2], 16) & 1:
        raise ValueError(f"{text!r} is a multicast address, not a device MAC")
    if raw == "000000000000":
        raise ValueError("00:00:00:00:00:00 is not a device MAC")
    return raw


def colon(mac: str) -> str:
    return f"{mac[0:2]}:{mac[2:4]}:{mac[4:6]}:{mac[6:8]}:{mac[8:10]}:{mac[10:12]}"
