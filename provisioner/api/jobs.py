"""Jobs the helpdesk triggers (reprovision, reset, unlock): queued in the store, run by a bounded worker.

- Idempotency: a job is keyed by (token, Idempotency-Key). The same key with the same request gives the
  same job; the same key with a different request is a conflict.
- Claimed exactly once, across threads and replicas: a conditional update `status='queued' -> 'running'`
  (on PostgreSQL after `SELECT … FOR UPDATE SKIP LOCKED`, on SQLite inside BEGIN IMMEDIATE).
- A running job holds a lease that its worker renews; a job whose worker died (lease expired) is marked
  failed, never run twice.
- Results are built from allow-listed fields only; no job result ever carries a secret.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from provisioner import operations as ops
from provisioner.api.auth import TokenInfo
from provisioner.errors import ProvisionerError
from provisioner.secret import Secret
from provisioner.store import Store, as_utc, utcnow
from provisioner.store.api_schema import api_jobs

log = logging.getLogger("provisioner.api.jobs")

ACTIONS = ("reprovision", "reset", "unlock")
LEASE = dt.timedelta(seconds=30)
SWEEP_EVERY = 15.0  # seconds between looks for jobs whose worker died
WAIT_STEP = 2.0  # a reprovision waits for the fetch in steps this long, renewing its lease in between

# the only keys a job result may carry, whatever an operation returns
RESULT_KEYS = ("mac", "generation", "state", "previous_state", "new_config_fetched", "confirmed", "method",
               "manual", "instructions", "steps", "message", "pending", "reset_sent", "unlocked")


class Conflict(Exception):
    """The idempotency key was used before with a different request."""


class JobFailed(Exception):
    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Job:
    id: str
    token_id: int
    action: str
    mac: str
    params: dict
    actor: str
    status: str
    result: dict | None
    error: str | None
    worker: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, r) -> "Job":
        return cls(r.id, r.token_id, r.action, r.mac, json.loads(r.params), r.actor, r.status,
                   json.loads(r.result) if r.result else None, r.error, r.worker, as_utc(r.created_at),
                   as_utc(r.started_at), as_utc(r.finished_at))


def request_hash(action: str, mac: str, params: dict) -> str:
    body = json.dumps({"action": action, "mac": mac, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _plain(v: Any) -> Any:
    if isinstance(v, Secret):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [x for x in (_plain(x) for x in v) if isinstance(x, (str, int, float, bool))]
    return None


def public_result(obj: Any) -> dict:
    """Allow-listed, plain fields of what an operation returned (dataclass, dict or object)."""
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        data = obj
    else:
        data = {k: getattr(obj, k) for k in RESULT_KEYS if hasattr(obj, k)}
    return {k: _plain(data[k]) for k in RESULT_KEYS if k in data and _plain(data[k]) is not None}


class JobQueue:
    def __init__(self, store: Store):
        self.store = store

    def submit(self, token: TokenInfo, key: str, action: str, mac: str, params: dict) -> tuple[Job, bool]:
        """(job, True) when created; (the earlier job, False) for a replay. Conflict on a different request."""
        h = request_hash(action, mac, params)
        for _ in range(2):  # a concurrent submit with the same key may win the insert: then read its job
            try:
                with self.store.write() as c:
                    r = c.execute(sa.select(api_jobs).where(api_jobs.c.token_id == token.id,
                                                            api_jobs.c.idempotency_key == key)).first()
                    if r is not None:
                        if r.request_hash != h:
                            raise Conflict("this Idempotency-Key was used with a different request")
                        return Job.from_row(r), False
                    now = utcnow()
                    jid = secrets.token_hex(16)
                    c.execute(api_jobs.insert().values(
                        id=jid, token_id=token.id, idempotency_key=key, request_hash=h, action=action, mac=mac,
                        params=json.dumps(params, sort_keys=True), actor=token.actor, status="queued",
                        created_at=now))
                    self.store.append_audit(c, token.actor, "api.job.queued", mac,
                                            params.get("reason") or f"{action} requested through the helpdesk API",
                                            {"job": jid, "action": action}, now)
                    r = c.execute(sa.select(api_jobs).where(api_jobs.c.id == jid)).one()
                    return Job.from_row(r), True
            except IntegrityError:
                continue
        raise Conflict("this Idempotency-Key is being used by a concurrent request; retry")

    def get(self, job_id: str) -> Job | None:
        with self.store.engine.connect() as c:
            r = c.execute(sa.select(api_jobs).where(api_jobs.c.id == job_id)).first()
        return Job.from_row(r) if r else None

    def list(self, mac: str | None = None, status: str | None = None, limit: int = 20) -> list[Job]:
        q = sa.select(api_jobs).order_by(api_jobs.c.created_at.desc(), api_jobs.c.id).limit(limit)
        if mac:
            q = q.where(api_jobs.c.mac == mac)
        if status:
            q = q.where(api_jobs.c.status == status)
        with self.store.engine.connect() as c:
            return [Job.from_row(r) for r in c.execute(q)]

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running for `worker`; None when there is none (or another took it)."""
        with self.store.engine.connect() as c:  # a cheap look first: idle workers take no write lock
            if c.execute(sa.select(api_jobs.c.id).where(api_jobs.c.status == "queued").limit(1)).first() is None:
                return None
        now = utcnow()
        with self.store.write() as c:
            r = c.execute(sa.select(api_jobs.c.id).where(api_jobs.c.status == "queued")
                          .order_by(api_jobs.c.created_at, api_jobs.c.id).limit(1)
                          .with_for_update(skip_locked=True)).first()
            if r is None:
                return None
            n = c.execute(api_jobs.update().where(api_jobs.c.id == r.id, api_jobs.c.status == "queued").values(
                status="running", worker=worker, started_at=now, lease_until=now + LEASE)).rowcount
            if n != 1:
                return None
            return Job.from_row(c.execute(sa.select(api_jobs).where(api_jobs.c.id == r.id)).one())

    def renew(self, job_id: str, worker: str) -> bool:
        with self.store.write() as c:
            return c.execute(api_jobs.update().where(
                api_jobs.c.id == job_id, api_jobs.c.worker == worker, api_jobs.c.status == "running").values(
                lease_until=utcnow() + LEASE)).rowcount == 1

    def finish(self, job: Job, worker: str, status: str, result: dict | None, error: str | None) -> bool:
        now = utcnow()
        with self.store.write() as c:
            n = c.execute(api_jobs.update().where(
                api_jobs.c.id == job.id, api_jobs.c.worker == worker, api_jobs.c.status == "running").values(
                status=status, result=json.dumps(result, sort_keys=True) if result is not None else None,
                error=error[:512] if error else None, finished_at=now, lease_until=None)).rowcount
            if n == 1:
                details = {"job": job.id, "action": job.action}
                if error:
                    details["error"] = error[:200]
                self.store.append_audit(c, job.actor, f"api.job.{status}", job.mac,
                                        f"{job.action} job {'finished' if status == 'done' else 'failed'}",
                                        details, now)
        return n == 1

    def expire(self) -> int:
        """Mark running jobs whose worker stopped renewing its lease as failed (never run twice)."""
        now = utcnow()
        with self.store.engine.connect() as c:
            stale = c.execute(sa.select(api_jobs.c.id).where(api_jobs.c.status == "running",
                                                             api_jobs.c.lease_until < now)).all()
        if not stale:
            return 0
        with self.store.write() as c:
            n = c.execute(api_jobs.update().where(api_jobs.c.status == "running", api_jobs.c.lease_until < now)
                          .values(status="failed", finished_at=now, lease_until=None,
                                  error="interrupted: the worker running it stopped; trigger it again")).rowcount
        if n:
            log.warning("%d job(s) marked failed: their worker stopped", n)
        return n


