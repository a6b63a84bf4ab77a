"""The helpdesk REST API (FastAPI) and its web page, on their own port.

Every response is built from explicit, allow-listed fields (the response models below); there is no
endpoint that returns a secret, for any role. OpenAPI: /api/openapi.json.
"""


import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from provisioner import __version__, metrics
from provisioner import operations as ops
from provisioner.api import auth
from provisioner.api.auth import TokenInfo
from provisioner.api.jobs import Conflict, Job, JobQueue
from provisioner.errors import InputError, ProvisionerError
from provisioner.macaddr import normalize_mac
from provisioner.runtime import Runtime
from provisioner.store import as_utc
from provisioner.store.schema import audit_log

log = logging.getLogger("provisioner.api")

STATIC = Path(__file__).parent / "static"
V1 = "/api/v1"
Role = Literal["viewer", "helpdesk", "admin"]
DEVICE_STATES = ("discovered", "enrolling", "provisioned", "rotating", "reset-pending", "locked", "decommissioned")
SECURITY_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
                    "x-frame-options": "DENY"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# ---- response models: the allow-list -------------------------------------------------------------

class Me(BaseModel):
    id: int
    name: str
    role: Role


class Line(BaseModel):
    extension: str
    display_name: str


class DeviceSummary(BaseModel):
    mac: str
    name: str | None
    vendor: str
    model: str
    site: str
    state: str
    in_sync: bool
    rotating: bool = Field(description="a credential rotation waits for the device's fetch")
    last_seen: dt.datetime | None
    last_ip: str | None
    extensions: list[str]
    in_inventory: bool


class DeviceList(BaseModel):
    total: int
    devices: list[DeviceSummary]


class Fetch(BaseModel):
    id: int
    at: dt.datetime
    source_ip: str
    transport: str
    filename: str
    status: int
    reason: str
    user_agent: str | None
    hash: str | None


class CredentialGeneration(BaseModel):
    """A credential's name, generation and status; never its value."""
    name: str
    generation: int
    status: str
    created_at: dt.datetime
    retired_at: dt.datetime | None


