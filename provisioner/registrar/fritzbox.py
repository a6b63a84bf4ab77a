"""The FRITZ!Box as registrar: phones register on the box as its IP-phone clients (TR-064 X_VoIP).

inventory.yaml: the site's phones register on a box of the `routers:` section, which lists their extensions:
    sites:
      office:
        registrar: {kind: fritzbox, router: "3c:a6:2f:11:22:33", host: 192.168.178.1, transport: udp}
    routers:
      - {mac: "3c:a6:2f:11:22:33", profile: avm, ..., lines: ["101", "102"]}
A line's SIP user on the box is the router's `client_username_prefix` + extension (the profile's default
is "ip"), so the phone's line needs that as its auth user (`auth_user: ip101`), or the router the option
`client_username_prefix: ""`. The box keeps a client's password write-only: `holds` cannot tell.

Each write pushes the box's whole set of agent-owned clients (the driver's desired-state interface), each
with the SIP password its phone holds: the written device's new one, every other phone's per the
write-ahead record. Trunks and the box's config password are not touched. The box's second factor cannot be
given during a phone's fetch: a box that asks for it (error 866) refuses the switch, and the phone keeps
its config.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

from provisioner.inventory import ResolvedDevice, ResolvedRegistrar
from provisioner.registrar import Registrar, RegistrarError, accounts
from provisioner.secret import Secret

log = logging.getLogger("provisioner.registrar.fritzbox")

CONFIRM_TIMEOUT = 1.0  # seconds: nobody stands at the box while a phone fetches its config


class FritzBoxRegistrar(Registrar):
    kind = "fritzbox"

    def __init__(self, rt, router_mac: str):
        self.rt, self.mac = rt, router_mac

    @classmethod
    def from_settings(cls, rt, reg: ResolvedRegistrar) -> "FritzBoxRegistrar":
        from provisioner import routers
        if not reg.router:
            raise RegistrarError("registrar kind fritzbox: give `router` (the MAC of the routers: entry the "
                                 "phones register on)")
        r = routers.resolve_router(rt, reg.router)
        if routers.profile_of(rt, r).driver != "fritzbox":
            raise RegistrarError(f"registrar kind fritzbox: router {r.mac} is not a FRITZ!Box")
        return cls(rt, r.mac)

    def __repr__(self) -> str:
        return f"FritzBoxRegistrar({self.mac})"

    @property
    def label(self) -> str:
        return f"FRITZ!Box {self.mac}"

    def target(self) -> str:
        return f"fritzbox|{self.mac}"

    # ---- the box --------------------------------------------------------------------------------------
    @contextmanager
    def _driver(self) -> Iterator[tuple]:
        from provisioner import routers
        r = routers.resolve_router(self.rt, self.mac)
        prof = routers.profile_of(self.rt, r)
        store = self.rt.store
        known = store.device(r.mac) is not None
        active = store.credentials(r.mac, "active") if known else {}
        pending = store.credentials(r.mac, "pending") if known else {}
        logins, _ = routers.login_candidates(r, prof, active, pending)
        drv = routers.make_driver(self.rt, r, prof, logins, progress=lambda s: log.info("%s: %s", self.label, s),
                                  on_confirm=lambda text: log.warning("%s", text), confirm_timeout=CONFIRM_TIMEOUT)
        with drv:
            yield drv, r, prof

    def _held(self, dev: ResolvedDevice) -> dict[str, Secret] | None:
        """The SIP passwords the box should hold for a phone that is not being written now."""
        from provisioner.registrar import line_secrets
        from provisioner.registrar.sync import status
        store = self.rt.store
        st = store.device(dev.mac)
        if st is None:
            return None
        rec = status(self.rt, dev.mac)
        if rec is None or (rec["held_generation"] is None and not rec["write_in_flight"]):
            return None  # never written there, or removed (decommissioned)
        if rec["held_generation"] is not None and rec["held_generation"] != st.generation:
            pend = store.credentials(dev.mac, "pending")
            if pend:  # a switch to the pending generation is in progress
                return line_secrets(pend)
        return line_secrets(store.credentials(dev.mac, "active"))

    def _push(self, written: Mapping[tuple[str, str], Secret], drop: set[str]) -> None:
        from provisioner import routers
        from provisioner.drivers.base import DriverError
        from provisioner.drivers.fritzbox import BoxDesired, Handset
        from provisioner.errors import ProvisionerError
        try:
            with self._driver() as (drv, r, prof):
                prefix = str(routers.option(r, prof, "client_username_prefix", ""))
                rule = drv.rules().client_password
                handsets, held_cache = [], {}
                for dev in self.rt.inventory.resolved.values():
                    if dev.site != r.site:
                        continue
                    for ln in dev.lines:
                        if ln.extension not in r.lines:
                            continue
                        user = f"{prefix}{ln.extension}"
                        if user in drop:
                            continue
                        pw = written.get((dev.mac, ln.extension))
                        if pw is None:
                            if dev.mac not in held_cache:
                                held_cache[dev.mac] = self._held(dev)
                            pw = (held_cache[dev.mac] or {}).get(ln.extension)
                        if pw is None:
                            continue
                        if (ln.auth_user or ln.extension) != user:
                            raise RegistrarError(
                                f"{self.label}: line {ln.extension} of {dev.mac} registers as "
                                f"{ln.auth_user or ln.extension!r}, the box knows it as {user!r}: set "
                                f"`auth_user: {user}` on the line, or the router option client_username_prefix")
                        problem = rule.check(pw.reveal())
                        if problem:
                            raise RegistrarError(f"{self.label}: the SIP password of line {ln.extension} does not "
                                                 f"fit the box's rules ({problem}); reprovision {dev.mac}")
                        number = ln.number or ""
                        handsets.append(Handset(ln.extension, user, (dev.name or ln.display_name)[:64], pw,
                                                number, number, False))
                drv.push(BoxDesired(handsets=tuple(handsets), strict_numbers=False))
        except (DriverError, ProvisionerError) as e:
            if isinstance(e, RegistrarError):
                raise
            raise RegistrarError(f"{self.label}: {e}") from None

    # ---- interface --------------------------------------------------------------------------------------
    def set(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> None:
        self.set_many([(dev, line_secrets)])

    def set_many(self, items: Iterable[tuple[ResolvedDevice, Mapping[str, Secret]]]) -> None:
        written = {}
        for dev, secrets in items:
            for (_, pw), ln in zip(self._lines(dev, secrets), dev.lines):
                written[(dev.mac, ln.extension)] = pw
        if written:
            self._push(written, set())

    def remove(self, dev: ResolvedDevice) -> None:
        self.remove_users(u for u, _ in accounts(dev))

    def remove_users(self, users: Iterable[str]) -> None:
        users = set(users)
        if users:
            self._push({}, users)

    def tagged(self) -> list[dict]:
        return [{**a, "device": None} for a in self.list()]  # clients with our id prefix only

    @property
    def domain(self) -> str:
        """The box's address: what `list` names as the accounts' domain."""
        from provisioner import routers
        return routers.resolve_router(self.rt, self.mac).address

    def store_key(self) -> str:
        return self.target()

    def account_keys(self, dev: ResolvedDevice) -> set[tuple[str, str]]:
        """Only the lines the router entry lists register on the box, as prefix + extension."""
        from provisioner import routers
        r = routers.resolve_router(self.rt, self.mac)
        if dev.site != r.site:
            return set()
        prefix = str(routers.option(r, routers.profile_of(self.rt, r), "client_username_prefix", ""))
        return {(f"{prefix}{ln.extension}", r.address) for ln in dev.lines if ln.extension in r.lines}

    def list(self) -> list[dict]:
        from provisioner.drivers.fritzbox import CLIENT_ID_PREFIX
        with self._driver() as (drv, r, _):
            values = drv.read_back()
        out = []
        for key, value in sorted(values.items()):
            if key.startswith(f"client[{CLIENT_ID_PREFIX}") and key.endswith("].username"):
                out.append({"username": value, "domain": r.address, "client": key[len("client["):-len("].username")]})
        return out
