"""The desired state of a device as one vendor-neutral context: what every template renders from.

Templates see the same logical settings for every vendor (lines, registrar, web accounts, provisioning,
time, policy); vendor specifics (parameter names, enum values) stay in the templates.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Mapping

from provisioner.inventory import ResolvedDevice, ResolvedSettings
from provisioner.macaddr import colon
from provisioner.secret import MASK, Secret
from provisioner.vendors import VendorProfile


def credential_names(dev: ResolvedDevice, vendor: VendorProfile) -> list[str]:
    """The credentials a device holds: provisioning, its web accounts, one SIP password per line."""
    return ["provisioning", *vendor.web_accounts, *(f"sip:{ln.extension}" for ln in dev.lines)]


def utc_offset(tz: str) -> tuple[str, int]:
    """Standard-time offset as phones want it: ("+1", 60) for Europe/Paris, ("+5.5", 330) for Asia/Kolkata."""
    off = dt.datetime(2025, 1, 15, tzinfo=zoneinfo.ZoneInfo(tz)).utcoffset() or dt.timedelta()
    minutes = int(off.total_seconds() // 60)
    hours = minutes / 60
    text = f"{hours:+g}"
    return text, minutes


def settings_context(s: ResolvedSettings) -> dict:
    offset, minutes = utc_offset(s.timezone)
    ca_https = s.provisioning_url + "ca.pem"
    return {
        "provisioning": {
            "url": s.provisioning_url,
            "ca_url": ca_https,
            # the CA for a phone that does not trust us yet: over TFTP where the site allows TFTP
            "ca_bootstrap_url": (s.tftp_url + "ca.pem") if s.policy.tftp != "off" else ca_https,
            "resync_interval": s.resync_interval,
            "resync_minutes": max(5, s.resync_interval // 60),
        },
        "time": {"timezone": s.timezone, "ntp": list(s.ntp), "utc_offset": offset, "utc_offset_minutes": minutes},
        "registrar": {"host": s.registrar.host, "port": s.registrar.port, "domain": s.registrar.domain,
                      "transport": s.registrar.transport},
        "srtp": s.policy.srtp,
        "policy": {"blocked_prefixes": list(s.policy.blocked_prefixes), "srtp": s.policy.srtp},
    }


@dataclass(frozen=True)
class DeviceContext:
    vendor: VendorProfile
    device: ResolvedDevice
    values: dict


def device_context(dev: ResolvedDevice, vendor: VendorProfile, creds: Mapping[str, Secret],
                   masked: bool = False) -> DeviceContext:
    """`creds` maps credential_names() to secrets; masked=True shows ******** instead (render CLI)."""

    def secret(name: str) -> Secret:
        return Secret(MASK) if masked else creds[name]

    model = vendor.models[dev.model]
    ctx = settings_context(dev.settings)
    ctx["provisioning"].update(username=dev.mac, password=secret("provisioning"))
    ctx["device"] = {"mac": dev.mac, "mac_upper": dev.mac.upper(), "mac_colon": colon(dev.mac),
                     "vendor": vendor.name, "vendor_name": vendor.display_name, "model": dev.model,
                     "site": dev.site, "name": dev.name or dev.lines[0].display_name,
                     "max_lines": model.lines}
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
    ctx["unused_lines"] = list(range(len(dev.lines) + 1, model.lines + 1))
    ctx["web"] = {acct: {"username": acct, "password": secret(acct)} for acct in vendor.web_accounts}
    return DeviceContext(vendor, dev, ctx)


def common_context(vendor: VendorProfile, s: ResolvedSettings, model: str | None = None) -> dict:
    ctx = settings_context(s)
    ctx["device"] = {"vendor": vendor.name, "vendor_name": vendor.display_name, "model": model}
    return ctx
