"""Vendor profiles: declarative YAML in vendors/, never executed code.

A profile says which files a device asks for, which template answers each, how its passwords must look,
what its factory defaults are (so we never render them), and how to recognise it (OUIs, User-Agents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisioner.credentials import PasswordRule
from provisioner.firmware.model import FirmwareFacts
from provisioner.macaddr import normalize_mac
from provisioner.yamlsrc import Problem, ProblemsError, Source, plain
from provisioner.zerotouch.model import ZeroTouch

PLACEHOLDERS = {
    "{mac}": r"(?P<mac>[0-9a-f]{12})",
    "{MAC}": r"(?P<mac>[0-9A-F]{12})",
    "{model}": r"(?P<model>[A-Za-z0-9_+-]{1,32})",
}


def name_regex(name: str) -> re.Pattern:
    """A file-name pattern with placeholders as an anchored regex with named groups."""
    out = ""
    i = 0
    while i < len(name):
        for ph, rx in PLACEHOLDERS.items():
            if name.startswith(ph, i):
                out += rx
                i += len(ph)
                break
        else:
            out += re.escape(name[i])
            i += 1
    return re.compile(out + r"\Z")


def check_file_name(v: str) -> str:
    if "/" in v or v.startswith("."):
        raise ValueError("a file name, not a path")
    rest = v
    for ph in PLACEHOLDERS:
        rest = rest.replace(ph, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"unknown placeholder in {v!r}; use one of {', '.join(PLACEHOLDERS)}")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(Strict):
    name: str  # literal, or with {mac} / {MAC} / {model}
    template: str  # relative to templates/
    # the file whose fetch proves the device holds its desired config (carries the secrets)
    trigger: bool = False
    # what TFTP answers for this file by default: the bootstrap template, or nothing
    tftp_template: str | None = None
    # XML files whose root differs from the vendor's (e.g. Snom's <setting-files> index .htm files)
    xml_root: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_file_name(v)

    @property
    def per_device(self) -> bool:
        return "{mac}" in self.name or "{MAC}" in self.name

    @cached_property
    def regex(self) -> re.Pattern:
        return name_regex(self.name)

    def filename_for(self, mac: str | None = None, model: str | None = None) -> str:
        name = self.name
        if mac is not None:
            name = name.replace("{mac}", mac.lower()).replace("{MAC}", mac.upper())
        if model is not None:
            name = name.replace("{model}", model)
        return name


class NotServed(Strict):
    """A file this vendor's phones ask for that we do not serve (a firmware image, a boot file we leave out, a
    log upload): answered 404 with a neutral body and never counted against the source, so a phone's normal
    boot cannot get it banned. Each entry names its source; `uncertain` marks what no source confirms."""

    name: str  # with {mac} / {MAC} / {model} placeholders
    method: Literal["GET", "PUT"] = "GET"  # GET also covers HEAD and TFTP reads; PUT the phone's uploads
    why: str
    source: str
    uncertain: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_file_name(v)

    @cached_property
    def regex(self) -> re.Pattern:
        return name_regex(self.name)


class BootSequence(Strict):
    """What a phone of this family asks for on boot, in order, with the source saying so. Steps are file names
    with placeholders ({mac}, {MAC}, {model}), optionally prefixed with `tftp:` (read over TFTP) or `put:` (an
    upload). Tests replay every sequence against a real `serve` (none of it may count against the phone)."""

    name: str
    state: Literal["factory", "provisioned"]  # factory: no credentials yet; provisioned: holds its own
    source: str
    steps: list[str] = Field(min_length=1)
    uncertain: bool = False

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[str]) -> list[str]:
        for step in v:
            check_file_name(step.split(":", 1)[1] if step.startswith(("tftp:", "put:")) else step)
        return v


class FactoryDefault(Strict):
    account: str  # admin, user, var, pin, ...
    username: str | None = None
    password: str  # "" when the factory has no password at all
    uncertain: bool = False  # vendors.md marks it [U]


class Model(Strict):
    lines: int = Field(default=1, ge=1, le=64)
    ovh_name: str | None = None  # name in OVH Plug & Phone's catalogue
    family: str | None = None
    min_firmware: str | None = None
    kind: Literal["phone", "dect", "ata", "conference", "router"] = "phone"
    # what {model} reads in the names of the files this model asks for, when it is not the model's name
    # (Cisco's product series "504G" in spa504G.cfg, Yealink's hardware id "028" in y000000000028.cfg)
    file_model: str | None = Field(default=None, pattern=r"[A-Za-z0-9_+-]{1,32}")


class SipNotify(Strict):
    resync: str | None = None  # Event header value
    reboot: str | None = None
    reset: str | None = None


class VendorProfile(Strict):
    name: str
    display_name: str
    format: Literal["keyvalue", "xml"]
    xml_root: str | None = None
    keyvalue_header: str | None = None  # first line the format requires (Yealink "#!version:1.0.0.1")
    ouis: list[str] = Field(default_factory=list)
    user_agents: list[str] = Field(default_factory=list)  # regexes with named groups model/firmware/mac
    # what a real device sends, with {model} {mac} {MAC} {mac_colon}: docs, banners and tests use it
    example_user_agent: str | None = None
    # "always": the firmware sends its MAC in every provisioning request, so a User-Agent without one is
    # refused (enrolment theft with a made-up User-Agent); "optional": some firmware leaves it out
    user_agent_mac: Literal["always", "optional"] = "optional"
    files: list[FileSpec]
    passwords: dict[Literal["sip", "admin", "user", "provisioning"], PasswordRule]
    web_accounts: list[str] = Field(default_factory=lambda: ["admin"])  # which web passwords to generate
    factory_defaults: list[FactoryDefault] = Field(default_factory=list)
    # files the device PUTs back with its own credentials (settings changed on the phone), e.g. {mac}-local.cfg
    uploads: list[str] = Field(default_factory=list)
    # files the phones ask for that we do not serve: a neutral 404, never counted against the source
    not_served: list[NotServed] = Field(default_factory=list)
    # the requests a factory-fresh and a provisioned phone make on boot (data for docs and tests)
    boot: list[BootSequence] = Field(default_factory=list)
    sip_notify: SipNotify = SipNotify()
    reset_instructions: str | None = None
    provisioning_http_auth: bool = True
    client_certificates: bool = False
    min_firmware: str | None = None
    models: dict[str, Model]
    zero_touch: ZeroTouch = ZeroTouch()  # how a factory-fresh unit finds its server (issue 19)
    firmware: FirmwareFacts = FirmwareFacts()  # how the family takes a new image from provisioning (issue 18)

    @field_validator("ouis")
    @classmethod
    def _ouis(cls, v: list[str]) -> list[str]:
        out = []
        for o in v:
            hexes = re.sub(r"[^0-9a-fA-F]", "", o)
            if len(hexes) != 6:
                raise ValueError(f"OUI {o!r} is not 3 bytes")
            out.append(hexes.lower())
        return out

    @field_validator("user_agents")
    @classmethod
    def _uas(cls, v: list[str]) -> list[str]:
        for rx in v:
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"bad regex {rx!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.format == "xml" and not self.xml_root:
            raise ValueError("xml_root is required for format xml")
        if sum(1 for f in self.files if f.trigger) != 1:
            raise ValueError("exactly one file must be the trigger (the per-device file with the secrets)")
        trig = next(f for f in self.files if f.trigger)
        if not trig.per_device:
            raise ValueError("the trigger file must be per device ({mac} or {MAC} in its name)")
        for need in ("sip", "provisioning"):
            if need not in self.passwords:
                raise ValueError(f"passwords.{need} rule missing")
        served = {f.name for f in self.files} | {("PUT", u) for u in self.uploads}
        for ns in self.not_served:
            if (ns.name if ns.method == "GET" else ("PUT", ns.name)) in served:
                raise ValueError(f"not_served {ns.name!r} is also a file this profile serves")
        for acct in self.web_accounts:
            if acct not in ("admin", "user"):
                raise ValueError(f"web account {acct!r}: only admin and user are generated")
            if acct not in self.passwords:
                raise ValueError(f"passwords.{acct} rule missing for web account {acct}")
        return self

    @cached_property
    def ua_regexes(self) -> list[re.Pattern]:
        return [re.compile(rx) for rx in self.user_agents]

    @cached_property
    def upload_regexes(self) -> list[re.Pattern]:
        return [name_regex(u) for u in self.uploads]

    @cached_property
    def trigger(self) -> FileSpec:
        return next(f for f in self.files if f.trigger)

    def user_agent_for(self, model: str, mac: str) -> str | None:
        if not self.example_user_agent:
            return None
        mac_colon = ":".join(mac[i:i + 2] for i in range(0, 12, 2))
        return (self.example_user_agent.replace("{model}", model).replace("{mac_colon}", mac_colon)
                .replace("{mac}", mac.lower()).replace("{MAC}", mac.upper()))

    def factory_passwords(self) -> set[str]:
        return {d.password for d in self.factory_defaults}

    @cached_property
    def _models_by_plain_name(self) -> dict[str, str]:
        return {_plain_model(k): k for k in self.models}

    def model_key(self, ua_model: str) -> str | None:
        """The profile's model for a model as a User-Agent spells it (VVX_400, SIP-T46S, "X6U Pro")."""
        if ua_model in self.models:
            return ua_model
        return self._models_by_plain_name.get(_plain_model(ua_model))

    def same_family(self, ua_model: str, inventory_model: str) -> bool:
        """Whether a User-Agent's model can be the inventory's device: the same model, or one of its family."""
        key = self.model_key(ua_model)
        if key is None:
            return False
        if key == inventory_model:
            return True
        a, b = self.models.get(key), self.models.get(inventory_model)
        return a is not None and b is not None and a.family is not None and a.family == b.family


