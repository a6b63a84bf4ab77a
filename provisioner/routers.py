"""Router operations: push (render, push, read back, compare), survey (facts and drift), reboot, reset.

Each router of the inventory's `routers:` list is acted on through the driver its profile names
(vendors/<profile>.yaml, `driver:`). Its credentials are sealed in the store's credentials table under the
router's MAC, in generations like a phone's (a store `devices` row with vendor = the router profile):

    login            the management user's password when the agent does not replace it (a FRITZ!Box's
                     dedicated TR-064 user; an SSH login that is not one of the managed accounts)
    password:<acct>  an SSH router account whose password the agent generated and set (root); when the
                     management user is that account, the login follows it
    config           the FRITZ!Box's config password (LANConfigSecurity), generated to the box's rules
    client:<ext>     the SIP password of a handset registered on the box, generated to the box's rules
                     (X_VoIP GetInfoEx) and to the phone vendor's own rule
    trunk:<index>    a SIP trunk's password, from the operator (see below), kept for read-back

Secrets the operator owns never live in inventory.yaml: a trunk's password, and the management password
for the first contact, come from the environment variable (`password_env: NAME`) or the file
(`password_file: path`, relative to the inventory, one line, mode 0600) that the inventory names. The
trunk password is read at every push (the operator rotates it there); the management password only while
the store has none that works.

A push is two-phase like a phone rotation: new or changed secrets are written as a *pending* generation
first, the device gets them, and only a read-back without drift makes that generation active. An
interrupted push leaves the pending generation, and the next push resumes with the very same values.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from provisioner import credentials as pw
from provisioner.drivers import get_driver
from provisioner.drivers.base import Drift, DriverError, NotSupported, PushResult
from provisioner.errors import InputError, RenderError, UnknownDevice
from provisioner.inventory import ResolvedRouter
from provisioner.macaddr import colon, normalize_mac
from provisioner.secret import Secret
from provisioner.store import utcnow
from provisioner.vendors import RouterProfile
from provisioner.yamlsrc import ProblemsError

log = logging.getLogger("provisioner.routers")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ---- lookup ---------------------------------------------------------------------------------------

def router_mac(rt, mac: str) -> str | None:
    """The normalized MAC when it names a router of the inventory, else None (a phone, unknown, malformed)."""
    try:
        norm = normalize_mac(mac)
    except ValueError:
        return None
    return norm if norm in rt.inventory.routers else None


def resolve_router(rt, mac: str) -> ResolvedRouter:
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    r = rt.inventory.router(mac)
    if r is None:
        if rt.inventory.device(mac) is not None:
            raise InputError(f"{mac} is a phone: phones fetch their configuration themselves "
                             f"(use `provisioner reprovision {mac}`)")
        raise UnknownDevice(f"no router {mac} in {rt.inventory_path} (routers: section)")
    return r


def profile_of(rt, r: ResolvedRouter) -> RouterProfile:
    prof = rt.catalog.routers.get(r.profile)
    if prof is None:  # load_inventory checked it
        raise InputError(f"router {r.mac}: unknown router profile {r.profile!r}")
    return prof


def option(r: ResolvedRouter, prof: RouterProfile, key: str, default: Any = None) -> Any:
    """Inventory options override the profile's."""
    if key in r.options:
        return r.options[key]
    return prof.options.get(key, default)


def label_of(r: ResolvedRouter, prof: RouterProfile) -> str:
    return f"{prof.display_name} {r.name or colon(r.mac)} ({r.address})"


def read_secret_source(env: str | None, file: str | None, what: str, required: bool,
                       allow_empty: bool = False) -> Secret | None:
    """A secret the operator owns, from the environment variable or file the inventory names."""
    if env:
        value = os.environ.get(env)
        if value is None or (value == "" and not allow_empty):
            if required:
                raise InputError(f"{what}: environment variable {env} is not set")
            return None
        return Secret(value)
    if file:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            if required:
                raise InputError(f"{what}: file {file} not found") from None
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{what}: cannot read {file} ({getattr(e, 'strerror', None) or type(e).__name__})") from None
        if mode & 0o077:
            log.warning("%s: %s is readable by others (mode %o); chmod 600 it", what, file, mode)
        value = text.rstrip("\r\n")
        if "\n" in value or (value == "" and not allow_empty):
            raise InputError(f"{what}: {file} must hold the password on one line")
        return Secret(value)
    if required:
        raise InputError(f"{what}: no password_env or password_file in the inventory")
    return None


