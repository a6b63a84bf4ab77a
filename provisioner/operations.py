"""Use cases, each one function that the CLI (and later the API) calls; each writes the audit log."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from provisioner import credentials as pw
from provisioner.desired import credential_names, device_context
from provisioner.errors import InputError, ProvisionerError, UnknownDevice
from provisioner.inventory import ResolvedDevice, vendor_of
from provisioner.macaddr import normalize_mac
from provisioner.registrar import RegistrarError, kill_point, registrar_for
from provisioner.registrar import sync as registrar_sync
from provisioner.render import sha256
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from provisioner.store import DeviceState, utcnow
from provisioner.store.schema import devices as devices_table

log = logging.getLogger("provisioner.operations")


def _rule_for(name: str) -> str:
    return "sip" if name.startswith("sip:") else name


FRITZBOX_SIP_LENGTH = (8, 20)  # what FRITZ!OS takes for an IP-phone client's password, letters and digits


def password_rule(vendor, dev: ResolvedDevice, name: str) -> pw.PasswordRule:
    """The vendor's rule for a credential; a SIP password whose registrar is a FRITZ!Box also fits the box
    (letters and digits, 8 to 20 characters: inside every FRITZ!OS client password rule we know)."""
    rule = vendor.passwords[_rule_for(name)]
    if name.startswith("sip:") and dev.settings.registrar.kind == "fritzbox":
        import string
        alphabet = "".join(sorted(set(rule.alphabet) & set(string.ascii_letters + string.digits)))
        if len(alphabet) < 10:
            alphabet = string.ascii_letters + string.digits
        lo, hi = FRITZBOX_SIP_LENGTH
        rule = pw.PasswordRule(length=min(max(rule.length, lo), hi), alphabet=alphabet,
                               require=[c for c in rule.require if c != "punct"])
    return rule


def generate_credentials(rt: Runtime, dev: ResolvedDevice) -> dict[str, Secret]:
    vendor = vendor_of(rt.catalog, dev)
    forbidden = vendor.factory_passwords()
    out: dict[str, Secret] = {}
    for name in credential_names(dev, vendor):
        while True:
            s = pw.generate(password_rule(vendor, dev, name), forbidden)
            if s not in out.values():  # never two equal secrets on one device
                out[name] = s
                break
    return out


def desired_hash(rt: Runtime, dev: ResolvedDevice, creds: dict[str, Secret]) -> str:
    vendor = vendor_of(rt.catalog, dev)
    _, data = rt.renderer.device_file(device_context(dev, vendor, creds), vendor.trigger)
    return sha256(data)


def inputs_fingerprint(rt: Runtime, dev: ResolvedDevice, generation: int) -> str:
    """Everything the desired config is computed from, but the secrets themselves (their generation)."""
    h = hashlib.sha256(repr(dev).encode())
    h.update(rt.vendor_fingerprint(dev.vendor).encode())
    h.update(f"|{generation}".encode())
    return h.hexdigest()


def resolve_mac(rt: Runtime, mac: str) -> ResolvedDevice:
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    dev = rt.inventory.device(mac)
    if dev is None:
        raise UnknownDevice(f"no device {mac} in {rt.inventory_path}")
    return dev


SYNC_BATCH = 500


def _add_devices(rt: Runtime, devs: list[ResolvedDevice], actor: str, now: dt.datetime) -> list[str]:
    """New devices with their first credential generation and an open enrolment window, in one transaction."""
    store = rt.store
    items = []
    for dev in devs:
        creds = generate_credentials(rt, dev)
        items.append((dev, creds, desired_hash(rt, dev, creds), inputs_fingerprint(rt, dev, 1)))
    try:
        with store.write() as c:
            store.add_devices(c, [(dev.mac, dev.vendor, dev.model, dev.site, dev.settings.policy.enrolment_hours,
                                   creds, dh, ih) for dev, creds, dh, ih in items], now)
            store.append_audit(c, actor, "device.added", items[0][0].mac if len(items) == 1 else None,
                               "in inventory, not yet in the store",
                               {"devices": [f"{dev.mac} {dev.vendor} {dev.model} {dev.site}" for dev, *_ in items]},
                               now)
        return [dev.mac for dev, *_ in items]
    except IntegrityError:  # another replica added some of them first: its credentials are theirs
        if len(items) == 1:
            return []
        out = []
        for dev, *_ in items:
            if store.device(dev.mac) is None:
                out += _add_devices(rt, [dev], actor, now)
        return out


@dataclass
class SyncResult:
    added: list[str]
    updated: list[str]


def sync_inventory(rt: Runtime, actor: str = "system") -> SyncResult:
    """Bring the store in line with inventory.yaml: new devices get credentials and an open enrolment
    window; credentials for new lines are added; desired hashes are recomputed where an input changed."""
    store = rt.store
    now = utcnow()
    added, updated, touched = [], [], []
    states = {s.mac: s for s in store.all_devices()}
    new = [dev for mac, dev in rt.inventory.resolved.items() if mac not in states]
    for i in range(0, len(new), SYNC_BATCH):
        added += _add_devices(rt, new[i:i + SYNC_BATCH], actor, now)
    for mac, dev in rt.inventory.resolved.items():
        state = states.get(mac)
        if state is None:
            continue
        vendor = vendor_of(rt.catalog, dev)
        fingerprint = inputs_fingerprint(rt, dev, state.generation)
        if state.inputs_hash == fingerprint and not state.pending_hash:
            continue  # nothing the desired config depends on has changed since it was computed
        with store.write() as c:
            changes = {}
            if state.inputs_hash != fingerprint:
                changes["inputs_hash"] = fingerprint
            if (state.vendor, state.model, state.site) != (dev.vendor, dev.model, dev.site):
                changes.update(vendor=dev.vendor, model=dev.model, site=dev.site)
            for status in ("active", "pending"):
                creds = store.credentials(mac, status, conn=c)
                if not creds:
                    continue
                missing = [n for n in credential_names(dev, vendor) if n not in creds]
                if missing:  # a line was added: give it its own password in this generation
                    gen = state.generation if status == "active" else store.next_generation(c, mac) - 1
                    extra = {n: pw.generate(password_rule(vendor, dev, n), vendor.factory_passwords())
                             for n in missing}
                    store.add_credentials(c, mac, gen, status, extra, now)
                    creds.update(extra)
                h = desired_hash(rt, dev, creds)
                key = "desired_hash" if status == "active" else "pending_hash"
                if getattr(state, key) != h:
                    changes[key] = h
            if changes:
                touched.append(mac)
            if set(changes) - {"inputs_hash"}:
                store.update_device(c, mac, **changes)
                store.append_audit(c, actor, "device.updated", mac, "inventory changed",
                                   {k: v for k, v in changes.items() if not k.endswith("hash")} or {"config": "changed"})
                updated.append(mac)
            elif changes:
                store.update_device(c, mac, **changes)
    _sync_registrars(rt, added + touched, actor)
    return SyncResult(added, updated)


def _sync_registrars(rt: Runtime, macs: list[str], actor: str) -> None:
    """New devices: their registrar gets the active generation; changed ones (lines, registrar settings):
    it is written again. A registrar that is down does not stop the sync (the record keeps the intent)."""
    macs = [m for m in macs if (d := rt.inventory.device(m)) is not None
            and d.settings.registrar.kind not in (None, "none")]
    if not macs:
        return
    try:
        rep = registrar_sync.reconcile(rt, macs, actor)
    except Exception:
        log.exception("registrar sync of %d device(s) failed; `provisioner registrar sync` retries", len(macs))
        return
    for detail, macs in _by_detail(rep.failed).items():
        log.error("registrar not written for %s: %s", _some(macs), detail)


def _by_detail(repairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in repairs:
        out.setdefault(r.detail, []).append(r.mac)
    return out


def _some(macs: list[str], n: int = 3) -> str:
    return ", ".join(macs[:n]) + (f" and {len(macs) - n} more" if len(macs) > n else "")


def device_row(rt: Runtime, st: DeviceState) -> dict:
    def iso(v):
        return v.isoformat(timespec="seconds") if v else None
    router = st.mac in rt.inventory.routers
    if router:  # pushed and read back, not fetched: provisioned means its read-back showed no drift
        in_sync = st.state == "provisioned" and st.pending_hash is None
    else:
        in_sync = st.served_hash is not None and st.served_hash == st.desired_hash and st.pending_hash is None
    return {"mac": st.mac, "vendor": st.vendor, "model": st.model, "site": st.site, "state": st.state,
            "last_seen": iso(st.last_seen), "last_ip": st.last_ip, "served_hash": st.served_hash,
            "desired_hash": st.desired_hash, "pending_hash": st.pending_hash, "in_sync": in_sync,
            "enrol_expires_at": iso(st.enrol_expires_at), "in_inventory": st.mac in rt.inventory.resolved or router, "kind": "router" if router else "phone"}


def list_devices(rt: Runtime, verify_registrar: bool = True) -> list[dict]:
    """Every device's row; with `verify_registrar`, whether its registrar really accepts its current SIP
    passwords ("registrar": held | not held | unreachable | none | decommissioned, and why): a device
    whose registrar does not is not in sync, whatever its config."""
    sync_inventory(rt)
    if rt.inventory.routers:  # routers get their row at first sight too, before their first push
        from provisioner import routers
        for r in rt.inventory.routers.values():
            routers.ensure_row(rt, r, "inventory")
    rows = [device_row(rt, st) for st in rt.store.all_devices()]
    if verify_registrar:
        from provisioner.registrar.verify import holdings
        held = holdings(rt)
        for row in rows:
            h = held.get(row["mac"])
            row["registrar"] = h.status if h else None
            row["registrar_detail"] = (f"{h.registrar}: " if h and h.registrar else "") + (h.detail if h else "")
            if h and h.bad:
                row["in_sync"] = False
    return rows


def render_device(rt: Runtime, mac: str, masked: bool = True) -> dict[str, bytes]:
    dev = resolve_mac(rt, mac)
    sync_inventory(rt)
    vendor = vendor_of(rt.catalog, dev)
    st = rt.store.device(dev.mac)
    status = "pending" if st and st.pending_hash else "active"
    creds = {} if masked else rt.store.credentials(dev.mac, status)
    return rt.renderer.device_files(device_context(dev, vendor, creds, masked=masked))


# ---- adoption: everything checked before anything is written -----------------------------------------

def render_problem(rt: Runtime, dev: ResolvedDevice) -> str | None:
    """Why the device's config cannot be rendered on its site (with throwaway secrets), or None."""
    from provisioner.errors import RenderError
    vendor = vendor_of(rt.catalog, dev)
    fake = {n: Secret("Check0nly-" + str(i)) for i, n in enumerate(credential_names(dev, vendor))}
    try:
        rt.renderer.device_files(device_context(dev, vendor, fake))
    except RenderError as e:
        return _readable(str(e))
    return None


