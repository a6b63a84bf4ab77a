"""What discovery saw on the network (one row per probe finding), so `adopt` can use it later.

Rows carry no secret: vendor, model, firmware, MAC, IP, the probe's reasons and a few raw facts
(sysDescr, User-Agent, service names). Written by `discover` and by `serve --sip-pnp`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy import Column, DateTime, Float, Index, String, Table, Text

from provisioner.store.schema import BigId, metadata

observations = Table(
    "observations", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(32), nullable=False),  # one discover run, or "serve" for the PnP responder
    Column("found_by", String(16), nullable=False),  # mdns | snmp | sip-pnp | ssdp | passive
    Column("mac", String(12)),
    Column("ip", String(45)),
    Column("vendor", String(32)),
    Column("model", String(64)),
    Column("firmware", String(64)),
    Column("kind", String(16)),
    Column("score", Float, nullable=False, default=0.0),
    Column("reasons", Text, nullable=False),  # JSON list of strings
    Column("factory_default", String(255)),  # why we suspect factory defaults, if we do
    Column("details", Text, nullable=False),  # JSON object, raw facts (never a secret)
    Index("ix_observations_mac_at", "mac", "at"),
    Index("ix_observations_at", "at"),
)

KEEP_DAYS = 30  # older observations are dropped when new ones are written: the table stays small
MAX_TEXT = {"vendor": 32, "model": 64, "firmware": 64, "kind": 16, "factory_default": 255, "ip": 45}


def _clip(row: dict) -> dict:
    out = dict(row)
    for k, n in MAX_TEXT.items():
        if isinstance(out.get(k), str):
            out[k] = out[k][:n]
    out["reasons"] = json.dumps(list(out.get("reasons") or [])[:20])
    out["details"] = json.dumps(out.get("details") or {}, sort_keys=True, default=str)[:4000]
    return out


def add(store, rows: Iterable[dict]) -> int:
    """Insert observation rows (dicts with the columns above) in one write transaction of `store`."""
    rows = [_clip(r) for r in rows]
    if not rows:
        return 0
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=KEEP_DAYS)
    with store.write() as conn:
        conn.execute(observations.delete().where(observations.c.at < cutoff))
        conn.execute(observations.insert(), rows)
    return len(rows)


def _row(r) -> dict:
    d = dict(r._mapping)
    d["reasons"] = json.loads(d["reasons"] or "[]")
    d["details"] = json.loads(d["details"] or "{}")
    at = d["at"]
    d["at"] = at if at is None or at.tzinfo else at.replace(tzinfo=dt.timezone.utc)
    return d


def for_mac(engine: sa.Engine, mac: str, limit: int = 50) -> list[dict]:
    """Newest first."""
    q = (sa.select(observations).where(observations.c.mac == mac)
         .order_by(observations.c.at.desc(), observations.c.id.desc()).limit(limit))
    with engine.connect() as c:
        return [_row(r) for r in c.execute(q)]


def since(engine: sa.Engine, when: dt.datetime, limit: int = 20000) -> list[dict]:
    """Newest first."""
    q = (sa.select(observations).where(observations.c.at >= when)
         .order_by(observations.c.at.desc(), observations.c.id.desc()).limit(limit))
    with engine.connect() as c:
        return [_row(r) for r in c.execute(q)]