# ---- store ----------------------------------------------------------------------------------------

def ensure_row(rt, r: ResolvedRouter, actor: str) -> None:
    """A `devices` row for the router (vendor = its profile), so its credentials can be sealed under its MAC."""
    store = rt.store
    if store.device(r.mac) is not None:
        return
    now = utcnow()
    with store.write() as c:
        store.create_device(c, r.mac, r.profile, r.model, r.site, "enrolling", None, now)
        store.append_audit(c, actor, "router.added", r.mac, "router in inventory, first contact",
                           {"profile": r.profile, "model": r.model, "site": r.site}, now)


def stage(rt, mac: str, creds: dict[str, Secret], actor: str, why: str, names: list[str]) -> int:
    """Write `creds` (the router's complete credential set) as a new pending generation; an earlier
    pending one is replaced. Returns the generation."""
    store = rt.store
    now = utcnow()
    with store.write() as c:
        store.set_credential_status(c, mac, "pending", "discarded", now)
        gen = store.next_generation(c, mac)
        store.add_credentials(c, mac, gen, "pending", creds, now)
        store.append_audit(c, actor, "router.credentials.staged", mac, why, {"generation": gen, "names": names}, now)
    return gen


def promote(rt, mac: str, actor: str, details: dict) -> int | None:
    """The device holds the pending generation (read back without drift): make it active."""
    store = rt.store
    now = utcnow()
    with store.write() as c:
        pending = store.credentials(mac, "pending", conn=c)
        gen = None
        if pending:
            gen = store.next_generation(c, mac) - 1
            store.set_credential_status(c, mac, "active", "retired", now)
            store.set_credential_status(c, mac, "pending", "active", now)
            store.update_device(c, mac, generation=gen, state="provisioned", updated_at=now)
        else:
            store.update_device(c, mac, state="provisioned", updated_at=now)
        store.append_audit(c, actor, "router.provisioned", mac, "pushed and read back without drift",
                           {**details, "generation": gen}, now)
    return gen


def _unique(rule: pw.PasswordRule, taken: list[Secret], forbidden: set[str]) -> Secret:
    for _ in range(100):
        s = pw.generate(rule, forbidden)
        if s not in taken:
            return s
    raise RuntimeError("password generator repeated itself")  # pragma: no cover


# ---- rendering (SSH routers) ------------------------------------------------------------------------

def _uci_finalize(value: Any) -> str:
    from provisioner.drivers.ssh_router import uci_quote
    if value is None:
        raise RenderError("a template printed an empty (None) value; guard optional settings with {% if %}")
    if isinstance(value, bool):
        value = "1" if value else "0"
    try:
        return uci_quote(value)
    except ValueError as e:
        raise RenderError(str(e)) from None


@functools.lru_cache(maxsize=4)
def _uci_env(templates: Path):
    """Compiled once per templates directory, like the phones' environments."""
    from provisioner.render import make_env
    return make_env(templates, False, _uci_finalize)