def _readable(text: str) -> str:
    """A template's deliberate refusal (an undefined ERROR_<words> variable) said in words."""
    import re
    m = re.search(r"'ERROR_(\w+)' is undefined", text)
    if not m:
        return text
    return m.group(1).replace("__", "; ").replace("_", " ")


FIX_VARIANTS = ({"registrar": {"transport": "udp"}}, {"policy": {"srtp": "optional"}},
                {"registrar": {"transport": "udp"}, "policy": {"srtp": "optional"}})


def _fixes(rt: Runtime, entry: dict, dev: ResolvedDevice) -> list[str]:
    """What would make the device's config render: a setting on the device, or another profile of the same
    maker (sharing an OUI) whose models this site can provision."""
    from provisioner.inventory_edit import add_devices
    out = []
    mac = dev.mac
    s = dev.settings
    for variant in FIX_VARIANTS:
        if all(getattr(getattr(s, k), f) == v for k, kv in variant.items() for f, v in kv.items()):
            continue
        trial = {**entry, **{k: {**entry.get(k, {}), **v} for k, v in variant.items()}}
        try:
            inv = add_devices(rt.inventory_path, rt.catalog, [trial], write=False)
        except Exception:
            continue
        if render_problem(rt, inv.device(mac)) is None:
            keys = " and ".join(f"`{k}: {{{', '.join(f'{f}: {v}' for f, v in kv.items())}}}`" for k, kv in variant.items())
            flags = " ".join(f"--{f} {v}" for kv in variant.values() for f, v in kv.items())
            out.append(f"set {keys} on this device (adopt it with {flags})")
            break
    vendor = vendor_of(rt.catalog, dev)
    for other in sorted(rt.catalog.vendors.values(), key=lambda v: v.name):
        if other.name == vendor.name or not set(other.ouis) & set(vendor.ouis):
            continue
        ok = []
        for model in other.models:
            trial = {**entry, "vendor": other.name, "model": model}
            try:
                inv = add_devices(rt.inventory_path, rt.catalog, [trial], write=False)
            except Exception:
                continue
            if render_problem(rt, inv.device(mac)) is None:
                ok.append(model)
        if ok:
            out.append(f"if the device is a {other.display_name} ({', '.join(ok)}), adopt it as "
                       f"--vendor {other.name} --model MODEL: that family is provisioned as the site is")
    return out


