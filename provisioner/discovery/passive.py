"""Passive: devices that asked this server for a config and are not in the inventory.

The request pipeline records every fetch (fetch_events), unknown MACs included. Each device is
named by the MAC in the file it asked for (catalog file patterns) or in its User-Agent; one observation
per MAC (its latest request), or per source address when no MAC shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import sqlalchemy as sa

from provisioner.discovery import Context, Observation, Options, Report, utcnow
from provisioner.fingerprint import Evidence

MAX_EVENTS = 20000


def _mac_of(catalog, filename: str, ua: str | None) -> str | None:
    for m in catalog.match_file(filename or ""):
        if m.mac:
            return m.mac
    info = catalog.parse_user_agent(ua)
    return info.mac if info else None


def observations(ctx: Context, hours: float) -> list[Observation]:
    from provisioner.store.schema import fetch_events as fe
    since = utcnow() - dt.timedelta(hours=hours)
    q = (sa.select(fe.c.at, fe.c.mac, fe.c.source_ip, fe.c.transport, fe.c.filename, fe.c.status,
                   fe.c.user_agent, fe.c.reason)
         .where(fe.c.at >= since).order_by(fe.c.id.desc()).limit(MAX_EVENTS))
    with ctx.store.engine.connect() as c:
        rows = c.execute(q).all()
    inv = ctx.inventory
    latest: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    for r in rows:  # newest first
        mac = r.mac or _mac_of(ctx.catalog, r.filename, r.user_agent)
        if mac and inv is not None and inv.device(mac) is not None:
            continue
        if not mac and not r.user_agent:
            continue  # an anonymous request for a common file says nothing about a device
        key = mac or f"ip:{r.source_ip}"
        counts[key] = counts.get(key, 0) + 1
        latest.setdefault(key, (mac, r))
    out = []
    for key, (mac, r) in latest.items():
        at = r.at if r.at.tzinfo else r.at.replace(tzinfo=dt.timezone.utc)
        out.append(Observation(
            "passive", ip=r.source_ip, mac=mac,
            evidence=Evidence(mac=mac, user_agent=r.user_agent, filename=r.filename),
            details={"requests": counts[key], "last": at.isoformat(timespec="seconds"), "file": r.filename,
                     "transport": r.transport, "status": r.status, "user_agent": r.user_agent},
            notes=[f"asked this server for {r.filename} over {r.transport} ({counts[key]} request(s), last "
                   f"{at:%Y-%m-%d %H:%M} UTC) and is not in the inventory"],
            at=at))
    return out


async def probe(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    if ctx.store is None:
        report("note", {"note": "no state database: nothing to read"})
        return []
    found = await asyncio.to_thread(observations, ctx, opts.passive_hours)
    for o in found:
        report("found", {"ip": o.ip, "what": o.details.get("file")})
    return found
