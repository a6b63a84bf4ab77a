"""Registrars: where a line's SIP password must also be set (Kamailio, Asterisk, the FRITZ!Box).

One interface: set, remove, list. The pipeline calls `prepare_switch` before it serves the config of a
pending credential generation: the registrar must accept the new passwords before the device can get
them; if it cannot, the device keeps its current config and nothing changes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Mapping

from provisioner.inventory import ResolvedDevice
from provisioner.secret import Secret

log = logging.getLogger("provisioner.registrar")


class Registrar(ABC):
    """One registrar backend. `line_secrets` maps extension -> SIP password."""

    kind = "abstract"

    @abstractmethod
    def set(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> None: ...

    @abstractmethod
    def remove(self, dev: ResolvedDevice) -> None: ...

    @abstractmethod
    def list(self) -> list[dict]: ...


class NoRegistrar(Registrar):
    """kind: none — the operator manages the registrar by other means."""

    kind = "none"

    def set(self, dev, line_secrets) -> None:
        return None

    def remove(self, dev) -> None:
        return None

    def list(self) -> list[dict]:
        return []


def registrar_for(rt, dev: ResolvedDevice) -> Registrar:
    """The backend for the device's site (inventory `registrar.kind`)."""
    kind = dev.settings.registrar.kind
    if kind in (None, "none"):
        return NoRegistrar()
    raise NotImplementedError(f"registrar kind {kind!r} is not implemented yet")


def line_secrets(creds: Mapping[str, Secret]) -> dict[str, Secret]:
    return {name.split(":", 1)[1]: s for name, s in creds.items() if name.startswith("sip:")}


def prepare_switch(rt, dev: ResolvedDevice, pending: Mapping[str, Secret]) -> bool:
    """Give the registrar the pending SIP passwords; False (and the device keeps its config) if it fails."""
    try:
        registrar_for(rt, dev).set(dev, line_secrets(pending))
        return True
    except Exception as e:  # the registrar's own message; never a secret (Secret masks itself)
        log.error("registrar refused the new passwords of %s: %s", dev.mac, type(e).__name__)
        return False
