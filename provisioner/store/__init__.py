"""State store: SQLite (WAL) in --home by default, PostgreSQL by URL for replicas.

The store offers transactional primitives (claim an enrolment once, promote a pending credential
generation when its config was served); the operations decide when to call them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections import namedtuple
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine

from provisioner.crypto import Keyring
from provisioner.secret import Secret
from provisioner.store.guard_schema import guard_bans
from provisioner.store.schema import audit_head, audit_log, credentials, devices, fetch_events
from provisioner.store.uploads_schema import uploads
from provisioner.store import observations as _observations  # noqa: F401  (discovery's table, migration 0002)
from provisioner.store import zerotouch_schema as _zerotouch  # noqa: F401  (issue 19, migration 0007_i19)

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(v: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if v is None:
        return None
    return v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)


def _aad(mac: str, name: str, generation: int) -> str:
    return f"{mac}|{name}|{generation}"


def _sqlite_pragmas(dbapi_conn, _record):
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see make_engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        # Writers take the lock at BEGIN (Store.write), so a read-then-write transaction never fails
        # to upgrade its lock; readers stay deferred and never wait on a writer (WAL).
        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(conn) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine, revision: str = "heads", down: bool = False) -> None:
    """Upgrade to every head (areas add their own migration branches off 0001) or downgrade."""
    with engine.begin() as conn:
        cfg = alembic_config(conn)
        (command.downgrade if down else command.upgrade)(cfg, revision)


@dataclass(frozen=True)
class DeviceState:
    mac: str
    vendor: str
    model: str
    site: str
    state: str
    generation: int
    enrol_expires_at: dt.datetime | None
    enrolled_at: dt.datetime | None
    last_seen: dt.datetime | None
    last_ip: str | None
    last_ua: str | None
    served_hash: str | None
    desired_hash: str | None
    pending_hash: str | None
    lock_reason: str | None
    inputs_hash: str | None = None
    enrol_ip: str | None = None  # the open window enrols from this address only (a remote reset)
    enrolled_from: str | None = None

    @classmethod
    def from_row(cls, r) -> "DeviceState":
        return cls(r.mac, r.vendor, r.model, r.site, r.state, r.generation, as_utc(r.enrol_expires_at),
                   as_utc(r.enrolled_at), as_utc(r.last_seen), r.last_ip, r.last_ua, r.served_hash,
                   r.desired_hash, r.pending_hash, r.lock_reason, r.inputs_hash, r.enrol_ip, r.enrolled_from)


class Prepared:
    """A SELECT compiled once for the engine's dialect and run on a pooled DBAPI connection.

    A boot storm reads a device row per request; SQLAlchemy's per-execution work (execution context,
    cache key, events, BEGIN) costs ten times the query itself. This keeps SQLAlchemy's SQL, paramstyle
    and result types (SQLite's datetimes are strings on disk) and skips the rest. Parameters: str only.
    """

    def __init__(self, engine: Engine, stmt: sa.Select):
        self._engine = engine
        dialect = engine.dialect
        compiled = stmt.compile(dialect=dialect)
        self._sql = compiled.string
        self._positional = compiled.positiontup  # qmark (SQLite) or None (named: psycopg)
        cols = list(stmt.selected_columns)
        self._row = namedtuple("Row", [c.key for c in cols])
        procs = [(i, c.type.dialect_impl(dialect).result_processor(dialect, None)) for i, c in enumerate(cols)]
        self._procs = [(i, f) for i, f in procs if f is not None]

    def first(self, **params: str):
        args = tuple(params[k] for k in self._positional) if self._positional is not None else params
        conn = self._engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._sql, args)
                raw = cur.fetchone()
            finally:
                cur.close()
        finally:
            conn.close()  # back to the pool, which ends any transaction the driver began
        if raw is None:
            return None
        values = list(raw)
        for i, f in self._procs:
            values[i] = f(values[i])
        return self._row(*values)


class Store:
    def __init__(self, engine: Engine, keyring: Keyring):
        self.engine = engine
        self.keyring = keyring
        self._device_by_mac = Prepared(engine, sa.select(devices).where(devices.c.mac == sa.bindparam("mac")))

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)})"

    @classmethod
    def open(cls, url: str, keyring: Keyring) -> "Store":
        engine = make_engine(url)
        insp = sa.inspect(engine)
        unkeyed = not insp.has_table("audit_head") or "keyed_from" not in {
            c["name"] for c in insp.get_columns("audit_head")}
        migrate(engine)
        store = cls(engine, keyring)
        if unkeyed:  # this open added the keyed chain (i15a): every entry from now on is keyed
            store._key_audit_chain()
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: row locks via with_for_update)."""
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    # ---- devices ---------------------------------------------------------------------------------

    def device(self, mac: str) -> DeviceState | None:
        r = self._device_by_mac.first(mac=mac)
        return DeviceState.from_row(r) if r else None

    def all_devices(self) -> list[DeviceState]:
        with self.engine.connect() as c:
            return [DeviceState.from_row(r) for r in c.execute(sa.select(devices).order_by(devices.c.mac))]

    def create_device(self, conn, mac: str, vendor: str, model: str, site: str, state: str,
                      enrol_hours: float | None, now: dt.datetime) -> None:
        expires = now + dt.timedelta(hours=enrol_hours) if enrol_hours else None
        conn.execute(devices.insert().values(
            mac=mac, vendor=vendor, model=model, site=site, state=state, generation=1,
            enrol_opened_at=now if expires else None, enrol_expires_at=expires,
            created_at=now, updated_at=now))

    def add_devices(self, conn, items: list[tuple], now: dt.datetime) -> None:
        """Bulk create: (mac, vendor, model, site, enrol_hours, secrets, desired_hash, inputs_hash) each."""
        if not items:
            return
        conn.execute(devices.insert(), [
            {"mac": mac, "vendor": vendor, "model": model, "site": site, "state": "enrolling", "generation": 1,
             "enrol_opened_at": now, "enrol_expires_at": now + dt.timedelta(hours=hours),
             "desired_hash": dh, "inputs_hash": ih, "created_at": now, "updated_at": now}
            for mac, vendor, model, site, hours, _, dh, ih in items])
        conn.execute(credentials.insert(), [
            {"mac": mac, "name": name, "generation": 1, "status": "active",
             "sealed": self.keyring.seal(secret, _aad(mac, name, 1)), "created_at": now}
            for mac, _, _, _, _, secrets, _, _ in items for name, secret in secrets.items()])

    def update_device(self, conn, mac: str, **values: Any) -> int:
        values.setdefault("updated_at", utcnow())
        return conn.execute(devices.update().where(devices.c.mac == mac).values(**values)).rowcount

    def lock_device(self, conn, mac: str, reason: str, only_from: tuple[str, ...] | None = None) -> int:
        """Lock a device (it gets no config until an operator unlocks or resets it); with `only_from`, only
        if it is in one of these states (two processes seeing one event lock it once)."""
        q = devices.update().where(devices.c.mac == mac)
        if only_from:
            q = q.where(devices.c.state.in_(only_from))
        return conn.execute(q.values(state="locked", lock_reason=reason[:255], updated_at=utcnow())).rowcount

    def claim_enrolment(self, mac: str, ip: str, now: dt.datetime) -> bool:
        """Close the enrolment window for this device; True for exactly one caller, across replicas
        (and only from the window's address when it has one)."""
        with self.write() as c:
            n = c.execute(devices.update().where(
                devices.c.mac == mac, devices.c.state.in_(("enrolling", "reset-pending")),
                devices.c.enrol_expires_at > now, sa.or_(devices.c.enrol_ip.is_(None), devices.c.enrol_ip == ip),
            ).values(state="provisioned", enrolled_at=now, enrolled_from=ip, enrol_ip=None, updated_at=now)).rowcount
        return n == 1

    # ---- credentials -----------------------------------------------------------------------------

    def add_credentials(self, conn, mac: str, generation: int, status: str, secrets: Mapping[str, Secret],
                        now: dt.datetime) -> None:
        conn.execute(credentials.insert(), [
            {"mac": mac, "name": name, "generation": generation, "status": status,
             "sealed": self.keyring.seal(secret, _aad(mac, name, generation)), "created_at": now}
            for name, secret in secrets.items()])

    def credentials(self, mac: str, status: str = "active", conn=None) -> dict[str, Secret]:
        q = sa.select(credentials.c.name, credentials.c.generation, credentials.c.sealed).where(
            credentials.c.mac == mac, credentials.c.status == status)
        if conn is None:
            with self.engine.connect() as c:
                rows = c.execute(q).all()
        else:
            rows = conn.execute(q).all()
        return {r.name: self.keyring.open(r.sealed, _aad(mac, r.name, r.generation)) for r in rows}

    def credential_history(self, mac: str) -> list[dict]:
        """Generations and their status, without the sealed values."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(credentials.c.name, credentials.c.generation, credentials.c.status,
                                       credentials.c.created_at, credentials.c.retired_at)
                             .where(credentials.c.mac == mac)
                             .order_by(credentials.c.generation, credentials.c.name)).all()
        return [dict(r._mapping) for r in rows]

    def set_credential_status(self, conn, mac: str, from_status: str, to_status: str, now: dt.datetime) -> int:
        return conn.execute(credentials.update().where(
            credentials.c.mac == mac, credentials.c.status == from_status).values(
            status=to_status, retired_at=now if to_status in ("retired", "discarded") else None)).rowcount

    def next_generation(self, conn, mac: str) -> int:
        g = conn.execute(sa.select(sa.func.max(credentials.c.generation)).where(credentials.c.mac == mac)).scalar()
        return (g or 0) + 1

    def promote_pending(self, mac: str, served_hash: str, now: dt.datetime) -> bool:
        """If `served_hash` is the pending config, make the pending generation active and retire the old one.

        True when this call switched (exactly once, even with replicas racing on the same fetch).
        """
        with self.write() as c:
            row = c.execute(sa.select(devices.c.pending_hash, devices.c.state)
                            .where(devices.c.mac == mac).with_for_update()).first()
            if row is None or row.pending_hash is None or row.pending_hash != served_hash:
                return False
            gen = c.execute(sa.select(sa.func.max(credentials.c.generation)).where(
                credentials.c.mac == mac, credentials.c.status == "pending")).scalar()
            self.set_credential_status(c, mac, "active", "retired", now)
            self.set_credential_status(c, mac, "pending", "active", now)
            self.update_device(c, mac, generation=gen, desired_hash=served_hash, pending_hash=None,
                               state="provisioned" if row.state == "rotating" else row.state, updated_at=now)
            self.append_audit(c, "device", "rotation.confirmed", mac,
                              "the device fetched the config of the new credential generation",
                              {"generation": gen}, now)
        return True

    # ---- fetch events ----------------------------------------------------------------------------

    def record_fetches(self, rows: Iterable[dict], seen: Iterable[dict] = ()) -> None:
        """Fetch events, and devices seen again with the config they already hold (mac, ip, ua, at):
        bookkeeping written in batches. A later sighting never moves last_seen back."""
        rows, seen = list(rows), list(seen)
        if not rows and not seen:
            return
        with self.write() as c:
            if rows:
                c.execute(fetch_events.insert(), rows)
            if seen:
                c.execute(devices.update()
                          .where(devices.c.mac == sa.bindparam("m"),
                                 sa.or_(devices.c.last_seen.is_(None), devices.c.last_seen < sa.bindparam("at")))
                          .values(last_seen=sa.bindparam("at"), last_ip=sa.bindparam("ip"),
                                  last_ua=sa.bindparam("ua"), updated_at=sa.bindparam("at")), seen)

    def mark_served(self, mac: str, digest: str, ip: str, ua: str | None, now: dt.datetime) -> None:
        with self.write() as c:
            self.update_device(c, mac, served_hash=digest, last_seen=now, last_ip=ip,
                               last_ua=(ua or "")[:255], updated_at=now)

    def prune_fetch_events(self, before: dt.datetime, batch: int = 5000, pause: float = 0.05,
                           stop=None) -> int:
        """Delete fetch events older than `before`, `batch` rows per transaction (a short lock each, so
        serving never waits long behind a prune); returns how many went."""
        total = 0
        while stop is None or not stop.is_set():
            ids = sa.select(fetch_events.c.id).where(fetch_events.c.at < before).order_by(
                fetch_events.c.id).limit(batch).scalar_subquery()
            with self.write() as c:
                n = c.execute(fetch_events.delete().where(fetch_events.c.id.in_(ids))).rowcount
            total += n
            if n < batch:
                break
            time.sleep(pause)
        return total

    # ---- bans shared by the processes and replicas of one store ------------------------------------

    def put_ban(self, key: str, until: dt.datetime, level: int, now: dt.datetime) -> None:
        with self.write() as c:
            row = c.execute(sa.select(guard_bans.c.banned_until, guard_bans.c.level)
                            .where(guard_bans.c.key == key).with_for_update()).first()
            if row is None:
                c.execute(guard_bans.insert().values(key=key, banned_until=until, level=level, updated_at=now))
            else:  # another process may have banned it longer already
                c.execute(guard_bans.update().where(guard_bans.c.key == key).values(
                    banned_until=max(until, as_utc(row.banned_until)), level=max(level, row.level), updated_at=now))

    def bans_since(self, since: dt.datetime | None, now: dt.datetime) -> list[tuple[str, dt.datetime, int]]:
        """Bans still running that changed since `since` (all of them when None)."""
        q = sa.select(guard_bans).where(guard_bans.c.banned_until > now)
        if since is not None:
            q = q.where(guard_bans.c.updated_at >= since)
        with self.engine.connect() as c:
            return [(r.key, as_utc(r.banned_until), r.level) for r in c.execute(q)]

    def prune_bans(self, now: dt.datetime) -> None:
        with self.write() as c:
            c.execute(guard_bans.delete().where(guard_bans.c.banned_until < now - dt.timedelta(days=1)))

    def fetches(self, mac: str | None = None, limit: int = 20) -> list[dict]:
        q = sa.select(fetch_events).order_by(fetch_events.c.id.desc()).limit(limit)
        if mac is not None:
            q = q.where(fetch_events.c.mac == mac)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    # ---- uploads (local overrides sent back by devices) ---------------------------------------------

    def add_upload(self, mac: str, filename: str, data: bytes, ip: str, now: dt.datetime) -> str:
        digest = hashlib.sha256(data).hexdigest()
        sealed = self.keyring.seal(Secret(data.decode("utf-8", "replace")), f"{mac}|upload:{filename}|{digest}")
        with self.write() as c:
            c.execute(uploads.insert().values(mac=mac, filename=filename, at=now, source_ip=ip, sha256=digest,
                                              sealed=sealed))
        return digest

    def macs_with_uploads(self) -> set[str]:
        """One query for the audit: only these devices need `latest_uploads`."""
        with self.engine.connect() as c:
            return set(c.execute(sa.select(uploads.c.mac).distinct()).scalars())

    def latest_uploads(self, mac: str) -> dict[str, tuple[dt.datetime, Secret]]:
        """The newest upload of each file name for a device (content stays a Secret)."""
        out: dict[str, tuple[dt.datetime, Secret]] = {}
        with self.engine.connect() as c:
            rows = c.execute(sa.select(uploads).where(uploads.c.mac == mac).order_by(uploads.c.id.desc())).all()
        for r in rows:
            if r.filename not in out:
                out[r.filename] = (as_utc(r.at), self.keyring.open(r.sealed, f"{mac}|upload:{r.filename}|{r.sha256}"))
        return out

    # ---- audit log (append-only, hash-chained, keyed) --------------------------------------------------

    @property
    def _audit_key(self) -> bytes:
        return self.keyring.derive("audit-chain")

    def _seal(self, last_id: int, last_hash: str, keyed_from: int | None) -> str:
        return hmac.new(self._audit_key, f"{last_id}|{last_hash}|{keyed_from}".encode(), hashlib.sha256).hexdigest()

    def _key_audit_chain(self) -> None:
        """Entries from the next one on are keyed; the ones before (SHA-256 only, written before i15a)
        are covered by the first keyed entry, whose HMAC includes the last of them."""
        with self.write() as c:
            head = c.execute(sa.select(audit_head).where(audit_head.c.id == 1).with_for_update()).one()
            if head.keyed_from is None:
                keyed_from = head.last_id + 1
                c.execute(audit_head.update().where(audit_head.c.id == 1).values(
                    keyed_from=keyed_from, seal=self._seal(head.last_id, head.last_hash, keyed_from)))

    def append_audit(self, conn, actor: str, action: str, target: str | None, why: str | None,
                     details: dict | None = None, now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1).with_for_update()).one()
        body = json.dumps(details or {}, sort_keys=True, default=str)
        now = now.astimezone(dt.timezone.utc)
        h = self._entry_hash(head.last_hash, now, actor, action, target, why, body, self._audit_key)
        res = conn.execute(audit_log.insert().values(at=now, actor=actor, action=action, target=target, why=why,
                                                     details=body, prev_hash=head.last_hash, entry_hash=h))
        new_id = res.inserted_primary_key[0]
        keyed_from = head.keyed_from if head.keyed_from is not None else new_id
        conn.execute(audit_head.update().where(audit_head.c.id == 1).values(
            last_id=new_id, last_hash=h, keyed_from=keyed_from, seal=self._seal(new_id, h, keyed_from)))

    @staticmethod
    def _entry_hash(prev: str, at: dt.datetime, actor, action, target, why, details: str,
                    key: bytes | None = None) -> str:
        """HMAC-SHA256 with the keyring's audit key (SHA-256 for entries written before i15a): whoever can
        write to the database cannot recompute it."""
        entry = {"at": at.isoformat(), "actor": actor, "action": action, "target": target, "why": why,
                 "details": details}
        data = (prev + json.dumps(entry, sort_keys=True)).encode()
        if key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(key, data, hashlib.sha256).hexdigest()

    def verify_audit_chain(self) -> list[str]:
        """Problems found walking the chain: an edited, removed or inserted entry breaks it, and without the
        keyring's key no one can recompute it; the sealed head tells entries cut off the end."""
        problems = []
        prev, last_id = "0" * 64, 0
        key = self._audit_key
        with self.engine.connect() as c:
            head = c.execute(sa.select(audit_head).where(audit_head.c.id == 1)).one()
            keyed_from = head.keyed_from
            for r in c.execute(sa.select(audit_log).order_by(audit_log.c.id)):
                if r.prev_hash != prev:
                    problems.append(f"audit entry {r.id} ({r.action}): does not follow entry {last_id or 'start'} "
                                    f"(an entry before it was removed or altered)")
                keyed = keyed_from is None or r.id >= keyed_from
                h = self._entry_hash(r.prev_hash, as_utc(r.at), r.actor, r.action, r.target, r.why, r.details,
                                     key if keyed else None)
                if not hmac.compare_digest(h, r.entry_hash):
                    problems.append(f"audit entry {r.id} ({r.action}): content does not match its hash (edited)")
                prev, last_id = r.entry_hash, r.id
        if (head.last_id, head.last_hash) != (last_id, prev):
            problems.append(f"audit log ends at entry {last_id}, but its head says {head.last_id} "
                            f"(entries at the end were removed)")
        elif last_id and (head.seal is None or keyed_from is None
                          or not hmac.compare_digest(head.seal, self._seal(head.last_id, head.last_hash, keyed_from))):
            problems.append(f"audit log head (entry {head.last_id}) does not match its seal (the head was "
                            f"rewritten: entries at the end removed, or the chain recomputed)")
        return problems

    def audit(self, actor: str, action: str, target: str | None, why: str | None, details: dict | None = None) -> None:
        with self.write() as c:
            self.append_audit(c, actor, action, target, why, details)

    def audit_entries(self, target: str | None = None, limit: int = 50) -> list[dict]:
        q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(audit_log.c.target == target)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]