def render_files(rt, r: ResolvedRouter, prof: RouterProfile) -> dict[str, bytes]:
    """The profile's templates rendered for this router; every printed value is quoted for UCI."""
    from provisioner.desired import settings_context
    from provisioner.drivers.ssh_router import parse_uci
    from provisioner.render import run_template
    from provisioner.runtime import templates_dir

    env = _uci_env(templates_dir())
    hostname = re.sub(r"[^A-Za-z0-9-]+", "-", r.name or "").strip("-")[:63] or f"router-{r.mac[6:]}"
    settings = settings_context(r.settings)
    opts = {**prof.options, **r.options}
    opts["port"] = r.port or opts.get("port") or 22
    ctx = {"router": {"mac": r.mac, "mac_colon": colon(r.mac), "name": r.name or hostname, "hostname": hostname,
                      "site": r.site, "model": r.model, "address": r.address},
           "time": settings["time"], "options": opts}
    out = {}
    who = f"router {r.mac}"
    for name, tmpl in prof.templates.items():
        text = run_template(env, tmpl, ctx, who)
        try:
            parse_uci(text)
        except ValueError as e:
            raise RenderError(f"{who}: template {tmpl}: output is not UCI ({e})") from None
        out[name] = text.encode()
    return out


# ---- drivers --------------------------------------------------------------------------------------

def make_driver(rt, r: ResolvedRouter, prof: RouterProfile, logins: list[Secret], progress: Progress,
                on_confirm: Callable[[str], None] | None = None, confirm_timeout: float | None = None):
    """The router's driver; an option the driver refuses (an account name, a path) is an inventory problem
    (FILE:LINE, exit 2), found by `provisioner check` before any command needs the driver."""
    try:
        return _make_driver(rt, r, prof, logins, progress, on_confirm, confirm_timeout)
    except (ValueError, TypeError) as e:
        raise ProblemsError([option_problem(rt, r, str(e))]) from None


def option_problem(rt, r: ResolvedRouter, message: str):
    inv = rt.inventory
    return inv.source.problem(("routers", inv.router_index.get(r.mac, 0), "options"), message)


def driver_problems(rt) -> list:
    """Every router's driver built once (no connection): what its options would make it refuse."""
    out = []
    for r in rt.inventory.routers.values():
        try:
            make_driver(rt, r, profile_of(rt, r), [], _quiet)
        except ProblemsError as e:
            out += e.problems
    return out


def _make_driver(rt, r: ResolvedRouter, prof: RouterProfile, logins: list[Secret], progress: Progress,
                 on_confirm: Callable[[str], None] | None = None, confirm_timeout: float | None = None):
    cls = get_driver(prof.driver)
    common = dict(home=rt.home, progress=progress, label=label_of(r, prof),
                  forget_hint=f"provisioner routers forget-key {r.mac}")
    if prof.driver == "fritzbox":
        return cls(r.address, r.user, logins, port=int(r.port or option(r, prof, "port", 49000)),
                   tls_port=int(r.tls_port or option(r, prof, "tls_port", 49443)),
                   tls=r.tls or option(r, prof, "tls", "auto"), timeout=float(option(r, prof, "timeout", 10)),
                   confirm_timeout=float(confirm_timeout or option(r, prof, "confirm_timeout", 120)),
                   poll_interval=float(option(r, prof, "poll_interval", 1.0)), on_confirm=on_confirm, **common)
    if prof.driver == "ssh_router":
        accounts = option(r, prof, "accounts", ["root"])
        return cls(r.address, r.user, logins, port=int(r.port or option(r, prof, "port", 22)),
                   root=str(option(r, prof, "root", "/")), config_dir=str(option(r, prof, "config_dir", "etc/config")),
                   managed_files=list(prof.templates), accounts=list(accounts) if isinstance(accounts, list)
                   else [str(accounts)], apply_command=str(option(r, prof, "apply_command", "uci commit")),
                   password_command=str(option(r, prof, "password_command", "passwd {user}")),
                   reboot_command=str(option(r, prof, "reboot_command", "reboot")),
                   reset_command=str(option(r, prof, "reset_command", "firstboot -y && reboot")),
                   lan_interface=str(option(r, prof, "lan_interface", "br-lan")),
                   timeout=float(option(r, prof, "timeout", 10)), **common)
    raise NotSupported(f"router {r.mac}: no operations for driver {prof.driver!r}")


def _login_name(r: ResolvedRouter, prof: RouterProfile) -> str:
    if prof.driver == "ssh_router" and r.user in _accounts(r, prof):
        return f"password:{r.user}"
    return "login"