class JobContext:
    """What a runner may use: the stop signal and a lease renewal."""

    def __init__(self, queue: JobQueue, job: Job, worker: str, stopping: threading.Event):
        self.queue, self.job, self.worker, self.stopping = queue, job, worker, stopping

    def renew(self) -> None:
        self.queue.renew(self.job.id, self.worker)


Runner = Callable[[Any, Job, JobContext], dict]


def run_reprovision(rt, job: Job, ctx: JobContext) -> dict:
    wait = float(job.params.get("wait_seconds", 300))
    res = ops.reprovision(rt, job.mac, job.actor, why=job.params.get("reason") or "reprovision requested through the helpdesk API")
    result = {"mac": res.mac, "generation": res.generation, "state": res.state, "new_config_fetched": False}
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if ops.wait_for_fetch(rt, res.mac, res.pending_hash, max(0.0, min(WAIT_STEP, left)), poll=0.25):
            result["new_config_fetched"] = True
            break
        if left <= 0:
            raise JobFailed(f"the device did not fetch its new config within {wait:g} s; its new credentials stay "
                            f"pending and it gets them at its next fetch (its old ones work until then)",
                            _with_state(rt, result))
        if ctx.stopping.is_set():
            raise JobFailed("the server stopped before the device fetched its new config; the new credentials "
                            "stay pending", _with_state(rt, result))
        ctx.renew()
    return _with_state(rt, result)