def _plain_model(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).upper()


class RouterProfile(Strict):
    """A router platform (kind: router in its YAML); the driver named here does the talking."""

    kind: Literal["router"]
    name: str
    display_name: str
    driver: str  # module in provisioner/drivers/
    ouis: list[str] = Field(default_factory=list)
    passwords: dict[str, PasswordRule] = Field(default_factory=dict)
    factory_defaults: list[FactoryDefault] = Field(default_factory=list)
    min_firmware: str | None = None
    models: dict[str, Model]
    options: dict[str, object] = Field(default_factory=dict)  # driver-specific facts
    # what the platform can hold for the inventory (checked there, FILE:LINE): SIP trunks, handsets it registers
    trunks: bool = False
    registrar: bool = False
    # files the driver renders and pushes: name on the device -> template under templates/
    templates: dict[str, str] = Field(default_factory=dict)
    reset_instructions: str | None = None  # what the technician does after a factory reset to re-enrol

    @field_validator("ouis")
    @classmethod
    def _ouis(cls, v: list[str]) -> list[str]:
        return VendorProfile._ouis(v)

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        for name, tmpl in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", name):
                raise ValueError(f"file name {name!r}: letters, digits and _ only")
            if tmpl.startswith("/") or ".." in tmpl.split("/"):
                raise ValueError(f"template {tmpl!r} must be a path under templates/")
        return v