def _accounts(r: ResolvedRouter, prof: RouterProfile) -> list[str]:
    acc = option(r, prof, "accounts", ["root"]) if prof.driver == "ssh_router" else []
    return list(acc) if isinstance(acc, list) else [str(acc)]


def login_candidates(r: ResolvedRouter, prof: RouterProfile, active: dict, pending: dict,
                     required_source: bool = False) -> tuple[list[Secret], Secret | None]:
    """Passwords to try, in order: the store's (active, then an interrupted push's pending), the source."""
    name = _login_name(r, prof)
    out: list[Secret] = []
    for s in (active.get(name), pending.get(name)):
        if s is not None and s not in out:
            out.append(s)
    source = read_secret_source(r.password_env, r.password_file, f"router {r.mac} management password",
                                required=required_source or not out, allow_empty=True)
    if source is not None and source not in out:
        out.append(source)
    return out, source


# ---- desired state ----------------------------------------------------------------------------------

def _handset_lines(rt, r: ResolvedRouter) -> dict[str, tuple]:
    """extension -> (device, line) for the lines this router registers."""
    out = {}
    for dev in rt.inventory.resolved.values():
        if dev.site != r.site:
            continue
        for ln in dev.lines:
            if ln.extension in r.lines:
                out[ln.extension] = (dev, ln)
    return out


@dataclass
class Plan:
    desired: Any
    creds: dict[str, Secret]  # the complete set the device should hold after this push
    changed: list[str]  # credential names new or changed in this push
    staged: bool


def plan_fritzbox(rt, r: ResolvedRouter, prof: RouterProfile, driver, active: dict, pending: dict,
                  state: str, login_source: Secret | None, rotate: bool, force: bool, generate: bool) -> Plan:
    from provisioner.drivers.fritzbox import BoxDesired, Handset, Trunk
    rules = driver.rules()
    base = dict(pending or active)
    creds = dict(base)
    changed: list[str] = []
    forbidden = {d.password for d in prof.factory_defaults}
    # the management login: the source worked and the store had no (working) password -> keep it
    if login_source is not None and driver.login_secret == login_source and creds.get("login") != login_source:
        creds["login"] = login_source
        changed.append("login")
    removed_trunks = []
    for name in [n for n in creds if n.startswith(("client:", "trunk:"))]:
        kind, _, key = name.partition(":")
        if (kind == "client" and key not in r.lines) or (kind == "trunk" and int(key) not in
                                                         {t.index for t in r.trunks}):
            del creds[name]
            changed.append(name)
            if kind == "trunk":
                removed_trunks.append(int(key))  # a trunk the agent set: it goes from the box too
    # trunks: the operator's password, checked against the box's rules before anything is written
    trunks = []
    for t in r.trunks:
        name = f"trunk:{t.index}"
        src = read_secret_source(t.password_env, t.password_file, f"router {r.mac} trunk {t.index} password",
                                 required=name not in creds)
        value = src if src is not None else creds[name]
        problem = rules.trunk_password.check(value.reveal())
        if problem:
            raise InputError(f"router {r.mac} trunk {t.index}: the password does not fit the box's rules ({problem})")
        problem = rules.trunk_username.check(t.username)
        if problem:
            raise InputError(f"router {r.mac} trunk {t.index}: username {t.username!r}: {problem} (box rules)")
        if creds.get(name) != value:
            creds[name] = value
            changed.append(name)
        trunks.append((t, name))
    # handsets: one client per line, its password to the box's rules and to the phone vendor's
    lines = _handset_lines(rt, r)
    prefix = str(option(r, prof, "client_username_prefix", ""))
    handsets = []
    for ext in r.lines:
        name = f"client:{ext}"
        dev, ln = lines[ext]
        also = rt.catalog.get(dev.vendor).passwords.get("sip") if rt.catalog.get(dev.vendor) else None
        if name not in creds or rotate:
            if not generate:
                raise InputError(f"router {r.mac}: handset {ext} has no password yet: run `provisioner push {r.mac}`")
            rule = rules.client_password.password_rule(also=also)
            creds[name] = _unique(rule, list(creds.values()), forbidden)
            changed.append(name)
        username = f"{prefix}{ext}"
        problem = rules.client_username.check(username)
        if problem:
            raise InputError(f"router {r.mac}: handset user name {username!r}: {problem} (box rules; set the "
                             f"client_username_prefix option)")
        handsets.append((ext, username, (dev.name or ln.display_name)[:64], ln.number or "", name))
    if "config" not in creds or rotate:
        if not generate:
            raise InputError(f"router {r.mac} has no config password yet: run `provisioner push {r.mac}`")
        creds["config"] = _unique(rules.config_password.password_rule(), list(creds.values()), forbidden)
        changed.append("config")
    # what the store knows to be on the box already: active values of a provisioned box
    def applied(name: str) -> bool:
        return state == "provisioned" and name in active and active[name] == creds[name]
    desired = BoxDesired(
        trunks=tuple(Trunk(t.index, t.registrar, t.number, t.username, creds[name], t.outbound_proxy or "",
                           t.stun_server or "", applied(name)) for t, name in trunks),
        handsets=tuple(Handset(ext, user, phone, creds[name], number, number, applied(name))
                       for ext, user, phone, number, name in handsets),
        config_password=creds["config"], config_password_applied=applied("config"),
        remove_trunks=tuple(sorted(removed_trunks)), force=force)
    return Plan(desired, creds, changed, bool(pending))


