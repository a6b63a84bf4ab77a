"""The `zero_touch:` block of a vendor profile (vendors/<vendor>.yaml): what its factory firmware does to
find a provisioning server. Facts only, each with its source next to it in the YAML."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# the redirection services provisioner knows of; provisioner/zerotouch/redirect/ says which have a client
RedirectService = Literal["yealink-rps", "snom-sraps", "gigaset-redirect", "fanvil-fdps", "grandstream-gdms",
                          "poly-ztp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DhcpFacts(_Strict):
    # DHCP option 60 (vendor class identifier) strings the factory firmware sends; matched as a prefix
    vendor_classes: list[str] = Field(default_factory=list)
    # the options the firmware reads its provisioning server from, in the firmware's order
    options: list[Literal[66, 160]] = Field(default_factory=lambda: [66])
    # what option 66 must hold for this vendor: a URL (https://host/p/) or a TFTP server host
    option66: Literal["url", "tftp-host"] = "url"


class ZeroTouch(_Strict):
    dhcp: DhcpFacts = DhcpFacts()
    sip_pnp: bool = False  # answers SIP PnP (multicast SUBSCRIBE ua-profile to 224.0.1.75:5060) from factory
    redirect: RedirectService | None = None  # the vendor's cloud redirection service, if it has one