@dataclass(frozen=True)
class UserAgentInfo:
    vendor: str
    model: str | None
    firmware: str | None
    mac: str | None
    reason: str


@dataclass(frozen=True)
class FileMatch:
    vendor: VendorProfile
    spec: FileSpec
    mac: str | None
    model: str | None


MEMO_KEY_MAX = 256  # longer file names / User-Agents are looked up, not remembered
MEMO_ENTRIES = 16384
_NONE = object()


def _memo(d: dict, key: str, value) -> None:
    if len(d) >= MEMO_ENTRIES:
        d.clear()
    d[key] = value


@dataclass
class Catalog:
    """All vendor profiles, by name, plus the file-name index the request pipeline uses."""

    vendors: dict[str, VendorProfile]
    sources: dict[str, Source] = field(default_factory=dict)
    routers: dict[str, RouterProfile] = field(default_factory=dict)
    # every request asks both; answers depend on the string only (bounded: names and UAs come from clients)
    _files: dict = field(default_factory=dict, repr=False, compare=False)
    _uas: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, name: str) -> VendorProfile | None:
        return self.vendors.get(name)

    def match_file(self, filename: str) -> tuple[FileMatch, ...]:
        """Profiles whose file names match; a literal name (Polycom's 000000000000.cfg) beats any pattern."""
        hit = self._files.get(filename)
        if hit is None:
            hit = self._match_file(filename)
            if len(filename) <= MEMO_KEY_MAX:
                _memo(self._files, filename, hit)
        return hit

    def _match_file(self, filename: str) -> tuple[FileMatch, ...]:
        out = []
        for v in self.vendors.values():
            for spec in v.files:
                m = spec.regex.match(filename)
                if m:
                    gd = m.groupdict()
                    out.append(FileMatch(v, spec, gd.get("mac") and gd["mac"].lower(), gd.get("model")))
        literal = [m for m in out if "{" not in m.spec.name]
        return tuple(literal or out)

    def parse_user_agent(self, ua: str | None) -> UserAgentInfo | None:
        if not ua:
            return None
        hit = self._uas.get(ua, _NONE)
        if hit is _NONE:
            hit = self._parse_user_agent(ua)
            if len(ua) <= MEMO_KEY_MAX:
                _memo(self._uas, ua, hit)
        return hit

    def _parse_user_agent(self, ua: str) -> UserAgentInfo | None:
        for v in self.vendors.values():
            for rx in v.ua_regexes:
                m = rx.search(ua)
                if m:
                    gd = m.groupdict()
                    mac = None
                    if gd.get("mac"):
                        try:
                            mac = normalize_mac(gd["mac"])
                        except ValueError:
                            mac = None
                    return UserAgentInfo(v.name, gd.get("model"), gd.get("firmware"), mac,
                                         f"User-Agent matched {v.name} pattern")
        return None

    def match_not_served(self, filename: str, user_agent: str | None, method: str = "GET"
                         ) -> tuple[VendorProfile, NotServed] | None:
        """A file some vendor's phones ask for that we do not serve. A name no profile serves is answered
        alike for every requester; a name another profile serves (Polycom asks for <mac>.cfg, Yealink's
        per-device file) only when the User-Agent names the vendor that does not serve it, so the answer
        never depends on whether the MAC exists."""
        method = "PUT" if method == "PUT" else "GET"
        hits = [(v, ns) for v in self.vendors.values() for ns in v.not_served
                if ns.method == method and ns.regex.match(filename)]
        if not hits:
            return None
        if method == "PUT":
            served = {v.name for v, _ in self.match_upload(filename)}
        else:
            served = {m.vendor.name for m in self.match_file(filename)}
        hits = [h for h in hits if h[0].name not in served]  # a vendor's own file beats its not-served pattern
        if not hits:
            return None
        ua = self.parse_user_agent(user_agent)
        by_ua = [h for h in hits if ua and h[0].name == ua.vendor]
        if served:
            return by_ua[0] if by_ua else None
        return (by_ua or hits)[0]

    def match_upload(self, filename: str) -> list[tuple[VendorProfile, str]]:
        """(profile, mac) for every profile that lets a device upload this file name."""
        out = []
        for v in self.vendors.values():
            for rx in v.upload_regexes:
                m = rx.match(filename)
                if m and m.groupdict().get("mac"):
                    out.append((v, m.group("mac").lower()))
        return out

    def vendor_for_oui(self, mac: str) -> list[str]:
        return [v.name for v in self.vendors.values() if mac[:6] in v.ouis]


