"""The sites' networks exported to their registrar's access list: a stolen SIP password is of no use
from outside the networks the site's phones live in.

Kamailio: rows of its `permissions` module's `address` table (group 1, tag "provisioner:<site>"),
which kamailio.cfg checks with `allow_source_address("1")` before it authenticates a REGISTER; rows with
another tag are never touched. Asterisk PJSIP: a `type = acl` section in the include file provisioner
writes, with contact_deny/contact_permit (REGISTER contacts only, so trunks are not affected). The
FRITZ!Box has no such list. Run by `provisioner registrar sync` and at `serve` start-up.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from provisioner.errors import ProvisionerError
from provisioner.registrar import backend_for

log = logging.getLogger("provisioner.registrar")


@dataclass
class AclResult:
    registrar: str
    sites: list[str]
    networks: list[str]
    outcome: str  # exported | unchanged | not used (no access list there) | failed: …


def normalized(networks) -> list[str]:
    """Sorted, de-duplicated CIDRs (IPv4 before IPv6)."""
    nets = {ipaddress.ip_network(str(n), strict=False) for n in networks}
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))]


def export(rt, actor: str = "system") -> list[AclResult]:
    """One access list per registrar: the union of the networks of the sites that register on it."""
    groups: dict[str, tuple[object, dict[str, list[str]]]] = {}
    inv = rt.inventory
    for name, settings in sorted(inv.site_settings.items()):
        reg = settings.registrar
        if reg.kind in (None, "none"):
            continue
        try:
            backend = backend_for(rt, reg)
        except (NotImplementedError, ProvisionerError) as e:
            log.warning("site %s: registrar not reachable for its ACL: %s", name, e)
            continue
        entry = groups.setdefault(backend.target(), (backend, {}))
        entry[1][name] = normalized(settings.networks)
    results = []
    for target, (backend, by_site) in groups.items():
        nets = normalized(n for ns in by_site.values() for n in ns)
        try:
            changed = backend.set_acl(by_site)
        except ProvisionerError as e:
            results.append(AclResult(backend.label, sorted(by_site), nets, f"failed: {e}"))
            continue
        outcome = "not used (no access list there)" if changed is None else ("exported" if changed else "unchanged")
        results.append(AclResult(backend.label, sorted(by_site), nets, outcome))
        if changed:
            rt.store.audit(actor, "registrar.acl", None, f"site networks exported to {backend.label}",
                           {"sites": sorted(by_site), "networks": nets})
    return results
