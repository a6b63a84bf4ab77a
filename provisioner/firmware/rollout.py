"""Staged rollouts: which device is offered which image and when, what each device did with it, and when a
rollout stops by itself.

A device is offered its target image (the site policy's version, or the newest approved image for its
model) only when all of these hold, checked on each fetch of its config:
- it reported its running version (User-Agent) and that version is older than the target (a downgrade only
  with `rollout.allow_downgrade` and a family that installs older images);
- the rollout of its site and model is neither paused (helpdesk) nor halted (failure ratio passed);
- it is selected: the site's devices of that model are ranked by a hash of (site, vendor, model, target,
  MAC) and the first ceil(n x percent / 100) are taken, so the same devices stay selected when the percent
  grows, each model gets at least one canary, and every new target picks its own canaries; a device that
  was offered the image stays selected;
- the site's local time is inside `rollout.window`;
- the image still hashes to its recorded checksum.

Then its attempt is tracked in the store: offered -> fetched (the whole image went out) -> upgraded (it
came back reporting the target) or failed (it came back with the old version `settle_seconds` or more after
the fetch, or never came back within `timeout_minutes`). When failed / fetched passes `max_failures` for a
site's model and target, that rollout halts: no more offers until `firmware resume`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
import zoneinfo
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from provisioner import metrics
from provisioner.firmware import versions
from provisioner.firmware.library import VERIFIED, Image, images as load_images
from provisioner.firmware.policy import KEEP, LATEST, target_for
from provisioner.store import as_utc, utcnow
from provisioner.store.firmware_schema import firmware_attempts, firmware_rollouts

log = logging.getLogger("provisioner.firmware")

OPEN = ("offered", "fetched")


@dataclass(frozen=True)
class Offer:
    image: Image
    ctx: dict  # the templates' `firmware` context


@dataclass(frozen=True)
class Decision:
    """What a device gets now, and why. state: offer | upgraded | not-selected | outside-window | paused |
    halted | failed | newer | unknown-version | no-image | not-managed | unsupported | image-broken | no-url"""

    state: str
    why: str
    target: str | None = None
    image: Image | None = None
    key: str | None = None  # the policy key that matched (model, family or "*")
    offer: Offer | None = None


def scope_of(vendor: str, model: str) -> str:
    return f"{vendor}/{model}"


def _rank(site: str, vendor: str, model: str, version: str, mac: str) -> str:
    return hashlib.sha256(f"{site}|{vendor}|{model}|{version}|{mac}".encode()).hexdigest()


def offer_context(dev, facts, image: Image) -> dict | None:
    """URLs of the image for this device (None when its transport is not possible here)."""
    transport = dev.settings.rollout.transport
    if transport not in facts.transports:
        return None
    if transport == "tftp":
        if dev.settings.policy.tftp == "off":
            return None
        root = f"{dev.settings.tftp_url}fw/{image.token}/"
    else:
        u = urlsplit(dev.settings.provisioning_url)
        root = f"{u.scheme}://{u.netloc}/fw/{image.token}/"
    ctx = {"url": root + image.filename, "dir_url": root, "server_path": root.split("://", 1)[1].rstrip("/"),
           "version": image.version, "filename": image.filename, "transport": transport}
    if facts.status_file is not None:
        ctx["status_url"] = root + facts.status_file.name
    if facts.max_url_length and len(ctx["url"]) > facts.max_url_length:
        return None
    return ctx


@dataclass
class _Cache:
    at: float = 0.0
    value: object = None


@dataclass
class Rollouts:
    """Decisions and attempt records for one process; the state lives in the store (replicas share it), and
    what is read per request is cached for a second or two."""

    rt: object
    notify: object = None  # Alerts.notify(event, target, why, **details), when serving
    images_ttl: float = 2.0
    state_ttl: float = 1.0
    attempts_ttl: float = 2.0
    evaluate_every: float = 10.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _images: _Cache = field(default_factory=_Cache)
    _states: _Cache = field(default_factory=_Cache)
    _attempts: dict = field(default_factory=dict)
    _ranks: dict = field(default_factory=dict)
    _ranks_for: object = None  # the inventory the ranks were computed from (a reload starts afresh)
    _evaluated: float = 0.0

    # ---- what is in the library and the rollout table -------------------------------------------------

    def images(self, fresh: bool = False) -> list[Image]:
        now = time.monotonic()
        if fresh or self._images.value is None or now - self._images.at > self.images_ttl:
            self._images = _Cache(now, load_images(self.rt.store))
        return self._images.value

    def by_token(self, token: str) -> Image | None:
        hit = next((i for i in self.images() if i.token == token), None)
        if hit is None and time.monotonic() - self._images.at > 0.2:  # added a moment ago by the CLI?
            hit = next((i for i in self.images(fresh=True) if i.token == token), None)
        return hit

    def states(self, fresh: bool = False) -> list:
        now = time.monotonic()
        if fresh or self._states.value is None or now - self._states.at > self.state_ttl:
            with self.rt.store.engine.connect() as c:
                self._states = _Cache(now, c.execute(sa.select(firmware_rollouts)).all())
        return self._states.value

    def held(self, site: str, vendor: str, model: str, target: str) -> tuple[str, str] | None:
        """("paused"|"halted", why) when the rollout of this site, model and target must not offer."""
        for r in self.states():
            if r.site != site:
                continue
            if r.state == "paused" and r.scope in ("*", vendor, scope_of(vendor, model)):
                return "paused", f"paused by {r.actor}: {r.reason}"
            if r.state == "halted" and r.scope == scope_of(vendor, model) and versions.same(r.target, target):
                return "halted", f"halted: {r.reason}"
        return None

    # ---- targets and selection --------------------------------------------------------------------

    def target(self, dev, vendor) -> tuple[str, str, Image | None] | None:
        """(policy target, policy key, image) for a device; None when the policy does not cover it."""
        family = vendor.models[dev.model].family if dev.model in vendor.models else None
        t = target_for(dev.settings.firmware, dev.vendor, dev.model, family)
        if t is None:
            return None
        spec, key = t
        if spec == KEEP:
            return spec, key, None
        cands = [i for i in self.images() if i.vendor == dev.vendor and dev.model in i.models]
        if spec == LATEST:
            cands = [i for i in cands if i.approved]
        else:
            cands = [i for i in cands if versions.same(i.version, spec)]
        best = max(cands, key=lambda i: (versions.key(i.version), i.approved, i.added_at), default=None)
        return spec, key, best

    def selected(self, dev, image: Image) -> bool:
        inv = self.rt.inventory
        if self._ranks_for is not inv:
            self._ranks, self._ranks_for = {}, inv
        k = (dev.site, dev.vendor, dev.model, image.version)
        order = self._ranks.get(k)
        if order is None:
            macs = [d.mac for d in inv.resolved.values()
                    if d.site == dev.site and d.vendor == dev.vendor and d.model == dev.model]
            macs.sort(key=lambda m: _rank(dev.site, dev.vendor, dev.model, image.version, m))
            order = {m: i for i, m in enumerate(macs)}
            if len(self._ranks) > 4096:
                self._ranks.clear()
            self._ranks[k] = order
        rank = order.get(dev.mac)
        return rank is not None and rank < dev.settings.rollout.selected_count(len(order))

    def decide(self, dev, vendor, current: str | None, now: dt.datetime, window: bool = True) -> Decision:
        facts = vendor.firmware
        t = self.target(dev, vendor)
        if t is None:
            return Decision("not-managed", "no firmware policy covers this device")
        spec, key, image = t
        if spec == KEEP:
            return Decision("not-managed", "the policy says keep: the device keeps what it runs", key=key)
        if not facts.applies_to(dev.model):
            return Decision("unsupported", f"{vendor.display_name} {dev.model}: "
                                           f"{facts.why or 'no confirmed upgrade mechanism'}", key=key)
        if image is None:
            what = "no approved image" if spec == LATEST else f"no image of version {spec}"
            return Decision("no-image", f"{what} for {vendor.display_name} {dev.model} in the library", key=key)
        target = image.version
        base = dict(target=target, image=image, key=key)
        if current is None:
            return Decision("unknown-version", "the device has not reported its firmware version yet", **base)
        if versions.same(current, target):
            return Decision("upgraded", f"runs {current}", **base)
        if versions.older(target, current):
            r = dev.settings.rollout
            if not r.allow_downgrade:
                return Decision("newer", f"runs {current}, newer than {target}; no downgrade unless "
                                         f"rollout.allow_downgrade", **base)
            if not facts.downgrade:
                return Decision("newer", f"runs {current}, newer than {target}; {vendor.display_name} does not "
                                         f"install an older image", **base)
        held = self.held(dev.site, dev.vendor, dev.model, target)
        if held:
            return Decision(held[0], held[1], **base)
        att = self.attempt(dev.mac, image.id)
        if att is not None and att.result == "failed":
            return Decision("failed", att.reason or "failed", **base)
        if att is None and not self.selected(dev, image):
            return Decision("not-selected", f"not among the {dev.settings.rollout.percent:g} % of the site's "
                                            f"{dev.model} devices this rollout takes", **base)
        if window:
            local = now.astimezone(zoneinfo.ZoneInfo(dev.settings.timezone))
            if not dev.settings.rollout.in_window(local):
                return Decision("outside-window", f"outside the window {dev.settings.rollout.window} "
                                                  f"({dev.settings.timezone}, now {local:%H:%M})", **base)
        problem = VERIFIED.problem(self.rt.home, image)
        if problem:
            return Decision("image-broken", problem, **base)
        ctx = offer_context(dev, facts, image)
        if ctx is None:
            return Decision("no-url", f"no {dev.settings.rollout.transport} URL of this image fits "
                                      f"{vendor.display_name} here (transport, TFTP policy or URL length)", **base)
        return Decision("offer", f"offered {target} (runs {current})", offer=Offer(image, ctx), **base)

    # ---- attempts -------------------------------------------------------------------------------------

    def _mac_attempts(self, mac: str, fresh: bool = False) -> dict:
        now = time.monotonic()
        hit = self._attempts.get(mac)
        if fresh or hit is None or now - hit[0] > self.attempts_ttl:
            with self.rt.store.engine.connect() as c:
                rows = c.execute(sa.select(firmware_attempts).where(firmware_attempts.c.mac == mac)).all()
            if len(self._attempts) > 50_000:
                self._attempts.clear()
            hit = self._attempts[mac] = (now, {r.image_id: r for r in rows})
        return hit[1]

    def preload(self, macs) -> None:
        """Every attempt of these devices in one query (status and audit walk the whole fleet)."""
        with self.rt.store.engine.connect() as c:
            rows = c.execute(sa.select(firmware_attempts)).all()
        now = time.monotonic()
        by_mac: dict = {m: {} for m in macs}
        for r in rows:
            if r.mac in by_mac:
                by_mac[r.mac][r.image_id] = r
        for m, atts in by_mac.items():
            self._attempts[m] = (now, atts)

    def attempt(self, mac: str, image_id: str):
        return self._mac_attempts(mac).get(image_id)

    def _forget(self, mac: str) -> None:
        self._attempts.pop(mac, None)

    def record_offer(self, dev, d: Decision, current: str | None, ip: str, now: dt.datetime) -> None:
        image = d.image
        att = self.attempt(dev.mac, image.id)
        if att is not None and att.offer_ip == ip:
            return
        store = self.rt.store
        try:
            with store.write() as c:
                if att is None:
                    c.execute(firmware_attempts.insert().values(
                        mac=dev.mac, image_id=image.id, site=dev.site, vendor=dev.vendor, model=dev.model,
                        target=image.version, from_version=current, offered_at=now, offer_ip=ip, result="offered",
                        updated_at=now))
                else:
                    c.execute(firmware_attempts.update().where(firmware_attempts.c.mac == dev.mac,
                                                               firmware_attempts.c.image_id == image.id)
                              .values(offer_ip=ip, updated_at=now))
        except IntegrityError:
            pass  # another replica recorded the same offer
        self._forget(dev.mac)
        if att is None:
            metrics.inc("provisioner_firmware_offers_total")
            log.info("firmware %s offered to %s (runs %s)", image.version, dev.mac, current)

    def record_fetch(self, mac: str, image: Image, ip: str, complete: bool) -> None:
        """The image (or its last byte) went out to this device."""
        now = utcnow()
        store = self.rt.store
        with store.write() as c:
            att = c.execute(sa.select(firmware_attempts).where(firmware_attempts.c.mac == mac,
                                                               firmware_attempts.c.image_id == image.id)).first()
            if att is None:
                return
            values = {"updated_at": now}
            if att.fetch_started_at is None:
                values["fetch_started_at"] = now
            first = complete and att.result in OPEN and att.fetched_at is None
            if complete and att.result in OPEN:
                values.update(fetched_at=now, result="fetched", reason=None)
            c.execute(firmware_attempts.update().where(firmware_attempts.c.mac == mac,
                                                       firmware_attempts.c.image_id == image.id).values(**values))
            if first:
                store.append_audit(c, "device", "firmware.fetched", mac,
                                   f"fetched firmware {image.version} ({image.size} bytes) from {ip}",
                                   {"image": image.id, "version": image.version}, now)
        self._forget(mac)
        if complete:
            metrics.inc("provisioner_firmware_fetches_total")

    def report(self, dev, vendor, version: str | None, now: dt.datetime) -> None:
        """The device fetched its config reporting `version`: settle its open attempts."""
        if version is None:
            return
        open_ = [a for a in self._mac_attempts(dev.mac).values() if a.result in OPEN]
        if not open_:
            return
        settle = dt.timedelta(seconds=dev.settings.rollout.settle_seconds)
        changed = []
        for a in open_:
            if versions.same(version, a.target):
                changed.append((a, "upgraded", f"came back with {version}"))
            elif a.result == "fetched" and now - as_utc(a.fetched_at) >= settle:
                changed.append((a, "failed", f"fetched {a.target} but came back with {version}"))
            elif a.reported_version != version or a.reported_at is None \
                    or now - as_utc(a.reported_at) > dt.timedelta(minutes=5):
                changed.append((a, None, None))
        if not changed:
            return
        halts = []
        with self.rt.store.write() as c:
            for a, result, why in changed:
                values = {"reported_version": version[:64], "reported_at": now, "updated_at": now}
                if result:
                    values.update(result=result, reason=why)
                n = c.execute(firmware_attempts.update().where(
                    firmware_attempts.c.mac == a.mac, firmware_attempts.c.image_id == a.image_id,
                    firmware_attempts.c.result.in_(OPEN)).values(**values)).rowcount
                if n and result:
                    self.rt.store.append_audit(c, "device", f"firmware.{result}", a.mac, why,
                                               {"image": a.image_id, "target": a.target, "version": version}, now)
                    metrics.inc(f"provisioner_firmware_{result}_total")
                    log.log(logging.WARNING if result == "failed" else logging.INFO, "firmware %s on %s: %s",
                            result, a.mac, why)
                    if result == "failed":
                        halts.append((a.site, a.vendor, a.model, a.target))
        self._forget(dev.mac)
        for h in set(halts):
            self.check_halt(*h, now=now)

    def maybe_evaluate(self, now: dt.datetime) -> None:
        if time.monotonic() - self._evaluated >= self.evaluate_every:
            self._evaluated = time.monotonic()
            self.evaluate(now)

    def evaluate(self, now: dt.datetime | None = None) -> int:
        """Attempts whose device fetched the image and never came back in time are failed; halts follow."""
        now = now or utcnow()
        inv = self.rt.inventory
        with self.rt.store.engine.connect() as c:
            rows = c.execute(sa.select(firmware_attempts).where(firmware_attempts.c.result == "fetched")).all()
        late = []
        for a in rows:
            dev = inv.device(a.mac)
            settings = dev.settings if dev is not None else inv.site_settings.get(a.site)
            timeout = dt.timedelta(minutes=settings.rollout.timeout_minutes if settings else 60)
            if now - as_utc(a.fetched_at) >= timeout:
                late.append(a)
        if not late:
            return 0
        halts = set()
        with self.rt.store.write() as c:
            for a in late:
                why = (f"fetched {a.target} but came back with {a.reported_version}"
                       if a.reported_version and a.reported_at and as_utc(a.reported_at) > as_utc(a.fetched_at)
                       else f"fetched {a.target} and never came back")
                n = c.execute(firmware_attempts.update().where(
                    firmware_attempts.c.mac == a.mac, firmware_attempts.c.image_id == a.image_id,
                    firmware_attempts.c.result == "fetched").values(result="failed", reason=why, updated_at=now)).rowcount
                if n:
                    self.rt.store.append_audit(c, "firmware", "firmware.failed", a.mac, why,
                                               {"image": a.image_id, "target": a.target}, now)
                    metrics.inc("provisioner_firmware_failed_total")
                    halts.add((a.site, a.vendor, a.model, a.target))
                self._forget(a.mac)
        for h in halts:
            self.check_halt(*h, now=now)
        return len(late)

    def counts(self, site: str, vendor: str, model: str, target: str) -> dict[str, int]:
        """Attempts of this site's model and target."""
        t = firmware_attempts
        q = sa.select(t.c.result, t.c.fetched_at).where(t.c.site == site, t.c.vendor == vendor, t.c.model == model,
                                                        t.c.target == target)
        with self.rt.store.engine.connect() as c:
            rows = c.execute(q).all()
        out = {"offered": len(rows), "fetched": sum(1 for r in rows if r.fetched_at is not None),
               "failed": sum(1 for r in rows if r.result == "failed" and r.fetched_at is not None),
               "upgraded": sum(1 for r in rows if r.result == "upgraded")}
        return out

    def check_halt(self, site: str, vendor: str, model: str, target: str, now: dt.datetime | None = None) -> bool:
        """Halt the rollout of this site's model and target when failed / fetched passes max_failures."""
        now = now or utcnow()
        settings = self.rt.inventory.site_settings.get(site)
        limit = settings.rollout.max_failures if settings else 0.2
        n = self.counts(site, vendor, model, target)
        if not n["fetched"] or n["failed"] / n["fetched"] <= limit:
            return False
        why = (f"{n['failed']} of {n['fetched']} {vendor} {model} that fetched {target} failed "
               f"({100 * n['failed'] / n['fetched']:.0f} % > max_failures {100 * limit:g} %)")
        try:
            with self.rt.store.write() as c:
                c.execute(firmware_rollouts.insert().values(site=site, scope=scope_of(vendor, model), state="halted",
                                                            target=target, reason=why, actor="firmware", at=now))
                self.rt.store.append_audit(c, "firmware", "firmware.rollout-halted", None, why,
                                           {"site": site, "vendor": vendor, "model": model, "target": target}, now)
        except IntegrityError:
            return False  # already halted
        self.states(fresh=True)
        metrics.inc("provisioner_firmware_halts_total")
        log.warning("firmware rollout halted on site %s: %s", site, why)
        if self.notify is not None:
            try:
                self.notify("firmware.rollout-halted", site, why, vendor=vendor, model=model, version=target)
            except Exception:
                log.exception("could not send the halt alert")
        return True


