"""What zero-touch records in the store: DHCP exports, redirect registrations, SIP PnP responder heartbeats."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from provisioner.store import as_utc, utcnow
from provisioner.store.zerotouch_schema import zt_dhcp_exports, zt_pnp_responders, zt_redirects

PNP_HEARTBEAT = 30.0  # seconds between a responder's heartbeats
PNP_STALE = 120.0  # a responder not heard of for this long is taken as stopped


# ---- DHCP exports ----------------------------------------------------------------------------------------

def record_export(store, site: str, fmt: str, url: str, sha256: str, written_to: str | None, actor: str) -> None:
    with store.write() as c:
        c.execute(zt_dhcp_exports.insert().values(site=site, format=fmt, url=url, sha256=sha256,
                                                  written_to=written_to, at=utcnow(), actor=actor))
        store.append_audit(c, actor, "dhcp.exported", None, f"site {site} ({fmt})",
                           {"site": site, "format": fmt, "url": url, "written_to": written_to})


def last_exports(store) -> dict[str, dict]:
    """site -> its latest export."""
    t = zt_dhcp_exports.c
    q = sa.select(zt_dhcp_exports).order_by(t.id)
    with store.engine.connect() as c:
        return {r.site: dict(r._mapping) for r in c.execute(q)}


# ---- redirect registrations ------------------------------------------------------------------------------

def set_redirect(store, mac: str, service: str, state: str, site: str | None, url: str | None, detail: str,
                 actor: str) -> None:
    t = zt_redirects
    with store.write() as c:
        found = c.execute(sa.select(t.c.mac).where(t.c.mac == mac, t.c.service == service)).first()
        values = dict(site=site, url=url, state=state, detail=detail[:500], at=utcnow())
        if found:
            c.execute(t.update().where(t.c.mac == mac, t.c.service == service).values(**values))
        else:
            c.execute(t.insert().values(mac=mac, service=service, **values))
        store.append_audit(c, actor, f"redirect.{state}", mac, f"{service}: {detail[:200]}",
                           {"service": service, "url": url, "site": site})


def redirects(store, mac: str | None = None) -> dict[tuple[str, str], dict]:
    q = sa.select(zt_redirects)
    if mac:
        q = q.where(zt_redirects.c.mac == mac)
    with store.engine.connect() as c:
        return {(r.mac, r.service): dict(r._mapping) for r in c.execute(q)}


# ---- SIP PnP responders -----------------------------------------------------------------------------------

@dataclass
class Responder:
    instance: str
    host: str
    networks: list[ipaddress.IPv4Network]
    seen_at: dt.datetime
    alive: bool


def _networks_of(addresses: list[str]) -> list[str]:
    """address/prefix of each listening address (from the interfaces of this machine)."""
    out = []
    try:
        import ifaddr  # a zeroconf dependency, already installed
        by_ip = {}
        for a in ifaddr.get_adapters():
            for ip in a.ips:
                if isinstance(ip.ip, str):
                    by_ip[ip.ip] = ip.network_prefix
        for addr in addresses:
            if addr in by_ip:
                out.append(str(ipaddress.ip_interface(f"{addr}/{by_ip[addr]}").network))
    except Exception:
        pass
    return out


class PnpHeartbeat:
    """A running `serve --sip-pnp` says so every PNP_HEARTBEAT seconds, with the networks it listens on."""

    def __init__(self, store, addresses: list[str]):
        self.store = store
        self.instance = uuid.uuid4().hex
        self.networks = _networks_of(addresses)
        self.started = utcnow()

    def beat(self) -> None:
        t = zt_pnp_responders
        now = utcnow()
        with self.store.write() as c:
            n = c.execute(t.update().where(t.c.instance == self.instance).values(seen_at=now)).rowcount
            if not n:
                c.execute(t.insert().values(instance=self.instance, host=socket.gethostname()[:255],
                                            interfaces=json.dumps(self.networks), pid=os.getpid(),
                                            started_at=self.started, seen_at=now))

    def stop(self) -> None:
        with self.store.write() as c:
            c.execute(zt_pnp_responders.delete().where(zt_pnp_responders.c.instance == self.instance))


def responders(store, now: dt.datetime | None = None) -> list[Responder]:
    now = now or utcnow()
    with store.engine.connect() as c:
        rows = list(c.execute(sa.select(zt_pnp_responders)))
    out = []
    for r in rows:
        seen = as_utc(r.seen_at)
        nets = []
        for n in json.loads(r.interfaces or "[]"):
            try:
                nets.append(ipaddress.ip_network(n))
            except ValueError:
                continue
        alive = (now - seen).total_seconds() <= PNP_STALE
        if alive and r.host == socket.gethostname()[:255]:  # on this machine the process itself tells
            alive = _pid_alive(r.pid)
        out.append(Responder(r.instance, r.host, nets, seen, alive))
    return out


def _pid_alive(pid: int) -> bool:
    """A serve killed by a signal never removes its row (uvicorn re-raises SIGTERM after its shutdown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
