"""inventory.yaml: defaults → sites → devices, validated with every problem reported as FILE:LINE.

Inheritance is easy to predict: for each setting the most specific level that sets it wins
(device, then site, then defaults); mappings (registrar, policy) merge key by key; lists replace.
No secret ever lives here: models forbid unknown fields and none of them holds a password.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import zoneinfo
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from provisioner.firmware.policy import (FirmwareSpec, RolloutSettings, RolloutSpec, freeze_firmware,
                                         policy_problems, rollout_settings)
from provisioner.macaddr import normalize_mac
from provisioner.vendors import Catalog, VendorProfile
from provisioner.yamlsrc import Problem, ProblemsError, Source, plain

# Characters that break a vendor format or smuggle a setting: control characters (new lines make a
# key=value file grow a line), '=' (a key assignment), markup and quotes (XML attributes).
_UNSAFE_TEXT = re.compile(r'[\x00-\x1f\x7f=<>"\\]')
_TOKEN = re.compile(r"[A-Za-z0-9._+-]{1,64}\Z")


def _safe_text(v: str) -> str:
    bad = _UNSAFE_TEXT.search(v)
    if bad:
        ch = bad.group()
        shown = repr(ch) if ch.isprintable() else f"\\x{ord(ch):02x}"
        raise ValueError(f"contains {shown}; control characters and = < > \" \\ would break vendor config formats")
    return v


def _token(v: str) -> str:
    if not _TOKEN.match(v):
        raise ValueError("use 1-64 of letters, digits and . _ + -")
    return v


def _mac(v: Any) -> str:
    return normalize_mac(str(v))


SafeText = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_safe_text)]
Token = Annotated[str, AfterValidator(_token)]
Mac = Annotated[str, AfterValidator(_mac)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_control(v: str) -> str:
    if re.search(r"[\x00-\x1f\x7f]", v):
        raise ValueError("contains a control character")
    return v


def _no_password_in_url(v: str) -> str:
    _no_control(v)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@", v):
        raise ValueError("a database URL here carries no password: name the environment variable that holds it "
                         "in db_password_env")
    return v


class Registrar(Strict):
    kind: Literal["none", "kamailio", "asterisk", "fritzbox"] | None = None
    host: Annotated[str, AfterValidator(_safe_text)] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    domain: Annotated[str, AfterValidator(_safe_text)] | None = None
    transport: Literal["tls", "tcp", "udp"] | None = None
    # where provisioner writes the SIP passwords (provisioner/registrar/); never a password here
    db: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_no_password_in_url)] | None = None
    db_password_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = None
    include_file: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_control)] | None = None
    reload_command: list[Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_no_control)]] | None = \
        Field(default=None, min_length=1)
    context: Token | None = None
    router: Mac | None = None
    # hand out a config even when this registrar does not hold the SIP passwords in it (default: such a
    # fetch gets 503 and the device retries; `provisioner devices` and `audit` show it either way)
    serve_unsynced: bool | None = None


class Policy(Strict):
    srtp: Literal["required", "optional", "off"] | None = None
    enrolment_hours: float | None = Field(default=None, gt=0, le=24 * 30)
    tftp: Literal["bootstrap", "full", "off"] | None = None
    auth: Literal["digest", "mtls", "either"] | None = None  # how a device proves itself after enrolment
    blocked_prefixes: list[Annotated[str, Field(pattern=r"^\+?[0-9*#]{1,20}$")]] | None = None


class Settings(Strict):
    """What every level may set; unset means inherit."""

    provisioning_url: Annotated[str, Field(pattern=r"^https://[^\s\"'<>]+/$")] | None = None
    tftp_url: Annotated[str, Field(pattern=r"^tftp://[^\s\"'<>/]+/$")] | None = None
    timezone: str | None = None
    ntp: list[Annotated[str, AfterValidator(_safe_text)]] | None = None
    resync_interval: int | None = Field(default=None, ge=300, le=7 * 86400)
    registrar: Registrar | None = None
    policy: Policy | None = None
    firmware: FirmwareSpec | None = None  # provisioner/firmware/policy.py (issue 18)
    rollout: RolloutSpec | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Paris)") from None
        return v


class Line(Strict):
    extension: Token
    display_name: SafeText
    auth_user: Token | None = None
    number: Annotated[str, Field(pattern=r"^\+?[0-9]{2,20}$")] | None = None
    label: SafeText | None = None


class Site(Settings):
    networks: list[str] = Field(min_length=1)
    description: Annotated[str, Field(max_length=200), AfterValidator(_safe_text)] | None = None

    @field_validator("networks")
    @classmethod
    def _nets(cls, v):
        for n in v:
            try:
                ipaddress.ip_network(n, strict=True)
            except ValueError as e:
                raise ValueError(f"bad CIDR {n!r}: {e}") from None
        return v


class Device(Settings):
    mac: Mac
    vendor: str
    model: str
    site: str
    name: SafeText | None = None
    lines: list[Line] = Field(min_length=1)


class Defaults(Settings):
    pass


# ---- routers (routers: at the top level; provisioner/routers.py acts on them) -----------------------------

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}\Z")
_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}\Z")


def _env_name(v: str) -> str:
    if not _ENV_NAME.match(v):
        raise ValueError("an environment variable name: capitals, digits and _")
    return v


def _host(v: str) -> str:
    if not _HOST.match(v):
        raise ValueError("a host name or IP address (letters, digits, . - : _)")
    return v


def _option_value(v: Any) -> Any:
    texts = v if isinstance(v, list) else [v]
    for t in texts:
        if isinstance(t, str) and re.search(r"[\x00-\x1f\x7f]", t):
            raise ValueError("contains a control character")
    return v


EnvName = Annotated[str, AfterValidator(_env_name)]
HostText = Annotated[str, AfterValidator(_host)]


class PasswordSource(Strict):
    """Where a secret the operator owns comes from: never the YAML itself."""

    password_env: EnvName | None = None  # name of an environment variable holding it
    password_file: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # relative to this file


class RouterManagement(PasswordSource):
    """How the agent logs in: a dedicated user; its password from the store, or (first contact) the source."""

    user: Token
    port: int | None = Field(default=None, ge=1, le=65535)
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    tls: Literal["auto", "required", "off"] | None = None

    @model_validator(mode="after")
    def _at_most_one_source(self):
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give one of password_env or password_file, not both")
        return self


class RouterTrunk(PasswordSource):
    """A SIP account the router itself registers (the site's trunk); its password comes from the operator."""

    index: int = Field(default=0, ge=0, le=63)
    registrar: HostText
    number: Annotated[str, Field(pattern=r"^\+?[0-9]{2,20}$")]
    username: SafeText
    outbound_proxy: HostText | None = None
    stun_server: HostText | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give the trunk password's source: exactly one of password_env or password_file")
        return self


class Router(Strict):
    mac: Mac
    profile: str  # a router profile: vendors/<profile>.yaml with kind: router
    model: str
    site: str
    name: SafeText | None = None
    address: HostText
    management: RouterManagement
    trunks: list[RouterTrunk] = Field(default_factory=list)
    lines: list[Token] = Field(default_factory=list)  # inventory extensions whose phones register on this router
    options: dict[Token, Annotated[bool | int | float | str | list[str], AfterValidator(_option_value)]] = Field(
        default_factory=dict)  # overrides of the profile's driver options


class Security(Strict):
    """Anti-harvest thresholds and where security events go (a command gets the event JSON on stdin)."""

    ban_after: int = Field(default=10, ge=2, le=1000)  # failed requests from one source within `window`
    window: int = Field(default=600, ge=10, le=86400)  # seconds
    ban_seconds: int = Field(default=900, ge=10, le=7 * 86400)
    alert_command: list[Annotated[str, AfterValidator(_safe_text)]] | None = Field(default=None, min_length=1)
    alert_webhook: Annotated[str, Field(pattern=r"^https?://[^\s\"'<>]+$")] | None = None
    client_ca: str | None = None  # PEM bundle of vendor device CAs, for mutual TLS (relative to the inventory)
    # HTTPS connections open at once: in all, per source address, per network (/24, /64); docs/security.md
    max_connections: int = Field(default=4096, ge=16, le=1_000_000)
    connections_per_source: int = Field(default=256, ge=2, le=100_000)
    connections_per_network: int = Field(default=1024, ge=2, le=1_000_000)
    body_seconds: float = Field(default=10, ge=1, le=600)  # to send a request body, per started 64 KB
    # TFTP (UDP: the source address proves nothing): new transfers per source address and second (bursts
    # of twice as many), and transfers under way in all (each holds a socket)
    tftp_requests_per_second: float = Field(default=10, ge=1, le=10_000)
    tftp_sessions: int = Field(default=1024, ge=16, le=60_000)
    fetch_event_days: int = Field(default=30, ge=1, le=3650)  # fetch events older than this are pruned
    alerts_per_minute: int = Field(default=10, ge=1, le=10_000)  # more are counted into one summary alert
    alert_repeat_seconds: int = Field(default=3600, ge=0, le=7 * 86400)  # the same event again: not re-sent


BUILTIN = {
    "provisioning_url": "https://127.0.0.1:8443/p/",
    "tftp_url": "tftp://127.0.0.1:6969/",
    "timezone": "UTC",
    "ntp": ["pool.ntp.org"],
    "resync_interval": 86400,
    "registrar": {"kind": "none", "host": "sip.invalid", "port": None, "domain": None, "transport": "tls"},
    "policy": {"srtp": "required", "enrolment_hours": 24.0, "tftp": "bootstrap", "auth": "digest",
               "blocked_prefixes": []},
}


@dataclass(frozen=True)
class ResolvedRegistrar:
    kind: str
    host: str
    port: int
    domain: str
    transport: str
    db: str | None = None  # kamailio: SQLite file or PostgreSQL URL (relative paths: from the inventory)
    db_password_env: str | None = None
    include_file: str | None = None  # asterisk: the PJSIP include file provisioner writes
    reload_command: tuple[str, ...] | None = None  # run after the include file / ACL table changed
    context: str | None = None  # asterisk: dialplan context of the endpoints
    router: str | None = None  # fritzbox: MAC of the routers: entry the phones register on
    serve_unsynced: bool = False  # hand out configs whose SIP passwords this registrar does not hold

    def __post_init__(self):
        if isinstance(self.reload_command, list):  # hashable: settings are cache keys
            object.__setattr__(self, "reload_command", tuple(self.reload_command))


@dataclass(frozen=True)
class ResolvedPolicy:
    srtp: str
    enrolment_hours: float
    tftp: str
    auth: str
    blocked_prefixes: tuple[str, ...]


@functools.lru_cache(maxsize=16384)
def parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A request's source address, parsed once per address rather than on every check of every request."""
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


@dataclass(frozen=True)
class ResolvedSettings:
    """Every inheritable setting filled in, for one site (common files) or one device."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    provisioning_url: str
    tftp_url: str
    timezone: str
    ntp: tuple[str, ...]
    resync_interval: int
    registrar: ResolvedRegistrar
    policy: ResolvedPolicy
    firmware: str | tuple | None = None  # the firmware policy (provisioner/firmware/policy.py)
    rollout: RolloutSettings = RolloutSettings()

    def __hash__(self) -> int:
        # the key of the per-settings render context: hashed once, not on every device's render
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(astuple(self))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:  # a big inventory is loaded in another process, with other str hashes
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def in_site(self, ip: str) -> bool:
        addr = parse_ip(ip)
        return addr is not None and any(addr in n for n in self.networks)


@dataclass(frozen=True, slots=True)
class LineSpec:
    """A validated line, without the pydantic model's weight (100,000 devices stay in memory)."""

    extension: str
    display_name: str
    auth_user: str | None
    number: str | None
    label: str | None

    @classmethod
    def of(cls, ln: Line) -> "LineSpec":
        return cls(ln.extension, ln.display_name, ln.auth_user, ln.number, ln.label)


@dataclass(frozen=True, slots=True)
class ResolvedDevice:
    """A device with every inherited setting filled in: what render and serve work from."""

    mac: str
    vendor: str
    model: str
    site: str
    name: str | None
    lines: tuple[LineSpec, ...]
    settings: ResolvedSettings


def _merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            if v is None:
                continue
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = _merge(out[k], v)
            else:
                out[k] = v
    return out


SETTING_KEYS = tuple(Settings.model_fields)
OVERRIDABLE = frozenset(SETTING_KEYS)


def resolve_settings(*levels: Settings, networks: list[str] = ()) -> ResolvedSettings:
    layers = [BUILTIN] + [m.model_dump(include=set(SETTING_KEYS), exclude_none=True) for m in levels]
    s = _merge(*layers)
    reg = dict(s["registrar"])
    reg["domain"] = reg.get("domain") or reg["host"]
    reg["port"] = reg.get("port") or (5061 if reg["transport"] == "tls" else 5060)
    pol = s["policy"]
    return ResolvedSettings(
        networks=tuple(ipaddress.ip_network(n) for n in networks),
        provisioning_url=s["provisioning_url"], tftp_url=s["tftp_url"], timezone=s["timezone"],
        ntp=tuple(s["ntp"]), resync_interval=s["resync_interval"],
        registrar=ResolvedRegistrar(**reg),
        policy=ResolvedPolicy(srtp=pol["srtp"], enrolment_hours=pol["enrolment_hours"], tftp=pol["tftp"],
                              auth=pol["auth"], blocked_prefixes=tuple(pol["blocked_prefixes"])),
        firmware=freeze_firmware(s.get("firmware")), rollout=rollout_settings(s.get("rollout")),
    )


def resolve(defaults: Defaults, site: Site, device: Device) -> ResolvedDevice:
    return ResolvedDevice(mac=device.mac, vendor=device.vendor, model=device.model, site=device.site,
                          name=device.name, lines=tuple(LineSpec.of(ln) for ln in device.lines),
                          settings=resolve_settings(defaults, site, device, networks=site.networks))


@dataclass(frozen=True, slots=True)
class TrunkSpec:
    index: int
    registrar: str
    number: str
    username: str
    outbound_proxy: str | None
    stun_server: str | None
    password_env: str | None
    password_file: str | None  # absolute


@dataclass(frozen=True)
class ResolvedRouter:
    """A router as the operations use it: its site's settings filled in, secret sources resolved to paths."""

    mac: str
    profile: str
    model: str
    site: str
    name: str | None
    address: str
    user: str
    port: int | None
    tls_port: int | None
    tls: str | None
    password_env: str | None
    password_file: str | None  # absolute
    trunks: tuple[TrunkSpec, ...]
    lines: tuple[str, ...]
    options: dict
    settings: ResolvedSettings


@dataclass
class Inventory:
    path: Path
    source: Source
    defaults: Defaults
    sites: dict[str, Site]
    resolved: dict[str, ResolvedDevice]
    device_index: dict[str, int]  # MAC -> position in the devices list (for error lines)
    site_settings: dict[str, ResolvedSettings]
    security: Security = field(default_factory=lambda: Security())
    discovery: Any = None  # provisioner.discovery.config.DiscoveryConfig when the section is present
    zero_touch: Any = None  # provisioner.zerotouch.config.ZeroTouchConfig when the section is present
    routers: dict[str, ResolvedRouter] = field(default_factory=dict)
    router_index: dict[str, int] = field(default_factory=dict)  # MAC -> position in the routers list

    def router(self, mac: str) -> ResolvedRouter | None:
        return self.routers.get(mac)

    def is_site_address(self, ip: str) -> bool:
        return self.site_for_ip(ip) is not None

    def device(self, mac: str) -> ResolvedDevice | None:
        return self.resolved.get(mac)

    def site_for_ip(self, ip: str) -> str | None:
        """The site whose networks hold `ip` (most specific network wins)."""
        addr = parse_ip(ip)
        if addr is None:
            return None
        best, best_len = None, -1
        for name, st in self.site_settings.items():
            for n in st.networks:
                if addr in n and n.prefixlen > best_len:
                    best, best_len = name, n.prefixlen
        return best

    def settings_for_ip(self, ip: str) -> ResolvedSettings:
        """Settings for a common (secret-free) file: the source's site if known, else the defaults."""
        site = self.site_for_ip(ip)
        return self.site_settings[site] if site else resolve_settings(self.defaults)


TOP_KEYS = {"defaults", "sites", "devices", "security", "discovery", "routers", "zero_touch"}


BIG_INVENTORY = 4 * 2**20  # bytes; larger files are parsed in a child process


def load_inventory(path: Path, catalog: Catalog) -> Inventory:
    """Load and validate; raises ProblemsError listing every problem found.

    A large inventory (100,000 devices) is parsed in a separate process: parsing peaks at several times
    the size of the result and would leave this process's heap fragmented for good, so only the compact
    result (resolved devices sharing their site's settings) comes back.
    """
    try:
        big = path.stat().st_size > BIG_INVENTORY
    except OSError:
        big = False
    if big:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_load_inventory, path, catalog).result()
    return _load_inventory(path, catalog)