class AuditEntry(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str | None
    why: str | None
    details: dict[str, Any]


class Finding(BaseModel):
    type: str
    severity: str
    what: str
    evidence: str
    fix: str


class JobOut(BaseModel):
    id: str
    action: str
    mac: str
    status: Literal["queued", "running", "done", "failed"]
    actor: str
    reason: str | None
    wait_seconds: int | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    result: dict[str, Any] | None
    error: str | None


class DeviceDetail(DeviceSummary):
    lines: list[Line]
    generation: int
    served_hash: str | None
    desired_hash: str | None
    pending_hash: str | None
    enrol_expires_at: dt.datetime | None
    lock_reason: str | None
    last_fetch: Fetch | None
    credentials: list[CredentialGeneration]
    fetches: list[Fetch]
    audit: list[AuditEntry]
    findings: list[Finding] | None = Field(description="audit findings for this device; null if unavailable")
    jobs: list[JobOut]


class ZeroTouchPath(BaseModel):
    supported: bool = Field(description="by the device's vendor/model firmware")
    in_place: bool = Field(description="set up on our side")
    detail: str
    service: str | None = None


class ZeroTouch(BaseModel):
    """Will the device provision by itself after a factory reset or on first boot (issue 19)."""
    mac: str
    site: str
    dhcp: ZeroTouchPath
    redirect: ZeroTouchPath = Field(description="the vendor's redirection service, as recorded (not asked now)")
    sip_pnp: ZeroTouchPath
    will_provision: bool
    because: str
    todo: list[str]


class HistoryEvent(BaseModel):
    at: dt.datetime
    kind: Literal["fetch", "audit", "job"]
    summary: str
    actor: str | None = None
    ref: str = Field(description="fetch id, audit entry id or job id")


class History(BaseModel):
    mac: str
    events: list[HistoryEvent]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before: int | None = Field(description="pass as `before` for the next (older) page; null at the end")


class JobList(BaseModel):
    jobs: list[JobOut]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["reprovision", "reset", "unlock"]
    mac: str = Field(max_length=32, examples=["80:5e:c0:12:34:56"])
    reason: str | None = Field(default=None, max_length=200, description="written to the audit log")
    wait_seconds: int = Field(default=300, ge=1, le=3600,
                              description="reprovision: how long the job waits for the device's fetch")
    enrol_from: str | None = Field(
        default=None, max_length=45, pattern=r"^(site|[0-9A-Fa-f:.]+)$",
        description="reset: where the reopened enrolment window accepts the device from. Left out: its last "
                    "known address only. `site` (any address of its site) or another address: admin tokens only")


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class Problem(BaseModel):
    detail: str


# ---- building responses from explicit fields -----------------------------------------------------

def _fetch(r: dict) -> Fetch:
    return Fetch(id=r["id"], at=as_utc(r["at"]), source_ip=r["source_ip"], transport=r["transport"],
                 filename=r["filename"], status=r["status"], reason=r["reason"], user_agent=r["user_agent"],
                 hash=r["hash"])


def _details(text: str | None) -> dict:
    try:
        v = json.loads(text or "{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {"value": v}


def _audit(r) -> AuditEntry:
    m = r if isinstance(r, dict) else r._mapping
    return AuditEntry(id=m["id"], at=as_utc(m["at"]), actor=m["actor"], action=m["action"], target=m["target"],
                      why=m["why"], details=_details(m["details"]))


def _job(j: Job) -> JobOut:
    return JobOut(id=j.id, action=j.action, mac=j.mac, status=j.status, actor=j.actor, reason=j.params.get("reason"),
                  wait_seconds=j.params.get("wait_seconds"), created_at=j.created_at, started_at=j.started_at,
                  finished_at=j.finished_at, result=j.result, error=j.error)


def _summary(rt: Runtime, st) -> dict:
    row = ops.device_row(rt, st)
    dev = rt.inventory.resolved.get(st.mac)
    return {"mac": row["mac"], "name": dev.name if dev else None, "vendor": row["vendor"], "model": row["model"],
            "site": row["site"], "state": row["state"], "in_sync": row["in_sync"],
            "rotating": row["pending_hash"] is not None, "last_seen": st.last_seen, "last_ip": row["last_ip"],
            "extensions": [ln.extension for ln in dev.lines] if dev else [], "in_inventory": row["in_inventory"]}


def _findings(rt: Runtime, st) -> list[Finding] | None:
    """The audit's findings for one device (provisioner/audit.py), or None when they cannot be computed."""
    try:
        from provisioner import audit as auditing
        dev = rt.inventory.resolved.get(st.mac)
        if dev is None:
            return [Finding(type="orphan", severity="high", what="device is not in the inventory",
                            evidence=f"state {st.state}", fix=f"provisioner decommission {st.mac}")]
        per_device = getattr(auditing, "device_findings", None)
        if per_device is not None:
            found = list(per_device(rt, st.mac))
        else:
            started = next((as_utc(e["at"]) for e in rt.store.audit_entries(target=st.mac, limit=200)
                            if e["action"] == "rotation.started"), None)
            now = dt.datetime.now(dt.timezone.utc)
            found = [*auditing.check_state(dev, st, now, started), *auditing.check_firmware(rt, dev, st),
                     *auditing.check_policy(dev), *auditing.check_local_overrides(rt, dev, st)]
        return [Finding(type=f.type, severity=f.severity, what=f.what, evidence=f.evidence, fix=f.fix) for f in found]
    except Exception:
        log.exception("findings for %s could not be computed", st.mac)
        return None


def _mac(text: str) -> str:
    try:
        return normalize_mac(text)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None


# ---- the app -------------------------------------------------------------------------------------

def create_app(rt: Runtime, queue: JobQueue, on_submit=lambda: None) -> FastAPI:
    app = FastAPI(
        title="provisioner helpdesk API", version=__version__, openapi_url="/api/openapi.json",
        docs_url=None, redoc_url=None,  # the stock docs pages load scripts from a CDN
        description="Search devices, see their state, fetches, credential generations (never a secret) and audit "
                    "log; trigger reprovision, reset and unlock jobs. Bearer tokens: `provisioner api tokens "
                    "create --role viewer|helpdesk|admin`.")
    bearer = HTTPBearer(auto_error=False, description="a token from `provisioner api tokens create`")

    def current(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenInfo:
        info = auth.authenticate(rt.store, cred.credentials if cred else None)
        if info is None:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        return info

    def role(minimum: str):
        def check(tok: Annotated[TokenInfo, Depends(current)]) -> TokenInfo:
            if not tok.allows(minimum):
                raise HTTPException(403, f"this needs the {minimum} role; your token has {tok.role}")
            return tok
        return check

    Viewer = Annotated[TokenInfo, Depends(role("viewer"))]
    Helpdesk = Annotated[TokenInfo, Depends(role("helpdesk"))]
    Admin = Annotated[TokenInfo, Depends(role("admin"))]
    errors = {401: {"model": Problem}, 403: {"model": Problem}}

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(ProvisionerError)
    async def provisioner_error(request: Request, exc: ProvisionerError):
        return JSONResponse({"detail": str(exc)}, status_code=400 if isinstance(exc, InputError) else 500)

    # -- page --
    def _static(name: str, media: str, csp: bool = False) -> FileResponse:
        headers = {"content-security-policy": PAGE_CSP} if csp else {}
        return FileResponse(STATIC / name, media_type=media, headers=headers)

    @app.get("/", include_in_schema=False)
    def page():
        return _static("index.html", "text/html; charset=utf-8", csp=True)

    @app.get("/app.js", include_in_schema=False)
    def page_js():
        return _static("app.js", "text/javascript; charset=utf-8")

    @app.get("/app.css", include_in_schema=False)
    def page_css():
        return _static("app.css", "text/css; charset=utf-8")

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return Response("ok\n", media_type="text/plain")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(tok: Viewer):
        """This process's counters (fetches, bans, locks, enrolment conflicts, refused connections, TFTP
        drops), for Prometheus with a viewer token (bearer_token in its scrape config)."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- who am I --
    @app.get(f"{V1}/me", response_model=Me, responses=errors, tags=["tokens"])
    def me(tok: Viewer) -> Me:
        return Me(id=tok.id, name=tok.name, role=tok.role)

    # -- devices --
    @app.get(f"{V1}/devices", response_model=DeviceList, responses=errors, tags=["devices"])
    def search_devices(
        tok: Viewer,
        q: Annotated[str | None, Query(max_length=64, description="MAC (or part), extension, site or name")] = None,
        mac: Annotated[str | None, Query(max_length=32, description="MAC or part of it, any separators")] = None,
        extension: Annotated[str | None, Query(max_length=32)] = None,
        site: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[str | None, Query(max_length=24, description=", ".join(DEVICE_STATES))] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> DeviceList:
        def hexpart(s: str) -> str:
            return "".join(ch for ch in s.lower() if ch not in ":-. ")

        rows = [_summary(rt, st) for st in rt.store.all_devices()]
        out = []
        for r in rows:
            if mac and hexpart(mac) not in r["mac"]:
                continue
            if extension and extension not in r["extensions"]:
                continue
            if site and r["site"] != site:
                continue
            if state and r["state"] != state:
                continue
            if q:
                needle = q.strip().lower()
                h = hexpart(needle)
                if not (needle in (r["site"].lower(), *(e.lower() for e in r["extensions"]))
                        or (len(h) >= 4 and all(c in "0123456789abcdef" for c in h) and h in r["mac"])
                        or (r["name"] and needle in r["name"].lower())):
                    continue
            out.append(r)
        return DeviceList(total=len(out), devices=[DeviceSummary(**r) for r in out[offset:offset + limit]])

    def _device(mac: str):
        mac = _mac(mac)
        st = rt.store.device(mac)
        if st is None:
            raise HTTPException(404, f"no device {mac}")
        return st

    @app.get(f"{V1}/devices/{{mac}}", response_model=DeviceDetail,
             responses={**errors, 404: {"model": Problem}}, tags=["devices"])
    def device_detail(tok: Viewer, mac: Annotated[str, PathParam(max_length=32)]) -> DeviceDetail:
        st = _device(mac)
        dev = rt.inventory.resolved.get(st.mac)
        fetches = [_fetch(r) for r in rt.store.fetches(st.mac, limit=10)]
        creds = [CredentialGeneration(name=c["name"], generation=c["generation"], status=c["status"],
                                      created_at=as_utc(c["created_at"]), retired_at=as_utc(c["retired_at"]))
                 for c in rt.store.credential_history(st.mac)]
        return DeviceDetail(
            **_summary(rt, st),
            lines=[Line(extension=ln.extension, display_name=ln.display_name) for ln in (dev.lines if dev else ())],
            generation=st.generation, served_hash=st.served_hash, desired_hash=st.desired_hash,
            pending_hash=st.pending_hash, enrol_expires_at=st.enrol_expires_at, lock_reason=st.lock_reason,
            last_fetch=fetches[0] if fetches else None, credentials=creds, fetches=fetches,
            audit=[_audit(e) for e in rt.store.audit_entries(target=st.mac, limit=20)],
            findings=_findings(rt, st), jobs=[_job(j) for j in queue.list(mac=st.mac, limit=10)])

    @app.get(f"{V1}/devices/{{mac}}/zero-touch", response_model=ZeroTouch,
             responses={**errors, 404: {"model": Problem}}, tags=["devices"])
    def device_zero_touch(tok: Viewer, mac: Annotated[str, PathParam(max_length=32)]) -> ZeroTouch:
        from provisioner.zerotouch.verdict import evaluate
        st = _device(mac)
        found = evaluate(rt, [st.mac])
        if not found:
            raise HTTPException(404, f"{st.mac} is not in the inventory")
        v = found[0]
        return ZeroTouch(mac=v.mac, site=v.site, dhcp=ZeroTouchPath(**v.dhcp.__dict__),
                         redirect=ZeroTouchPath(**v.redirect.__dict__), sip_pnp=ZeroTouchPath(**v.sip_pnp.__dict__),
                         will_provision=v.will_provision, because=v.because, todo=v.todo)

    @app.get(f"{V1}/devices/{{mac}}/history", response_model=History,
             responses={**errors, 404: {"model": Problem}}, tags=["devices"])
    def device_history(tok: Viewer, mac: Annotated[str, PathParam(max_length=32)],
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> History:
        st = _device(mac)
        events = [HistoryEvent(at=as_utc(f["at"]), kind="fetch", ref=str(f["id"]),
                               summary=f"{f['transport']} {f['filename']} from {f['source_ip']}: {f['status']} "
                                       f"({f['reason']})")
                  for f in rt.store.fetches(st.mac, limit=limit)]
        events += [HistoryEvent(at=as_utc(e["at"]), kind="audit", ref=str(e["id"]), actor=e["actor"],
                                summary=e["action"] + (f": {e['why']}" if e["why"] else ""))
                   for e in rt.store.audit_entries(target=st.mac, limit=limit)]
        events += [HistoryEvent(at=j.created_at, kind="job", ref=j.id, actor=j.actor,
                                summary=f"{j.action} job {j.status}" + (f": {j.error}" if j.error else ""))
                   for j in queue.list(mac=st.mac, limit=limit)]
        events.sort(key=lambda e: e.at, reverse=True)
        return History(mac=st.mac, events=events[:limit])

    # -- jobs --
    @app.post(f"{V1}/jobs", response_model=JobOut, status_code=202, tags=["jobs"],
              responses={**errors, 200: {"model": JobOut, "description": "replay: the job this key created before"},
                         400: {"model": Problem}, 404: {"model": Problem},
                         409: {"model": Problem, "description": "the key was used with a different request"}})
    def create_job(tok: Helpdesk, body: JobRequest, response: Response,
                   idempotency_key: Annotated[str | None, Header(
                       alias="Idempotency-Key", max_length=128,
                       description="required; the same key and request give the same job")] = None) -> JobOut:
        if not idempotency_key or not idempotency_key.strip():
            raise HTTPException(400, "an Idempotency-Key header is required")
        st = _device(body.mac)
        if body.enrol_from is not None and (body.action != "reset" or not tok.allows("admin")):
            raise HTTPException(403 if body.action == "reset" else 400,
                                "only an admin token may choose where enrolment reopens (enrol_from)"
                                if body.action == "reset" else "enrol_from applies to reset jobs only")
        params = {"reason": body.reason,
                  "wait_seconds": body.wait_seconds if body.action == "reprovision" else None}
        if body.enrol_from is not None:
            params["enrol_from"] = body.enrol_from
        try:
            job, created = queue.submit(tok, idempotency_key.strip(), body.action, st.mac, params)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        if created:
            on_submit()
        else:
            response.status_code = 200
            response.headers["idempotent-replayed"] = "true"
        response.headers["location"] = f"{V1}/jobs/{job.id}"
        return _job(job)

    @app.get(f"{V1}/jobs", response_model=JobList, responses=errors, tags=["jobs"])
    def list_jobs(tok: Viewer, mac: Annotated[str | None, Query(max_length=32)] = None,
                  status: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 20) -> JobList:
        return JobList(jobs=[_job(j) for j in queue.list(mac=_mac(mac) if mac else None, status=status,
                                                             limit=limit)])

    @app.get(f"{V1}/jobs/{{job_id}}", response_model=JobOut, responses={**errors, 404: {"model": Problem}},
             tags=["jobs"])
    def get_job(tok: Viewer, job_id: Annotated[str, PathParam(max_length=64)]) -> JobOut:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return _job(job)

    # -- audit log --
    @app.get(f"{V1}/audit", response_model=AuditPage, responses=errors, tags=["audit"])
    def audit_entries(tok: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      before: Annotated[int | None, Query(ge=1, description="entries with a smaller id")] = None,
                      target: Annotated[str | None, Query(max_length=64)] = None,
                      actor: Annotated[str | None, Query(max_length=64)] = None,
                      action: Annotated[str | None, Query(max_length=64)] = None) -> AuditPage:
        q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
        if before is not None:
            q = q.where(audit_log.c.id < before)
        if target:
            try:
                target = normalize_mac(target)
            except ValueError:
                pass
            q = q.where(audit_log.c.target == target)
        if actor:
            q = q.where(audit_log.c.actor == actor)
        if action:
            q = q.where(audit_log.c.action == action)
        with rt.store.engine.connect() as c:
            rows = c.execute(q).all()
        entries = [_audit(r) for r in rows[:limit]]
        return AuditPage(entries=entries, next_before=entries[-1].id if len(rows) > limit else None)

    # -- tokens (admin) --
    @app.get(f"{V1}/tokens", response_model=list[TokenOut], responses=errors, tags=["tokens"])
    def list_tokens(tok: Admin) -> list[TokenOut]:
        return [TokenOut(**{k: t[k] for k in TokenOut.model_fields}) for t in auth.list_tokens(rt.store)]

    @app.delete(f"{V1}/tokens/{{token_id}}", response_model=TokenOut,
                responses={**errors, 404: {"model": Problem}}, tags=["tokens"])
    def revoke_token(tok: Admin, token_id: int) -> TokenOut:
        try:
            row, _ = auth.revoke_token(rt.store, token_id, tok.actor)
        except InputError as e:
            raise HTTPException(404, str(e)) from None
        return TokenOut(**{k: row[k] for k in TokenOut.model_fields})

    from provisioner.firmware.api import add_routes as firmware_routes
    firmware_routes(app, rt, role, errors, Problem)  # /api/v1/firmware/... (issue 18)
    return app
