"""Registering devices at their vendor's redirection service, and forgetting them (decommission)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from provisioner.errors import InputError, ProvisionerError
from provisioner.zerotouch import state
from provisioner.zerotouch.redirect import NAMES, UNSUPPORTED, Registration, client_for

log = logging.getLogger("provisioner.zerotouch")


@dataclass
class Outcome:
    mac: str
    service: str | None
    ok: bool
    detail: str
    url: str | None = None
    registered: bool | None = None  # status: what the service holds
    skipped: bool = False  # the vendor has no service provisioner can drive: nothing was attempted


def service_of(rt, mac: str) -> tuple[str | None, object]:
    """(redirect service of the device's vendor or None, the inventory device)."""
    dev = rt.inventory.device(mac)
    if dev is None:
        raise InputError(f"{mac} is not in {rt.inventory_path}")
    return rt.catalog.get(dev.vendor).zero_touch.redirect, dev


class _Clients:
    """One client per service for a whole run (RPS looks its server entry up once)."""

    def __init__(self, rt):
        self.rt = rt
        self._c: dict[str, object] = {}

    def get(self, service: str):
        if service not in self._c:
            self._c[service] = client_for(self.rt, service)
        return self._c[service]

    def close(self) -> None:
        for c in self._c.values():
            c.close()


def _each(rt, macs: Iterable[str], work, on_result: Callable[[Outcome], None] | None) -> list[Outcome]:
    clients = _Clients(rt)
    out = []
    try:
        for mac in macs:
            service = None
            try:
                service, dev = service_of(rt, mac)
                if service is None:
                    o = Outcome(mac, None, False, f"{rt.catalog.get(dev.vendor).display_name} has no redirection "
                                                  f"service: use DHCP option 66 or SIP PnP", skipped=True)
                elif service in UNSUPPORTED:
                    o = Outcome(mac, service, False, f"{NAMES[service]}: not supported: {UNSUPPORTED[service]}",
                                skipped=True)
                else:
                    o = work(clients.get(service), service, dev)
            except ProvisionerError as e:
                o = Outcome(mac, service, False, str(e))
            out.append(o)
            if on_result:
                on_result(o)
    finally:
        clients.close()
    return out


def register(rt, macs: Iterable[str], actor: str, on_result=None) -> list[Outcome]:
    def work(client, service, dev):
        url = dev.settings.provisioning_url
        try:
            detail = client.register(dev.mac, url, dev.site)
        except ProvisionerError as e:
            return Outcome(dev.mac, service, False, str(e))
        state.set_redirect(rt.store, dev.mac, service, "registered", dev.site, url, detail, actor)
        return Outcome(dev.mac, service, True, detail, url, True)
    return _each(rt, macs, work, on_result)


def remove(rt, macs: Iterable[str], actor: str, on_result=None) -> list[Outcome]:
    macs = list(macs)
    gone = [m for m in macs if rt.inventory.device(m) is None]  # left the inventory: what the store recorded
    out = []
    for mac in gone:
        recorded = [r for r in state.redirects(rt.store, mac).values() if r["state"] != "removed"]
        problem = on_decommission(rt, mac, actor) if recorded else None
        o = Outcome(mac, recorded[0]["service"] if recorded else None, problem is None and bool(recorded),
                    problem or ("removed" if recorded else f"{mac} is not in the inventory and no registration "
                                                            f"of it is recorded"))
        out.append(o)
        if on_result:
            on_result(o)

    def work(client, service, dev):
        try:
            detail = client.remove(dev.mac)
        except ProvisionerError as e:
            return Outcome(dev.mac, service, False, str(e))
        state.set_redirect(rt.store, dev.mac, service, "removed", dev.site, None, detail, actor)
        return Outcome(dev.mac, service, True, detail, None, False)
    return out + _each(rt, [m for m in macs if m not in gone], work, on_result)


def status(rt, macs: Iterable[str], on_result=None) -> list[Outcome]:
    def work(client, service, dev):
        try:
            reg: Registration = client.status(dev.mac)
        except ProvisionerError as e:
            return Outcome(dev.mac, service, False, str(e))
        current = reg.registered and (reg.url is None or reg.url == dev.settings.provisioning_url
                                      or reg.url.startswith("profile:"))
        detail = reg.detail
        if reg.registered and not current:
            detail += f"; it redirects to {reg.url}, not to {dev.settings.provisioning_url}"
        return Outcome(dev.mac, service, True, detail, reg.url, current)
    return _each(rt, macs, work, on_result)


def on_decommission(rt, mac: str, actor: str) -> str | None:
    """A decommissioned device must not be redirected here any more: remove its registration, if one is
    recorded. Returns the problem (the record says remove-failed; `redirect remove` retries), or None."""
    rows = [r for (m, _), r in state.redirects(rt.store, mac).items() if r["state"] in ("registered", "remove-failed")]
    problems = []
    for row in rows:
        service = row["service"]
        try:
            client = client_for(rt, service)
            try:
                detail = client.remove(mac)
            finally:
                client.close()
            state.set_redirect(rt.store, mac, service, "removed", row["site"], None, f"decommissioned: {detail}",
                               actor)
        except ProvisionerError as e:
            state.set_redirect(rt.store, mac, service, "remove-failed", row["site"], row["url"], str(e), actor)
            problems.append(f"{NAMES.get(service, service)}: {e}; `provisioner redirect remove {mac}` retries")
    return "; ".join(problems) or None
