"""The store on SQLite and PostgreSQL: migrations both ways, sealed credentials, rotation, audit chain."""

from __future__ import annotations

import base64
import datetime as dt
import os

import pytest
import sqlalchemy as sa

from provisioner.crypto import Keyring, MasterKeyError, load_or_create_key
from provisioner.secret import Secret
from provisioner.store import Store, make_engine, migrate, utcnow
from provisioner.store.schema import audit_log, credentials


@pytest.fixture
def store(db_url):
    s = Store.open(db_url, Keyring(os.urandom(32)))
    yield s
    s.close()


def add_device(store: Store, mac="805ec0000001", enrol_hours=24.0, creds=None, status="active", gen=1):
    now = utcnow()
    with store.write() as c:
        store.create_device(c, mac, "yealink", "T46G", "lab", "enrolling", enrol_hours, now)
        store.add_credentials(c, mac, gen, status, creds or {"provisioning": Secret("p-1"), "sip:101": Secret("s-1")}, now)
    return now


def test_migrations_up_and_down(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"devices", "credentials", "fetch_events", "audit_log", "audit_head", "alembic_version"} <= names
    migrate(engine, "base", down=True)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert "devices" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_credentials_are_sealed_and_bound_to_their_row(store: Store):
    add_device(store, creds={"provisioning": Secret("Plaintext-Provisioning-1"), "sip:101": Secret("Plaintext-Sip-1")})
    got = store.credentials("805ec0000001")
    assert got["provisioning"].reveal() == "Plaintext-Provisioning-1"
    with store.engine.connect() as c:
        blobs = [r.sealed for r in c.execute(sa.select(credentials.c.sealed))]
    assert all(b"Plaintext" not in bytes(b) for b in blobs)
    # a sealed value moved onto another row does not open
    with store.write() as c:
        c.execute(credentials.update().where(credentials.c.name == "sip:101").values(sealed=blobs[0]))
    with pytest.raises(MasterKeyError, match="does not decrypt"):
        store.credentials("805ec0000001")


def test_enrolment_is_claimed_exactly_once(store: Store):
    now = add_device(store)
    assert store.claim_enrolment("805ec0000001", "127.0.0.1", now) is True
    assert store.claim_enrolment("805ec0000001", "127.0.0.1", now) is False
    assert store.device("805ec0000001").state == "provisioned"


def test_expired_window_cannot_be_claimed(store: Store):
    now = add_device(store, enrol_hours=1)
    assert store.claim_enrolment("805ec0000001", "127.0.0.1", now + dt.timedelta(hours=2)) is False


def test_promote_pending_only_for_the_pending_hash(store: Store):
    now = add_device(store)
    with store.write() as c:
        store.add_credentials(c, "805ec0000001", 2, "pending", {"provisioning": Secret("p-2"), "sip:101": Secret("s-2")}, now)
        store.update_device(c, "805ec0000001", pending_hash="b" * 64, state="rotating")
    assert store.promote_pending("805ec0000001", "a" * 64, now) is False
    assert store.credentials("805ec0000001")["provisioning"].reveal() == "p-1"
    assert store.promote_pending("805ec0000001", "b" * 64, now) is True
    assert store.promote_pending("805ec0000001", "b" * 64, now) is False  # once
    st = store.device("805ec0000001")
    assert (st.state, st.generation, st.desired_hash, st.pending_hash) == ("provisioned", 2, "b" * 64, None)
    assert store.credentials("805ec0000001")["provisioning"].reveal() == "p-2"
    assert store.credentials("805ec0000001", "retired")["provisioning"].reveal() == "p-1"


def test_audit_log_is_hash_chained(store: Store):
    store.audit("cli:test", "a.one", "805ec0000001", "first")
    store.audit("cli:test", "a.two", "805ec0000001", "second", {"k": 1})
    rows = list(reversed(store.audit_entries()))
    assert [r["action"] for r in rows] == ["a.one", "a.two"]
    assert rows[0]["prev_hash"] == "0" * 64 and rows[1]["prev_hash"] == rows[0]["entry_hash"]
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == 2


def test_fetch_events_round_trip(store: Store):
    store.record_fetches([{"at": utcnow(), "mac": None, "source_ip": "127.0.0.1", "transport": "https",
                           "filename": "805ec0999999.cfg", "status": 401, "hash": None, "user_agent": "x",
                           "reason": "unknown device"}])
    (row,) = store.fetches()
    assert row["status"] == 401 and row["reason"] == "unknown device"


def test_batched_sightings_refresh_last_seen_and_never_move_it_back(store: Store):
    add_device(store)
    t1 = utcnow()
    t2 = t1 + dt.timedelta(seconds=30)
    store.record_fetches([], [{"m": "805ec0000001", "ip": "10.0.0.7", "ua": "Yealink SIP-T46G", "at": t2}])
    store.record_fetches([], [{"m": "805ec0000001", "ip": "10.0.0.9", "ua": "old", "at": t1}])  # arrives late
    st = store.device("805ec0000001")
    assert (st.last_seen, st.last_ip, st.last_ua) == (t2, "10.0.0.7", "Yealink SIP-T46G")
    assert st.last_seen.tzinfo is not None


