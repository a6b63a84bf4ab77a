"""Kamailio: the `subscriber` table of Kamailio's own database (auth_db), SQLite or PostgreSQL.

Only what auth_db needs with `calculate_ha1 = 0` is stored, never the password itself:
    ha1  = md5("user:domain:password")          checked for a digest username "user"
    ha1b = md5("user@domain:domain:password")   checked for a digest username "user@domain"
with realm = the SIP domain (Kamailio's cfg must use the To-domain as realm, `auth_check("$td", ...)`).
auth_db reads the table on every REGISTER: a change takes effect at the next REGISTER, no reload.

inventory.yaml (site or defaults):
    registrar: {kind: kamailio, host: sip.example.net, domain: example.net,
                db: /var/lib/kamailio/kamailio.sqlite}        # or sqlite:///abs/path (Kamailio's form)
    registrar: {kind: kamailio, ..., db: postgresql://kamailio@db.example.net/kamailio,
                db_password_env: KAMAILIO_DB_PASSWORD}        # the password only in the environment
Without `db`, the environment variable PROVISIONER_KAMAILIO_DB gives it.

The sites' networks go to the `address` table of the permissions module (registrar/acl.py); Kamailio
caches that table, so give `reload_command: [kamcmd, -s, unix:/run/kamailio/kamailio_ctl,
permissions.addressReload]` for a change to apply without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from provisioner.inventory import ResolvedDevice, ResolvedRegistrar
from provisioner.registrar import Registrar, RegistrarError, accounts, run_reload
from provisioner.secret import Secret

log = logging.getLogger("provisioner.registrar.kamailio")

ENV_DB = "PROVISIONER_KAMAILIO_DB"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def ha1(user: str, domain: str, password: Secret) -> tuple[str, str]:
    pw = password.reveal()
    return md5(f"{user}:{domain}:{pw}"), md5(f"{user}@{domain}:{domain}:{pw}")


def database_url(db: str | None, password_env: str | None, base: Path) -> tuple[str, str]:
    """(SQLAlchemy URL, label without password) from the inventory's `db` (or PROVISIONER_KAMAILIO_DB)."""
    db = db or os.environ.get(ENV_DB)
    if not db:
        raise RegistrarError(f"registrar kind kamailio: give `db` (Kamailio's SQLite file or a PostgreSQL URL) in "
                             f"the registrar mapping, or set {ENV_DB}")
    if re.match(r"^postgres(ql)?(\+\w+)?://", db):
        url = make_url(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", db))
        if password_env:
            value = os.environ.get(password_env)
            if value is None:
                raise RegistrarError(f"registrar kind kamailio: the environment variable {password_env} "
                                     f"(db_password_env) is not set")
            url = url.set(password=value)
        return url.render_as_string(hide_password=False), url.render_as_string(hide_password=True)
    path = db[len("sqlite://"):] if db.startswith("sqlite://") else db
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    # mode=rw: never create the file (Kamailio would run on an empty one and refuse everyone)
    return f"sqlite:///file:{p}?mode=rw&uri=true", f"sqlite://{p}"


ACL_GROUP = 1  # the permissions group kamailio.cfg checks: allow_source_address("1")
TAG = "provisioner"  # our address rows are tagged provisioner:<site>; other rows are never touched

# The subscriber table has no column of its own for a tag, so the accounts this project wrote are listed in
# a table of ours in the same database, written in the same transaction; Kamailio never reads it. Sync
# removes the tagged accounts no device owns any more (a line removed, a device gone, the domain changed);
# accounts another tool wrote are never removed as orphans.
TAGS = sa.Table("provisioner_account", sa.MetaData(),
                sa.Column("username", sa.String(64), primary_key=True),
                sa.Column("domain", sa.String(64), primary_key=True),
                sa.Column("mac", sa.String(12), nullable=False),
                sa.Column("written_at", sa.String(32), nullable=False),
                sa.Index("provisioner_account_mac_idx", "mac"))
SUBSCRIBER_COLUMNS = {"username", "domain", "password", "ha1", "ha1b"}


class KamailioRegistrar(Registrar):
    kind = "kamailio"

    def __init__(self, url: str, label: str, domain: str, reload_command: tuple[str, ...] | None = None):
        self.domain = domain
        # run after the address table changed, e.g. kamcmd … permissions.addressReload (Kamailio caches it)
        self.reload_command = tuple(reload_command or ())
        self._label = label
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            if "///file:" not in url:
                url = f"sqlite:///file:{url.split('///', 1)[1]}?mode=rw&uri=true"
            path = Path(url.split("///file:", 1)[1].split("?", 1)[0])
            if not path.is_file():  # Kamailio would create it empty and refuse everyone: say so now
                raise RegistrarError(f"Kamailio database {path} does not exist (create its schema first: "
                                     f"kamdbctl, or /usr/share/kamailio/db_sqlite/*-create.sql)")
            # Kamailio's SQLite driver has no busy timeout; we wait for it instead of failing
            self.engine = sa.create_engine(url, connect_args={"timeout": 10}, poolclass=sa.pool.NullPool)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
        self._checked = False

    @classmethod
    def from_settings(cls, reg: ResolvedRegistrar, base: Path) -> "KamailioRegistrar":
        url, label = database_url(reg.db, reg.db_password_env, base)
        return cls(url, label, reg.domain, reg.reload_command)

    def __repr__(self) -> str:
        return f"KamailioRegistrar({self._label}, domain={self.domain})"

    @property
    def label(self) -> str:
        return f"Kamailio ({self._label})"

    def target(self) -> str:
        return f"kamailio|{self._label}|{self.domain}"[:255]

    def _check(self, c) -> None:
        if self._checked:
            return
        if self._sqlite:
            mode = c.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                log.warning("%s is in journal mode %s: Kamailio's reads may fail with 'database is locked' while "
                            "provisioner writes; run PRAGMA journal_mode=WAL on it once", self._label, mode)
        if not sa.inspect(c).has_table("subscriber"):
            raise RegistrarError(f"{self.label}: no subscriber table (create Kamailio's auth_db schema)")
        TAGS.create(c, checkfirst=True)
        self._checked = True

    def _run(self, what: str, fn):
        try:
            with self.engine.begin() as c:
                self._check(c)
                return fn(c)
        except RegistrarError:
            raise
        except sa.exc.SQLAlchemyError as e:
            # the driver's message names tables and columns, not values (bound parameters are not shown)
            detail = str(getattr(e, "orig", e)).splitlines()[0][:200]
            raise RegistrarError(f"{self.label}: could not {what}: {type(getattr(e, 'orig', e)).__name__}: "
                                 f"{detail}") from None

    # ---- writes ------------------------------------------------------------------------------------
    _UPSERT = sa.text(
        "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (:u, :d, '', :h1, :h1b) "
        "ON CONFLICT (username, domain) DO UPDATE SET password = '', ha1 = excluded.ha1, ha1b = excluded.ha1b")

    def set(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> None:
        self.set_many([(dev, line_secrets)])

    _TAG = sa.text(
        "INSERT INTO provisioner_account (username, domain, mac, written_at) VALUES (:u, :d, :m, :at) "
        "ON CONFLICT (username, domain) DO UPDATE SET mac = excluded.mac, written_at = excluded.written_at")

    def set_many(self, items: Iterable[tuple[ResolvedDevice, Mapping[str, Secret]]]) -> None:
        rows = []
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for dev, secrets in items:
            for user, pw in self._lines(dev, secrets):
                h1, h1b = ha1(user, self.domain, pw)
                rows.append({"u": user, "d": self.domain, "h1": h1, "h1b": h1b, "m": dev.mac, "at": at})
        if rows:
            def write(c) -> None:
                c.execute(self._UPSERT, rows)
                c.execute(self._TAG, rows)
            self._run("write the subscriber table", write)

    def remove(self, dev: ResolvedDevice) -> None:
        self.remove_users([u for u, _ in accounts(dev)])

    def remove_users(self, users: Iterable[str]) -> None:
        self.remove_accounts([(u, self.domain) for u in users])

    def remove_accounts(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = sorted(set(pairs))
        if not pairs:
            return

        def delete(c) -> None:
            for table in ("subscriber", "provisioner_account"):
                c.execute(sa.text(f"DELETE FROM {table} WHERE username = :u AND domain = :d"),
                          [{"u": u, "d": d} for u, d in pairs])
        self._run("remove subscribers", delete)

    def tagged(self) -> list[dict]:
        """Accounts of this database that provisioner wrote (any domain), with the device they were for."""
        q = sa.text("SELECT t.username, t.domain, t.mac FROM provisioner_account t JOIN subscriber s "
                    "ON s.username = t.username AND s.domain = t.domain ORDER BY t.domain, t.username")
        rows = self._run("read the subscriber table", lambda c: c.execute(q).all())
        return [{"username": r.username, "domain": r.domain, "device": r.mac} for r in rows]

    def prune_many(self, keep: Mapping[str, set[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
        macs = sorted(keep)
        q = sa.text("SELECT username, domain, mac FROM provisioner_account WHERE mac IN :macs").bindparams(
            sa.bindparam("macs", expanding=True))

        def read(c) -> list:
            rows = []
            for i in range(0, len(macs), 500):
                rows += c.execute(q, {"macs": macs[i:i + 500]}).all()
            return rows
        gone: dict[str, list[tuple[str, str]]] = {}
        for r in self._run("read the subscriber table", read) if macs else []:
            if (r.username, r.domain) not in keep[r.mac]:
                gone.setdefault(r.mac, []).append((r.username, r.domain))
        self.remove_accounts([p for ps in gone.values() for p in ps])
        return gone

    def store_key(self) -> str:
        return f"kamailio|{self._label}"[:255]

    def probe(self) -> str:
        """Reachable, the tables there, and writable: a write that changes nothing (no row matches), in a
        transaction rolled back."""
        def test(c) -> None:
            cols = {col["name"] for col in sa.inspect(c).get_columns("subscriber")}
            missing = SUBSCRIBER_COLUMNS - cols
            if missing:
                raise RegistrarError(f"{self.label}: the subscriber table lacks {', '.join(sorted(missing))} "
                                     f"(Kamailio's auth_db schema, table version 7)")
            c.execute(sa.text("INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                              "SELECT username, domain, password, ha1, ha1b FROM subscriber WHERE 1 = 0"))
            c.execute(sa.text("UPDATE subscriber SET ha1 = ha1 WHERE 1 = 0"))
            c.execute(sa.text("DELETE FROM subscriber WHERE 1 = 0"))
            c.execute(sa.text("DELETE FROM provisioner_account WHERE 1 = 0"))

        try:
            with self.engine.connect() as c:
                with c.begin() as tx:
                    if not sa.inspect(c).has_table("subscriber"):
                        raise RegistrarError(f"{self.label}: no subscriber table (create Kamailio's auth_db schema)")
                    test_tags = sa.inspect(c).has_table("provisioner_account")
                    c.execute(sa.text("DELETE FROM subscriber WHERE 1 = 0"))  # SQLite: the write lock first
                    if not test_tags:
                        TAGS.create(c)  # the table of our tags can be created (rolled back below)
                    test(c)
                    tx.rollback()
        except RegistrarError:
            raise
        except sa.exc.SQLAlchemyError as e:
            raise RegistrarError(f"{self.label}: cannot write: {type(getattr(e, 'orig', e)).__name__}: "
                                 f"{str(getattr(e, 'orig', e)).splitlines()[0][:200]}") from None
        return f"subscriber table of domain {self.domain} writable"

    def set_acl(self, networks_by_site: Mapping[str, list[str]]) -> bool | None:
        """The `address` rows tagged provisioner:<site> in group 1 become exactly these networks (None: the
        database has no `address` table, i.e. this Kamailio does not load the permissions module)."""
        want = sorted({(str(ipaddress.ip_network(n).network_address), ipaddress.ip_network(n).prefixlen,
                        f"{TAG}:{site}"[:64]) for site, nets in networks_by_site.items() for n in nets})

        def apply(c) -> bool | None:
            if not sa.inspect(c).has_table("address"):
                return None  # this Kamailio does not use the permissions module: nothing to export to
            mine = "grp = :g AND (tag = :t OR tag LIKE :tl)"
            args = {"g": ACL_GROUP, "t": TAG, "tl": f"{TAG}:%"}
            have = sorted((r.ip_addr, r.mask, r.tag) for r in c.execute(
                sa.text(f"SELECT ip_addr, mask, tag FROM address WHERE {mine}"), args))
            if have == want:
                return False
            c.execute(sa.text(f"DELETE FROM address WHERE {mine}"), args)
            if want:
                c.execute(sa.text("INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (:g, :ip, :m, 0, :tag)"),
                          [{"g": ACL_GROUP, "ip": ip, "m": m, "tag": tag} for ip, m, tag in want])
            return True

        changed = self._run("write the address table", apply)
        if changed:
            self._reload()
        return changed

    def _reload(self) -> None:
        if not self.reload_command:
            log.warning("%s: address table changed; Kamailio reads it at start-up or on permissions.addressReload "
                        "(give the registrar a reload_command)", self.label)
            return
        run_reload(self.label, self.reload_command)

    # ---- reads -------------------------------------------------------------------------------------
    def list(self) -> list[dict]:
        q = sa.text("SELECT username, domain FROM subscriber WHERE domain = :d ORDER BY username")
        rows = self._run("read the subscriber table", lambda c: c.execute(q, {"d": self.domain}).all())
        return [{"username": r.username, "domain": r.domain} for r in rows]

    def holds(self, dev: ResolvedDevice, line_secrets: Mapping[str, Secret]) -> bool:
        return self.holds_many([(dev, line_secrets)])[dev.mac]

    def holds_many(self, items: Iterable[tuple[ResolvedDevice, Mapping[str, Secret]]]) -> dict[str, bool]:
        """One query per 500 accounts, whatever the number of devices (devices, audit)."""
        want = {dev.mac: {user: ha1(user, self.domain, pw) for user, pw in self._lines(dev, secrets)}
                for dev, secrets in items}
        users = sorted({u for w in want.values() for u in w})
        q = sa.text("SELECT username, ha1, ha1b FROM subscriber WHERE domain = :d AND username IN :users"
                    ).bindparams(sa.bindparam("users", expanding=True))

        def read(c) -> dict:
            out = {}
            for i in range(0, len(users), 500):
                for r in c.execute(q, {"d": self.domain, "users": users[i:i + 500]}):
                    out[r.username] = (r.ha1 or "", r.ha1b or "")
            return out
        have = self._run("read the subscriber table", read) if users else {}
        return {mac: all(u in have and hmac.compare_digest(have[u][0], h[0]) and hmac.compare_digest(have[u][1], h[1])
                         for u, h in w.items()) for mac, w in want.items()}

    def contacts(self, dev: ResolvedDevice) -> list[tuple[str, int]]:
        """From the `location` table when Kamailio keeps bindings there (usrloc db_mode > 0)."""
        users = [ln.extension for ln in dev.lines]  # the AoR is the To user: the extension
        try:
            with self.engine.connect() as c:
                if not sa.inspect(c).has_table("location"):
                    return []
                live = " AND datetime(expires) > datetime('now')" if self._sqlite else ""
                q = sa.text("SELECT contact, received FROM location WHERE domain = :d AND username IN :users"
                            + live + " ORDER BY last_modified DESC").bindparams(
                    sa.bindparam("users", expanding=True))
                rows = c.execute(q, {"d": self.domain, "users": users}).all()
        except sa.exc.SQLAlchemyError as e:
            log.warning("%s: could not read the location table (%s)", self.label, type(e).__name__)
            return []
        out = []
        for r in rows:
            hp = _hostport(r.received or "") or _hostport(r.contact or "")
            if hp and hp not in out:
                out.append(hp)
        return out


_URI = re.compile(r"^<?sips?:(?:[^@;>]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")


def _hostport(uri: str) -> tuple[str, int] | None:
    m = _URI.match(uri.strip())
    if not m:
        return None
    host = m.group(1).strip("[]")
    port = int(m.group(2) or 5060)
    return (host, port) if 0 < port < 65536 else None