def check_adoption(rt: Runtime, entries: list[dict]):
    """What adopting these inventory entries would do, checked before anything is written, so that a
    refused adopt changes nothing: the inventory still validates (ProblemsError), every new device's
    config renders on its site (InputError naming the fix), its registrar can be written (RegistrarError).
    Returns the inventory the adoption would give."""
    from provisioner.inventory_edit import add_devices
    from provisioner.registrar import backend_for
    inv = add_devices(rt.inventory_path, rt.catalog, entries, write=False)
    for entry in entries:
        dev = inv.device(normalize_mac(entry["mac"]))
        problem = render_problem(rt, dev)
        if problem:
            vendor = vendor_of(rt.catalog, dev)
            fixes = _fixes(rt, entry, dev)
            raise InputError(f"{dev.mac}: a {vendor.display_name} {dev.model} cannot be provisioned on site {dev.site}: "
                             f"{problem}; nothing was changed" + ("".join(f"\n  fix: {f}" for f in fixes)))
    seen = set()
    for entry in entries:
        reg = inv.device(normalize_mac(entry["mac"])).settings.registrar
        if reg.kind in (None, "none") or reg in seen:
            continue
        seen.add(reg)
        try:
            backend_for(rt, reg).probe()
        except (RegistrarError, NotImplementedError) as e:
            raise RegistrarError(f"not adopted, nothing was changed: its registrar cannot be written ({e}); fix it "
                                 f"(`provisioner check` says what is wrong), then adopt again") from None
    return inv


