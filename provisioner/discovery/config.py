"""The optional `discovery:` section of inventory.yaml, and the SNMP credentials file it may name.

No secret lives in inventory.yaml: SNMP communities and v3 keys are read from a separate credentials
file (keep it 0600, out of version control), named here or with `discover --snmp-credentials FILE`.

    discovery:
      subnets: [192.168.50.0/24]        # what `discover` sweeps with SNMP when no --subnet is given
      interfaces: [192.168.50.2]        # where mDNS / SIP PnP / SSDP listen and send (default: all)
      timeout: 5                        # seconds the listeners run
      snmp:
        credentials_file: snmp-credentials.yaml   # relative to the inventory
        timeout: 1
        retries: 1
        concurrency: 256
      sip_pnp:
        auto_enrol_sites: [lab]         # unknown phones from these sites' networks get the site's URL

The credentials file:

    communities: [public]
    users:
      - {name: monitor, auth: sha, auth_key: "...", priv: aes, priv_key: "..."}
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from provisioner.errors import InputError

MAX_SWEEP = 4096  # addresses per discover run: a /20; a bigger sweep is a mistake on a site LAN


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_subnet(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"bad CIDR {text!r}: {e}") from None
    if net.version != 4:
        raise ValueError(f"{text}: only IPv4 subnets can be swept")
    if net.num_addresses > MAX_SWEEP:
        raise ValueError(f"{text}: {net.num_addresses} addresses; sweep at most {MAX_SWEEP} (a /20) at a time")
    return str(net)


def check_ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address of this machine") from None


Subnet = Annotated[str, AfterValidator(check_subnet)]
IPv4 = Annotated[str, AfterValidator(check_ipv4)]


class SnmpSection(Strict):
    credentials_file: str | None = None
    timeout: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5)
    concurrency: int = Field(default=256, ge=1, le=4096)


class SipPnpSection(Strict):
    auto_enrol_sites: list[str] = Field(default_factory=list)


class DiscoveryConfig(Strict):
    subnets: list[Subnet] = Field(default_factory=list)
    interfaces: list[IPv4] = Field(default_factory=list)
    timeout: float = Field(default=5.0, gt=0, le=300)
    snmp: SnmpSection = SnmpSection()
    sip_pnp: SipPnpSection = SipPnpSection()


# ---- SNMP credentials (secrets: never printed, never logged) ---------------------------------------

AuthProto = Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProto = Literal["des", "3des", "aes", "aes128", "aes192", "aes256"]


class V3User(Strict):
    name: str = Field(min_length=1, max_length=32)
    auth: AuthProto | None = None
    auth_key: str | None = Field(default=None, min_length=8, repr=False)
    priv: PrivProto | None = None
    priv_key: str | None = Field(default=None, min_length=8, repr=False)

    @field_validator("priv_key")
    @classmethod
    def _priv_needs_auth(cls, v, info):
        if v is not None and not info.data.get("auth_key"):
            raise ValueError("privacy needs authentication (auth and auth_key)")
        return v


class SnmpCredentials(Strict):
    communities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, repr=False)
    users: list[V3User] = Field(default_factory=list)

    def __repr__(self) -> str:  # never show a community or a key
        return f"SnmpCredentials({len(self.communities)} communities, {len(self.users)} v3 users)"

    __str__ = __repr__

    def merged(self, other: "SnmpCredentials") -> "SnmpCredentials":
        comms = list(dict.fromkeys([*self.communities, *other.communities]))
        return SnmpCredentials(communities=comms, users=[*self.users, *other.users])


def load_snmp_credentials(path: Path) -> SnmpCredentials:
    """Read a credentials file (YAML); refuses files others may read (they hold secrets)."""
    from provisioner.yamlsrc import ProblemsError, Source, plain
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"SNMP credentials file {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InputError(f"SNMP credentials file {path} is readable by others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    try:
        src = Source.load(path)
    except ProblemsError:
        raise
    try:
        return SnmpCredentials.model_validate(plain(src.data) or {})
    except ValidationError as e:
        raise ProblemsError(src.problems_from(e)) from None


def credentials_path(inventory_path: Path, cfg: DiscoveryConfig | None) -> Path | None:
    if cfg is None or not cfg.snmp.credentials_file:
        return None
    p = Path(os.path.expanduser(cfg.snmp.credentials_file))
    return p if p.is_absolute() else inventory_path.parent / p