def load_catalog(vendors_dir: Path, templates_dir: Path | None = None) -> Catalog:
    problems: list[Problem] = []
    vendors: dict[str, VendorProfile] = {}
    routers: dict[str, RouterProfile] = {}
    sources: dict[str, Source] = {}
    files = sorted(vendors_dir.glob("*.yaml"))
    if not files:
        raise ProblemsError([Problem(str(vendors_dir), 0, "-", "no vendor profiles (*.yaml) found")])
    for path in files:
        try:
            src = Source.load(path)
        except ProblemsError as e:
            problems.extend(e.problems)
            continue
        data = plain(src.data)
        model = RouterProfile if isinstance(data, dict) and data.get("kind") == "router" else VendorProfile
        try:
            prof = model.model_validate(data)
        except ValidationError as e:
            problems.extend(src.problems_from(e))
            continue
        if prof.name != path.stem:
            problems.append(src.problem(("name",), f"must equal the file name {path.stem!r}"))
            continue
        sources[prof.name] = src
        if isinstance(prof, RouterProfile):
            routers[prof.name] = prof
            continue
        if templates_dir is not None:
            for i, spec in enumerate(prof.files):
                for key in ("template", "tftp_template"):
                    t = getattr(spec, key)
                    if t and not (templates_dir / t).is_file():
                        problems.append(src.problem(("files", i, key), f"template {t} not found in {templates_dir}"))
            for key in ("offer_file", "status_file"):  # firmware (issue 18)
                f = getattr(prof.firmware, key)
                if f is not None and not (templates_dir / f.template).is_file():
                    problems.append(src.problem(("firmware", key, "template"),
                                                f"template {f.template} not found in {templates_dir}"))
        vendors[prof.name] = prof
    if problems:
        raise ProblemsError(problems)
    return Catalog(vendors, sources, routers)