# ---- registrar ------------------------------------------------------------------------------------

def reconcile(rt: Runtime, macs: Iterable[str] | None = None, actor: str = "system",
              sweep: bool = False) -> registrar_sync.ReconcileReport:
    """Registrars hold what the devices hold: repair writes and switches cut short (serve start-up,
    `reprovision`, `provisioner registrar sync`, which also sweeps the accounts no device owns any more).
    Failures are in the report, never raised."""
    return registrar_sync.reconcile(rt, None if macs is None else [normalize_mac(m) for m in macs], actor, sweep)


# ---- resync / reset over SIP NOTIFY ---------------------------------------------------------------

# seconds for a phone to answer a NOTIFY (sent at 0, 0.5 and 1.5 s: RFC 3261 timer A)
NOTIFY_TIMEOUT = float(os.environ.get("PROVISIONER_NOTIFY_TIMEOUT", "2"))


@dataclass
class NotifyOutcome:
    ok: bool
    text: str


def _parse_contact(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
        host, port = text, "5060"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"contact {text!r}: expected HOST[:PORT]")
    return host.strip("[]"), int(port)


def notify_credentials(rt: Runtime, dev: ResolvedDevice) -> list[tuple[str, Secret]]:
    """What a phone that challenges NOTIFY (Cisco Auth_Resync-Reboot) expects: its first line's auth user
    and SIP password, of the generation it holds first (the one its last fetched config carries), then the
    other one of a rotation in progress."""
    st = rt.store.device(dev.mac)
    if st is None:
        return []
    line = dev.lines[0]
    order = ("pending", "active") if st.pending_hash and st.served_hash == st.pending_hash else ("active", "pending")
    out: list[tuple[str, Secret]] = []
    for status in order:
        pw = rt.store.credentials(dev.mac, status).get(f"sip:{line.extension}")
        if pw is not None and all(pw != p for _, p in out):
            out.append((line.auth_user or line.extension, pw))
    return out


def notify_device(rt: Runtime, dev: ResolvedDevice, what: str = "resync", contact: str | None = None,
                  timeout: float = NOTIFY_TIMEOUT) -> NotifyOutcome:
    """Tell the phone to fetch its config (what="resync") or to reset itself (what="reset") with the SIP
    NOTIFY Event its vendor profile names, sent to its last known contact: where its lines registered (if
    the registrar tells), else the address of its last fetch on port 5060. Never raises for the phone."""
    vendor = vendor_of(rt.catalog, dev)
    event = getattr(vendor.sip_notify, what)
    if not event:
        return NotifyOutcome(False, f"{vendor.display_name} has no SIP NOTIFY to {what}")
    try:
        from provisioner.drivers.base import DriverError
        from provisioner.drivers.sip_notify import SipNotifyDriver
    except ImportError:
        return NotifyOutcome(False, "no SIP NOTIFY driver in this installation")
    targets: list[tuple[str, int]] = []
    if contact:
        targets.append(_parse_contact(contact))
    else:
        try:
            targets += registrar_for(rt, dev).contacts(dev)
        except Exception as e:  # the registrar's bindings are a hint only
            log.warning("no contacts from the registrar of %s: %s", dev.mac, type(e).__name__)
        st = rt.store.device(dev.mac)
        if st is not None and st.last_ip and (st.last_ip, 5060) not in targets:
            targets.append((st.last_ip, 5060))
    if not targets:
        return NotifyOutcome(False, "no known address (the device never fetched and never registered)")
    creds = notify_credentials(rt, dev)
    last = ""
    for host, port in targets[:2]:
        try:
            drv = SipNotifyDriver(vendor, host, port, mac=dev.mac, timeout=timeout, user=dev.lines[0].extension,
                                  credentials=creds)
            drv.resync() if what == "resync" else drv.factory_reset()
            return NotifyOutcome(True, f"NOTIFY Event: {event} to {host}:{port}: {drv.last_response}")
        except (DriverError, InputError) as e:
            last = str(e)
    return NotifyOutcome(False, last)


# ---- reprovision -----------------------------------------------------------------------------------

@dataclass
class ReprovisionResult:
    mac: str
    generation: int
    pending_hash: str
    confirmed: bool
    state: str
    resumed: bool = False  # an interrupted rotation of the same generation goes on
    notified: bool = False  # the phone answered the resync NOTIFY with 200
    notify: str | None = None  # what the NOTIFY did (or why none was sent)
    error: str | None = None  # bulk: why this device was not reprovisioned
    site: str | None = None


