"""The request pipeline's firmware hook (serve/pipeline.py calls it; its answers go through the pipeline's
guard, metrics and fetch log like any other).

How a request for an image is tied to a device:
- the path is /fw/<token>/<file>, the token an unguessable per-image string (no credentials in the URL);
  an unknown token is refused and counted against the source like any bad request;
- the requester must be a device that was offered this image: over HTTPS the User-Agent must be the image's
  vendor and, when it carries a MAC (Yealink, Snom, Grandstream, Fanvil, Gigaset), that MAC's attempt must
  exist; when it carries none (Polycom, Cisco SPA525G, old firmware, and every TFTP request), the source
  address must be the one the device fetched its offer from. A User-Agent naming another model than the
  image's, an unknown client, a source outside the device's site: refused and counted;
- a device that was offered the image but is not to get it now (rollout paused or halted, attempt failed,
  past the window and its grace hour) gets a 404 that is not counted: it is a phone doing what its config
  said, and must not get its address banned;
- the file must still hash to its checksum (library.VERIFIED), else 503, not counted, and an audit entry.
"""

from __future__ import annotations

import logging
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from provisioner.desired import common_context, device_context
from provisioner.firmware import versions
from provisioner.firmware.library import VERIFIED, Image
from provisioner.firmware.policy import GRACE_AFTER_WINDOW
from provisioner.firmware.rollout import OPEN, Rollouts, offer_context
from provisioner.render import sha256
from provisioner.serve.pipeline import SAFE_NAME, Reply, Request, not_found, unauthorized
from provisioner.store import utcnow
from provisioner.vendors import FileMatch, name_regex

log = logging.getLogger("provisioner.firmware")

PREFIX = "fw/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,43}\Z")


@dataclass
class FileReply(Reply):
    """An image to stream: the HTTP layer answers Range and HEAD from it, TFTP reads it through `open()`."""

    path: Path | None = None
    size: int = 0
    etag: str = ""
    on_complete: Callable[[], None] | None = None  # the whole image (its last byte) went out

    def open(self):
        return _TrackedFile(self.path, self.on_complete)


class _TrackedFile:
    """The image as tftpy reads it; reaching its end and closing it is a completed fetch."""

    def __init__(self, path: Path, on_complete):
        self._f = open(path, "rb")
        self._done = on_complete
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if n < 0 or len(data) < n:
            self._eof = True
        return data

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        if self._eof and self._done is not None:
            try:
                self._done()
            except Exception:
                log.exception("recording a completed TFTP firmware fetch")


def quiet(status: int, reason: str, mac: str | None = None) -> Reply:
    """A refusal that does not count against the source (a known device doing what its config says)."""
    return Reply(status, b"not found\n" if status == 404 else b"unavailable\n", reason=reason[:255], mac=mac,
                 failure=False)