def plan_ssh(rt, r: ResolvedRouter, prof: RouterProfile, driver, active: dict, pending: dict, state: str,
             login_source: Secret | None, rotate: bool, force: bool, generate: bool) -> Plan:
    from provisioner.drivers.ssh_router import RouterDesired
    base = dict(pending or active)
    creds = dict(base)
    changed: list[str] = []
    accounts = _accounts(r, prof)
    forbidden = {d.password for d in prof.factory_defaults}
    if r.user not in accounts and login_source is not None and driver.login_secret == login_source and \
            creds.get("login") != login_source:
        creds["login"] = login_source
        changed.append("login")
    rule = prof.passwords.get("admin") or pw.PasswordRule(length=24)
    for a in accounts:
        name = f"password:{a}"
        if name not in creds or rotate:
            if not generate:
                raise InputError(f"router {r.mac}: account {a} has no generated password yet: "
                                 f"run `provisioner push {r.mac}`")
            taken = list(creds.values()) + ([login_source] if login_source else [])
            creds[name] = _unique(rule, taken, forbidden | ({login_source.reveal()} if login_source else set()))
            changed.append(name)
    for name in [n for n in creds if n.startswith("password:") and n.split(":", 1)[1] not in accounts]:
        del creds[name]
        changed.append(name)

    def applied(name: str) -> bool:
        return state == "provisioned" and name in active and active[name] == creds[name]
    files = render_files(rt, r, prof)
    desired = RouterDesired(files=files, passwords={a: creds[f"password:{a}"] for a in accounts},
                            passwords_applied=frozenset(a for a in accounts if applied(f"password:{a}")), force=force)
    return Plan(desired, creds, changed, bool(pending))


PLANNERS = {"fritzbox": plan_fritzbox, "ssh_router": plan_ssh}


# ---- push -------------------------------------------------------------------------------------------