def reprovision(rt: Runtime, mac: str, actor: str, why: str = "reprovision requested", *, notify: bool = True,
                contact: str | None = None, notify_timeout: float = NOTIFY_TIMEOUT,
                sync: bool = True) -> ReprovisionResult:
    """Rotate every secret of a device, two-phase: new SIP, web and provisioning secrets as a pending
    generation; the registrar, the store and the device switch together when the device fetches the
    config of that generation (registrar.prepare_switch, then Store.promote_pending, in the pipeline).
    Until then the old credentials keep working everywhere.

    First repairs a switch of this device cut short (reconcile). A rotation whose switch is being served
    right now is resumed, not replaced. Then tells the phone to fetch (SIP NOTIFY, vendor's resync event).
    `wait_for_fetch` waits for the switch.
    """
    dev = resolve_mac(rt, mac)
    if sync:
        sync_inventory(rt, actor)
    store = rt.store
    st = store.device(dev.mac)
    if st.state in ("decommissioned", "locked"):
        raise InputError(f"device {dev.mac} is {st.state}; unlock or re-adopt it first")
    repaired = reconcile(rt, [dev.mac], actor)
    for r in repaired.failed:
        log.error("registrar of %s could not be repaired: %s", dev.mac, r.detail)
    now = utcnow()
    creds = generate_credentials(rt, dev)
    old = store.credentials(dev.mac, "active")
    for name, secret in creds.items():  # never hand out a secret the device held before
        if old.get(name) == secret:
            raise RuntimeError("password generator repeated a secret")  # 2^-100: not worth a retry path
    h = desired_hash(rt, dev, creds)
    resumed = False
    with store.write() as c:
        row = c.execute(sa.select(devices_table).where(devices_table.c.mac == dev.mac).with_for_update()).first()
        st = DeviceState.from_row(row)
        if st.state in ("decommissioned", "locked"):
            raise InputError(f"device {dev.mac} is {st.state}; unlock or re-adopt it first")
        switching = registrar_sync.switch_in_progress(c, dev.mac)
        if st.pending_hash and switching is not None and switching == registrar_sync.pending_generation(c, dev.mac):
            # the device is being served that generation right now: replacing it could strand the device
            gen, h, resumed, new_state = switching, st.pending_hash, True, st.state
            store.append_audit(c, actor, "rotation.resumed", dev.mac, why, {"generation": gen}, now)
        else:
            store.set_credential_status(c, dev.mac, "pending", "discarded", now)  # a rotation in flight is replaced
            gen = store.next_generation(c, dev.mac)
            store.add_credentials(c, dev.mac, gen, "pending", creds, now)
            new_state = "rotating" if st.state == "provisioned" else st.state
            store.update_device(c, dev.mac, pending_hash=h, state=new_state)
            store.append_audit(c, actor, "rotation.started", dev.mac, why,
                               {"generation": gen, "names": sorted(creds)}, now)
    kill_point("reprovision.staged")
    res = ReprovisionResult(dev.mac, gen, h, False, new_state, resumed=resumed, site=dev.site)
    if notify:
        out = notify_device(rt, dev, "resync", contact, notify_timeout)
        res.notified, res.notify = out.ok, out.text
        log.info("resync NOTIFY for %s: %s", dev.mac, out.text)
    kill_point("reprovision.notified")
    return res


def wait_for_fetch(rt: Runtime, mac: str, pending_hash: str, timeout: float, poll: float = 0.5) -> bool:
    """True once the device fetched the config with `pending_hash` (the rotation switched)."""
    deadline = time.monotonic() + timeout
    while True:
        st = rt.store.device(mac)
        if st is not None and st.pending_hash != pending_hash and st.desired_hash == pending_hash:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def devices_for(rt: Runtime, site: str | None = None, all_devices: bool = False) -> list[str]:
    """MACs of a site's devices (or of every device) in the inventory, for bulk operations."""
    inv = rt.inventory
    if site is not None:
        if site not in inv.sites:
            raise InputError(f"unknown site {site!r} (known: {', '.join(sorted(inv.sites)) or 'none'})")
        return sorted(m for m, d in inv.resolved.items() if d.site == site)
    if all_devices:
        return sorted(inv.resolved)
    raise InputError("give a MAC, --site SITE or --all")