class FirmwareService:
    def __init__(self, pipeline):
        self.p = pipeline
        self.rt = pipeline.rt
        self.rollouts = Rollouts(self.rt, notify=pipeline.alerts.notify)
        self._offer_files = [(v, v.firmware.offer_file, name_regex(v.firmware.offer_file.name))
                             for v in self.rt.catalog.vendors.values()
                             if v.firmware.supported and v.firmware.offer_file is not None]
        self._alerted: set[str] = set()

    # ---- the pipeline's entry points --------------------------------------------------------------

    def handle(self, req: Request) -> Reply | None:
        """An answer for the firmware module's own requests; None for everything else."""
        name = req.filename
        if name.startswith(PREFIX) or name.startswith("/" + PREFIX):
            return self._image(req, name.lstrip("/"))
        if self._offer_files and req.method in ("GET", "HEAD") and req.user_agent:
            return self._offer_file(req)
        return None

    def overlay(self, req: Request, m: FileMatch, dev, creds: dict, body: bytes) -> bytes:
        """The device's config, with its vendor's firmware keys when it is offered an image now. The fetch's
        User-Agent also tells what the device runs, which settles its attempts (upgraded / failed)."""
        if dev.settings.firmware is None or not m.vendor.firmware.supported:
            return body
        try:
            vendor = m.vendor
            now = utcnow()
            current = self._reported(vendor, req)
            self.rollouts.report(dev, vendor, current, now)
            self.rollouts.maybe_evaluate(now)
            if vendor.firmware.offer_file is not None:
                return body  # the offer travels in another file (Polycom's per-phone master)
            d = self.rollouts.decide(dev, vendor, current, now)
            if d.offer is None:
                return body
            ctx = device_context(dev, vendor, creds)
            ctx.values["firmware"] = d.offer.ctx
            _, out = self.rt.renderer.device_file(ctx, m.spec)
            self.rollouts.record_offer(dev, d, current, req.ip, now)
            return out
        except Exception:  # the firmware offer never stands between a device and its config
            log.exception("firmware offer for %s left out", dev.mac)
            return body

    # ---- helpers ----------------------------------------------------------------------------------

    def _reported(self, vendor, req: Request) -> str | None:
        info = self.rt.catalog.parse_user_agent(req.user_agent)
        if info is None or info.vendor != vendor.name:
            return None
        return versions.from_user_agent(vendor.firmware, req.user_agent, info.firmware)

    def _offer_file(self, req: Request) -> Reply | None:
        """Polycom: the per-phone master <mac>.cfg naming the image, for a device offered one now (with its
        digest credentials); any other request for that name goes on to the pipeline (404, not served)."""
        for vendor, spec, rx in self._offer_files:
            hit = rx.match(req.filename)
            if not hit:
                continue
            info = self.rt.catalog.parse_user_agent(req.user_agent)
            if info is None or info.vendor != vendor.name:
                continue
            mac = (hit.groupdict().get("mac") or "").lower()
            dev = self.rt.inventory.device(mac)
            if dev is None or dev.vendor != vendor.name or dev.settings.firmware is None:
                return None
            now = utcnow()
            current = self._reported(vendor, req)
            self.rollouts.report(dev, vendor, current, now)
            d = self.rollouts.decide(dev, vendor, current, now)
            if d.offer is None:
                return None
            auth = self.p._authorize(req, FileMatch(vendor, vendor.trigger, mac, None), dev, allow_enrolment=False)
            if isinstance(auth, Reply):
                if auth.failure:
                    return auth
                return unauthorized("the per-phone master with a firmware offer needs the device's credentials",
                                    mac, failure=False)
            ctx = common_context(vendor, dev.settings, dev.model)
            ctx["firmware"] = d.offer.ctx
            body = self.rt.renderer.render(vendor, spec.template, ctx, f"device {mac}", spec.xml_root)
            self.rollouts.record_offer(dev, d, current, req.ip, now)
            return Reply(200, body, reason=f"per-phone master offering firmware {d.target} ({auth[0]})", mac=mac,
                         digest=sha256(body))
        return None

    def _image(self, req: Request, name: str) -> Reply:
        parts = name.split("/")
        if len(parts) != 3 or not _TOKEN.match(parts[1]) or not SAFE_NAME.match(parts[2]):
            return not_found("firmware path refused (expected /fw/<token>/<file>)")
        image = self.rollouts.by_token(parts[1])
        if image is None:
            return not_found("no firmware image under this path")
        file = parts[2]
        req.filename = f"fw/{image.id}/{file}"  # the fetch log names the image, not its token
        vendor = self.rt.catalog.get(image.vendor)
        found = self._requester(req, image, vendor)
        if isinstance(found, Reply):
            return found
        dev, att = found
        if not dev.settings.in_site(req.ip):
            return not_found(f"firmware refused: {req.ip} is outside site {dev.site}'s networks", dev.mac)
        st = self.p._state(dev.mac)
        if st is None or st.state in ("locked", "decommissioned"):
            return not_found(f"firmware refused: device is {st.state if st else 'not in the store'}", dev.mac)
        if att.result == "failed":
            return quiet(404, f"firmware {image.version} not offered: this attempt failed ({att.reason})", dev.mac)
        target = self.rollouts.target(dev, vendor)
        if target is None or target[2] is None or target[2].id != image.id:
            return quiet(404, f"firmware {image.version} is no longer this device's target (site policy)", dev.mac)
        held = self.rollouts.held(dev.site, dev.vendor, dev.model, image.version)
        if held:
            return quiet(404, f"firmware {image.version} not offered now: rollout {held[1]}", dev.mac)
        runs = self._reported(vendor, req) if req.transport == "https" else None
        if runs is not None and versions.same(runs, image.version):
            # a phone keeps the URL it was given; on the target already, it has nothing to download
            return quiet(404, f"firmware {image.version}: the device already runs it", dev.mac)
        local = utcnow().astimezone(zoneinfo.ZoneInfo(dev.settings.timezone))
        if not dev.settings.rollout.in_window(local, GRACE_AFTER_WINDOW):
            return quiet(404, f"firmware {image.version} not served outside the window "
                              f"{dev.settings.rollout.window} and its grace hour", dev.mac)
        status_file = vendor.firmware.status_file
        if status_file is not None and file == status_file.name:
            ctx = common_context(vendor, dev.settings, dev.model)
            ctx["firmware"] = offer_context(dev, vendor.firmware, image) or {}
            body = self.rt.renderer.render(vendor, status_file.template, ctx, f"device {dev.mac}",
                                           status_file.xml_root)
            return Reply(200, body, "text/xml; charset=utf-8", reason=f"firmware settings for {image.version}",
                         mac=dev.mac, digest=sha256(body))
        problem = VERIFIED.problem(self.rt.home, image)
        if problem:
            self._broken(image, problem)
            return quiet(503, f"firmware image {image.id} refused: {problem}", dev.mac)
        mac, ip = dev.mac, req.ip
        self.rollouts.record_fetch(mac, image, ip, complete=False)
        return FileReply(200, b"", "application/octet-stream", reason=f"firmware {image.version} ({image.size} bytes)",
                         mac=mac, digest=image.sha256, path=image.path(self.rt.home), size=image.size,
                         etag=f'"{image.sha256}"',
                         on_complete=lambda: self.rollouts.record_fetch(mac, image, ip, complete=True))

    def _requester(self, req: Request, image: Image, vendor):
        """(device, attempt) of the device asking for this image, or the refusal."""
        info = None
        if req.transport == "https":
            info = self.rt.catalog.parse_user_agent(req.user_agent)
            if info is None or info.vendor != image.vendor:
                return not_found(f"firmware refused: the User-Agent is not a {vendor.display_name} phone")
            if info.model and info.model in vendor.models and info.model not in image.models:
                return not_found(f"firmware refused: {info.model} is not a model this image is for "
                                 f"({', '.join(image.models)})", info.mac)
        inv = self.rt.inventory
        if info is not None and info.mac:
            dev = inv.device(info.mac)
            att = self.rollouts.attempt(info.mac, image.id) if dev is not None else None
            if dev is None or dev.vendor != image.vendor:
                return not_found("firmware refused: no such device in the inventory", info.mac)
            if dev.model not in image.models:
                return not_found(f"firmware refused: {dev.mac} is a {dev.model}, the image is for "
                                 f"{', '.join(image.models)}", dev.mac)
            if att is None:
                return not_found(f"firmware refused: {image.version} was never offered to {dev.mac}", dev.mac)
            return dev, att
        # no MAC to go by: the device that fetched this offer from this address (the latest, behind a NAT)
        cands = []
        for mac in self._offered_from(image, req.ip):
            dev = inv.device(mac)
            att = self.rollouts.attempt(mac, image.id)
            if dev is not None and att is not None and dev.model in image.models:
                cands.append((att.offered_at, dev, att))
        if not cands:
            return not_found(f"firmware refused: no device was offered {image.version} from {req.ip}")
        cands.sort(key=lambda c: (c[2].result in OPEN, c[0]))
        return cands[-1][1], cands[-1][2]

    def _offered_from(self, image: Image, ip: str) -> list[str]:
        import sqlalchemy as sa

        from provisioner.store.firmware_schema import firmware_attempts as t
        with self.rt.store.engine.connect() as c:
            return list(c.execute(sa.select(t.c.mac).where(t.c.image_id == image.id, t.c.offer_ip == ip)).scalars())

    def _broken(self, image: Image, problem: str) -> None:
        if image.id in self._alerted:
            return
        self._alerted.add(image.id)
        log.error("firmware image %s refused: %s", image.id, problem)
        try:
            self.rt.store.audit("firmware", "firmware.checksum-mismatch", None, problem,
                                {"image": image.id, "version": image.version, "sha256": image.sha256})
        except Exception:
            log.exception("could not write the checksum mismatch to the audit log")
        self.p.alerts.notify("firmware.checksum-mismatch", image.id, problem, version=image.version)
