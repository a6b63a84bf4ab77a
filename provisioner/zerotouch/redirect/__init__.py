"""Vendor redirection services: on first boot a phone asks its vendor's cloud, which redirects it to the
provisioning URL registered for its MAC.

One small client per service, each with the same verbs (register, status, remove), implemented against the
vendor's published API and citing it. A service whose API is not documented publicly has no client: it is
listed in UNSUPPORTED with why, and the zero-touch verdict says so instead of pretending.

Credentials come from the environment or a credentials file (provisioner/zerotouch/config.py); they are
Secret objects, never logged, never part of an error message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import InputError, ProvisionerError


class RedirectError(ProvisionerError):
    """The service refused or could not be reached; the message names the service, never a credential."""

    exit_code = 1


@dataclass
class Registration:
    registered: bool
    url: str | None  # what the service redirects the MAC to (or the profile standing for it)
    detail: str


# services with a documented API that provisioner cannot drive: shown by `zero-touch` and `redirect status`
UNSUPPORTED = {
    "gigaset-redirect": "Gigaset's redirect server (prov.gigaset.net) documents only its web portal and XML file "
                        "upload (gigawiki \"Gigaset Redirect server\"), and needs the MAC-ID of the label "
                        "(MAC + 4 characters): register the device there by hand, with <URL>%MACD.xml",
    "fanvil-fdps": "Fanvil's FDPS is documented as a web management system only (FDPS user guide); no public API "
                   "documentation was found: add the MAC in the FDPS portal by hand",
    "grandstream-gdms": "Grandstream's GDMS has an API, but no Grandstream document describing its device "
                        "registration contract could be read here: add the MAC in GDMS by hand",
    "poly-ztp": "Poly ZTP became Poly Lens \"Device Provisioning\" (info.lens.poly.com), which gives an account "
                "address to type into DHCP or the phone; no public API registers a MAC: use DHCP option 66/160",
}

NAMES = {"yealink-rps": "Yealink RPS", "snom-sraps": "Snom SRAPS", "gigaset-redirect": "Gigaset redirect server",
         "fanvil-fdps": "Fanvil FDPS", "grandstream-gdms": "Grandstream GDMS", "poly-ztp": "Poly ZTP / Lens"}


def ssl_context(ca_file: str | None, base: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str((base / ca_file).resolve()) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_for(rt, service: str):
    """A client for the service, configured from the inventory's zero_touch.redirect section and credentials;
    InputError when the service is unsupported or not configured."""
    from provisioner.zerotouch.config import RedirectSection, load_credentials
    if service in UNSUPPORTED:
        raise InputError(f"{NAMES[service]}: not supported: {UNSUPPORTED[service]}")
    inv = rt.inventory
    section = inv.zero_touch.redirect if inv.zero_touch is not None else RedirectSection()
    cfg = section.for_service(service)
    base = rt.inventory_path.resolve().parent
    if service == "yealink-rps":
        from provisioner.zerotouch.config import YealinkRpsConfig
        from provisioner.zerotouch.redirect.yealink_rps import YealinkRps
        cfg = cfg or YealinkRpsConfig()
        key, secret = load_credentials(service, cfg, base)
        return YealinkRps(cfg.api, key, secret, cfg.server_name, ssl_context(cfg.ca_file, base), cfg.timeout)
    if service == "snom-sraps":
        from provisioner.zerotouch.redirect.snom_sraps import SnomSraps
        if cfg is None:
            raise InputError("snom-sraps: not configured: zero_touch.redirect.snom-sraps (company, profiles per "
                             f"site) in {rt.inventory_path}")
        key, secret = load_credentials(service, cfg, base)
        return SnomSraps(cfg.api, cfg.company, dict(cfg.profiles), key, secret, ssl_context(cfg.ca_file, base),
                         cfg.timeout)
    raise InputError(f"unknown redirection service {service!r}")


def configured(rt, service: str) -> bool:
    """Whether the service can be queried (a client and credentials), without raising."""
    try:
        client_for(rt, service).close()
        return True
    except (InputError, ProvisionerError):
        return False