def reprovision_many(rt: Runtime, macs: list[str], actor: str, why: str = "bulk reprovision", *,
                     wait: float | None = None, concurrency: int = 4, stagger: float = 1.0,
                     notify: bool = True, notify_timeout: float = NOTIFY_TIMEOUT,
                     on_result: Callable[[ReprovisionResult], None] | None = None) -> list[ReprovisionResult]:
    """Reprovision many devices without a boot storm: a new device starts at most every `stagger`
    seconds, and at most `concurrency` are in flight (rotating and, with `wait`, waiting for their fetch)
    at once. Never raises for one device: its result carries the error. Results in the order of `macs`."""
    if concurrency < 1:
        raise InputError("concurrency must be at least 1")
    if stagger < 0:
        raise InputError("stagger must not be negative")
    sync_inventory(rt, actor)
    states = {s.mac: s for s in rt.store.all_devices()}
    lock = threading.Lock()
    next_start = [time.monotonic()]

    def one(mac: str) -> ReprovisionResult:
        st = states.get(mac)
        dev = rt.inventory.device(mac)
        site = dev.site if dev else None
        if st is not None and st.state in ("decommissioned", "locked"):
            res = ReprovisionResult(mac, st.generation, "", False, st.state, error=f"skipped: {st.state}", site=site)
        else:
            with lock:  # staggered starts: the n-th device starts n * stagger seconds after the first
                at = max(time.monotonic(), next_start[0])
                next_start[0] = at + stagger
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                res = reprovision(rt, mac, actor, why, notify=notify, notify_timeout=notify_timeout, sync=False)
                if wait:
                    res.confirmed = wait_for_fetch(rt, res.mac, res.pending_hash, wait)
                    res.state = rt.store.device(res.mac).state
            except ProvisionerError as e:
                res = ReprovisionResult(mac, st.generation if st else 0, "", False, st.state if st else "unknown",
                                        error=str(e), site=site)
            except Exception as e:  # one device's bug must not stop the others; no secret in a type name
                log.exception("reprovision of %s failed", mac)
                res = ReprovisionResult(mac, st.generation if st else 0, "", False, st.state if st else "unknown",
                                        error=f"internal error ({type(e).__name__})", site=site)
        if on_result:
            on_result(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(macs) or 1)),
                            thread_name_prefix="reprovision") as pool:
        return list(pool.map(one, macs))


def reopen_enrolment(rt: Runtime, mac: str, actor: str, why: str) -> None:
    """Open a fresh enrolment window (adopt again, reset): the next fetch from the site enrols."""
    dev = resolve_mac(rt, mac)
    now = utcnow()
    with rt.store.write() as c:
        rt.store.update_device(c, dev.mac, state="enrolling", enrol_opened_at=now, lock_reason=None,
                               enrol_expires_at=now + dt.timedelta(hours=dev.settings.policy.enrolment_hours))
        rt.store.append_audit(c, actor, "enrolment.opened", dev.mac, why, {}, now)


# ---- lifecycle: unlock, reset, revoke, decommission ---------------------------------------------

@dataclass
class LifecycleResult:
    mac: str
    state: str
    previous_state: str
    generation: int | None = None
    method: str | None = None
    manual: bool = False
    instructions: str | None = None
    message: str = ""
    notify: str | None = None  # what the SIP NOTIFY (resync push or remote reset) did
    confirmed: bool | None = None  # reset --wait: the device came back and enrolled
    registrar_error: str | None = None  # the store changed but the registrar could not be written (yet)


def _rotate_now(rt: Runtime, dev: ResolvedDevice, c, now: dt.datetime) -> int:
    """A new active generation at once; every older secret stops working (no grace period)."""
    store = rt.store
    creds = generate_credentials(rt, dev)
    store.set_credential_status(c, dev.mac, "pending", "discarded", now)
    store.set_credential_status(c, dev.mac, "active", "retired", now)
    gen = store.next_generation(c, dev.mac)
    store.add_credentials(c, dev.mac, gen, "active", creds, now)
    store.update_device(c, dev.mac, generation=gen, desired_hash=desired_hash(rt, dev, creds), pending_hash=None,
                        inputs_hash=inputs_fingerprint(rt, dev, gen))
    if dev.settings.registrar.kind not in (None, "none"):
        registrar_sync.write_intent(c, dev.mac, gen)  # the registrar follows in step 2 (or the next reconcile)
    return gen


def _reopen(rt: Runtime, dev: ResolvedDevice, c, state: str, now: dt.datetime, only_ip: str | None = None) -> None:
    rt.store.update_device(c, dev.mac, state=state, enrol_opened_at=now, lock_reason=None, enrolled_at=None,
                           enrol_expires_at=now + dt.timedelta(hours=dev.settings.policy.enrolment_hours),
                           enrol_ip=only_ip)


CONFLICT = "enrolment conflict"


def enrolment_address(dev: ResolvedDevice, st: DeviceState, enrol_from: str | None) -> tuple[str | None, str]:
    """Where a reopened window accepts the device from: (address or None for the site's networks, wording).

    "last" (the default of reset and revoke): the device's last known address, so that a reset handed to
    the helpdesk cannot give the new credentials to whoever else on the site asks first with a fitting
    User-Agent; "site": any address of its site; or an address of the site. A device locked by an
    enrolment conflict has two candidate addresses: the operator names the real phone's."""
    if enrol_from in (None, "last"):
        if st.state == "locked" and (st.lock_reason or "").startswith(CONFLICT):
            raise InputError(f"{dev.mac} is locked by an enrolment conflict ({st.lock_reason}): say which "
                             f"address is the real phone's with --enrol-from ADDRESS (or enrol_from, admin)")
        ip = st.last_ip or st.enrolled_from
        if ip is None:
            return None, f"from site {dev.site}'s networks (no address of the device is known yet)"
        return ip, f"from {ip} only (its last known address)"
    if enrol_from == "site":
        return None, f"from any address of site {dev.site}"
    if not dev.settings.in_site(enrol_from):
        raise InputError(f"--enrol-from {enrol_from}: not an address of site {dev.site}'s networks")
    return enrol_from, f"from {enrol_from} only"