def test_master_key_file_is_private_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("PROVISIONER_MASTER_KEY", raising=False)
    key = load_or_create_key(tmp_path)
    path = tmp_path / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 32
    assert load_or_create_key(tmp_path) == key
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="readable by others"):
        load_or_create_key(tmp_path)
    monkeypatch.setenv("PROVISIONER_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_or_create_key(tmp_path)


def test_tampered_audit_log_is_detected(store: Store):
    for i in range(4):
        store.audit("cli:test", f"a.{i}", "805ec0000001", f"entry {i}", {"i": i})
    assert store.verify_audit_chain() == []
    with store.write() as c:
        c.execute(audit_log.update().where(audit_log.c.action == "a.1").values(why="nothing happened"))
    problems = store.verify_audit_chain()
    assert len(problems) == 1 and "(a.1): content does not match its hash" in problems[0]
    with store.write() as c:
        c.execute(audit_log.delete().where(audit_log.c.action == "a.2"))
    assert any("(a.3): does not follow entry" in p for p in store.verify_audit_chain())
    with store.write() as c:
        c.execute(audit_log.delete().where(audit_log.c.action == "a.3"))
    assert any("entries at the end were removed" in p for p in store.verify_audit_chain())


def test_audit_chain_is_keyed_and_its_head_sealed(db_url):
    """A store from before the keyed chain (i15a): its SHA-256 entries stay valid and are covered by the
    first keyed entry; a rewrite recomputed with SHA-256, or a head moved back, is reported."""
    from provisioner.store.schema import audit_head
    key = Keyring(os.urandom(32))
    engine = make_engine(db_url)
    for rev in ("0002", "0003", "0004", "0005", "0006"):  # every head but this area's
        migrate(engine, rev)
    old = Store(engine, key)
    prev = "0" * 64
    with engine.begin() as c:
        for i in range(3):
            at = utcnow()
            h = Store._entry_hash(prev, at, "cli:old", f"old.{i}", None, "before the upgrade", "{}")
            c.execute(audit_log.insert().values(at=at, actor="cli:old", action=f"old.{i}", target=None,
                                                why="before the upgrade", details="{}", prev_hash=prev, entry_hash=h))
            prev = h
        c.execute(audit_head.update().values(last_id=3, last_hash=prev))
    engine.dispose()
    store = Store.open(db_url, key)
    try:
        store.audit("cli:test", "new.0", None, "after the upgrade")
        store.audit("cli:test", "new.1", None, "after the upgrade")
        assert store.verify_audit_chain() == []
        rows = list(reversed(store.audit_entries()))
        # an attacker recomputes the keyed entries with the public SHA-256 algorithm: refused
        with store.write() as c:
            r = rows[3]
            forged = Store._entry_hash(r["prev_hash"], r["at"] if r["at"].tzinfo else r["at"].replace(
                tzinfo=dt.timezone.utc), r["actor"], r["action"], r["target"], "nothing", r["details"])
            c.execute(audit_log.update().where(audit_log.c.id == r["id"]).values(why="nothing", entry_hash=forged))
        assert any("(new.0): content does not match" in p for p in store.verify_audit_chain())
        with store.write() as c:  # put it back; then cut the last entry off and move the head back
            c.execute(audit_log.update().where(audit_log.c.id == r["id"]).values(why=r["why"],
                                                                                entry_hash=r["entry_hash"]))
            c.execute(audit_log.delete().where(audit_log.c.id == rows[4]["id"]))
            c.execute(audit_head.update().values(last_id=rows[3]["id"], last_hash=rows[3]["entry_hash"]))
        assert any("does not match its seal" in p for p in store.verify_audit_chain())
        # a legacy entry rewritten with its chain recomputed breaks the first keyed entry
        with store.write() as c:
            c.execute(audit_head.update().values(last_id=rows[4]["id"], last_hash=rows[4]["entry_hash"]))
            c.execute(audit_log.insert().values(**{k: rows[4][k] for k in rows[4]}))
        assert store.verify_audit_chain() == []
        r2, r3 = rows[2], rows[3]
        at2 = r2["at"] if r2["at"].tzinfo else r2["at"].replace(tzinfo=dt.timezone.utc)
        h2 = Store._entry_hash(r2["prev_hash"], at2, r2["actor"], r2["action"], None, "rewritten", r2["details"])
        with store.write() as c:  # rewritten and rehashed (SHA-256 is public), the next entry re-pointed
            c.execute(audit_log.update().where(audit_log.c.id == r2["id"]).values(why="rewritten", entry_hash=h2))
            c.execute(audit_log.update().where(audit_log.c.id == r3["id"]).values(prev_hash=h2))
        assert store.verify_audit_chain() == [f"audit entry {r3['id']} (new.0): content does not match its hash "
                                              f"(edited)"]
    finally:
        store.close()
