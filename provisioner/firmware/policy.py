"""The inventory's `firmware:` and `rollout:` settings. They inherit like the rest (defaults -> site -> device;
mappings merge key by key), so a site can say `firmware: latest-approved`, pin one model, or keep a device out:

    firmware:                      # or: firmware: latest-approved
      yealink: {T4xS: 66.86.0.15, T46G: latest-approved}   # a model, or a family of the profile
      snom: latest-approved        # every model of the vendor
      polycom: keep                # not managed: the phones keep what they run
    rollout: {percent: 10, window: "02:00-05:00", max_failures: 0.2}

No import of the inventory here: inventory.py uses these models for its Settings.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

LATEST = "latest-approved"
KEEP = "keep"
_VERSION = r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}"
_TARGET = re.compile(rf"({LATEST}|{KEEP}|{_VERSION})\Z")
_KEY = re.compile(r"[A-Za-z0-9_+-]{1,32}\Z")
_WINDOW = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]|24):([0-5][0-9])\Z")


def _target(v: str) -> str:
    if not _TARGET.match(v):
        raise ValueError(f"{LATEST!r}, {KEEP!r} or a version (letters, digits and . _ + -)")
    return v


def _window(v: str) -> str:
    m = _WINDOW.match(v)
    if not m:
        raise ValueError('a daily window "HH:MM-HH:MM" in the site\'s time zone (e.g. "02:00-05:00")')
    if v[:5] == v[6:]:
        raise ValueError("the window starts and ends at the same time")
    return v


def _ratio(v: float | str) -> float:
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*", v)
        if not m:
            raise ValueError('a ratio between 0 and 1, or a percentage such as "20%"')
        v = float(m.group(1)) / 100
    if not 0 <= v < 1:
        raise ValueError("the share of failed upgrades that halts the rollout: 0 <= ratio < 1")
    return float(v)


def _spec(v):
    """latest-approved | keep | version, or {vendor: target | {model or family: target}}: one clear message."""
    shape = "latest-approved, keep, a version, or a mapping vendor: target / vendor: {model or family: target}"
    if isinstance(v, str):
        return _target(v)
    if not isinstance(v, dict):
        raise ValueError(shape)
    for vendor, entry in v.items():
        if not isinstance(vendor, str) or not _KEY.match(vendor):
            raise ValueError(f"{vendor!r}: a vendor name (letters, digits, _ + -)")
        items = entry.items() if isinstance(entry, dict) else [(None, entry)]
        for model, target in items:
            where = f"{vendor}.{model}" if model is not None else vendor
            if model is not None and (not isinstance(model, str) or not _KEY.match(model)):
                raise ValueError(f"{where}: a model or family name (letters, digits, _ + -)")
            if not isinstance(target, str) or not _TARGET.match(target):
                raise ValueError(f"{where}: {target!r} is not latest-approved, keep or a version "
                                 f"(letters, digits and . _ + -)")
    return v


FirmwareSpec = Annotated[object, AfterValidator(_spec)]


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    percent: float | None = Field(default=None, gt=0, le=100)  # of each model's devices on the site
    window: Annotated[str, AfterValidator(_window)] | None = None  # daily, the site's time zone
    max_failures: Annotated[float | str, AfterValidator(_ratio)] | None = None  # failed / fetched that halts
    allow_downgrade: bool | None = None
    timeout_minutes: int | None = Field(default=None, ge=5, le=7 * 1440)  # fetched, never came back: failed
    settle_seconds: int | None = Field(default=None, ge=0, le=3600)  # back on the old version this late: failed
    transport: Literal["https", "tftp"] | None = None


ROLLOUT_DEFAULTS = {"percent": 100.0, "window": None, "max_failures": 0.2, "allow_downgrade": False,
                    "timeout_minutes": 60, "settle_seconds": 60, "transport": "https"}
GRACE_AFTER_WINDOW = dt.timedelta(hours=1)  # a device offered the image may still fetch it this long after


@dataclass(frozen=True)
class RolloutSettings:
    percent: float = 100.0
    window: str | None = None
    max_failures: float = 0.2
    allow_downgrade: bool = False
    timeout_minutes: int = 60
    settle_seconds: int = 60
    transport: str = "https"

    def selected_count(self, n: int) -> int:
        """How many of n devices a rollout at `percent` takes: rounded up, so each model gets a canary."""
        return min(n, math.ceil(n * self.percent / 100 - 1e-9))

    def in_window(self, local: dt.datetime, grace: dt.timedelta = dt.timedelta()) -> bool:
        """Is this local time inside the daily window (extended by `grace` at its end)?"""
        if self.window is None:
            return True
        start = int(self.window[0:2]) * 60 + int(self.window[3:5])
        end = int(self.window[6:8]) * 60 + int(self.window[9:11]) + int(grace.total_seconds() // 60)
        now = local.hour * 60 + local.minute
        if end <= start:  # over midnight ("22:00-04:00")
            end += 24 * 60
        return any(start <= t < end for t in (now, now + 24 * 60))


def freeze_firmware(spec) -> str | tuple | None:
    """The resolved `firmware:` setting, hashable (settings are cache keys)."""
    if spec is None or isinstance(spec, str):
        return spec
    return tuple(sorted((k, v if isinstance(v, str) else tuple(sorted(v.items()))) for k, v in spec.items()))


def target_for(firmware: str | tuple | None, vendor: str, model: str, family: str | None
               ) -> tuple[str, str] | None:
    """(target, policy key) for a device: target is 'latest-approved', 'keep' or a version; key is what
    matched (model, family or '*'). None when the policy says nothing about this device."""
    if firmware is None:
        return None
    if isinstance(firmware, str):
        return firmware, "*"
    entry = dict(firmware).get(vendor)
    if entry is None:
        return None
    if isinstance(entry, str):
        return entry, "*"
    models = dict(entry)
    for k in (model, family):
        if k and k in models:
            return models[k], k
    return None


def rollout_settings(spec: dict | None) -> RolloutSettings:
    values = dict(ROLLOUT_DEFAULTS)
    values.update({k: v for k, v in (spec or {}).items() if v is not None})
    return RolloutSettings(**values)


def policy_problems(raw: dict | None, catalog) -> list[tuple[tuple, str]]:
    """(path below the level, message) for firmware keys that name no vendor, model or family."""
    out = []
    fw = (raw or {}).get("firmware")
    if not isinstance(fw, dict):
        return out
    for vendor, entry in fw.items():
        prof = catalog.get(str(vendor))
        if prof is None:
            out.append((("firmware", vendor), f"unknown vendor {vendor!r} (known: {', '.join(sorted(catalog.vendors))})"))
            continue
        if not prof.firmware.supported:
            out.append((("firmware", vendor), f"{prof.display_name} firmware is not managed here: "
                                             f"{prof.firmware.why or 'no confirmed upgrade mechanism'}"))
            continue
        if isinstance(entry, dict):
            families = {m.family for m in prof.models.values() if m.family}
            for k in entry:
                if k not in prof.models and k not in families:
                    out.append((("firmware", vendor, k), f"no {prof.name} model or family {k!r} (models: "
                                                        f"{', '.join(prof.models)}; families: "
                                                        f"{', '.join(sorted(families))})"))
    return out
