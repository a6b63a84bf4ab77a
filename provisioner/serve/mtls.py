"""Mutual TLS: a device may prove itself with its factory certificate (vendor device CA) naming its MAC.

serve/protocol.py puts the verified certificate (ssl.getpeercert(), only filled when it chained to the
configured CA bundle) into the ASGI scope; this module reads the MACs it names.
"""

from __future__ import annotations

import re

from provisioner.macaddr import normalize_mac

_MACISH = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[:\-.]?){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])")


def cert_macs(cert: dict) -> set[str]:
    """MAC addresses named in a certificate's subject CN or subjectAltName entries."""
    texts = []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k in ("commonName", "serialNumber"):
                texts.append(v)
    for _typ, v in cert.get("subjectAltName", ()):
        texts.append(v)
    out = set()
    for t in texts:
        for m in _MACISH.findall(str(t)):
            try:
                out.add(normalize_mac(m))
            except ValueError:
                pass
    return out