def _with_state(rt, result: dict) -> dict:
    st = rt.store.device(result["mac"])
    if st is not None:
        result["state"] = st.state
    return result


def _operation(name: str) -> Callable:
    fn = getattr(ops, name, None)
    if fn is None:
        raise JobFailed(f"{name} is not available in this version of provisioner")
    return fn


def run_reset(rt, job: Job, ctx: JobContext) -> dict:
    # a remote reset reopens enrolment for the device's last known address only, unless an admin said otherwise
    res = _operation("reset")(rt, job.mac, job.actor, why=job.params.get("reason") or "reset requested through the helpdesk API",
                              enrol_from=job.params.get("enrol_from") or "last")
    return _with_state(rt, {"mac": job.mac, **public_result(res)})


def run_unlock(rt, job: Job, ctx: JobContext) -> dict:
    res = _operation("unlock")(rt, job.mac, job.actor, why=job.params.get("reason") or "unlock requested through the helpdesk API")
    return _with_state(rt, {"mac": job.mac, **public_result(res)})


RUNNERS: dict[str, Runner] = {"reprovision": run_reprovision, "reset": run_reset, "unlock": run_unlock}


class JobWorker:
    """`threads` threads claim and run queued jobs; a bound on concurrent operations in this process."""

    def __init__(self, rt, queue: JobQueue, threads: int = 4, poll: float = 1.0,
                 runners: dict[str, Runner] | None = None, name: str | None = None):
        self.rt, self.queue, self.poll = rt, queue, poll
        self.runners = runners or RUNNERS
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"api-job-{i}", daemon=True)
                         for i in range(max(1, threads))]

    def start(self) -> "JobWorker":
        for t in self._threads:
            t.start()
        return self

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.notify()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _loop(self, i: int) -> None:
        worker = f"{self.name}/{i}"
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                if i == 0 and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_EVERY
                    self.queue.expire()
                job = self.queue.claim(worker)
            except Exception:
                log.exception("job queue unavailable")
                job = None
            if job is None:
                with self._cond:
                    if not self._stop.is_set():
                        self._cond.wait(self.poll)
                continue
            self._run(job, worker)

    def _run(self, job: Job, worker: str) -> None:
        ctx = JobContext(self.queue, job, worker, self._stop)
        log.info("job %s: %s %s for %s", job.id, job.action, job.mac, job.actor)
        status, result, error = "done", None, None
        try:
            runner = self.runners.get(job.action)
            if runner is None:
                raise JobFailed(f"unknown action {job.action}")
            result = runner(self.rt, job, ctx)
        except JobFailed as e:
            status, result, error = "failed", e.result, str(e)
        except ProvisionerError as e:  # messages fit for an operator, never a secret (errors.py)
            status, error = "failed", str(e)
        except Exception as e:
            log.exception("job %s (%s %s) failed", job.id, job.action, job.mac)
            status, error = "failed", f"internal error ({type(e).__name__}); see the server log"
        if result is not None:
            result = public_result(result)
        for attempt in range(3):
            try:
                if not self.queue.finish(job, worker, status, result, error):
                    log.warning("job %s: lease lost before it finished (%s)", job.id, status)
                break
            except Exception:
                log.exception("job %s: could not record its end (attempt %d)", job.id, attempt + 1)
                time.sleep(0.5)
        log.info("job %s: %s%s", job.id, status, f" ({error})" if error else "")
