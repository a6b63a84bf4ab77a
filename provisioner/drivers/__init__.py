"""Drivers: one module per platform, one interface (base.Driver).

`get_driver(name)` gives the class a profile names (`driver:` in a router profile; `sip_notify` for phones).
Modules load on first use, so the CLI does not import paramiko or fritzconnection unless a router is touched.
"""

from __future__ import annotations

import importlib

from provisioner.drivers.base import Driver, DriverError, Drift, NotSupported, PushResult  # noqa: F401

DRIVERS = {
    "sip_notify": ("provisioner.drivers.sip_notify", "SipNotifyDriver"),
    "fritzbox": ("provisioner.drivers.fritzbox", "FritzBoxDriver"),
    "ssh_router": ("provisioner.drivers.ssh_router", "SshRouterDriver"),
}


def get_driver(name: str) -> type[Driver]:
    """The driver class registered under `name`; KeyError names the known ones."""
    try:
        module, cls = DRIVERS[name]
    except KeyError:
        raise KeyError(f"unknown driver {name!r} (known: {', '.join(sorted(DRIVERS))})") from None
    return getattr(importlib.import_module(module), cls)
