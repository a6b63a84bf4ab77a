"""identify → authorize → render → respond → record, shared by HTTPS and TFTP.

Everything a device is refused gets the same answer (HTTPS: one 401 challenge, whatever the MAC);
the reason is recorded for `explain`/the technician, never sent to the client.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from provisioner import metrics, registrar
from provisioner.alerts import Alerts
from provisioner.desired import common_context, device_context
from provisioner.errors import RenderError
from provisioner.inventory import ResolvedDevice
from provisioner.render import sha256
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from provisioner.serve.digest import DigestAuth, parse_authorization
from provisioner.serve.guard import Guard, GuardPolicy
from provisioner.serve.mtls import cert_macs
from provisioner.store import utcnow
from provisioner.vendors import FileMatch, VendorProfile

log = logging.getLogger("provisioner.serve")

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
CA_NAME = "ca.pem"
UNAUTHORIZED_BODY = b"authentication required\n"
DUMMY = Secret("x" * 24)
SEEN_REFRESH = 60.0  # seconds
STATE_TTL = 1.0  # seconds a device row is reused from memory
MAX_UPLOAD = 256 * 1024
# seconds an anonymous request for an enrolled device, from another address or User-Agent than the one it
# uses, may wait for the authenticated retry of a digest dance before it is an enrolment conflict
CONFLICT_GRACE = float(os.environ.get("PROVISIONER_CONFLICT_GRACE", "30"))
MAX_SUSPECTS = 10_000


@dataclass
class Request:
    transport: str  # https | tftp
    filename: str
    ip: str
    user_agent: str | None = None
    authorization: str | None = None
    method: str = "GET"
    path: str = ""
    client_cert: dict | None = None  # the verified peer certificate (ssl getpeercert()), if any
    body: bytes = b""  # PUT uploads only


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    reason: str = ""
    mac: str | None = None
    digest: str | None = None
    stale: bool = False
    failure: bool = False  # counts against the source (guard.py); a stale nonce (right password) does not
    retry_after: int | None = None


def unauthorized(reason: str, mac: str | None = None, stale: bool = False) -> Reply:
    """Every refusal counts against its source, known MAC or not (guard.py): only a stale nonce, which
    needed the right password, does not."""
    return Reply(401, UNAUTHORIZED_BODY, reason=reason, mac=mac, stale=stale, failure=not stale)


def not_found(reason: str, mac: str | None = None) -> Reply:
    return Reply(404, b"not found\n", reason=reason, mac=mac, failure=True)


def not_served(vendor: VendorProfile, entry) -> Reply:
    """A file the vendor's phones ask for on a normal boot that we do not serve (vendors/<name>.yaml
    not_served): the same 404 as any missing file, but never counted against the source."""
    return Reply(404, b"not found\n", reason=f"not served ({vendor.name}: {entry.why}); not counted"[:255])


class EventRecorder:
    """Writes fetch events in batches off the request path."""

    def __init__(self, rt: Runtime, interval: float = 0.2, batch: int = 500):
        self._rt = rt
        self._q: queue.Queue = queue.Queue(maxsize=100_000)
        self._interval = interval
        self._batch = batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def record(self, req: Request, reply: Reply) -> None:
        row = {"at": utcnow(), "mac": reply.mac, "source_ip": req.ip, "transport": req.transport,
               "filename": req.filename[:255], "status": reply.status, "hash": reply.digest,
               "user_agent": (req.user_agent or "")[:255] or None, "reason": reply.reason[:255],
               "counted": reply.failure and req.transport != "tftp"}  # as handle() counts
        try:
            self._q.put_nowait(row)
        except queue.Full:
            log.warning("event queue full; dropping a fetch event")

    def summary(self, source: str, status: int, count: int) -> None:
        """Requests refused by a running ban: one row per source and interval, not one per request."""
        try:
            self._q.put_nowait({"at": utcnow(), "mac": None, "source_ip": source[:45], "transport": "https",
                                "filename": "*", "status": status, "hash": None, "user_agent": None,
                                "reason": f"refused while banned: {count} requests (summarised, not recorded "
                                          f"one by one)"})
        except queue.Full:
            log.warning("event queue full; dropping a ban summary")

    def seen(self, mac: str, ip: str, ua: str | None, at) -> None:
        """A device fetched the config it already holds: last_seen/last_ip/last_ua, in the next batch."""
        try:
            self._q.put_nowait(("seen", {"m": mac, "ip": ip, "ua": (ua or "")[:255], "at": at}))
        except queue.Full:
            pass  # a later fetch refreshes it

    def _drain(self) -> None:
        rows, seen = [], []
        while len(rows) + len(seen) < self._batch:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                seen.append(item[1])
            else:
                rows.append(item)
        if rows or seen:
            try:
                self._rt.store.record_fetches(rows, seen)
            except Exception:  # never let the recorder die; the rows carry no secrets
                log.exception("could not record %d fetch events", len(rows))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            while not self._q.empty():
                self._drain()
        while not self._q.empty():
            self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


CACHE_ENTRIES = 20_000  # device rows (state cache)
# rendered configs and decrypted credential sets, bounded by size: a boot storm's working set. 64 MB holds
# about 20,000 devices (config ~2.5 KB + credentials); a storm that walks more devices than fit gets no hit.
CACHE_BYTES = int(float(os.environ.get("PROVISIONER_CACHE_MB", "64")) * 1024 * 1024)
ENTRY_OVERHEAD = 200  # bytes a key and its bookkeeping cost, roughly


def _size(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value) + ENTRY_OVERHEAD
    if isinstance(value, dict):  # a credential set: a few Secrets
        return 120 * len(value) + ENTRY_OVERHEAD
    return 1024


class LruCache:
    """Bounded by bytes and thread-safe: memory stays flat with 100,000 devices; a miss only costs a render."""

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._used = 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is None:
                return None
            self._d.move_to_end(key)
            return v[0]

    def put(self, key, value) -> None:
        size = _size(value)
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._d[key] = (value, size)
            self._used += size
            while self._used > self._max and self._d:
                _, (_, gone) = self._d.popitem(last=False)
                self._used -= gone


class Pipeline:
    def __init__(self, rt: Runtime, ca_pem: bytes, recorder: EventRecorder | None = None,
                 digest: DigestAuth | None = None, guard: Guard | None = None, alerts: Alerts | None = None):
        self.rt = rt
        self.alerts = alerts or Alerts()
        inv = rt.inventory
        self.guard = guard or Guard(GuardPolicy(ban_after=inv.security.ban_after, window=inv.security.window,
                                                ban_seconds=inv.security.ban_seconds),
                                    self.is_site_address, self._banned)
        # anonymous requests for enrolled devices from another address or User-Agent, waiting for the
        # authenticated retry that makes them a digest dance: (mac, ip) -> (monotonic, wall, ua, file)
        self._suspects: dict[tuple[str, str], tuple[float, dt.datetime, str, str]] = {}
        self._suspects_lock = threading.Lock()
        self._site_cache: dict = {}
        self.catalog = rt.catalog
        self.renderer = rt.renderer
        self.ca_pem = ca_pem
        self.recorder = recorder
        self.digest = digest or DigestAuth()
        self._cache = LruCache(CACHE_BYTES)
        self._served: dict[str, tuple[str, str, float]] = {}
        self._states: dict[str, tuple] = {}
        from provisioner.firmware.serve import FirmwareService
        self.firmware = FirmwareService(self)  # /fw/ images, and the firmware offer in configs (issue 18)

    def is_site_address(self, ip: str) -> bool:
        """Whether `ip` is in a site's networks, remembered per inventory (the guard asks on every failure)."""
        inv = self.rt.inventory
        cache = self._site_cache
        if cache.get(None) is not inv:
            cache.clear()
            cache[None] = inv
        hit = cache.get(ip)
        if hit is None:
            if len(cache) > 65536:
                cache.clear()
                cache[None] = inv
            hit = cache[ip] = inv.is_site_address(ip)
        return hit

    # ---- entry points ----------------------------------------------------------------------------

    def handle(self, req: Request) -> Reply:
        if req.transport == "tftp":  # UDP: the source address proves nothing; TFTP has its own limits
            reply = self._run(req, self._dispatch)
        else:
            verdict = self.guard.check(req.ip)
            if verdict is not None and (not verdict.soft or not (req.authorization or req.client_cert)):
                # refused without identifying anything: summarised per source, not recorded one by one
                metrics.count_fetch(req.transport, verdict.status)
                if verdict.soft:
                    return unauthorized(verdict.reason)
                return Reply(verdict.status, b"too many failed requests\n" if verdict.status == 429
                             else b"forbidden\n", reason=verdict.reason, retry_after=verdict.retry_after)
            reply = self._run(req, self._dispatch)
            if reply.failure:
                self.guard.failure(req.ip, reply.mac)
            elif reply.status in (200, 201) and reply.mac:
                self.guard.success(req.ip, reply.mac)
                if self._suspects:
                    with self._suspects_lock:
                        self._suspects.pop((reply.mac, req.ip), None)
        metrics.count_fetch(req.transport, reply.status)
        if self.recorder:
            self.recorder.record(req, reply)
        return reply

    def _dispatch(self, req: Request) -> Reply:
        reply = self.firmware.handle(req)  # /fw/ images, Polycom's per-phone master (issue 18)
        if reply is not None:
            return reply
        if req.transport == "tftp":
            return self._tftp(req)
        return self._upload(req) if req.method == "PUT" else self._https(req)

    @staticmethod
    def _run(req: Request, step) -> Reply:
        try:
            return step(req)
        except RenderError as e:
            log.error("render refused: %s", e)
            return Reply(500, b"configuration could not be rendered\n", reason=str(e)[:255])

    def _banned(self, target: str, what: str, seconds: int, level: int = 1) -> None:
        why = f"{what} banned for {seconds} s after repeated failed requests for device files"
        now = utcnow()
        try:
            self.rt.store.put_ban(target if what == "source" else f"net:{target}",
                                  now + dt.timedelta(seconds=seconds), level, now)
        except Exception:
            log.exception("could not share the ban with the other processes")
        try:
            self.rt.store.audit("guard", f"{what}.banned", target, why, {"seconds": seconds, "level": level})
        except Exception:
            log.exception("could not write the ban to the audit log")
        metrics.inc("provisioner_bans_total")
        self.alerts.notify(f"{what}.banned", target, why, seconds=seconds)

    # ---- enrolment conflicts -------------------------------------------------------------------------

    def _suspect(self, mac: str, req: Request) -> None:
        key = (mac, req.ip)
        with self._suspects_lock:
            if key not in self._suspects and len(self._suspects) < MAX_SUSPECTS:
                self._suspects[key] = (time.monotonic(), utcnow(), (req.user_agent or "")[:200], req.filename)

    def settle_suspects(self, grace: float | None = None) -> int:
        """Anonymous requests whose authenticated retry never came: enrolment conflicts. Returns how many
        were raised. Called about once a second (housekeeping.py)."""
        grace = CONFLICT_GRACE if grace is None else grace
        now = time.monotonic()
        with self._suspects_lock:
            due = [(k, v) for k, v in self._suspects.items() if now - v[0] >= grace]
            for k, _ in due:
                del self._suspects[k]
        raised = 0
        for (mac, ip), (_, at, ua, filename) in due:
            st = self.rt.store.device(mac)  # fresh: another process may have served the retry
            dev = self.rt.inventory.device(mac)
            if st is None or dev is None or st.state not in ("provisioned", "rotating") or st.enrolled_at is None:
                continue
            if st.last_ip == ip and st.last_seen and st.last_seen >= at - dt.timedelta(seconds=SEEN_REFRESH + 5):
                continue  # it authenticated from that address meanwhile (here or in another process)
            self._conflict(dev, st, ip, ua, filename, at)
            raised += 1
        return raised

    def _conflict(self, dev: ResolvedDevice, st, ip: str, ua: str, filename: str, at: dt.datetime) -> None:
        """Two devices claim one identity: the one that enrolled, and one asking anonymously from elsewhere
        that never authenticated. Locked until an operator decides which is the real phone."""
        enrolled = f"{st.enrolled_from or st.last_ip or '?'} at {st.enrolled_at:%Y-%m-%d %H:%M:%S}Z"
        reason = f"enrolment conflict: enrolled from {st.enrolled_from or '?'}; {ip} asks without credentials"
        why = (f"enrolment conflict: the device enrolled from {enrolled} (it fetches from {st.last_ip}), but "
               f"{ip} asked for {filename} without credentials and never authenticated "
               f"(User-Agent {ua!r}): one of them is not the real phone")
        with self.rt.store.write() as c:
            n = self.rt.store.lock_device(c, dev.mac, reason[:255], only_from=("provisioned", "rotating"))
            if n:
                self.rt.store.append_audit(c, "guard", "enrolment.conflict", dev.mac, why[:512], {
                    "enrolled_from": st.enrolled_from, "last_ip": st.last_ip, "last_user_agent": st.last_ua,
                    "source_ip": ip, "user_agent": ua, "file": filename, "asked_at": at.isoformat()})
        self._forget(dev.mac)
        if n:
            log.warning("device %s locked: %s", dev.mac, reason)
            metrics.inc("provisioner_enrolment_conflicts_total")
            self.alerts.notify("enrolment.conflict", dev.mac, why, source_ip=ip, enrolled_from=st.enrolled_from)

    def _lock_device(self, dev: ResolvedDevice, ip: str) -> None:
        why = f"authenticated request from {ip}, outside site {dev.site}'s networks, after enrolment"
        with self.rt.store.write() as c:
            n = self.rt.store.update_device(c, dev.mac, state="locked", lock_reason=why[:255])
            if n:
                self.rt.store.append_audit(c, "guard", "device.locked", dev.mac, why, {"source_ip": ip})
        self._forget(dev.mac)
        metrics.inc("provisioner_locks_total")
        self.alerts.notify("device.locked", dev.mac, why, source_ip=ip)

    # ---- identify --------------------------------------------------------------------------------

    def _identify(self, req: Request) -> tuple[Reply | None, FileMatch | None, ResolvedDevice | None]:
        name = req.filename
        if not SAFE_NAME.match(name):
            return not_found("file name refused (not a plain file name)"), None, None
        if name == CA_NAME:
            return Reply(200, self.ca_pem, "application/x-pem-file", reason="CA certificate"), None, None
        ignored = self.catalog.match_not_served(name, req.user_agent)
        if ignored is not None:
            return not_served(*ignored), None, None
        matches = self.catalog.match_file(name)
        if not matches:
            return not_found("no vendor profile asks for this file name"), None, None
        per_device = [m for m in matches if m.mac]
        if not per_device:
            ua = self.catalog.parse_user_agent(req.user_agent)
            chosen = next((m for m in matches if ua and m.vendor.name == ua.vendor), matches[0])
            return None, chosen, None
        inv = self.rt.inventory
        for m in per_device:
            dev = inv.device(m.mac)
            if dev is not None and dev.vendor == m.vendor.name:
                return None, m, dev
        # an unknown MAC: several vendors may ask for "<mac>.cfg"; the User-Agent, then the OUI, decide
        ua = self.catalog.parse_user_agent(req.user_agent)
        by_ua = [m for m in per_device if ua and m.vendor.name == ua.vendor]
        by_oui = [m for m in per_device if m.mac[:6] in m.vendor.ouis]
        return None, (by_ua or by_oui or per_device)[0], None

    def _ua_problem(self, vendor: VendorProfile, mac: str, ua: str | None, model: str | None = None) -> str | None:
        """Why the User-Agent cannot be this device's: another vendor, another MAC, no MAC where the vendor
        always sends it, or a model of another family than the inventory's."""
        info = self.catalog.parse_user_agent(ua)
        if info is None or info.vendor != vendor.name:
            return f"User-Agent does not fit the {vendor.name} profile"
        if info.mac and info.mac != mac:
            return f"User-Agent carries MAC {info.mac}, the file is for {mac}"
        if not info.mac and vendor.user_agent_mac == "always":
            return f"User-Agent carries no MAC ({vendor.display_name} sends it in every request)"
        if model is not None and info.model and not vendor.same_family(info.model, model):
            return f"User-Agent names model {info.model}, the inventory says {model} (another family)"
        return None

    # ---- state, cached where it is immutable --------------------------------------------------------

    def _state(self, mac: str):
        """The device's row, cached for STATE_TTL: a boot storm reads each row once a second at most.

        Changes made by this process are seen at once (`_forget`); changes made elsewhere (a CLI
        revoke, another replica) within STATE_TTL.
        """
        now = time.monotonic()
        hit = self._states.get(mac)
        if hit is not None and now - hit[1] < STATE_TTL:
            return hit[0]
        st = self.rt.store.device(mac)
        if len(self._states) > CACHE_ENTRIES:
            self._states.clear()
        self._states[mac] = (st, now)
        return st

    def _forget(self, mac: str) -> None:
        self._states.pop(mac, None)

    def _credentials(self, mac: str, status: str, version: str | None) -> dict[str, Secret]:
        """Decrypted credentials of a generation. The config hash (`version`) fingerprints the secrets
        (every secret is in the config), so (mac, status, hash) names one immutable set."""
        if version is None:
            return self.rt.store.credentials(mac, status)
        key = ("creds", mac, status, version)
        hit = self._cache.get(key)
        if hit is None:
            hit = self.rt.store.credentials(mac, status)
            self._cache.put(key, hit)
        return hit

    def _mark_served(self, st, digest: str, req: Request, now) -> None:
        """Record what the device now holds; a steady resync refreshes last_seen at most once a minute,
        and off the request path (a boot storm of devices that hold their config writes nothing inline)."""
        last = self._served.get(st.mac)
        if (st.served_hash == digest and last is not None and last[0] == digest and last[1] == req.ip
                and time.monotonic() - last[2] < SEEN_REFRESH):
            return
        if st.served_hash == digest and self.recorder is not None:
            self.recorder.seen(st.mac, req.ip, req.user_agent, now)
        else:  # a new config reached the device: drift and rotation depend on it, written now
            self.rt.store.mark_served(st.mac, digest, req.ip, req.user_agent, now)
            self._forget(st.mac)
        self._served[st.mac] = (digest, req.ip, time.monotonic())

    # ---- render ----------------------------------------------------------------------------------

    def _common(self, m: FileMatch, ip: str, template: str) -> bytes:
        """A secret-free file, rendered from the settings of the source's site."""
        settings = self.rt.inventory.settings_for_ip(ip)
        key = ("common", m.vendor.name, template, m.model, settings)
        hit = self._cache.get(key)
        if hit is None:
            hit = self.renderer.render(m.vendor, template, common_context(m.vendor, settings, m.model),
                                       f"{m.vendor.name} common file", m.spec.xml_root)
            self._cache.put(key, hit)
        return hit

    def _device_body(self, m: FileMatch, dev: ResolvedDevice, creds: dict[str, Secret], version: str | None) -> bytes:
        key = ("device", dev.mac, m.spec.name, version)
        hit = self._cache.get(key)
        if hit is None or version is None:
            _, hit = self.renderer.device_file(device_context(dev, m.vendor, creds), m.spec)
            self._cache.put(key, hit)
        return hit

    def _authorize(self, req: Request, m: FileMatch, dev: ResolvedDevice | None, allow_enrolment: bool):
        """A Reply refusing the request, or (how, state, active credentials, pending credentials, now)."""
        store = self.rt.store
        cred = parse_authorization(req.authorization)
        st = self._state(m.mac)  # looked up for unknown MACs too: the same work whatever the answer
        if dev is None or st is None:
            if cred:  # same work as for a real device, so timing does not tell
                self.digest.verify(cred, req.method, req.path, DUMMY.reveal(), req.ip)
            return unauthorized("unknown device" if dev is None else "device not yet synced to the store")
        mac = dev.mac
        if st.state in ("locked", "decommissioned"):
            if cred:
                self.digest.verify(cred, req.method, req.path, DUMMY.reveal(), req.ip)
            return unauthorized(f"device is {st.state}" + (f" ({st.lock_reason})" if st.lock_reason else ""), mac)

        active = self._credentials(mac, "active", st.desired_hash)
        pending = self._credentials(mac, "pending", st.pending_hash) if st.pending_hash else {}
        now = utcnow()
        how = None
        auth_mode = dev.settings.policy.auth
        if req.client_cert is not None and auth_mode in ("mtls", "either"):
            if mac in cert_macs(req.client_cert):
                how = "client certificate"
            else:
                return unauthorized("client certificate names another device", mac)
        elif auth_mode == "mtls":
            return unauthorized("site policy requires a client certificate", mac)
        if how is None and cred is not None:
            stale = False
            if cred.username == mac:
                for creds in (active, pending):
                    p = creds.get("provisioning")
                    if p is None:
                        continue
                    ok, st_ = self.digest.verify(cred, req.method, req.path, p.reveal(), req.ip)
                    stale = stale or st_
                    if ok:
                        how = "digest (pending credentials)" if creds is pending else "digest"
                        break
            else:
                self.digest.verify(cred, req.method, req.path, DUMMY.reveal(), req.ip)
            if how is None:
                return unauthorized("digest credentials refused" + (" (stale nonce: a fresh challenge, the "
                                                                     "nonce was old, replayed or another "
                                                                     "address's)" if stale else ""), mac, stale)
        ua_problem = self._ua_problem(m.vendor, mac, req.user_agent, dev.model)
        if how is None:
            if not allow_enrolment:  # the first, anonymous PUT of the digest dance (counted, then cleared)
                return unauthorized("uploads need the device's own credentials", mac)
            if not m.spec.trigger:  # enrolment hands out the credentials with the file that carries them
                return unauthorized(f"enrolment happens with {m.vendor.trigger.filename_for(mac=mac)}; this "
                                    f"file needs the credentials that one hands out", mac)
            if st.state not in ("enrolling", "reset-pending"):
                # a phone's first, anonymous request of the digest dance (counted; its success clears it),
                # or another device claiming this identity: a conflict unless the retry authenticates
                if ((req.ip != st.last_ip or (req.user_agent or "")[:255] != (st.last_ua or ""))
                        and st.enrolled_at is not None and not ua_problem and dev.settings.in_site(req.ip)):
                    self._suspect(mac, req)
                return unauthorized("no credentials and the enrolment window is closed", mac)
            if st.enrol_expires_at is None or now > st.enrol_expires_at:
                return unauthorized("enrolment window expired; reopen it with adopt/reset", mac)
            if not dev.settings.in_site(req.ip):
                return unauthorized(f"enrolment refused: {req.ip} is outside site {dev.site}'s networks", mac)
            if st.enrol_ip and req.ip != st.enrol_ip:
                return unauthorized(f"enrolment refused: the window is open for {st.enrol_ip} only (the "
                                    f"device's last address, kept by a remote reset)", mac)
            if ua_problem:
                return unauthorized(f"enrolment refused: {ua_problem}", mac)
            refusal = self._registrar_refusal(dev)  # before the claim: a refused enrolment stays open
            if refusal:
                return refusal
            claimed = store.claim_enrolment(mac, req.ip, now)
            self._forget(mac)
            if not claimed:
                return unauthorized("enrolment already used by another request", mac)
            store.audit("device", "device.enrolled", mac, f"first fetch from {req.ip} in the enrolment window",
                        {"file": req.filename, "user_agent": (req.user_agent or "")[:200]})
            how = "enrolment (credentials handed out)"
        elif ua_problem:
            return unauthorized(ua_problem, mac)
        elif st.enrolled_at is not None and not dev.settings.in_site(req.ip):
            # Kazoo-style: valid credentials from elsewhere mean stolen credentials or a moved phone
            self._lock_device(dev, req.ip)
            return unauthorized(f"device locked: authenticated request from {req.ip}, outside site {dev.site}", mac)

        return how, st, active, pending, now

    def _registrar_refusal(self, dev: ResolvedDevice) -> Reply | None:
        """A config whose SIP passwords the registrar does not hold is not handed out: the phone could not
        register with it. 503 (the device retries), unless the inventory says `serve_unsynced: true`."""
        reg = dev.settings.registrar
        if reg.kind in (None, "none"):
            return None
        problem = registrar.ensure_held(self.rt, dev)
        if problem is None:
            return None
        if reg.serve_unsynced:
            log.warning("registrar does not hold the SIP passwords of %s (%s); served anyway (serve_unsynced)",
                        dev.mac, problem)
            return None
        log.error("config of %s not handed out: its registrar does not hold its SIP passwords (%s); "
                  "`provisioner registrar sync` once the registrar is back", dev.mac, problem)
        return Reply(503, b"registrar not ready, retry later\n", reason=f"registrar does not hold the SIP "
                     f"passwords of this config ({problem})"[:255], mac=dev.mac, retry_after=60)

    # ---- HTTPS -----------------------------------------------------------------------------------

    def _https(self, req: Request) -> Reply:
        early, m, dev = self._identify(req)
        if early:
            return early
        if m.mac is None:
            body = self._common(m, req.ip, m.spec.template)
            return Reply(200, body, reason=f"common {m.vendor.name} file", digest=sha256(body))

        auth = self._authorize(req, m, dev, allow_enrolment=True)
        if isinstance(auth, Reply):
            return auth
        how, st, active, pending, now = auth
        store = self.rt.store
        mac = dev.mac
        creds, version = (pending, st.pending_hash) if st.pending_hash else (active, st.desired_hash)
        if st.pending_hash and m.spec.trigger and not registrar.prepare_switch(self.rt, dev, pending):
            # the registrar does not know the new passwords: the device keeps what works
            creds, version = active, st.desired_hash
            how += "; registrar refused the new generation, current config kept"
        if (m.spec.trigger and creds is active and version != st.served_hash
                and not how.startswith("enrolment")):  # a config it does not hold yet (enrolment checked above)
            refusal = self._registrar_refusal(dev)
            if refusal:
                return refusal
        body = self._device_body(m, dev, creds, version)
        digest = sha256(body)
        if m.spec.trigger:
            self._mark_served(st, digest, req, now)
            if st.pending_hash == digest and store.promote_pending(mac, digest, now):
                self._forget(mac)
                log.info("device %s fetched the config of its new credential generation", mac)
            # a firmware offer is added to what is served, not to the config's hash (provisioner/firmware/)
            body = self.firmware.overlay(req, m, dev, creds, body)
        return Reply(200, body, reason=f"served by {how}", mac=mac, digest=digest)

    # ---- uploads (local overrides) -----------------------------------------------------------------

    def _upload(self, req: Request) -> Reply:
        if not SAFE_NAME.match(req.filename):
            return not_found("file name refused (not a plain file name)")
        ignored = self.catalog.match_not_served(req.filename, req.user_agent, "PUT")
        if ignored is not None:
            return not_served(*ignored)
        inv = self.rt.inventory
        matches = self.catalog.match_upload(req.filename)
        if not matches:
            return not_found("no vendor profile lets devices upload this file name")
        vendor, mac = next(((v, mc) for v, mc in matches if (d := inv.device(mc)) and d.vendor == v.name), matches[0])
        dev = inv.device(mac)
        if dev is not None and dev.vendor != vendor.name:
            dev = None
        auth = self._authorize(req, FileMatch(vendor, vendor.trigger, mac, None), dev, allow_enrolment=False)
        if isinstance(auth, Reply):
            return auth
        if len(req.body) > MAX_UPLOAD:
            return Reply(413, b"too large\n", reason=f"upload over {MAX_UPLOAD} bytes refused", mac=mac)
        digest = self.rt.store.add_upload(mac, req.filename, req.body, req.ip, utcnow())
        return Reply(201, b"stored\n", reason=f"upload stored ({auth[0]})", mac=mac, digest=digest)

    # ---- TFTP ------------------------------------------------------------------------------------

    def _tftp(self, req: Request) -> Reply:
        req.filename = req.filename.lstrip("/")
        early, m, dev = self._identify(req)
        if early:
            return early
        settings = self.rt.inventory.settings_for_ip(req.ip)
        if settings.policy.tftp == "off":
            return Reply(404, reason="TFTP is off for this network")
        if m.mac is None:
            body = self._common(m, req.ip, m.spec.tftp_template or m.spec.template)
            return Reply(200, body, reason=f"common {m.vendor.name} file", digest=sha256(body))
        if dev is not None and dev.settings.policy.tftp == "full" and dev.settings.in_site(req.ip):
            st = self.rt.store.device(dev.mac)
            if st is not None and st.state not in ("locked", "decommissioned") and not st.pending_hash:
                # no rotation over TFTP: the registrar switch needs the HTTPS path
                refusal = self._registrar_refusal(dev) if st.served_hash != st.desired_hash else None
                if refusal:
                    return refusal
                body = self._device_body(m, dev, self._credentials(dev.mac, "active", st.desired_hash),
                                         st.desired_hash)
                if m.spec.trigger:
                    self._mark_served(st, sha256(body), req, utcnow())
                return Reply(200, body, reason="full config over TFTP (site policy tftp: full)", mac=dev.mac,
                             digest=sha256(body))
        if not m.spec.tftp_template:
            return Reply(404, reason="no TFTP bootstrap for this file", mac=dev.mac if dev else None)
        # the same secret-free bootstrap for every MAC, known or not
        body = self._common(m, req.ip, m.spec.tftp_template)
        return Reply(200, body, reason="bootstrap (secret-free)", mac=dev.mac if dev else None,
                     digest=sha256(body))


def load_ca(home: Path) -> bytes:
    return (home / "tls" / "ca.pem").read_bytes()