def _registrar_now(rt: Runtime, dev: ResolvedDevice, generation: int | None) -> str | None:
    """Step 2 and 3 of a registrar write whose intent the caller committed with its store change; the
    problem (the intent stays, so `registrar sync` or the next serve start writes it again), or None."""
    if dev.settings.registrar.kind in (None, "none"):
        return None
    creds = rt.store.credentials(dev.mac, "active") if generation is not None else None
    try:
        registrar_sync.apply_or_raise(rt, [registrar_sync.Item(dev.mac, dev, generation, creds)],
                                      intent_written=True)
    except RegistrarError as e:
        log.error("%s", e)
        return str(e)
    return None


def unlock(rt: Runtime, mac: str, actor: str, why: str = "unlocked by the helpdesk") -> LifecycleResult:
    """A locked device gets configs again (with the credentials it holds)."""
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    st = rt.store.device(dev.mac)
    if st.state != "locked":
        raise InputError(f"device {dev.mac} is {st.state}, not locked")
    new_state = "provisioned" if st.enrolled_at else "enrolling"
    with rt.store.write() as c:
        rt.store.update_device(c, dev.mac, state=new_state, lock_reason=None)
        rt.store.append_audit(c, actor, "device.unlocked", dev.mac, why, {"lock_reason": st.lock_reason})
    return LifecycleResult(dev.mac, new_state, "locked", st.generation, message=f"unlocked ({st.lock_reason})")


def reset(rt: Runtime, mac: str, actor: str, why: str = "factory reset requested", *, notify: bool = True,
          contact: str | None = None, notify_timeout: float = NOTIFY_TIMEOUT, enrol_from: str | None = "last"
          ) -> LifecycleResult:
    """Factory-reset workflow: rotate every secret now (registrar included), reopen the enrolment window,
    state reset-pending until the device comes back and enrols. The vendor's remote reset (SIP NOTIFY)
    where its profile has one and the phone answers, otherwise the profile's instructions for a reset by
    hand. `wait_for_enrolment` waits for the device to come back. The window keeps every identity check
    of a first enrolment and accepts the device from `enrol_from` (enrolment_address)."""
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    vendor = vendor_of(rt.catalog, dev)
    st = rt.store.device(dev.mac)
    if st.state == "decommissioned":
        raise InputError(f"device {dev.mac} is decommissioned; adopt it again first")
    only_ip, where = enrolment_address(dev, st, enrol_from)
    now = utcnow()
    with rt.store.write() as c:
        gen = _rotate_now(rt, dev, c, now)
        _reopen(rt, dev, c, "reset-pending", now, only_ip)
        rt.store.append_audit(c, actor, "device.reset", dev.mac, why, {"generation": gen, "previous_state": st.state,
                                                                      "enrol_from": only_ip or "site"})
    kill_point("reset.store")
    reg_error = _registrar_now(rt, dev, gen)
    outcome = None
    if vendor.sip_notify.reset and notify:
        outcome = notify_device(rt, dev, "reset", contact, notify_timeout)
        rt.store.audit(actor, "reset.sent" if outcome.ok else "reset.failed", dev.mac,
                       "remote factory reset (SIP NOTIFY)", {"outcome": outcome.text[:300]})
    remote = outcome is not None and outcome.ok
    instructions = None if remote else (vendor.reset_instructions or "reset the device to factory settings by hand")
    msg = (f"credentials rotated; the device enrols again at its first fetch {where} within "
           f"{dev.settings.policy.enrolment_hours:g} h")
    if outcome is not None and not remote:
        msg += f"; the remote reset did not work ({outcome.text}), reset it by hand"
    return LifecycleResult(dev.mac, "reset-pending", st.state, gen, method="sip-notify" if remote else "manual",
                           manual=not remote, instructions=instructions, message=msg,
                           notify=outcome.text if outcome else None, registrar_error=reg_error)


