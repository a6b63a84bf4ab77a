"""The write-ahead record of what each registrar holds, and the repair of a write or switch cut short.

Rule: the registrar holds the SIP passwords of the device's *active* credential generation, which is the
generation of the config the device holds — except during a switch: the pipeline calls `prepare_switch`
just before it serves the config of the pending generation; the registrar gets the pending passwords
first, then the pipeline records the fetch (devices.served_hash), promotes the pending generation
(Store.promote_pending) and only then sends the reply.

Every registrar write goes through three steps, each committed before the next:
  1. intent: registrar_sync.intent = set|remove, with the generation and the writing process;
  2. the registrar write itself (idempotent);
  3. record: registrar_sync.held = that generation, intent cleared.
A process killed between 1 and 3 leaves an intent: the registrar's state is unknown and `reconcile`
writes it again. A switch also leaves a *lease* (the pending generation, the serving process, the time):
while that process lives and the lease is young, nobody undoes the switch.

`reconcile` (at serve start-up, in every `reprovision`, and `provisioner registrar sync`) repairs a device
whose switch was cut short: its pending config was not promoted, so the device still holds its active
generation, and the registrar gets that one back. If the pipeline had already recorded the pending config
as served but not promoted it, the reply was never sent (the pipeline promotes before it replies): the
served mark is rolled back too, and the device's next fetch (with the credentials it holds) resumes the
rotation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import sqlalchemy as sa

from provisioner.errors import ProvisionerError
from provisioner.inventory import ResolvedDevice
from provisioner.registrar import (RegistrarError, accounts, kill_point, line_secrets, registrar_for)
from provisioner.secret import Secret
from provisioner.store import as_utc, utcnow
from provisioner.store.lifecycle_schema import registrar_sync
from provisioner.store.schema import credentials, devices

log = logging.getLogger("provisioner.registrar")

LEASE_TTL = float(os.environ.get("PROVISIONER_SWITCH_LEASE", "30"))  # seconds a switch is left alone
BUSY_WAIT = 0.05  # seconds between looks at another process's write of the same device
BUSY_TRIES = 10


# ---- who is writing ------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data.rsplit(b")", 1)[1].split()[19].decode()  # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


_process: tuple[int, str] | None = None


def owner() -> str:
    """host:pid:start time:thread of the caller (a reused PID does not look alive; another thread of this
    process is another writer)."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, f"{socket.gethostname()[:64]}:{pid}:{_start_time(pid) or '?'}")
    return f"{_process[1]}:{threading.get_ident()}"


def owner_alive(who: str | None) -> bool:
    if not who:
        return False
    try:
        host, pid, start, _thread = who.rsplit(":", 3)
        pid_i = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname()[:64]:
        return True  # another machine (a replica): only the age of its lease tells
    if pid_i == os.getpid():
        return True
    return start != "?" and _start_time(pid_i) == start


def _live(who: str | None, at, now: dt.datetime) -> bool:
    at = as_utc(at)
    return bool(who) and at is not None and (now - at).total_seconds() < LEASE_TTL and owner_alive(who)


# ---- the record ----------------------------------------------------------------------------------

def _row(c, mac: str):
    return c.execute(sa.select(registrar_sync).where(registrar_sync.c.mac == mac)).first()


def _upsert(c, mac: str, row, **values) -> None:
    values["updated_at"] = utcnow()
    if row is None:
        values.setdefault("kind", "none")
        values.setdefault("target", "")
        values.setdefault("accounts", "[]")
        c.execute(registrar_sync.insert().values(mac=mac, **values))
    else:
        c.execute(registrar_sync.update().where(registrar_sync.c.mac == mac).values(**values))


def _accounts_json(dev: ResolvedDevice) -> str:
    return json.dumps(sorted({u for u, _ in accounts(dev)}))


def write_intent(c, mac: str, generation: int | None, who: str | None = None) -> None:
    """Step 1, inside the caller's transaction (so a rotation and its registrar intent commit together)."""
    _upsert(c, mac, _row(c, mac), intent="remove" if generation is None else "set", intent_generation=generation,
            intent_owner=who or owner(), intent_at=utcnow())


