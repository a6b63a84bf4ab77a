"""Two `serve` replicas on one PostgreSQL: both serve, enrolment happens exactly once, one audit log."""

from __future__ import annotations

import json
import threading
import time

import sqlalchemy as sa

from conftest import Home, kv, start_server, ua_for
from provisioner.crypto import Keyring, load_or_create_key
from provisioner.store import Store


def test_two_replicas_enrol_each_device_exactly_once(home: Home, pg_cluster):
    url = pg_cluster.new_database()
    env = {"PROVISIONER_STATE": url}
    a = start_server(home, env=env)
    b = start_server(home, env=env)  # same home: same master key; in production, PROVISIONER_MASTER_KEY
    try:
        macs = [("805ec0123456", "T46G"), ("805ec0123457", "T41P"), ("805ec0123458", "T46S")]
        results: dict[str, list[int]] = {m: [] for m, _ in macs}
        bodies: dict[str, bytes] = {}
        for mac, model in macs:
            barrier = threading.Barrier(2)

            def fetch(srv, mac=mac, model=model, barrier=barrier):
                barrier.wait(timeout=10)
                status, body = srv.curl(f"{mac}.cfg", ua_for(mac, model))
                results[mac].append(status)
                if status == 200:
                    bodies[mac] = body
            threads = [threading.Thread(target=fetch, args=(s,)) for s in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        for mac, _ in macs:
            assert sorted(results[mac]) == [200, 401], (mac, results[mac])
        # both replicas serve the enrolled device with its credentials
        for srv in (a, b):
            pw = kv(bodies["805ec0123456"])["static.auto_provision.server.password"][0]
            status, body = srv.curl("805ec0123456.cfg", ua_for("805ec0123456"), user="805ec0123456", password=pw)
            assert status == 200 and body == bodies["805ec0123456"]
    finally:
        a.stop()
        b.stop()
    store = Store(sa.create_engine(url), Keyring(load_or_create_key(home.path)))
    try:
        entries = store.audit_entries(limit=1000)
        enrolled = [e for e in entries if e["action"] == "device.enrolled"]
        assert sorted(e["target"] for e in enrolled) == ["805ec0123456", "805ec0123457", "805ec0123458"]
        added = [d for e in entries if e["action"] == "device.added" for d in json.loads(e["details"])["devices"]]
        assert len(added) == 3  # both replicas synced at start; each device was added once
        assert store.verify_audit_chain() == []  # appended by two processes, still one intact chain
        assert len(store.fetches(limit=100)) >= 10
    finally:
        store.close()


def test_replicas_share_bans_and_never_accept_each_others_nonces(home: Home, pg_cluster):
    """What must be shared is: a source banned by one replica is refused by the other within about a
    second (guard_bans); a nonce is accepted only by the process that issued it and tracks its counts,
    so a captured header replayed to the other replica gets a fresh challenge, never the config."""
    from test_attacks import Conn, digest_header, enrol, lab
    lab(home)
    env = {"PROVISIONER_STATE": pg_cluster.new_database()}
    a = start_server(home, env=env)
    b = start_server(home, env=env)
    try:
        c = Conn(a, "127.1.6.1")
        statuses = [c.request(f"/p/805ec0{0xe00000 + i:06x}.cfg", ua_for("805ec0abcdef"))[0] for i in range(11)]
        c.close()
        assert statuses[-1] == 429  # banned by replica a
        deadline, refused = time.monotonic() + 10, False
        while not refused and time.monotonic() < deadline:
            c = Conn(b, "127.1.6.1")
            try:
                refused = c.response()[0] == 429  # replica b refuses it as it connects
            except (ConnectionError, OSError):
                refused = True
            finally:
                c.close()
            time.sleep(0.2)
        assert refused, "the ban did not reach the other replica"

        pw = enrol(a)
        path = "/p/805ec0123456.cfg"
        ca, cb = Conn(a), Conn(b)
        www_a = ca.request(path, ua_for("805ec0123456"))[1]["www-authenticate"]
        header = digest_header(www_a, "805ec0123456", pw, path)
        status, headers, _ = cb.request(path, ua_for("805ec0123456"), header)  # a's nonce, at b
        assert status == 401 and "stale=true" in headers["www-authenticate"]
        retry = digest_header(headers["www-authenticate"], "805ec0123456", pw, path)
        assert cb.request(path, ua_for("805ec0123456"), retry)[0] == 200  # b's own nonce: served
        assert ca.request(path, ua_for("805ec0123456"), header)[0] == 200  # at a, once
        assert ca.request(path, ua_for("805ec0123456"), header)[0] == 401  # and never again
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()