def _load_inventory(path: Path, catalog: Catalog) -> Inventory:
    src = Source.load(path)
    data = src.data if src.data is not None else {}
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ProblemsError([src.problem((), "the inventory must be a mapping with defaults, sites and devices")])
    for k in data:
        if k not in TOP_KEYS:
            problems.append(src.problem((k,), f"unknown section (expected {', '.join(sorted(TOP_KEYS))})"))

    defaults = Defaults()
    if data.get("defaults") is not None:
        try:
            defaults = Defaults.model_validate(plain(data["defaults"]))
            problems += [src.problem(("defaults", *p), m)
                         for p, m in policy_problems(plain(data["defaults"]), catalog)]
        except ValidationError as e:
            problems.extend(src.problems_from(e, ("defaults",)))

    discovery = None
    if data.get("discovery") is not None:  # optional; its model lives with discovery (no secrets in it)
        from provisioner.discovery.config import DiscoveryConfig
        try:
            discovery = DiscoveryConfig.model_validate(plain(data["discovery"]))
        except ValidationError as e:
            problems.extend(src.problems_from(e, ("discovery",)))

    zero_touch = None
    if data.get("zero_touch") is not None:  # optional; its model lives with zero-touch (no secrets in it)
        from provisioner.zerotouch.config import ZeroTouchConfig
        try:
            zero_touch = ZeroTouchConfig.model_validate(plain(data["zero_touch"]))
        except ValidationError as e:
            problems.extend(src.problems_from(e, ("zero_touch",)))

    security = Security()
    if data.get("security") is not None:
        try:
            security = Security.model_validate(plain(data["security"]))
        except ValidationError as e:
            problems.extend(src.problems_from(e, ("security",)))
        if security.client_ca and not (path.parent / security.client_ca).is_file():
            problems.append(src.problem(("security", "client_ca"), f"file {security.client_ca} not found"))

    sites: dict[str, Site] = {}
    raw_sites = data.get("sites") or {}
    if not isinstance(raw_sites, dict):
        problems.append(src.problem(("sites",), "must be a mapping of site name to site"))
        raw_sites = {}
    for name, raw in raw_sites.items():
        if not _TOKEN.match(str(name)):
            problems.append(src.problem(("sites", name), "site names use letters, digits and . _ + -"))
        try:
            sites[str(name)] = Site.model_validate(plain(raw) if raw is not None else {})
            problems += [src.problem(("sites", name, *p), m) for p, m in policy_problems(plain(raw), catalog)]
        except ValidationError as e:
            problems.extend(src.problems_from(e, ("sites", name)))
    if not raw_sites:
        problems.append(src.problem(("sites",), "at least one site is needed"))
    for i, name in enumerate(discovery.sip_pnp.auto_enrol_sites if discovery is not None else ()):
        if name not in raw_sites:
            problems.append(src.problem(("discovery", "sip_pnp", "auto_enrol_sites", i), f"unknown site {name!r}"))
    sraps = zero_touch.redirect.snom_sraps if zero_touch is not None else None
    for name in (sraps.profiles if sraps is not None else ()):
        if name not in raw_sites:
            problems.append(src.problem(("zero_touch", "redirect", "snom-sraps", "profiles", name),
                                        f"unknown site {name!r}"))

    devices: dict[str, Device] = {}
    index: dict[str, int] = {}
    raw_devices = data.get("devices") or []
    if not isinstance(raw_devices, list):
        problems.append(src.problem(("devices",), "must be a list of devices"))
        raw_devices = []
    ext_seen: dict[tuple[str, str], tuple] = {}
    for i, raw in enumerate(raw_devices):
        loc = ("devices", i)
        try:
            dev = Device.model_validate(plain(raw) if isinstance(raw, dict) else raw)
        except ValidationError as e:
            problems.extend(src.problems_from(e, loc))
            continue
        problems += [src.problem(loc + p, m) for p, m in policy_problems(plain(raw), catalog)]
        if dev.mac in devices:
            problems.append(src.problem(loc + ("mac",), f"duplicate MAC, already used by devices[{index[dev.mac]}]"))
            continue
        vendor = catalog.get(dev.vendor)
        if vendor is None:
            problems.append(src.problem(loc + ("vendor",),
                                        f"unknown vendor {dev.vendor!r} (known: {', '.join(sorted(catalog.vendors))})"))
        elif dev.model not in vendor.models:
            problems.append(src.problem(loc + ("model",),
                                        f"unknown {vendor.name} model {dev.model!r} (known: {', '.join(vendor.models)})"))
        elif len(dev.lines) > vendor.models[dev.model].lines:
            problems.append(src.problem(loc + ("lines",),
                                        f"{vendor.name} {dev.model} has {vendor.models[dev.model].lines} line(s), "
                                        f"{len(dev.lines)} given"))
        if dev.site not in raw_sites:
            problems.append(src.problem(loc + ("site",),
                                        f"unknown site {dev.site!r} (known: {', '.join(map(str, raw_sites)) or 'none'})"))
        for j, line in enumerate(dev.lines):
            for fld in ("extension", "auth_user"):
                val = getattr(line, fld)
                if val is None:
                    continue
                key = (dev.site, val)
                if key in ext_seen and ext_seen[key] != (i, j, fld) and not (fld == "auth_user" and val == line.extension):
                    a, b, f = ext_seen[key]
                    problems.append(src.problem(loc + ("lines", j, fld),
                                                f"{val!r} already used in site {dev.site} by devices[{a}].lines[{b}].{f}"))
                ext_seen.setdefault(key, (i, j, fld))
        devices[dev.mac] = dev
        index[dev.mac] = i

    routers = _check_routers(src, data.get("routers"), catalog, raw_sites, index, ext_seen, problems)
    if problems:
        raise ProblemsError(problems)
    site_settings = {n: resolve_settings(defaults, st, networks=st.networks) for n, st in sites.items()}
    resolved = {}
    for mac, dev in devices.items():
        if dev.model_fields_set & OVERRIDABLE:
            r = resolve(defaults, sites[dev.site], dev)
        else:  # most devices inherit everything: share their site's settings (fast with 100,000 devices)
            r = ResolvedDevice(mac=dev.mac, vendor=dev.vendor, model=dev.model, site=dev.site, name=dev.name,
                               lines=tuple(LineSpec.of(ln) for ln in dev.lines), settings=site_settings[dev.site])
        if r.settings.registrar.host == "sip.invalid":
            problems.append(src.problem(("devices", index[mac], "registrar"),
                                        "no registrar host set (in defaults, the site or the device)"))
        resolved[mac] = r
    if problems:
        raise ProblemsError(problems)
    del devices  # the resolved devices are all that is kept: the pydantic models weigh ten times more
    src.data = None  # problems found later are located by re-parsing the text (Source.positioned)
    resolved_routers = {r.mac: _resolve_router(r, site_settings[r.site], path) for _, r in routers}
    return Inventory(path, src, defaults, sites, resolved, index, site_settings, security, discovery,
                     routers=resolved_routers, router_index={r.mac: i for i, r in routers}, zero_touch=zero_touch)