def pending_generation(c, mac: str) -> int | None:
    return c.execute(sa.select(sa.func.max(credentials.c.generation)).where(
        credentials.c.mac == mac, credentials.c.status == "pending")).scalar()


def switch_in_progress(c, mac: str) -> int | None:
    """The pending generation a live process is switching this device to right now, if any."""
    row = _row(c, mac)
    if (row is not None and row.lease_owner and _live(row.lease_owner, row.lease_at, utcnow())
            and pending_generation(c, mac) == row.lease_generation):
        return row.lease_generation
    return None


def _pending_generation(store, mac: str) -> int | None:
    with store.engine.connect() as c:
        return pending_generation(c, mac)


@dataclass
class Item:
    """One registrar write: a generation's SIP passwords for a device, or (generation None) its removal.

    `prune`: the device's other accounts at that registrar go too (an old domain's, a removed line's):
    set when the device holds, or is being handed, the config of this write. Not while it may still hold
    an older config that uses them (an inventory edit it has not fetched yet): the orphan sweep removes
    those once it fetched (registrar/verify.py)."""

    mac: str
    dev: ResolvedDevice
    generation: int | None
    creds: Mapping[str, Secret] | None = None
    prune: bool = True


def _claimed_users(rt, target: str, skip: set[str]) -> set[str]:
    """SIP users that inventory devices (other than `skip`) have on the registrar `target`."""
    out = set()
    for dev in rt.inventory.resolved.values():
        if dev.mac in skip or dev.settings.registrar.kind in (None, "none"):
            continue
        try:
            if registrar_for(rt, dev).target() != target:
                continue
        except Exception:
            continue
        out.update(u for u, _ in accounts(dev))
    return out


def _write(rt, items: list[Item], rows: dict) -> dict[str, str]:
    """Step 2 for a batch, grouped by registrar: {mac: problem} for what failed."""
    failures: dict[str, str] = {}
    groups: dict[int, tuple] = {}
    for it in items:
        try:
            b = registrar_for(rt, it.dev)
        except (NotImplementedError, ProvisionerError) as e:
            failures[it.mac] = str(e)
            continue
        groups.setdefault(id(b), (b, []))[1].append(it)
    for b, its in groups.values():
        try:
            stale: set[str] = set()
            for it in its:
                row = rows.get(it.mac)
                old = set(json.loads(row.accounts)) if row is not None and row.target == b.target() else set()
                new = {u for u, _ in accounts(it.dev)}
                stale |= new if it.generation is None else (old - new)
                if it.generation is None:
                    stale |= old
            if stale:  # never an account that another device of the inventory now uses there
                stale -= _claimed_users(rt, b.target(), {it.mac for it in its})
            if stale:
                b.remove_users(stale)
            sets = [(it.dev, line_secrets(it.creds or {})) for it in its if it.generation is not None]
            if sets:
                b.set_many(sets)
            # the devices' accounts left over elsewhere at this registrar (another domain, a removed line)
            keep = {it.mac: set() if it.generation is None else b.account_keys(it.dev) for it in its if it.prune}
            for mac, gone in (b.prune_many(keep) if keep else {}).items():
                log.info("%s: removed %s, no longer %s's", b.label, ", ".join(f"{u}@{d}" for u, d in gone), mac)
        except Exception as e:  # the backend's own message (never a secret); anything else: its type only
            msg = str(e) if isinstance(e, ProvisionerError) else f"{b.label}: {type(e).__name__}"
            log.error("registrar write failed for %d device(s): %s", len(its), msg)
            for it in its:
                failures[it.mac] = msg
    return failures


