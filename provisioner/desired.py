"""The desired state of a device as one vendor-neutral context: what every template renders from.

Templates see the same logical settings for every vendor (lines, registrar, web accounts, provisioning,
time, policy); vendor specifics (parameter names, enum values) stay in the templates.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import zoneinfo
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from provisioner.inventory import ResolvedDevice, ResolvedSettings
from provisioner.macaddr import colon
from provisioner.secret import MASK, Secret
from provisioner.vendors import VendorProfile


def credential_names(dev: ResolvedDevice, vendor: VendorProfile) -> list[str]:
    """The credentials a device holds: provisioning, its web accounts, one SIP password per line."""
    return ["provisioning", *vendor.web_accounts, *(f"sip:{ln.extension}" for ln in dev.lines)]


@functools.lru_cache(maxsize=512)
def utc_offset(tz: str) -> tuple[str, int]:
    """Standard-time offset as phones want it: ("+1", 60) for Europe/Paris, ("+5.5", 330) for Asia/Kolkata."""
    zone = zoneinfo.ZoneInfo(tz)
    offsets = []
    for month in (1, 7):  # standard time is the half of the year without DST (July in the south)
        t = dt.datetime(2025, month, 15, tzinfo=zone)
        offsets.append((t.dst() or dt.timedelta(), t.utcoffset() or dt.timedelta()))
    off = min(offsets)[1]
    minutes = int(off.total_seconds() // 60)
    hours = minutes / 60
    text = f"{hours:+g}"
    return text, minutes


_POSIX_TZ = re.compile(
    r"(?P<std><[^>]+>|[A-Za-z]{3,})(?P<off>[+-]?\d{1,2}(?::\d{2}){0,2})"
    r"(?:(?P<dst><[^>]+>|[A-Za-z]{3,})(?P<doff>[+-]?\d{1,2}(?::\d{2}){0,2})?"
    r",M(?P<sm>\d{1,2})\.(?P<sw>[1-5])\.(?P<sd>[0-6])(?:/(?P<st>[+-]?\d{1,3}(?::\d{2}){0,2}))?"
    r",M(?P<em>\d{1,2})\.(?P<ew>[1-5])\.(?P<ed>[0-6])(?:/(?P<et>[+-]?\d{1,3}(?::\d{2}){0,2}))?)?\Z")


def _posix_minutes(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    parts = [int(p) for p in text.lstrip("+-").split(":")] + [0, 0]
    return sign * (parts[0] * 60 + parts[1])


@functools.lru_cache(maxsize=512)
def tz_facts(tz: str) -> dict:
    """What phones without an Olson database want to know about a zone, from the POSIX TZ rule at the end
    of its TZif file: standard offset, DST rule (month, week 1-5 with 5 = last, weekday 0 = Sunday, local
    hour:minute, saving), ISO country (zone.tab). Values are None where the system's tzdata does not say.
    Read-only: every caller shares the cached answer."""
    posix = country = None
    for base in zoneinfo.TZPATH:
        try:
            with open(os.path.join(base, tz), "rb") as f:
                data = f.read()
        except (OSError, ValueError):
            continue
        if data.startswith(b"TZif") and data[4:5] in (b"2", b"3", b"4"):
            posix = data.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("ascii", "replace") or None
        try:
            with open(os.path.join(base, "zone.tab"), encoding="utf-8") as f:
                for row in f:
                    cols = row.split("\t")
                    if len(cols) >= 3 and not row.startswith("#") and cols[2].strip() == tz:
                        country = cols[0]
                        break
        except OSError:
            pass
        break
    m = _POSIX_TZ.match(posix or "")
    if m:
        std = -_posix_minutes(m["off"])  # POSIX offsets count west of Greenwich
    else:
        std = utc_offset(tz)[1]
    dst = None
    if m and m["dst"]:
        dst_off = -_posix_minutes(m["doff"]) if m["doff"] else std + 60

        def rule(mon, week, day, at):
            # POSIX allows a change time outside the day (Asia/Jerusalem "M3.4.4/26": the Friday 02:00 after
            # the 4th Thursday); phones take an hour of the rule's own day. Clamped into that day, and
            # `exact` says whether the clamp changed anything (the phones that cannot express it say so).
            minutes = _posix_minutes(at) if at else 120
            clamped = min(max(minutes, 0), 23 * 60 + 59)
            return {"month": int(mon), "week": int(week), "weekday": int(day),
                    "hour": clamped // 60, "minute": clamped % 60, "exact": clamped == minutes}

        start, end = rule(m["sm"], m["sw"], m["sd"], m["st"]), rule(m["em"], m["ew"], m["ed"], m["et"])
        save = dst_off - std
        if save < 0:  # negative DST (Europe/Dublin): describe it the way phones expect, winter as standard
            std, save, start, end = dst_off, -save, end, start
        dst = {"start": start, "end": end, "save_minutes": save}
    sign = "-" if std < 0 else "+"
    hours, minutes = divmod(abs(std), 60)
    return read_only({"posix_tz": posix if m else None, "country": country, "standard_offset_minutes": std,
                      "utc_offset_hhmm": f"{sign}{hours:02d}:{minutes:02d}",
                      # "+1", "+5:30", "-3:30": Yealink's local_time.time_zone form ([+/-]X[:Y])
                      "utc_offset_short": f"{sign}{hours}" + (f":{minutes:02d}" if minutes else ""),
                      "posix_rule": posix_rule(std, dst), "dst": dst})


def _posix_offset(west_minutes: int) -> str:
    sign = "-" if west_minutes < 0 else ""
    h, m = divmod(abs(west_minutes), 60)
    return f"{sign}{h}" + (f":{m:02d}" if m else "")


def posix_rule(std: int, dst: dict | None) -> str:
    """The zone as a POSIX TZ rule with alphabetic names, an explicit DST offset and hh:mm:ss change times
    (the form of Grandstream's self-defined time zone example "MTZ+6MDT+5,M4.1.0,M11.1.0"), built from the
    facts above so that phones which parse POSIX rules get no <+0530> names and no hour outside the day."""
    out = "STD" + _posix_offset(-std)
    if dst:
        out += "DST" + _posix_offset(-(std + dst["save_minutes"]))
        for c in (dst["start"], dst["end"]):
            out += f",M{c['month']}.{c['week']}.{c['weekday']}/{c['hour']:02d}:{c['minute']:02d}:00"
    return out


def read_only(value: Any) -> Any:
    """dicts as read-only mappings, lists as tuples, all the way down."""
    if isinstance(value, dict):
        return MappingProxyType({k: read_only(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(read_only(v) for v in value)
    return value


@dataclass(eq=False)
class SettingsPart:
    """The settings' part of a context, computed once and shared by every device with equal settings, so
    read-only: code that wants other values replaces a key of its own context. `checked` holds the formats
    the renderer already found these values safe for; a render then checks only the device's own values."""

    values: dict
    checked: set[str]


def settings_context(s: ResolvedSettings) -> dict:
    return dict(settings_part(s).values)


@functools.lru_cache(maxsize=1024)
def settings_part(s: ResolvedSettings) -> SettingsPart:
    offset, minutes = utc_offset(s.timezone)
    ca_https = s.provisioning_url + "ca.pem"
    return SettingsPart(checked=set(), values={k: read_only(v) for k, v in {
        "provisioning": {
            "url": s.provisioning_url,
            "ca_url": ca_https,
            # the CA for a phone that does not trust us yet: over TFTP where the site allows TFTP
            "ca_bootstrap_url": (s.tftp_url + "ca.pem") if s.policy.tftp != "off" else ca_https,
            "resync_interval": s.resync_interval,
            "resync_minutes": max(5, s.resync_interval // 60),
        },
        "time": {"timezone": s.timezone, "ntp": list(s.ntp), "utc_offset": offset, "utc_offset_minutes": minutes,
                 **tz_facts(s.timezone)},
        "registrar": {"host": s.registrar.host, "port": s.registrar.port, "domain": s.registrar.domain,
                      "transport": s.registrar.transport},
        "srtp": s.policy.srtp,
        "policy": {"blocked_prefixes": list(s.policy.blocked_prefixes), "srtp": s.policy.srtp},
    }.items()})


@dataclass(frozen=True)
class DeviceContext:
    vendor: VendorProfile
    device: ResolvedDevice
    values: dict
    shared: SettingsPart | None = None


def device_context(dev: ResolvedDevice, vendor: VendorProfile, creds: Mapping[str, Secret],
                   masked: bool = False) -> DeviceContext:
    """`creds` maps credential_names() to secrets; masked=True shows ******** instead (render CLI)."""

    def secret(name: str) -> Secret:
        return Secret(MASK) if masked else creds[name]

    model = vendor.models[dev.model]
    shared = settings_part(dev.settings)
    ctx = dict(shared.values)
    ctx["provisioning"] = {**ctx["provisioning"], "username": dev.mac, "password": secret("provisioning")}
    ctx["device"] = {"mac": dev.mac, "mac_upper": dev.mac.upper(), "mac_colon": colon(dev.mac),
                     "vendor": vendor.name, "vendor_name": vendor.display_name, "model": dev.model,
                     "site": dev.site, "name": dev.name or dev.lines[0].display_name,
                     "max_lines": model.lines, "kind": model.kind, "family": model.family}
    ctx["lines"] = [{
        "index": i,
        "extension": ln.extension,
        "user": ln.extension,
        "auth_user": ln.auth_user or ln.extension,
        "display_name": ln.display_name,
        "label": ln.label or ln.display_name,
        "number": ln.number or ln.extension,
        "password": secret(f"sip:{ln.extension}"),
    } for i, ln in enumerate(dev.lines, start=1)]
    ctx["unused_lines"] = range(len(dev.lines) + 1, model.lines + 1)  # numbers only: nothing to check
    ctx["web"] = {acct: {"username": acct, "password": secret(acct)} for acct in vendor.web_accounts}
    return DeviceContext(vendor, dev, ctx, shared)


def common_context(vendor: VendorProfile, s: ResolvedSettings, model: str | None = None) -> dict:
    ctx = settings_context(s)
    ctx["device"] = {"vendor": vendor.name, "vendor_name": vendor.display_name, "model": model}
    return ctx
