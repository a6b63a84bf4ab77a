"""Registrars: where a line's SIP password must also be set (Kamailio, Asterisk, the FRITZ!Box).

One interface: set, remove, list (plus set_many/remove_users for batches, and optional holds/contacts).
Which backend a device uses is its site's `registrar.kind` in inventory.yaml; where the backend writes
(a database, a file, a router) is in the same mapping, never with a password in it.

The registrar must hold the SIP passwords of the config the device holds. `prepare_switch` (called by the
pipeline just before it serves the config of a pending credential generation) gives the registrar the new
passwords first; if that fails the device keeps its current config and nothing changes. The write-ahead
record and `reconcile`, which repair a switch cut short by a crash, are in provisioner/registrar/sync.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Mapping

from provisioner.errors import ProvisionerError
from provisioner.inventory import ResolvedDevice, ResolvedRegistrar
from provisioner.secret import Secret

log = logging.getLogger("provisioner.registrar")


class RegistrarError(ProvisionerError):
    """The registrar could not be written or read; the message names it, never a secret."""

    exit_code = 1


def kill_point(name: str) -> None:
    """Test hook for the crash tests: PROVISIONER_TEST_KILL_AT=<name> ends the process right here."""
    if os.environ.get("PROVISIONER_TEST_KILL_AT") == name:
        os._exit(137)


def accounts(dev: ResolvedDevice) -> list[tuple[str, str]]:
    """(SIP auth user, extension) of each line: the registrar account and the key of its password."""
    return [(ln.auth_user or ln.extension, ln.extension) for ln in dev.lines]


def line_secrets(creds: Mapping[str, Secret]) -> dict[str, Secret]:
    """extension -> SIP password, from a credential set (names `sip:<extension>`)."""
    return {name.split(":", 1)[1]: s for name, s in creds.items() if name.startswith("sip:")}


class Registrar(ABC):
    """One registrar backend. `line_secrets` maps extension -> SIP password."""

    kind = "abstract"

    @abstractmethod
    def set(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> None: ...

    @abstractmethod
    def remove(self, dev: ResolvedDevice) -> None: ...

    @abstractmethod
    def list(self) -> list[dict]:
        """The accounts there: {"username", "domain", ...}; never a password or a hash of one."""

    def set_many(self, items: Iterable[tuple[ResolvedDevice, Mapping[str, Secret]]]) -> None:
        """Several devices at once (backends override it to write in one transaction / one reload)."""
        for dev, secrets in items:
            self.set(dev, secrets)

    def remove_users(self, users: Iterable[str]) -> None:
        """Remove accounts by SIP user name (lines that left the inventory, decommissioned devices)."""
        raise RegistrarError(f"the {self.kind} registrar cannot remove accounts by name")

    def set_acl(self, networks_by_site: Mapping[str, list[str]]) -> bool | None:
        """Let REGISTERs in only from these networks (registrar/acl.py); True changed, False unchanged,
        None: this registrar has no access list."""
        return None

    def holds(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> bool | None:
        """Whether the registrar accepts exactly these passwords for the device's lines (None: cannot tell)."""
        return None

    def holds_many(self, items: Iterable[tuple[ResolvedDevice, Mapping[str, Secret]]]) -> dict[str, bool | None]:
        """`holds` for several devices (backends override it to read once)."""
        return {dev.mac: self.holds(dev, secrets) for dev, secrets in items}

    def probe(self) -> str:
        """Check that the registrar can be reached and written, changing nothing; what was checked, or
        RegistrarError. Backends that cannot test a write without making one read instead and say so."""
        self.list()
        return "reachable (writes not tested)"

    def tagged(self) -> list[dict] | None:
        """The accounts this project wrote there ({"username", "domain", "device"}), whatever the inventory
        says now; None when the backend cannot tell them from others."""
        return None

    def remove_accounts(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Remove accounts by (SIP user, domain) (orphans: a domain that changed, a device that left)."""
        self.remove_users(u for u, d in pairs if d == getattr(self, "domain", d))

    def prune_many(self, keep: Mapping[str, set[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
        """For each device (MAC), remove the accounts written for it other than `keep[mac]` (its accounts
        now, as `account_keys` names them); what went, per device. Backends that write a device's accounts
        as one unit (a file block, the box's whole client list) have nothing left over."""
        return {}

    def account_keys(self, dev: ResolvedDevice) -> set[tuple[str, str]]:
        """(SIP user, domain) of the device's accounts here, as `tagged` names them."""
        return {(u, getattr(self, "domain", "") or "") for u, _ in accounts(dev)}

    def store_key(self) -> str:
        """Where the accounts live (one database, one file, one box), whatever the domain."""
        return self.target()

    def contacts(self, dev: ResolvedDevice) -> list[tuple[str, int]]:
        """Where the device's lines registered from, newest first, if the registrar tells (for NOTIFY)."""
        return []

    @property
    def label(self) -> str:
        return self.kind

    def target(self) -> str:
        """Which registrar this is (kind, where), for the write-ahead record; never a password."""
        return self.kind

    @staticmethod
    def _lines(dev: ResolvedDevice, secrets: Mapping[str, Secret]) -> list[tuple[str, Secret]]:
        out = []
        for user, ext in accounts(dev):
            s = secrets.get(ext)
            if s is None:
                raise RegistrarError(f"device {dev.mac}: no SIP password for line {ext}")
            out.append((user, s))
        return out


def run_reload(label: str, command: tuple[str, ...], timeout: float = 30.0) -> None:
    """Run a registrar's reload command (Asterisk `pjsip reload`, Kamailio `kamcmd … addressReload`)."""
    try:
        r = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistrarError(f"{label}: reload command {command[0]!r} failed: {type(e).__name__}") from None
    # kamcmd exits 0 when the RPC itself answers an error ("error: 500 - ongoing reload")
    if r.returncode != 0 or (r.stdout or "").lstrip().lower().startswith("error"):
        first = (r.stderr or r.stdout or "").strip().splitlines()[:1]
        raise RegistrarError(f"{label}: reload command exited {r.returncode}" + (f": {first[0][:160]}" if first else ""))


class NoRegistrar(Registrar):
    """kind: none — the operator manages the registrar by other means."""

    kind = "none"

    def set(self, dev, line_secrets) -> None:
        return None

    def remove(self, dev) -> None:
        return None

    def remove_users(self, users) -> None:
        return None

    def list(self) -> list[dict]:
        return []


_lock = threading.Lock()


def base_dir(rt) -> Path:
    """Relative paths in the registrar mapping are relative to the inventory file."""
    return Path(rt.inventory_path).resolve().parent


def registrar_for(rt, dev: ResolvedDevice) -> Registrar:
    """The backend for the device's site (inventory `registrar.kind`), one instance per registrar."""
    return backend_for(rt, dev.settings.registrar)


def backend_for(rt, reg: ResolvedRegistrar) -> Registrar:
    kind = reg.kind
    if kind in (None, "none"):
        return NoRegistrar()
    cache = rt.__dict__.setdefault("_registrars", {})
    key = (reg, str(base_dir(rt)))
    with _lock:
        hit = cache.get(key)
        if hit is None:
            if kind == "kamailio":
                from provisioner.registrar.kamailio import KamailioRegistrar
                hit = KamailioRegistrar.from_settings(reg, base_dir(rt))
            elif kind == "asterisk":
                from provisioner.registrar.asterisk import AsteriskRegistrar
                hit = AsteriskRegistrar.from_settings(reg, base_dir(rt))
            elif kind == "fritzbox":
                try:
                    from provisioner.registrar.fritzbox import FritzBoxRegistrar
                except ImportError as e:  # the FRITZ!Box driver is not installed in this tree
                    raise NotImplementedError(f"registrar kind fritzbox needs the FRITZ!Box driver ({e})") from None
                hit = FritzBoxRegistrar.from_settings(rt, reg)
            else:
                raise NotImplementedError(f"registrar kind {kind!r} is not implemented")
            cache[key] = hit
    return hit


def prepare_switch(rt, dev: ResolvedDevice, pending: Mapping[str, Secret]) -> bool:
    """Give the registrar the pending SIP passwords, durably recorded; False (and the device keeps its
    config) if it fails or the rotation changed meanwhile. See sync.prepare_switch."""
    from provisioner.registrar import sync
    return sync.prepare_switch(rt, dev, pending)


def ensure_held(rt, dev: ResolvedDevice) -> str | None:
    """Before a device gets a config it does not hold yet: None when its registrar holds the SIP passwords
    in it (written now if needed), else the problem. See sync.ensure_held."""
    from provisioner.registrar import sync
    return sync.ensure_held(rt, dev)