def apply(rt, items: Iterable[Item], *, clear_lease: bool = True, intent_written: bool = False
          ) -> dict[str, str]:
    """Write each item to its registrar under the write-ahead record; {mac: problem} for failures
    (their intent stays, so the next reconcile writes them again)."""
    items = [it for it in items if it.dev is not None and it.dev.settings.registrar.kind not in (None, "none")]
    if not items:
        return {}
    store = rt.store
    rows = {}
    with store.write() as c:
        for it in items:
            if not intent_written:
                write_intent(c, it.mac, it.generation)
            rows[it.mac] = _row(c, it.mac)
    kill_point("sync.intent")
    failures = _write(rt, items, rows)
    kill_point("sync.registrar")
    with store.write() as c:
        for it in items:
            row = _row(c, it.mac)
            if it.mac in failures:  # the intent stays for the next reconcile; nobody is writing it any more
                _upsert(c, it.mac, row, error=failures[it.mac][:255], intent_owner=None, intent_at=None)
                continue
            values = dict(held=it.generation, intent=None, intent_generation=None, intent_owner=None,
                          intent_at=None, kind=it.dev.settings.registrar.kind,
                          target=registrar_for(rt, it.dev).target(),
                          accounts="[]" if it.generation is None else _accounts_json(it.dev), error=None)
            if clear_lease:
                values.update(lease_generation=None, lease_owner=None, lease_at=None, served_before=None)
            _upsert(c, it.mac, row, **values)
    return failures


def apply_or_raise(rt, items: Iterable[Item], **kw) -> None:
    failures = apply(rt, items, **kw)
    if failures:
        mac, msg = next(iter(failures.items()))
        more = f" (and {len(failures) - 1} more device(s))" if len(failures) > 1 else ""
        raise RegistrarError(f"registrar not updated for {mac}{more}: {msg}; the store is changed and "
                             f"`provisioner registrar sync` (or the next serve start) writes it again")


# ---- the switch (called by the pipeline) ----------------------------------------------------------

def prepare_switch(rt, dev: ResolvedDevice, pending: Mapping[str, Secret]) -> bool:
    """Give the registrar the pending generation's SIP passwords before the device can get its config.

    False (the pipeline then serves the current config) when the registrar cannot be written, when the
    rotation changed since the pipeline read it, or while another process writes this device's registrar.
    """
    if dev.settings.registrar.kind in (None, "none"):
        return True
    try:
        backend = registrar_for(rt, dev)
        target = backend.target()
    except (NotImplementedError, ProvisionerError) as e:
        log.error("no registrar for %s: %s", dev.mac, e)
        return False
    store, me, mac = rt.store, owner(), dev.mac
    wanted = line_secrets(pending)
    gen = None
    for _ in range(BUSY_TRIES):  # bounded: another process writing this device's registrar right now
        now = utcnow()
        with store.write() as c:
            st = c.execute(sa.select(devices.c.pending_hash, devices.c.served_hash).where(devices.c.mac == mac)
                           .with_for_update()).first()
            if st is None or st.pending_hash is None:
                return False
            gen = pending_generation(c, mac)
            if gen is None or line_secrets(store.credentials(mac, "pending", conn=c)) != wanted:
                return False  # the pipeline's view is stale: the rotation was replaced or promoted meanwhile
            row = _row(c, mac)
            # another process writing this device's registrar right now (a lease for another generation
            # is over: that switch was promoted or replaced)
            busy = (row is not None and row.intent is not None and row.intent_owner != me
                    and _live(row.intent_owner, row.intent_at, now))
            if not busy:
                lease = dict(lease_generation=gen, lease_owner=me, lease_at=now)
                if (row is not None and row.held == gen and row.intent is None and row.target == target
                        and row.accounts == _accounts_json(dev)):
                    _upsert(c, mac, row, **lease)  # switched at an earlier fetch: the registrar has them
                    return True
                before = row.served_before if row is not None and row.lease_generation == gen else None
                _upsert(c, mac, row, intent="set", intent_generation=gen, intent_owner=me, intent_at=now,
                        served_before=before or st.served_hash, **lease)
                rows = {mac: row}
                break
        time.sleep(BUSY_WAIT)
    else:
        log.warning("registrar of %s is being written by another process; its current config is served", mac)
        return False
    kill_point("switch.intent")
    failures = _write(rt, [Item(mac, dev, gen, pending)], rows)
    if failures:
        log.error("registrar refused the new passwords of %s: %s", mac, failures[mac])
        _restore(rt, dev)
        return False
    kill_point("switch.registrar")
    with store.write() as c:
        _upsert(c, mac, _row(c, mac), held=gen, intent=None, intent_generation=None, intent_owner=None,
                intent_at=None, kind=dev.settings.registrar.kind, target=target, accounts=_accounts_json(dev),
                error=None)
    kill_point("switch.done")
    return True