def _check_routers(src: Source, raw: Any, catalog: Catalog, raw_sites: dict, device_index: dict[str, int],
                   ext_seen: dict[tuple[str, str], tuple], problems: list[Problem]) -> list[tuple[int, Router]]:
    """Validate the routers: section; every cross-check is a FILE:LINE problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(src.problem(("routers",), "must be a list of routers"))
        return []
    out: list[tuple[int, Router]] = []
    seen: dict[str, int] = {}
    served: dict[tuple[str, str], int] = {}
    extensions = {key for key, (_, _, fld) in ext_seen.items() if fld == "extension"}
    for i, item in enumerate(raw):
        loc = ("routers", i)
        try:
            r = Router.model_validate(plain(item) if isinstance(item, dict) else item)
        except ValidationError as e:
            problems.extend(src.problems_from(e, loc))
            continue
        if r.mac in seen:
            problems.append(src.problem(loc + ("mac",), f"duplicate MAC, already used by routers[{seen[r.mac]}]"))
            continue
        if r.mac in device_index:
            problems.append(src.problem(loc + ("mac",), f"duplicate MAC, already used by devices[{device_index[r.mac]}]"))
            continue
        seen[r.mac] = i
        ok = True
        prof = catalog.routers.get(r.profile)
        if prof is None:
            problems.append(src.problem(loc + ("profile",), f"unknown router profile {r.profile!r} (known: "
                                        f"{', '.join(sorted(catalog.routers)) or 'none'})"))
            ok = False
        elif r.model not in prof.models:
            problems.append(src.problem(loc + ("model",), f"unknown {prof.name} model {r.model!r} "
                                        f"(known: {', '.join(prof.models)})"))
            ok = False
        if r.site not in raw_sites:
            problems.append(src.problem(loc + ("site",), f"unknown site {r.site!r} "
                                        f"(known: {', '.join(map(str, raw_sites)) or 'none'})"))
            ok = False
        if prof is not None:
            if r.trunks and not prof.trunks:
                problems.append(src.problem(loc + ("trunks",), f"{prof.display_name} routers hold no SIP trunks here"))
                ok = False
            if r.lines and not prof.registrar:
                problems.append(src.problem(loc + ("lines",), f"{prof.display_name} routers register no handsets"))
                ok = False
            for key in r.options:
                if key not in prof.options:
                    problems.append(src.problem(loc + ("options", key), f"unknown option for profile {prof.name} "
                                                f"(known: {', '.join(sorted(prof.options)) or 'none'})"))
                    ok = False
            if r.model in prof.models and len(r.lines) > prof.models[r.model].lines:
                problems.append(src.problem(loc + ("lines",), f"{prof.display_name} {r.model} registers at most "
                                            f"{prof.models[r.model].lines} handsets, {len(r.lines)} given"))
                ok = False
        indices: dict[int, int] = {}
        for j, t in enumerate(r.trunks):
            if t.index in indices:
                problems.append(src.problem(loc + ("trunks", j, "index"),
                                            f"trunk index {t.index} already used by trunks[{indices[t.index]}]"))
                ok = False
            indices.setdefault(t.index, j)
        for j, ext in enumerate(r.lines):
            if (r.site, ext) not in extensions:
                problems.append(src.problem(loc + ("lines", j), f"unknown line extension {ext!r}: no device line in "
                                            f"site {r.site} has it"))
                ok = False
            elif (r.site, ext) in served:
                problems.append(src.problem(loc + ("lines", j), f"extension {ext!r} is already served by "
                                            f"routers[{served[(r.site, ext)]}]"))
                ok = False
            served.setdefault((r.site, ext), i)
        if ok:
            out.append((i, r))
    return out


def _resolve_router(r: Router, settings: ResolvedSettings, inventory_path: Path) -> ResolvedRouter:
    def where(p: str | None) -> str | None:
        return None if p is None else str((inventory_path.parent / p).resolve())

    return ResolvedRouter(
        mac=r.mac, profile=r.profile, model=r.model, site=r.site, name=r.name, address=r.address,
        user=r.management.user, port=r.management.port, tls_port=r.management.tls_port, tls=r.management.tls,
        password_env=r.management.password_env, password_file=where(r.management.password_file),
        trunks=tuple(TrunkSpec(t.index, t.registrar, t.number, t.username, t.outbound_proxy, t.stun_server,
                               t.password_env, where(t.password_file)) for t in r.trunks),
        lines=tuple(r.lines), options=dict(r.options), settings=settings)


def vendor_of(catalog: Catalog, dev: ResolvedDevice) -> VendorProfile:
    v = catalog.get(dev.vendor)
    assert v is not None  # load_inventory checked it
    return v