# ---- pause / resume (CLI and helpdesk API) --------------------------------------------------------------

def pause(rt, site: str, vendor: str | None, reason: str, actor: str) -> str:
    from provisioner.errors import InputError
    if site not in rt.inventory.site_settings:
        raise InputError(f"unknown site {site!r} (known: {', '.join(sorted(rt.inventory.site_settings))})")
    if vendor is not None and rt.catalog.get(vendor) is None:
        raise InputError(f"unknown vendor {vendor!r}")
    scope = vendor or "*"
    now = utcnow()
    with rt.store.write() as c:
        c.execute(firmware_rollouts.delete().where(firmware_rollouts.c.site == site, firmware_rollouts.c.scope == scope,
                                                   firmware_rollouts.c.state == "paused"))
        c.execute(firmware_rollouts.insert().values(site=site, scope=scope, state="paused", target="*",
                                                    reason=reason[:500], actor=actor[:128], at=now))
        rt.store.append_audit(c, actor, "firmware.rollout-paused", None, reason[:500],
                              {"site": site, "vendor": vendor}, now)
    return scope


def resume(rt, site: str, vendor: str | None, actor: str) -> int:
    """Lift pauses and halts of a site (or of one vendor on it); returns how many were lifted. Failures so far
    still count: while the ratio stays above max_failures, the next failure halts the rollout again."""
    from provisioner.errors import InputError
    if site not in rt.inventory.site_settings:
        raise InputError(f"unknown site {site!r} (known: {', '.join(sorted(rt.inventory.site_settings))})")
    t = firmware_rollouts
    cond = t.c.site == site
    if vendor is not None:
        cond = sa.and_(cond, sa.or_(t.c.scope == vendor, t.c.scope.like(f"{vendor}/%")))
    with rt.store.write() as c:
        rows = c.execute(sa.select(t).where(cond)).all()
        c.execute(t.delete().where(cond))
        if rows:
            rt.store.append_audit(c, actor, "firmware.rollout-resumed", None,
                                  f"{len(rows)} pause(s)/halt(s) lifted on site {site}",
                                  {"site": site, "vendor": vendor,
                                   "lifted": [f"{r.state} {r.scope} {r.target}" for r in rows]})
    return len(rows)