def wait_for_enrolment(rt: Runtime, mac: str, timeout: float, poll: float = 0.5) -> bool:
    """True once a reset (or revoked) device came back and enrolled again."""
    deadline = time.monotonic() + timeout
    while True:
        st = rt.store.device(mac)
        if st is not None and st.state not in ("reset-pending", "enrolling") and st.enrolled_at is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def revoke(rt: Runtime, mac: str, actor: str, why: str = "credentials revoked", *, notify: bool = True,
           contact: str | None = None, notify_timeout: float = NOTIFY_TIMEOUT, enrol_from: str | None = "last"
           ) -> LifecycleResult:
    """Compromised credentials: new ones at once, and the old ones refused at once by the server and the
    registrar (no grace). The enrolment window is reopened and the phone is told to fetch (NOTIFY): its
    first, anonymous request from its site enrols it again with the new ones."""
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    st = rt.store.device(dev.mac)
    if st.state == "decommissioned":
        raise InputError(f"device {dev.mac} is decommissioned")
    only_ip, where = enrolment_address(dev, st, enrol_from)
    now = utcnow()
    with rt.store.write() as c:
        gen = _rotate_now(rt, dev, c, now)
        _reopen(rt, dev, c, "enrolling", now, only_ip)
        rt.store.append_audit(c, actor, "credentials.revoked", dev.mac, why, {"generation": gen,
                                                                             "enrol_from": only_ip or "site"})
    kill_point("revoke.store")
    reg_error = _registrar_now(rt, dev, gen)
    outcome = notify_device(rt, dev, "resync", contact, notify_timeout) if notify else None
    if outcome is not None:
        rt.store.audit(actor, "resync.sent" if outcome.ok else "resync.failed", dev.mac,
                       "push: the device fetches and enrols again", {"outcome": outcome.text[:300]})
    return LifecycleResult(dev.mac, "enrolling", st.state, gen, notify=outcome.text if outcome else None,
                           registrar_error=reg_error,
                           message="old credentials refused from now on by the server and the registrar; the "
                                   f"device enrols again at its next fetch {where}"
                                   + ("" if outcome is not None and outcome.ok else " (reboot it)"))


def decommission(rt: Runtime, mac: str, actor: str, why: str = "decommissioned") -> LifecycleResult:
    """Revoke everything (store and registrar) and refuse the device from now on (it stays in the store
    for the record)."""
    try:
        m = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    st = rt.store.device(m)
    if st is None:
        raise UnknownDevice(f"no device {m} in the store")
    dev = rt.inventory.device(m)
    now = utcnow()
    with rt.store.write() as c:
        for status in ("active", "pending"):
            rt.store.set_credential_status(c, m, status, "retired", now)
        rt.store.update_device(c, m, state="decommissioned", pending_hash=None, enrol_expires_at=None)
        if dev is not None and dev.settings.registrar.kind not in (None, "none"):
            registrar_sync.write_intent(c, m, None)
        rt.store.append_audit(c, actor, "device.decommissioned", m, why, {"previous_state": st.state})
    kill_point("decommission.store")
    reg_error = _registrar_now(rt, dev, None) if dev is not None else None
    hint = f" Remove it from {rt.inventory_path} too." if dev is not None else ""
    from provisioner.zerotouch.service import on_decommission  # its vendor's cloud must not send it here any more
    redirect_error = on_decommission(rt, m, actor)
    if redirect_error:
        hint += f" Still registered for redirection: {redirect_error}."
    return LifecycleResult(m, "decommissioned", st.state, registrar_error=reg_error,
                           message="every credential retired and removed from the registrar; the server refuses "
                                   "the device." + hint)


# ---- revealing secrets (second factor) ----------------------------------------------------------------

@dataclass
class RevealResult:
    mac: str
    generation: int
    credentials: dict[str, Secret]  # what the device holds now (active); Secret masks itself
    pending: dict[str, Secret] = field(default_factory=dict)  # a rotation in flight: what it gets next
    pending_generation: int | None = None


def reveal_credentials(rt: Runtime, mac: str, operator: str, code: str, actor: str | None = None,
                       why: str = "revealed with a second factor") -> RevealResult:
    """A device's secrets, for an operator who proves a second factor (TOTP, each code once). Audited
    (names only). Raises OtpRefused (exit 5) for a wrong, reused or missing code."""
    from provisioner import otp
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor or f"cli:{operator}")
    otp.verify(rt, operator, code)
    st = rt.store.device(dev.mac)
    active = rt.store.credentials(dev.mac, "active")
    pending = rt.store.credentials(dev.mac, "pending") if st.pending_hash else {}
    pgen = None
    if pending:
        pgen = max(h["generation"] for h in rt.store.credential_history(dev.mac) if h["status"] == "pending")
    rt.store.audit(actor or f"cli:{operator}", "credentials.revealed", dev.mac, why,
                   {"names": sorted(active), "generation": st.generation, "operator": operator,
                    **({"pending_generation": pgen} if pending else {})})
    return RevealResult(dev.mac, st.generation, active, pending, pgen)


@dataclass
class OtpEnrollment:
    operator: str
    uri: str  # otpauth://totp/...: holds the seed; shown once, to the operator only


def otp_enroll(rt: Runtime, operator: str, actor: str | None = None) -> OtpEnrollment:
    from provisioner import otp
    return OtpEnrollment(operator, otp.enroll(rt, operator, actor=actor))
