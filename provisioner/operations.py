"""Use cases, each one function that the CLI (and later the API) calls; each writes the audit log."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from provisioner import credentials as pw
from provisioner.desired import credential_names, device_context
from provisioner.errors import InputError, NotConfirmed, UnknownDevice
from provisioner.inventory import ResolvedDevice, vendor_of
from provisioner.macaddr import normalize_mac
from provisioner.render import sha256
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from provisioner.store import DeviceState, utcnow


def _rule_for(name: str) -> str:
    return "sip" if name.startswith("sip:") else name


def generate_credentials(rt: Runtime, dev: ResolvedDevice) -> dict[str, Secret]:
    vendor = vendor_of(rt.catalog, dev)
    forbidden = vendor.factory_passwords()
    out: dict[str, Secret] = {}
    for name in credential_names(dev, vendor):
        while True:
            s = pw.generate(vendor.passwords[_rule_for(name)], forbidden)
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
    added, updated = [], []
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
                    extra = {n: pw.generate(vendor.passwords[_rule_for(n)], vendor.factory_passwords())
                             for n in missing}
                    store.add_credentials(c, mac, gen, status, extra, now)
                    creds.update(extra)
                h = desired_hash(rt, dev, creds)
                key = "desired_hash" if status == "active" else "pending_hash"
                if getattr(state, key) != h:
                    changes[key] = h
            if set(changes) - {"inputs_hash"}:
                store.update_device(c, mac, **changes)
                store.append_audit(c, actor, "device.updated", mac, "inventory changed",
                                   {k: v for k, v in changes.items() if not k.endswith("hash")} or {"config": "changed"})
                updated.append(mac)
            elif changes:
                store.update_device(c, mac, **changes)
    return SyncResult(added, updated)


def device_row(rt: Runtime, st: DeviceState) -> dict:
    def iso(v):
        return v.isoformat(timespec="seconds") if v else None
    in_sync = st.served_hash is not None and st.served_hash == st.desired_hash and st.pending_hash is None
    return {"mac": st.mac, "vendor": st.vendor, "model": st.model, "site": st.site, "state": st.state,
            "last_seen": iso(st.last_seen), "last_ip": st.last_ip, "served_hash": st.served_hash,
            "desired_hash": st.desired_hash, "pending_hash": st.pending_hash, "in_sync": in_sync,
            "enrol_expires_at": iso(st.enrol_expires_at), "in_inventory": st.mac in rt.inventory.resolved}


def list_devices(rt: Runtime) -> list[dict]:
    sync_inventory(rt)
    return [device_row(rt, st) for st in rt.store.all_devices()]


def render_device(rt: Runtime, mac: str, masked: bool = True) -> dict[str, bytes]:
    dev = resolve_mac(rt, mac)
    sync_inventory(rt)
    vendor = vendor_of(rt.catalog, dev)
    st = rt.store.device(dev.mac)
    status = "pending" if st and st.pending_hash else "active"
    creds = {} if masked else rt.store.credentials(dev.mac, status)
    return rt.renderer.device_files(device_context(dev, vendor, creds, masked=masked))


@dataclass
class ReprovisionResult:
    mac: str
    generation: int
    pending_hash: str
    confirmed: bool
    state: str


def reprovision(rt: Runtime, mac: str, actor: str, why: str = "reprovision requested") -> ReprovisionResult:
    """Phase one of a two-phase rotation: new SIP, web and provisioning secrets as a pending generation.

    The device keeps fetching with its current provisioning credentials and gets the config of the
    pending generation; the server switches generations when it serves exactly that config
    (Store.promote_pending). Until then the old credentials keep working.
    """
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    store = rt.store
    now = utcnow()
    creds = generate_credentials(rt, dev)
    old = store.credentials(dev.mac, "active")
    for name, secret in creds.items():  # never hand out a secret the device held before
        if old.get(name) == secret:
            raise RuntimeError("password generator repeated a secret")  # 2^-100: not worth a retry path
    h = desired_hash(rt, dev, creds)
    with store.write() as c:
        st = store.device(dev.mac)
        if st.state in ("decommissioned", "locked"):
            raise InputError(f"device {dev.mac} is {st.state}; unlock or re-adopt it first")
        store.set_credential_status(c, dev.mac, "pending", "discarded", now)  # a rotation in flight is replaced
        gen = store.next_generation(c, dev.mac)
        store.add_credentials(c, dev.mac, gen, "pending", creds, now)
        new_state = "rotating" if st.state == "provisioned" else st.state
        store.update_device(c, dev.mac, pending_hash=h, state=new_state)
        store.append_audit(c, actor, "rotation.started", dev.mac, why,
                           {"generation": gen, "names": sorted(creds)}, now)
    return ReprovisionResult(dev.mac, gen, h, False, new_state)


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
    return gen


def _reopen(rt: Runtime, dev: ResolvedDevice, c, state: str, now: dt.datetime) -> None:
    rt.store.update_device(c, dev.mac, state=state, enrol_opened_at=now, lock_reason=None, enrolled_at=None,
                           enrol_expires_at=now + dt.timedelta(hours=dev.settings.policy.enrolment_hours))


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


def reset(rt: Runtime, mac: str, actor: str, why: str = "factory reset requested") -> LifecycleResult:
    """Factory-reset workflow: rotate every secret now, reopen the enrolment window, state reset-pending
    until the device comes back and enrols. The vendor's remote reset where its profile has one,
    otherwise the profile's instructions for a reset by hand."""
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    vendor = vendor_of(rt.catalog, dev)
    st = rt.store.device(dev.mac)
    if st.state == "decommissioned":
        raise InputError(f"device {dev.mac} is decommissioned; adopt it again first")
    now = utcnow()
    with rt.store.write() as c:
        gen = _rotate_now(rt, dev, c, now)
        _reopen(rt, dev, c, "reset-pending", now)
        rt.store.append_audit(c, actor, "device.reset", dev.mac, why, {"generation": gen, "previous_state": st.state})
    remote = vendor.sip_notify.reset
    instructions = None if remote else (vendor.reset_instructions or "reset the device to factory settings by hand")
    return LifecycleResult(dev.mac, "reset-pending", st.state, gen, method="sip-notify" if remote else "manual",
                           manual=not remote, instructions=instructions,
                           message=f"credentials rotated; the device enrols again at its first fetch from site "
                                   f"{dev.site} within {dev.settings.policy.enrolment_hours:g} h")