@dataclass
class PushOutcome:
    mac: str
    name: str | None
    profile: str
    address: str
    state: str
    generation: int | None
    result: PushResult
    drift: list[Drift]
    facts: dict = field(default_factory=dict)
    changed_credentials: list[str] = field(default_factory=list)
    second_factor: bool = False

    @property
    def ok(self) -> bool:
        return not any(d.counts for d in self.drift)

    def as_dict(self) -> dict:
        return {"mac": self.mac, "name": self.name, "profile": self.profile, "address": self.address,
                "state": self.state, "generation": self.generation, "ok": self.ok, "pushed": self.result.as_dict(),
                "drift": [d.as_dict() for d in self.drift], "credentials_changed": self.changed_credentials,
                "second_factor_confirmed": self.second_factor, "facts": _jsonable(self.facts)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def push(rt, mac: str, actor: str, progress: Progress | None = None, on_confirm: Callable[[str], None] | None = None,
         confirm_timeout: float | None = None, rotate: bool = False, force: bool = False) -> PushOutcome:
    """Render, push, read back and compare one router; promote its credentials when nothing drifts.

    Raises a DriverError (exit 4) when the device cannot be reached, refuses the login, shows another key, or
    an action fails; the outcome's `ok` is False when the read-back still differs (the CLI exits 4).
    """
    progress = progress or _quiet
    r = resolve_router(rt, mac)
    prof = profile_of(rt, r)
    planner = PLANNERS.get(prof.driver)
    if planner is None:
        raise NotSupported(f"router {r.mac}: profile {prof.name} (driver {prof.driver}) has no push")
    ensure_row(rt, r, actor)
    st = rt.store.device(r.mac)
    if st.state in ("decommissioned", "locked"):
        raise InputError(f"router {r.mac} is {st.state}")
    active, pending = rt.store.credentials(r.mac, "active"), rt.store.credentials(r.mac, "pending")
    logins, source = login_candidates(r, prof, active, pending)
    driver = make_driver(rt, r, prof, logins, progress, on_confirm, confirm_timeout)
    try:
        with driver:
            plan = planner(rt, r, prof, driver, active, pending, st.state, source, rotate, force, True)
            names = sorted(set(plan.changed))
            if names:  # new or changed secrets are pending until the device holds them
                stage(rt, r.mac, plan.creds, actor, "push: new or changed credentials", names)
            elif pending:
                progress("resuming an interrupted push with its pending credentials")
            progress("pushing")
            result = driver.push(plan.desired)
            progress("reading back")
            drift = driver.compare(plan.desired)
            try:
                facts = driver.facts()
            except DriverError as e:
                facts = {"error": str(e)}
            second = bool(getattr(driver, "second_factor_used", False))
    except DriverError as e:
        written = getattr(e, "result", None)  # what a push that stopped midway had written (PushIncomplete)
        rt.store.audit(actor, "router.push-failed", r.mac, type(e).__name__,
                       {"error": str(e)[:300], **({"written": written.as_dict()} if written is not None else {})})
        raise
    details = {"changed": result.changed, "removed": result.removed, "credentials": names,
               "second_factor": second}
    if any(d.counts for d in drift):
        rt.store.audit(actor, "router.drift-after-push", r.mac, "read-back differs from what was pushed",
                       {"keys": [d.key for d in drift if d.counts][:50]})
        st = rt.store.device(r.mac)
        return PushOutcome(r.mac, r.name, r.profile, r.address, st.state, None, result, drift, facts, names, second)
    gen = promote(rt, r.mac, actor, details)
    st = rt.store.device(r.mac)
    return PushOutcome(r.mac, r.name, r.profile, r.address, st.state, gen or st.generation, result, drift, facts,
                       names, second)


# ---- survey: facts and drift of every router --------------------------------------------------------

@dataclass
class RouterStatus:
    mac: str
    name: str | None
    profile: str
    model: str
    site: str
    address: str
    state: str
    facts: dict = field(default_factory=dict)
    drift: list[Drift] = field(default_factory=list)
    error: str | None = None

    @property
    def drift_count(self) -> int:
        return sum(1 for d in self.drift if d.counts)

    def as_dict(self) -> dict:
        return {"mac": self.mac, "name": self.name, "profile": self.profile, "model": self.model, "site": self.site,
                "address": self.address, "state": self.state, "facts": _jsonable(self.facts),
                "drift": [d.as_dict() for d in self.drift], "drift_count": self.drift_count, "error": self.error}


def status(rt, mac: str, progress: Progress | None = None) -> RouterStatus:
    """Connect, read the facts, compare with what the store says the router holds. Never writes to it."""
    progress = progress or _quiet
    r = resolve_router(rt, mac)
    prof = profile_of(rt, r)
    st = rt.store.device(r.mac)
    out = RouterStatus(r.mac, r.name, r.profile, r.model, r.site, r.address, st.state if st else "new")
    active = rt.store.credentials(r.mac, "active") if st else {}
    pending = rt.store.credentials(r.mac, "pending") if st else {}
    try:
        logins, source = login_candidates(r, prof, active, pending)
        driver = make_driver(rt, r, prof, logins, progress)
        with driver:
            out.facts = driver.facts()
            if st is None or st.state != "provisioned" or not active:
                out.drift = [Drift("provisioning", "missing", "provisioned", out.state,
                                   f"run `provisioner push {r.mac}`")]
            else:
                planner = PLANNERS[prof.driver]
                plan = planner(rt, r, prof, driver, active, {}, st.state, source, False, False, False)
                out.drift = driver.compare(plan.desired)
    except (DriverError, InputError, RenderError) as e:
        out.error = str(e)
    return out


def survey(rt, progress: Progress | None = None) -> list[RouterStatus]:
    return [status(rt, mac, progress) for mac in rt.inventory.routers]


# ---- reboot, reset, pins ----------------------------------------------------------------------------

@dataclass
class ActionOutcome:
    mac: str
    action: str
    state: str
    message: str
    instructions: str | None = None

    def as_dict(self) -> dict:
        return {"mac": self.mac, "action": self.action, "state": self.state, "message": self.message,
                "instructions": self.instructions}


def _connected(rt, r, prof, progress, on_confirm=None, confirm_timeout=None):
    st = rt.store.device(r.mac)
    active = rt.store.credentials(r.mac, "active") if st else {}
    pending = rt.store.credentials(r.mac, "pending") if st else {}
    logins, _ = login_candidates(r, prof, active, pending)
    return make_driver(rt, r, prof, logins, progress, on_confirm, confirm_timeout)


def reboot(rt, mac: str, actor: str, progress: Progress | None = None,
           on_confirm: Callable[[str], None] | None = None, confirm_timeout: float | None = None) -> ActionOutcome:
    r = resolve_router(rt, mac)
    prof = profile_of(rt, r)
    with _connected(rt, r, prof, progress or _quiet, on_confirm, confirm_timeout) as d:
        d.reboot()
    rt.store.audit(actor, "router.rebooted", r.mac, "reboot requested", {})
    st = rt.store.device(r.mac)
    return ActionOutcome(r.mac, "reboot", st.state if st else "new", "the router is restarting")


def reset(rt, mac: str, actor: str, progress: Progress | None = None,
          on_confirm: Callable[[str], None] | None = None, confirm_timeout: float | None = None) -> ActionOutcome:
    """Factory reset, then re-enrol: every credential of the router is retired (the device forgot them),
    its pinned key/certificate is forgotten (a reset device makes new ones; the next contact pins again),
    and the next `push` generates new unique passwords."""
    r = resolve_router(rt, mac)
    prof = profile_of(rt, r)
    ensure_row(rt, r, actor)
    with _connected(rt, r, prof, progress or _quiet, on_confirm, confirm_timeout) as d:
        d.factory_reset()
    now = utcnow()
    store = rt.store
    with store.write() as c:
        store.set_credential_status(c, r.mac, "pending", "discarded", now)
        store.set_credential_status(c, r.mac, "active", "retired", now)
        store.update_device(c, r.mac, state="reset-pending", updated_at=now)
        store.append_audit(c, actor, "router.reset", r.mac, "factory reset requested; credentials retired",
                           {"profile": r.profile}, now)
    forgotten = forget_pins(rt, r, prof, actor, why="factory reset: the device makes new keys")
    return ActionOutcome(r.mac, "reset", "reset-pending",
                         "factory reset started; its credentials are retired" +
                         (f" and its pinned {', '.join(forgotten)} forgotten" if forgotten else ""),
                         prof.reset_instructions or f"when it is back, run `provisioner push {r.mac}`")


def forget_pins(rt, r: ResolvedRouter, prof: RouterProfile, actor: str, why: str) -> list[str]:
    from provisioner.drivers.pins import TlsPins, forget_host_key
    done = []
    if prof.driver == "fritzbox":
        port = int(r.tls_port or option(r, prof, "tls_port", 49443))
        if TlsPins(rt.home).forget(r.address, port):
            done.append("TLS certificate")
    elif prof.driver == "ssh_router":
        port = int(r.port or option(r, prof, "port", 22))
        if forget_host_key(rt.home, r.address, port):
            done.append("SSH host key")
    if done:
        rt.store.audit(actor, "router.pins-forgotten", r.mac, why, {"forgotten": done})
    return done


def forget_key(rt, mac: str, actor: str) -> list[str]:
    r = resolve_router(rt, mac)
    return forget_pins(rt, r, profile_of(rt, r), actor, why="operator: re-pin at the next contact")


__all__ = ["push", "status", "survey", "reboot", "reset", "forget_key", "render_files", "PushOutcome",
           "RouterStatus"]


# ---- audit ------------------------------------------------------------------------------------------

def audit(rt) -> list[dict]:
    """Findings for `provisioner audit` (provisioner/audit.py turns them into Finding rows): each router is
    read back (read only), its drift, reachability and exposure reported. Never a secret: drift values
    are masked by the drivers."""
    out: list[dict] = []
    for s in survey(rt):
        base = {"device": s.mac, "site": s.site}
        if s.error:
            out.append({**base, "type": "unreachable", "severity": "high", "what": "router not read back",
                        "evidence": s.error[:300], "fix": f"provisioner routers show {s.mac}"})
            continue
        drift = [d for d in s.drift if d.counts]
        if drift:
            never = any(d.key == "provisioning" for d in drift)
            out.append({**base, "type": "never-enrolled" if never else "drift", "severity": "high",
                        "what": "router still on its factory setup" if never else
                        f"router differs from what was pushed ({len(drift)} item(s))",
                        "evidence": "; ".join(f"{d.key}: {d.kind}" for d in drift)[:300],
                        "fix": f"provisioner push {s.mac}"})
        remote = s.facts.get("remote_access") or {}
        if str(remote.get("enabled")).lower() in ("1", "true"):
            out.append({**base, "type": "exposure", "severity": "high", "what": "remote access open to the internet",
                        "evidence": f"remote access enabled on port {remote.get('port')}",
                        "fix": "turn off remote access on the router (or restrict it to the operator's network)"})
        if str((s.facts.get("myfritz") or {}).get("enabled")).lower() in ("1", "true"):
            out.append({**base, "type": "exposure", "severity": "medium", "what": "MyFRITZ! remote access enabled",
                        "evidence": "MyFRITZ! enabled", "fix": "turn off MyFRITZ! unless the customer uses it"})
        if str(s.facts.get("default_config_password_active")).lower() in ("1", "true"):
            out.append({**base, "type": "factory-default", "severity": "critical",
                        "what": "router still uses its factory configuration password",
                        "evidence": "the box reports its default password active", "fix": f"provisioner push {s.mac}"})
        acs = (s.facts.get("tr069") or {}).get("acs_url")
        if acs:  # normal for an operator-managed box, a risk otherwise: reported, not counted
            out.append({**base, "type": "exposure", "severity": "info", "what": f"TR-069 managed by {acs[:120]}",
                        "evidence": "ManagementServer URL set",
                        "fix": "if this ACS is not your operator's, turn TR-069 off on the router"})
        upnp = s.facts.get("upnp") or {}
        if str(upnp.get("enabled")).lower() in ("1", "true"):
            out.append({**base, "type": "exposure", "severity": "low", "what": "UPnP port mapping enabled",
                        "evidence": "UPnP enabled", "fix": "turn off UPnP unless a device needs it"})
    return out