def _restore(rt, dev: ResolvedDevice) -> None:
    """After a failed switch: the registrar gets the active generation back at once (best effort)."""
    st = rt.store.device(dev.mac)
    if st is None:
        return
    try:
        apply(rt, [Item(dev.mac, dev, st.generation, rt.store.credentials(dev.mac, "active"),
                        prune=_holds_desired(st.served_hash, st.desired_hash))])
    except Exception:
        log.exception("could not put the registrar of %s back to generation %s", dev.mac, st.generation)


# ---- repair --------------------------------------------------------------------------------------

@dataclass
class Repair:
    mac: str
    action: str  # written | removed | rolled-back | skipped | failed
    detail: str = ""


@dataclass
class ReconcileReport:
    repairs: list[Repair] = field(default_factory=list)

    @property
    def failed(self) -> list[Repair]:
        return [r for r in self.repairs if r.action == "failed"]


def _candidates(c, macs: list[str] | None):
    rs, d = registrar_sync, devices
    should = sa.case((d.c.state == "decommissioned", sa.null()), else_=d.c.generation)
    q = (sa.select(d.c.mac, d.c.state, d.c.generation, d.c.pending_hash, d.c.served_hash, d.c.desired_hash,
                   rs.c.mac.label("rs_mac"), rs.c.kind, rs.c.target, rs.c.accounts, rs.c.held, rs.c.intent,
                   rs.c.intent_owner, rs.c.intent_at, rs.c.lease_generation, rs.c.lease_owner, rs.c.lease_at,
                   rs.c.served_before)
         .select_from(d.outerjoin(rs, rs.c.mac == d.c.mac)))
    if macs is not None:
        out = []
        for i in range(0, len(macs), 500):
            out += c.execute(q.where(d.c.mac.in_(macs[i:i + 500]))).all()
        return out
    return c.execute(q.where(sa.or_(rs.c.mac.is_(None), rs.c.intent.isnot(None), rs.c.lease_owner.isnot(None),
                                    sa.and_(rs.c.kind != "none", rs.c.held.is_distinct_from(should))))).all()


def _holds_desired(served: str | None, desired: str | None) -> bool:
    """The device holds the config of its current settings (or none at all): nothing older in use."""
    return served is None or served == desired


def reconcile(rt, macs: Iterable[str] | None = None, actor: str = "system", sweep: bool = False) -> ReconcileReport:
    """Make every registrar hold what the devices hold; repair switches and writes cut short.

    `macs`: only these devices (all devices that need a look when None). `sweep`: also remove the accounts
    this project wrote that no device owns any more (registrar/verify.py; `provisioner registrar sync`).
    Never raises for one device's registrar: failures are in the report (and the intent stays for the
    next run).
    """
    store = rt.store
    report = ReconcileReport()
    now = utcnow()
    me = owner()
    with store.engine.connect() as c:
        rows = _candidates(c, sorted(set(macs)) if macs is not None else None)
    todo: list[Item] = []
    for r in rows:
        dev = rt.inventory.device(r.mac)
        if dev is None or dev.settings.registrar.kind in (None, "none"):
            continue  # not in the inventory: `provisioner audit` reports its accounts as orphans
        if (r.lease_owner and r.pending_hash and _live(r.lease_owner, r.lease_at, now)
                and _pending_generation(store, r.mac) == r.lease_generation):
            report.repairs.append(Repair(r.mac, "skipped", "a switch is being served right now"))
            continue
        if r.intent and r.intent_owner != me and _live(r.intent_owner, r.intent_at, now):
            report.repairs.append(Repair(r.mac, "skipped", "another process is writing its registrar"))
            continue
        try:
            target = registrar_for(rt, dev).target()
        except (NotImplementedError, ProvisionerError) as e:
            report.repairs.append(Repair(r.mac, "failed", str(e)))
            continue
        if r.lease_generation is not None and r.pending_hash and r.served_hash == r.pending_hash:
            _roll_back_served(rt, r, actor, report)
        should = None if r.state == "decommissioned" else r.generation
        if (r.rs_mac is None or r.intent is not None or r.held != should or r.target != target
                or r.kind != dev.settings.registrar.kind
                or (should is not None and r.accounts != _accounts_json(dev))):
            creds = store.credentials(r.mac, "active") if should is not None else None
            todo.append(Item(r.mac, dev, should, creds,
                             prune=should is None or _holds_desired(r.served_hash, r.desired_hash)))
        elif r.lease_owner:
            with store.write() as w:
                _upsert(w, r.mac, _row(w, r.mac), lease_generation=None, lease_owner=None, lease_at=None,
                        served_before=None)
    if todo:
        failures = apply(rt, todo)
        for it in todo:
            if it.mac in failures:
                report.repairs.append(Repair(it.mac, "failed", failures[it.mac]))
            else:
                report.repairs.append(Repair(it.mac, "removed" if it.generation is None else "written",
                                             f"generation {it.generation}" if it.generation else ""))
        done = [it for it in todo if it.mac not in failures]
        if done:
            store.audit(actor, "registrar.reconciled", done[0].mac if len(done) == 1 else None,
                        "registrar brought in line with the credentials the devices hold",
                        {"devices": [f"{it.mac}: {'removed' if it.generation is None else f'generation {it.generation}'}"
                                     for it in done][:500]})
    if sweep:
        from provisioner.registrar import verify
        report.repairs += verify.sweep(rt, actor)
    return report


