"""Helpdesk API: tokens and roles, search/detail/history, jobs with idempotency keys, audit listing, OpenAPI,
a job queue claimed exactly once with two workers, and no secret in any response.

One `serve --api` process for the module (the tests share it and use their own tokens, keys and devices);
the queue tests run on the store directly (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conftest import REPO, Home, Server, kv, start_server, ua_for
from provisioner.api import auth
from provisioner.api.jobs import JobQueue, JobWorker
from provisioner.crypto import Keyring, load_or_create_key
from provisioner.store import Store, make_engine, migrate
from provisioner.store.api_schema import api_jobs, api_tokens
from provisioner.store.schema import credentials

V1 = "/api/v1"
RESPONSES: list[tuple[str, bytes]] = []  # every API response body of this module, scanned for secrets last


class Env:
    def __init__(self, home: Home, server: Server):
        self.home, self.server = home, server
        self.tokens: dict[str, dict] = {}
        self.ctx = ssl.create_default_context(cafile=str(server.ca))

    def token(self, role: str, name: str) -> dict:
        r = self.home.cli("api", "tokens", "create", "--role", role, "--name", name, "--json", check=True)
        tok = json.loads(r.stdout)
        self.tokens[name] = tok
        return tok

    def client(self, name: str | None = None, token: str | None = None) -> httpx.Client:
        headers = {}
        if name is not None:
            token = self.tokens[name]["token"]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

        def keep(resp: httpx.Response) -> None:
            resp.read()
            RESPONSES.append((f"{resp.request.method} {resp.request.url.path}", resp.content))

        return httpx.Client(base_url=self.server.api_base, verify=self.ctx, headers=headers, timeout=15,
                            event_hooks={"response": [keep]})


@pytest.fixture(scope="module")
def env(tmp_path_factory, capture_dir):
    base = tmp_path_factory.mktemp("api")
    inv = base / "inventory.yaml"
    shutil.copy(REPO / "inventory.yaml", inv)
    cap = capture_dir / "test_api"
    cap.mkdir(exist_ok=True)
    home = Home(base / "home", inv, cap)
    srv = start_server(home, api=True)
    try:
        e = Env(home, srv)
        e.token("viewer", "vera")
        e.token("helpdesk", "hana")
        e.token("admin", "adam")
        yield e
    finally:
        srv.stop()


def enrol(env: Env, mac: str, model: str) -> tuple[bytes, str]:
    status, body = env.server.curl(f"{mac}.cfg", ua_for(mac, model))
    assert status == 200
    return body, kv(body)["static.auto_provision.server.password"][0]


def wait_job(c: httpx.Client, job_id: str, until=("done", "failed"), timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"{V1}/jobs/{job_id}").json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


# ---- tokens and roles ----------------------------------------------------------------------------

def test_tokens_are_shown_once_and_stored_hashed(env: Env):
    tok = env.tokens["vera"]
    assert tok["token"].startswith("pvk_") and len(tok["token"]) >= 40
    listing = env.home.cli("api", "tokens", "list", "--json", check=True).stdout
    assert tok["token"] not in listing and "vera" in listing and "token_hash" not in listing
    db = make_engine(f"sqlite:///{env.home.path / 'state.db'}")
    try:
        with db.connect() as c:
            h = c.execute(sa.select(api_tokens.c.token_hash).where(api_tokens.c.id == tok["id"])).scalar()
    finally:
        db.dispose()
    assert h == hashlib.sha256(tok["token"].encode()).hexdigest()
    for p in env.home.path.glob("state.db*"):
        assert tok["token"].encode() not in p.read_bytes(), f"plain token in {p.name}"
    r = env.home.cli("api", "tokens", "create", "--role", "viewer", "--name", "vera")
    assert r.returncode == 2 and "already called 'vera'" in r.stderr
    r = env.home.cli("api", "tokens", "create", "--role", "root")
    assert r.returncode == 2


def test_roles(env: Env):
    with env.client() as anon:
        r = anon.get(f"{V1}/devices")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with env.client(token="pvk_" + "A" * 43) as bad:
        assert bad.get(f"{V1}/devices").status_code == 401
    with env.client("vera") as viewer:
        assert viewer.get(f"{V1}/me").json() == {"id": env.tokens["vera"]["id"], "name": "vera", "role": "viewer"}
        assert viewer.get(f"{V1}/devices").status_code == 200
        assert viewer.get(f"{V1}/audit").status_code == 200
        r = viewer.post(f"{V1}/jobs", json={"action": "reprovision", "mac": "805ec0123456"},
                        headers={"Idempotency-Key": "viewer-1"})
        assert r.status_code == 403 and "helpdesk" in r.json()["detail"]
        assert viewer.get(f"{V1}/tokens").status_code == 403
    with env.client("hana") as helpdesk:
        assert helpdesk.get(f"{V1}/tokens").status_code == 403
        assert helpdesk.delete(f"{V1}/tokens/{env.tokens['vera']['id']}").status_code == 403
    with env.client("adam") as admin:
        rows = admin.get(f"{V1}/tokens").json()
        assert {r["name"] for r in rows} >= {"vera", "hana", "adam"}
        assert all(set(r) == {"id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at"}
                   for r in rows)
    # a revoked token stops working at once
    temp = env.token("viewer", "temp")
    with env.client("temp") as t:
        assert t.get(f"{V1}/me").status_code == 200
        with env.client("adam") as admin:
            assert admin.delete(f"{V1}/tokens/{temp['id']}").json()["revoked_at"]
        assert t.get(f"{V1}/me").status_code == 401


def test_no_endpoint_reveals_a_secret(env: Env):
    with env.client("adam") as admin:
        spec = admin.get("/api/openapi.json").json()
        text = json.dumps(spec["paths"]).lower()
        assert not any(w in text for w in ("reveal", "password", "secret", "sealed", "otp"))
        for method, path in (("GET", "/devices/805ec0123456/reveal"), ("POST", "/devices/805ec0123456/reveal"),
                             ("GET", "/devices/805ec0123456/credentials"), ("GET", "/credentials")):
            assert admin.request(method, V1 + path).status_code in (404, 405)
        detail = admin.get(f"{V1}/devices/805ec0123456").json()
        assert detail["credentials"] and all(
            set(c) == {"name", "generation", "status", "created_at", "retired_at"} for c in detail["credentials"])


def test_openapi_schema_is_valid(env: Env):
    with env.client() as anon:
        r = anon.get("/api/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    try:
        from openapi_spec_validator import validate
    except ImportError:  # structural checks only
        validate = None
    if validate is not None:
        validate(spec)
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "a token from `provisioner api tokens create`"}
    paths = spec["paths"]
    for p in ("/api/v1/devices", "/api/v1/devices/{mac}", "/api/v1/devices/{mac}/history", "/api/v1/jobs",
              "/api/v1/jobs/{job_id}", "/api/v1/audit", "/api/v1/tokens"):
        assert p in paths, p
    post = paths["/api/v1/jobs"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in post["parameters"])
    assert {"200", "202", "409", "403"} <= set(post["responses"])
    for ops in paths.values():
        for op in ops.values():
            assert op.get("security"), f"{op['operationId']} has no security requirement"


# ---- devices -------------------------------------------------------------------------------------

def test_search_and_detail(env: Env):
    with env.client("vera") as c:
        def macs(**params):
            r = c.get(f"{V1}/devices", params=params)
            assert r.status_code == 200, r.text
            return [d["mac"] for d in r.json()["devices"]]
        assert macs(q="101") == ["805ec0123456"]  # extension
        assert macs(q="80:5e:c0:12:34:57") == ["805ec0123457"]  # MAC with separators
        assert macs(q="3458") == ["805ec0123458"]  # part of a MAC
        assert macs(q="lab") == ["805ec0123456", "805ec0123457", "805ec0123458"]  # site
        assert macs(q="reception") == ["805ec0123456"]  # name
        assert macs(extension="104") == ["805ec0123458"]
        assert macs(mac="12-34-56") == ["805ec0123456"]
        assert macs(site="elsewhere") == []
        assert macs(q="lab", limit=1, offset=1) == ["805ec0123457"]
        assert c.get(f"{V1}/devices", params={"q": "x" * 65}).status_code == 422
        assert c.get(f"{V1}/devices/80:5e:c0:99:99:99").status_code == 404
        assert c.get(f"{V1}/devices/not-a-mac").status_code == 400

        enrol(env, "805ec0123456", "T46G")
        deadline = time.monotonic() + 10  # fetch events are written in batches, off the request path
        while (d := c.get(f"{V1}/devices/80-5e-c0-12-34-56").json())["last_fetch"] is None:
            assert time.monotonic() < deadline, "the enrolment fetch was not recorded"
            time.sleep(0.1)
        assert d["mac"] == "805ec0123456" and d["state"] == "provisioned" and d["in_sync"] is True
        assert d["extensions"] == ["101", "102"] and d["name"] == "reception"
        assert d["last_fetch"]["status"] == 200 and d["last_fetch"]["filename"] == "805ec0123456.cfg"
        assert d["last_fetch"]["reason"] and d["last_fetch"]["source_ip"] == "127.0.0.1"
        assert {c["name"] for c in d["credentials"]} == {"admin", "user", "provisioning", "sip:101", "sip:102"}
        assert d["findings"] == []  # provisioner/audit.py's checks for this device: nothing to fix
        tcp = c.get(f"{V1}/devices/805ec0123458").json()["findings"]
        assert any(f["type"] == "policy" and "TCP" in f["what"] for f in tcp), tcp
        assert macs(state="provisioned") == ["805ec0123456"]
        h = c.get(f"{V1}/devices/805ec0123456/history").json()
        assert h["mac"] == "805ec0123456" and any(e["kind"] == "fetch" for e in h["events"])


# ---- jobs ----------------------------------------------------------------------------------------

def test_reprovision_job_completes_when_the_phone_fetches(env: Env):
    mac, model = "805ec0123457", "T41P"
    old_cfg, old_pw = enrol(env, mac, model)
    with env.client("hana") as c:
        r = c.post(f"{V1}/jobs", json={"action": "reprovision", "mac": mac, "wait_seconds": 60},
                   headers={"Idempotency-Key": "reprov-57"})
        assert r.status_code == 202
        job = wait_job(c, r.json()["id"], until=("running", "done", "failed"))
        assert job["status"] == "running", job
        deadline = time.monotonic() + 10  # running: the rotation starts, then the job waits for the fetch
        while (d := c.get(f"{V1}/devices/{mac}").json())["state"] != "rotating":
            assert time.monotonic() < deadline, d["state"]
            time.sleep(0.1)
        assert d["rotating"] and not d["in_sync"]
        assert {cr["generation"] for cr in d["credentials"] if cr["status"] == "pending"} == {2}
        # the "phone" resyncs with the credentials it holds and gets the new config
        deadline, fetched = time.monotonic() + 20, False
        while not fetched and time.monotonic() < deadline:
            status, body = env.server.curl(f"{mac}.cfg", ua_for(mac, model), user=mac, password=old_pw)
            fetched = status == 200 and body != old_cfg
            if not fetched:
                time.sleep(0.3)
        assert fetched
        job = wait_job(c, job["id"])
        assert job["status"] == "done", job
        assert job["result"] == {"mac": mac, "generation": 2, "new_config_fetched": True, "state": "provisioned"}
        assert job["actor"] == "api:hana" and job["error"] is None
        d = c.get(f"{V1}/devices/{mac}").json()
        assert d["state"] == "provisioned" and d["in_sync"] and d["generation"] == 2
        actions = [(e["actor"], e["action"]) for e in reversed(d["audit"])]
        assert ("api:hana", "api.job.queued") in actions and ("api:hana", "rotation.started") in actions
        assert ("device", "rotation.confirmed") in actions and ("api:hana", "api.job.done") in actions
        assert any(j["id"] == job["id"] for j in d["jobs"])
    assert env.server.curl(f"{mac}.cfg", ua_for(mac, model), user=mac, password=old_pw)[0] == 401


def test_reprovision_job_fails_when_the_phone_stays_silent(env: Env):
    mac = "805ec0123458"
    enrol(env, mac, "T46S")
    with env.client("hana") as c:
        r = c.post(f"{V1}/jobs", json={"action": "reprovision", "mac": mac, "wait_seconds": 1},
                   headers={"Idempotency-Key": "reprov-58"})
        job = wait_job(c, r.json()["id"])
        assert job["status"] == "failed" and "did not fetch its new config within 1 s" in job["error"]
        assert job["result"]["new_config_fetched"] is False and job["result"]["generation"] == 2
        jobs = c.get(f"{V1}/jobs", params={"mac": mac, "status": "failed"}).json()["jobs"]
        assert [j["id"] for j in jobs] == [job["id"]]


def test_idempotency(env: Env):
    env.token("helpdesk", "hugo")
    body = {"action": "unlock", "mac": "805ec0123456", "reason": "caller locked out"}
    with env.client("hana") as c, env.client("hugo") as other:
        assert c.post(f"{V1}/jobs", json=body).status_code == 400  # no key
        r1 = c.post(f"{V1}/jobs", json=body, headers={"Idempotency-Key": "idem-1"})
        assert r1.status_code == 202, r1.text
        job = r1.json()
        assert r1.headers["location"] == f"{V1}/jobs/{job['id']}" and job["actor"] == "api:hana"
        r2 = c.post(f"{V1}/jobs", json={**body, "mac": "80:5E:C0:12:34:56"}, headers={"Idempotency-Key": "idem-1"})
        assert r2.status_code == 200 and r2.json()["id"] == job["id"] and r2.headers["idempotent-replayed"] == "true"
        r3 = c.post(f"{V1}/jobs", json={**body, "reason": "something else"}, headers={"Idempotency-Key": "idem-1"})
        assert r3.status_code == 409
        r4 = c.post(f"{V1}/jobs", json={**body, "action": "reset"}, headers={"Idempotency-Key": "idem-1"})
        assert r4.status_code == 409
        # the key belongs to the token: another helpdesk user's same key is another job
        r5 = other.post(f"{V1}/jobs", json=body, headers={"Idempotency-Key": "idem-1"})
        assert r5.status_code == 202 and r5.json()["id"] != job["id"]
        assert c.post(f"{V1}/jobs", json={**body, "mac": "80:5e:c0:99:99:99"},
                      headers={"Idempotency-Key": "idem-2"}).status_code == 404
        assert c.post(f"{V1}/jobs", json={**body, "action": "reveal"},
                      headers={"Idempotency-Key": "idem-3"}).status_code == 422
        assert c.post(f"{V1}/jobs", json={**body, "extra": 1}, headers={"Idempotency-Key": "idem-4"}).status_code == 422
        done = wait_job(c, job["id"])
        assert done["status"] in ("done", "failed") and done["finished_at"]
        if done["status"] == "failed":  # unlock of a device that is not locked, or no unlock operation yet
            assert done["error"]
        # a replay after the job ended still answers with the same job, now finished
        r6 = c.post(f"{V1}/jobs", json=body, headers={"Idempotency-Key": "idem-1"})
        assert r6.status_code == 200 and r6.json()["status"] == done["status"]
        audit = c.get(f"{V1}/audit", params={"actor": "api:hana", "target": "805ec0123456"}).json()["entries"]
        assert {"api.job.queued", f"api.job.{done['status']}"} <= {e["action"] for e in audit}


def test_concurrent_requests_with_one_key_make_one_job(env: Env):
    body = {"action": "unlock", "mac": "805ec0123456"}
    results: list[httpx.Response] = []
    barrier = threading.Barrier(5)

    def post():
        with env.client("hana") as c:
            barrier.wait(timeout=10)
            results.append(c.post(f"{V1}/jobs", json=body, headers={"Idempotency-Key": "idem-race"}))

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r.status_code for r in results) == [200, 200, 200, 200, 202]
    assert len({r.json()["id"] for r in results}) == 1


def test_audit_listing_is_paginated(env: Env):
    with env.client("vera") as c:
        everything = c.get(f"{V1}/audit", params={"limit": 500}).json()
        assert everything["next_before"] is None and len(everything["entries"]) >= 8
        seen, before = [], None
        for _ in range(100):
            page = c.get(f"{V1}/audit", params={"limit": 3, **({"before": before} if before else {})}).json()
            seen += [e["id"] for e in page["entries"]]
            before = page["next_before"]
            if before is None:
                break
        assert seen == [e["id"] for e in everything["entries"]] and seen == sorted(seen, reverse=True)
        created = c.get(f"{V1}/audit", params={"action": "api.token.created"}).json()["entries"]
        assert {e["details"]["name"] for e in created} >= {"vera", "hana", "adam"}
        assert c.get(f"{V1}/audit", params={"limit": 0}).status_code == 422


def test_page_is_served_self_contained(env: Env):
    with env.client() as anon:
        page = anon.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        js = anon.get("/app.js")
        assert js.status_code == 200 and "sessionStorage" in js.text and "innerHTML" not in js.text
        assert anon.get("/app.css").status_code == 200


def test_serve_refuses_a_bad_api_address(env: Env):
    r = env.home.cli("serve", "--https", "127.0.0.1:18443", "--tftp", "", "--api", "nope")
    assert r.returncode == 2 and "--api: expected HOST:PORT" in r.stderr
    r = env.home.cli("serve", "--https", "127.0.0.1:18443", "--tftp", "", "--api", "127.0.0.1:18443")
    assert r.returncode == 2 and "its own port" in r.stderr
    r = env.home.cli("serve", "--https", "127.0.0.1:18443", "--tftp", "", "--api", f"127.0.0.1:{env.server.api_port}")
    assert r.returncode == 2 and "cannot listen there" in r.stderr


# ---- no secret anywhere --------------------------------------------------------------------------

def _store_secrets(home: Path) -> set[str]:
    keyring = Keyring(load_or_create_key(home))
    engine = make_engine(f"sqlite:///{home / 'state.db'}")
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(credentials.c.mac, credentials.c.name, credentials.c.generation,
                                       credentials.c.sealed)).all()
    finally:
        engine.dispose()
    return {keyring.open(r.sealed, f"{r.mac}|{r.name}|{r.generation}").reveal() for r in rows}


def test_zz_no_response_contains_a_secret(env: Env):
    """Every GET endpoint in the OpenAPI document, for every device and job, then every body of this module."""
    with env.client("adam") as c:
        spec = c.get("/api/openapi.json").json()
        macs = [d["mac"] for d in c.get(f"{V1}/devices").json()["devices"]]
        jobs = [j["id"] for j in c.get(f"{V1}/jobs", params={"limit": 200}).json()["jobs"]]
        tokens = [t["id"] for t in c.get(f"{V1}/tokens").json()]
        fill = {"{mac}": macs, "{job_id}": jobs, "{token_id}": tokens}
        for path, ops in spec["paths"].items():
            if "get" not in ops:
                continue
            urls = [path]
            for k, values in fill.items():
                if k in path:
                    urls = [u.replace(k, str(v)) for u in urls for v in values]
            for u in urls:
                assert c.get(u, params={"limit": 200} if "{" not in path and path != f"{V1}/me" else None
                             ).status_code == 200, u
        for u in ("/", "/app.js", "/app.css"):
            c.get(u)
    secrets = _store_secrets(env.home.path)
    assert len(secrets) >= 15, "the module must have generated (and rotated) credentials"
    assert len(RESPONSES) >= 60
    leaks = [where for where, body in RESPONSES for s in secrets if s.encode() in body]
    assert not leaks, f"a generated secret in: {sorted(set(leaks))}"


# ---- the queue on the store (SQLite and PostgreSQL) ------------------------------------------------

@pytest.fixture
def queue_store(db_url):
    s = Store.open(db_url, Keyring(os.urandom(32)))
    yield s
    s.close()


def test_job_is_claimed_exactly_once_with_two_workers(queue_store: Store):
    queue = JobQueue(queue_store)
    tok = auth.authenticate(queue_store, auth.create_token(queue_store, "helpdesk", "w", "test")[1])
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def runner(rt, job, ctx):
        time.sleep(0.01)
        with lock:
            ran.append((ctx.worker.rsplit("/", 1)[0], job.id))
        return {"mac": job.mac, "state": "provisioned"}

    ids = [queue.submit(tok, f"k{i}", "unlock", "805ec0000001", {"reason": None, "wait_seconds": None})[0].id
           for i in range(30)]
    workers = [JobWorker(None, queue, threads=3, poll=0.02, runners={"unlock": runner}, name=f"w{i}").start()
               for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(queue.get(i).status != "done" for i in ids):
            time.sleep(0.05)
    finally:
        for w in workers:
            w.stop()
    assert all(queue.get(i).status == "done" for i in ids)
    assert sorted(j for _, j in ran) == sorted(ids), "every job ran exactly once"
    assert {w for w, _ in ran} == {"w0", "w1"}, "both workers took jobs"
    assert queue.get(ids[0]).result == {"mac": "805ec0000001", "state": "provisioned"}


def test_racing_claims_take_a_job_once(queue_store: Store):
    queue = JobQueue(queue_store)
    tok = auth.authenticate(queue_store, auth.create_token(queue_store, "helpdesk", "r", "test")[1])
    for i in range(10):
        queue.submit(tok, f"race{i}", "reset", "805ec0000002", {"reason": None, "wait_seconds": None})
        barrier, got = threading.Barrier(2), []

        def claim(name):
            barrier.wait(timeout=10)
            got.append(queue.claim(name))

        threads = [threading.Thread(target=claim, args=(f"c{n}",)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert len([j for j in got if j is not None]) == 1, got


def test_a_job_whose_worker_died_fails_and_is_not_run_again(queue_store: Store):
    queue = JobQueue(queue_store)
    tok = auth.authenticate(queue_store, auth.create_token(queue_store, "helpdesk", "d", "test")[1])
    job, _ = queue.submit(tok, "dead", "reprovision", "805ec0000003", {"reason": None, "wait_seconds": 5})
    assert queue.claim("gone/0").id == job.id
    with queue_store.write() as c:
        c.execute(api_jobs.update().where(api_jobs.c.id == job.id).values(
            lease_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    assert queue.expire() == 1
    j = queue.get(job.id)
    assert j.status == "failed" and "interrupted" in j.error
    assert queue.claim("other/0") is None
    assert queue.finish(job, "gone/0", "done", {}, None) is False  # the dead worker cannot end it twice


def test_revoking_a_token_cancels_its_queued_jobs(queue_store: Store):
    queue = JobQueue(queue_store)
    row, token = auth.create_token(queue_store, "helpdesk", "gone", "test")
    tok = auth.authenticate(queue_store, token)
    job, _ = queue.submit(tok, "k", "reset", "805ec0000005", {"reason": None, "wait_seconds": None})
    assert auth.revoke_token(queue_store, row["id"], "test")[1] is True
    assert auth.authenticate(queue_store, token) is None
    j = queue.get(job.id)
    assert j.status == "failed" and "revoked" in j.error and queue.claim("w/0") is None
    assert auth.revoke_token(queue_store, row["id"], "test")[1] is False


def test_api_migration_down_and_up(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        assert {"api_tokens", "api_jobs"} <= set(sa.inspect(engine).get_table_names())
        migrate(engine, "api@-1", down=True)  # only this branch: 0004 -> 0001
        names = set(sa.inspect(engine).get_table_names())
        assert not {"api_tokens", "api_jobs"} & names and "devices" in names
        migrate(engine)
        assert {"api_tokens", "api_jobs"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_concurrent_submits_with_one_key_make_one_job(queue_store: Store):
    queue = JobQueue(queue_store)
    tok = auth.authenticate(queue_store, auth.create_token(queue_store, "helpdesk", "s", "test")[1])
    barrier, out = threading.Barrier(4), []

    def submit():
        barrier.wait(timeout=10)
        out.append(queue.submit(tok, "same", "reset", "805ec0000004", {"reason": None, "wait_seconds": None}))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(out) == 4 and sorted(created for _, created in out) == [False, False, False, True]
    assert len({job.id for job, _ in out}) == 1