def revoke(rt: Runtime, mac: str, actor: str, why: str = "credentials revoked") -> LifecycleResult:
    """Compromised credentials: new ones at once and the old ones refused at once. The device must
    enrol again (its window is reopened) to receive the new ones."""
    dev = resolve_mac(rt, mac)
    sync_inventory(rt, actor)
    st = rt.store.device(dev.mac)
    if st.state == "decommissioned":
        raise InputError(f"device {dev.mac} is decommissioned")
    now = utcnow()
    with rt.store.write() as c:
        gen = _rotate_now(rt, dev, c, now)
        _reopen(rt, dev, c, "enrolling", now)
        rt.store.append_audit(c, actor, "credentials.revoked", dev.mac, why, {"generation": gen})
    from provisioner.registrar import line_secrets, registrar_for
    registrar_for(rt, dev).set(dev, line_secrets(rt.store.credentials(dev.mac)))
    return LifecycleResult(dev.mac, "enrolling", st.state, gen,
                           message="old credentials refused from now on; the device enrols again at its next "
                                   "fetch from its site (reboot it)")


def decommission(rt: Runtime, mac: str, actor: str, why: str = "decommissioned") -> LifecycleResult:
    """Revoke everything and refuse the device from now on (it stays in the store for the record)."""
    try:
        m = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    st = rt.store.device(m)
    if st is None:
        raise UnknownDevice(f"no device {m} in the store")
    now = utcnow()
    with rt.store.write() as c:
        for status in ("active", "pending"):
            rt.store.set_credential_status(c, m, status, "retired", now)
        rt.store.update_device(c, m, state="decommissioned", pending_hash=None, enrol_expires_at=None)
        rt.store.append_audit(c, actor, "device.decommissioned", m, why, {"previous_state": st.state})
    dev = rt.inventory.device(m)
    if dev is not None:
        from provisioner.registrar import registrar_for
        registrar_for(rt, dev).remove(dev)
    hint = f" Remove it from {rt.inventory_path} too." if dev is not None else ""
    return LifecycleResult(m, "decommissioned", st.state, message="every credential retired; the server refuses "
                                                                  "the device." + hint)