def ensure_held(rt, dev: ResolvedDevice) -> str | None:
    """Before a device is handed a config it does not hold yet (enrolment, a re-enrolment, a changed
    config): the registrar must hold the SIP passwords in it. None when it does (written now if the record
    says it does not); else the problem, and the caller does not hand the config out."""
    if dev.settings.registrar.kind in (None, "none"):
        return None
    try:
        target = registrar_for(rt, dev).target()
    except (NotImplementedError, ProvisionerError) as e:
        return str(e)

    def problem() -> str | None:
        with rt.store.engine.connect() as c:
            row = _row(c, dev.mac)
            gen = c.execute(sa.select(devices.c.generation).where(devices.c.mac == dev.mac)).scalar()
        if (row is not None and gen is not None and row.held == gen and row.intent is None and row.target == target
                and row.accounts == _accounts_json(dev)):
            return None
        if row is not None and row.error:
            return row.error
        return "not written yet" if row is None or row.intent is None else "a write is in flight"

    if problem() is None:
        return None
    rep = reconcile(rt, [dev.mac], "serve")
    still = problem()
    if still is None:
        return None
    return next((r.detail for r in rep.repairs if r.mac == dev.mac and r.action in ("failed", "skipped")), still)


def _roll_back_served(rt, r, actor: str, report: ReconcileReport) -> None:
    """The pending config was marked served but not promoted: the reply never left (see the module doc)."""
    with rt.store.write() as c:
        if pending_generation(c, r.mac) != r.lease_generation:
            return
        n = c.execute(devices.update().where(devices.c.mac == r.mac, devices.c.served_hash == r.pending_hash,
                                             devices.c.pending_hash == r.pending_hash)
                      .values(served_hash=r.served_before, updated_at=utcnow())).rowcount
        if n:
            rt.store.append_audit(c, actor, "rotation.interrupted", r.mac,
                                  "the server stopped while it served the new config, before the switch; the "
                                  "device keeps its current credentials and gets the new ones at its next fetch",
                                  {"generation": r.lease_generation})
    if n:
        report.repairs.append(Repair(r.mac, "rolled-back", f"switch to generation {r.lease_generation} undone"))


def status(rt, mac: str) -> dict | None:
    """The write-ahead record of one device, without secrets (for `registrar list` and device detail)."""
    with rt.store.engine.connect() as c:
        r = _row(c, mac)
    if r is None:
        return None
    return {"kind": r.kind, "target": r.target, "accounts": json.loads(r.accounts), "held_generation": r.held,
            "write_in_flight": r.intent, "switching_to": r.lease_generation, "error": r.error}
