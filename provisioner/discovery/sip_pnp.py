"""SIP Plug-and-Play: a freshly unboxed phone multicasts `SUBSCRIBE` (Event: ua-profile) to
224.0.1.75:5060 and takes the URL in the NOTIFY it gets back as its provisioning server
(vendors.md §1.4, §2.4, §4.4, §9.2).

Every SUBSCRIBE is recorded (MAC, vendor, model, firmware, address). Only ADOPTED devices, asking from
their site's networks, are answered: `200 OK`, then a `NOTIFY` (Content-Type application/url,
Subscription-State terminated;reason=timeout, the same Event) whose body is the device's provisioning
URL. Unknown devices get nothing at all, unless their site is listed in discovery.sip_pnp.auto_enrol_sites:
then they get the site's URL, fetch its secret-free common files, and show up for `adopt`.

Used by `discover --sip-pnp` (for its listening time) and by `serve --sip-pnp` (in a thread).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from provisioner.discovery import Context, Observation, Options, Report, local_ipv4
from provisioner.fingerprint import Evidence
from provisioner.macaddr import normalize_mac

log = logging.getLogger("provisioner.discovery.sip_pnp")

GROUP = "224.0.1.75"
PORT = 5060
MAX_MESSAGE = 8192
MAX_HEADERS = 64
NOTIFY_RETRANSMITS = (0.5, 1.0, 2.0)  # RFC 3261 timer E doubling from T1, bounded: 4 sends in 3.5 s
DEDUP_SECONDS = 32.0  # a phone's SUBSCRIBE retransmissions (timer F) fall in this window
NOTIFY_EVERY = 5.0  # one NOTIFY per device per 5 s, however many SUBSCRIBEs (no amplification)
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "o": "event", "c": "content-type", "k": "supported", "s": "subject"}
_MAC_IN_USER = re.compile(r"MAC(?:%3a|%3A|:|=)?([0-9A-Fa-f]{12})(?![0-9A-Fa-f])")
_EVENT_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^;\s]*))')


# ---- SIP messages ---------------------------------------------------------------------------------------


@dataclass
class SipMessage:
    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0] if self.is_request else ""

    @property
    def uri(self) -> str:
        parts = self.start.split(" ")
        return parts[1] if self.is_request and len(parts) > 2 else ""

    @property
    def status(self) -> int | None:
        parts = self.start.split(" ")
        return int(parts[1]) if not self.is_request and len(parts) > 1 and parts[1].isdigit() else None

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def parse(data: bytes) -> SipMessage | None:
    """A SIP message, or None when it is not one (bounded: 8 KB, 64 headers)."""
    if len(data) > MAX_MESSAGE:
        return None
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    if not (start.startswith("SIP/2.0 ") or start.endswith(" SIP/2.0")):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded header line
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        name = COMPACT.get(name, name)
        for part in ([p.strip() for p in _split_commas(value)] if name == "via" else [value.strip()]):
            headers.append((name, part))
        if len(headers) > MAX_HEADERS:
            return None
    return SipMessage(start, headers, body)


def _split_commas(value: str) -> list[str]:
    """Split a multi-value header on commas outside quotes and angle brackets."""
    out, cur, quote, angle = [], "", False, 0
    for ch in value:
        if ch == '"':
            quote = not quote
        elif ch == "<" and not quote:
            angle += 1
        elif ch == ">" and not quote:
            angle = max(0, angle - 1)
        if ch == "," and not quote and not angle:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [x for x in out if x.strip()]


def _uri_of(header: str | None) -> str | None:
    if not header:
        return None
    m = re.search(r"<([^>]*)>", header)
    return (m.group(1) if m else header.split(";", 1)[0]).strip()


def _hostport(uri: str | None) -> tuple[str | None, int | None]:
    if not uri:
        return None, None
    m = re.match(r"^sips?:(?:[^@;>]*@)?([^:;>?]+)(?::(\d+))?", uri.strip())
    if not m:
        return None, None
    return m.group(1).strip("[]"), int(m.group(2)) if m.group(2) else None


@dataclass
class PnpSubscribe:
    msg: SipMessage
    mac: str | None
    vendor: str | None
    model: str | None
    version: str | None
    user_agent: str | None
    event: str

    @property
    def call_id(self) -> str:
        return self.msg.get("call-id") or ""

    @property
    def cseq(self) -> str:
        return self.msg.get("cseq") or ""


def parse_pnp(msg: SipMessage) -> PnpSubscribe | None:
    """A SIP PnP SUBSCRIBE (Event: ua-profile) or None."""
    if msg.method != "SUBSCRIBE":
        return None
    event = msg.get("event") or ""
    if event.split(";", 1)[0].strip().lower() != "ua-profile":
        return None
    params = {k.lower(): (a if a is not None and a != "" else b) for k, a, b in _EVENT_PARAM.findall(event)}
    mac = None
    for where in (msg.uri, _uri_of(msg.get("from")), _uri_of(msg.get("to"))):
        m = _MAC_IN_USER.search(where or "")
        if m:
            try:
                mac = normalize_mac(m.group(1))
                break
            except ValueError:
                continue
    if mac is None and params.get("mac"):
        try:
            mac = normalize_mac(params["mac"])
        except ValueError:
            mac = None
    ua = msg.get("user-agent")
    return PnpSubscribe(msg, mac, params.get("vendor") or None, params.get("model") or None,
                        params.get("version") or None, ua[:200] if ua else None, event)


def _via_with_received(via: str, src: tuple[str, int]) -> str:
    """RFC 3261 §18.2.1 / RFC 3581: say where the request really came from."""
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*\w+\s+\[?([^;\s\]]+?)\]?(?::\d+)?(?:;|\s|$)", via, re.I)
    host = m.group(1) if m else None
    out = via
    if host != src[0] and ";received=" not in via:
        out += f";received={src[0]}"
    out = re.sub(r";rport(?=;|$)", f";rport={src[1]}", out)
    return out


def build_ok(sub: PnpSubscribe, src: tuple[str, int], to_tag: str, contact: str) -> bytes:
    m = sub.msg
    vias = m.all("via")
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {_via_with_received(v, src) if i == 0 else v}" for i, v in enumerate(vias)]
    to = m.get("to") or ""
    lines += [f"From: {m.get('from') or ''}", f"To: {to}" + ("" if ";tag=" in to else f";tag={to_tag}"),
              f"Call-ID: {sub.call_id}", f"CSeq: {sub.cseq}", f"Contact: <{contact}>", "Expires: 0",
              "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def build_notify(sub: PnpSubscribe, target_uri: str, local: tuple[str, int], to_tag: str, url: str,
                 branch: str, cseq: int) -> bytes:
    """The in-dialog NOTIFY: From is the SUBSCRIBE's To (with our tag), To is its From."""
    m = sub.msg
    body = url.encode()
    to = m.get("to") or f"<sip:{local[0]}>"
    frm = to if ";tag=" in to else f"{to};tag={to_tag}"
    lines = [f"NOTIFY {target_uri} SIP/2.0",
             f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport",
             "Max-Forwards: 70",
             f"From: {frm}",
             f"To: {m.get('from') or ''}",
             f"Call-ID: {sub.call_id}",
             f"CSeq: {cseq} NOTIFY",
             f"Contact: <sip:provisioner@{local[0]}:{local[1]}>",
             f"Event: {sub.event}",
             "Subscription-State: terminated;reason=timeout",
             "Content-Type: application/url",
             f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


# ---- who gets an answer ----------------------------------------------------------------------------------


@dataclass
class Decision:
    url: str | None
    why: str
    site: str | None = None
    adopted: bool = False


class InventoryPolicy:
    """Adopted devices from their site's networks get their provisioning URL; strangers get nothing
    unless their site allows auto-enrol. `inventory` is a callable so that serve sees reloads."""

    def __init__(self, inventory: Callable[[], object], store=None, auto_enrol: tuple[str, ...] | None = None):
        """`auto_enrol`: the sites whose strangers get a URL; None = read it from the current inventory
        (discovery.sip_pnp.auto_enrol_sites) at each decision, so that serve follows a reload."""
        self._inventory = inventory
        self._store = store
        self._auto_enrol = None if auto_enrol is None else tuple(auto_enrol)

    def auto_enrol_sites(self, inv) -> tuple[str, ...]:
        if self._auto_enrol is not None:
            return self._auto_enrol
        cfg = getattr(inv, "discovery", None)
        return tuple(s for s in (cfg.sip_pnp.auto_enrol_sites if cfg is not None else ()) if s in inv.sites)

    def decide(self, mac: str | None, ip: str) -> Decision:
        inv = self._inventory()
        dev = inv.device(mac) if (inv is not None and mac) else None
        if dev is not None:
            if not dev.settings.in_site(ip):
                return Decision(None, f"adopted in site {dev.site}, but {ip} is outside its networks: not answered",
                                dev.site, True)
            if self._store is not None:
                st = self._store.device(dev.mac)
                if st is not None and st.state in ("locked", "decommissioned"):
                    return Decision(None, f"device is {st.state}: not answered", dev.site, True)
            return Decision(dev.settings.provisioning_url, f"adopted (site {dev.site}): sent its provisioning URL",
                            dev.site, True)
        site = inv.site_for_ip(ip) if inv is not None else None
        if site and site in self.auto_enrol_sites(inv):
            return Decision(inv.site_settings[site].provisioning_url,
                            f"unknown device; site {site} allows auto-enrol: sent the site's URL", site)
        return Decision(None, "unknown device: recorded only" + (f" (site {site} does not allow auto-enrol)"
                                                                 if site else ""), site)


# ---- the responder ----------------------------------------------------------------------------------------


def _local_ip_for(dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 9))
            return s.getsockname()[0]
        except OSError:
            return "0.0.0.0"


def open_multicast_socket(interfaces: list[str], group: str = GROUP, port: int = PORT) -> socket.socket:
    """A socket bound to the group (only multicast to it arrives here) and joined on each interface."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((group, port))
        joined = 0
        for ip in interfaces or ["0.0.0.0"]:
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(ip))
            try:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                joined += 1
            except OSError as e:
                log.warning("SIP PnP: cannot join %s on %s: %s", group, ip, e.strerror)
        if not joined:
            raise OSError(f"could not join {group} on any interface")
        s.setblocking(False)
        return s
    except BaseException:
        s.close()
        raise


@dataclass
class _Pending:
    data: bytes
    dest: tuple[str, int]
    done: asyncio.Future
    sends: int = 0


@dataclass
class Responder:
    policy: InventoryPolicy
    interfaces: list[str] = field(default_factory=list)
    on_observation: Callable[[Observation], None] | None = None
    on_event: Callable[[str], None] | None = None  # one human line per SUBSCRIBE

    def __post_init__(self):
        self._seen: dict[tuple[str, str, str], tuple[float, bytes | None, tuple]] = {}
        self._pending: dict[str, _Pending] = {}  # NOTIFY branch -> transaction
        self._notified_at: dict[str, float] = {}  # MAC -> when its last NOTIFY started
        self._tasks: set[asyncio.Task] = set()
        self._recv_t = self._send_t = None
        self.local_port = 0
        self.notified: deque[tuple[str, str]] = deque(maxlen=256)  # (mac, url): the latest, for tests

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ifaces = list(self.interfaces) or local_ipv4()
        msock = open_multicast_socket(ifaces)
        usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            usock.bind((self.interfaces[0] if len(self.interfaces) == 1 else "0.0.0.0", 0))
            usock.setblocking(False)
            self.local_port = usock.getsockname()[1]
            self._recv_t, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, "mcast"), sock=msock)
            self._send_t, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, "ucast"), sock=usock)
        except BaseException:
            msock.close()
            usock.close()
            raise

    def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for tr in (self._recv_t, self._send_t):
            if tr is not None:
                tr.close()

    # -- incoming --------------------------------------------------------------------------------------

    def datagram(self, data: bytes, src: tuple[str, int], via: str) -> None:
        msg = parse(data)
        if msg is None:
            return
        if not msg.is_request:
            self._response(msg)
            return
        sub = parse_pnp(msg)
        if sub is None:
            return
        now = time.monotonic()
        for k in [k for k, v in self._seen.items() if now - v[0] > DEDUP_SECONDS]:
            del self._seen[k]
        key = (src[0], sub.call_id, sub.cseq)
        if key in self._seen:  # a retransmission: repeat the final answer if there was one, nothing more
            _, ok, dest = self._seen[key]
            if ok is not None and self._send_t is not None:
                self._send_t.sendto(ok, dest)
            return
        if len(self._seen) > 4096:
            return  # a flood; the phones that matter retransmit
        decision = self.policy.decide(sub.mac, src[0])
        ok = None
        if decision.url and sub.mac:
            local = (_local_ip_for(src[0]), self.local_port)
            to_tag = secrets.token_hex(6)
            ok = build_ok(sub, src, to_tag, f"sip:provisioner@{local[0]}:{local[1]}")
            self._send_t.sendto(ok, src)
            if now - self._notified_at.get(sub.mac, -1e9) >= NOTIFY_EVERY:
                if len(self._notified_at) > 10000:
                    self._notified_at.clear()
                self._notified_at[sub.mac] = now
                t = asyncio.ensure_future(self._notify(sub, src, local, to_tag, decision.url))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        self._seen[key] = (now, ok, src)
        self._record(sub, src, decision)

    def _response(self, msg: SipMessage) -> None:
        via = msg.get("via") or ""
        m = re.search(r";branch=([^;\s]+)", via)
        p = self._pending.get(m.group(1)) if m else None
        if p is not None and (msg.status or 0) >= 200 and not p.done.done():
            p.done.set_result(msg.status)

    # -- outgoing --------------------------------------------------------------------------------------

    async def _notify(self, sub: PnpSubscribe, src: tuple[str, int], local: tuple[str, int], to_tag: str,
                      url: str) -> None:
        contact = _uri_of(sub.msg.get("contact"))
        host, port = _hostport(contact)
        # NOTIFY goes back to where the SUBSCRIBE came from (no reflection elsewhere); the Contact's
        # port is used only when the Contact names that same address
        dest = (src[0], port if host == src[0] and port else src[1])
        target = contact if host == src[0] else f"sip:{src[0]}:{dest[1]}"
        branch = "z9hG4bK" + secrets.token_hex(8)
        data = build_notify(sub, target, local, to_tag, url, branch, 1)
        p = _Pending(data, dest, asyncio.get_running_loop().create_future())
        self._pending[branch] = p
        try:
            for wait in (*NOTIFY_RETRANSMITS, NOTIFY_RETRANSMITS[-1]):
                self._send_t.sendto(data, dest)
                p.sends += 1
                try:
                    status = await asyncio.wait_for(asyncio.shield(p.done), wait)
                    log.info("SIP PnP: %s answered the NOTIFY with %s", sub.mac, status)
                    break
                except asyncio.TimeoutError:
                    continue
            else:
                log.info("SIP PnP: %s did not answer the NOTIFY (%d sends)", sub.mac, p.sends)
            self.notified.append((sub.mac, url))
        finally:
            self._pending.pop(branch, None)

    def _record(self, sub: PnpSubscribe, src: tuple[str, int], d: Decision) -> None:
        ev = Evidence(mac=sub.mac, user_agent=sub.user_agent, pnp_vendor=sub.vendor, pnp_model=sub.model,
                      pnp_version=sub.version)
        o = Observation("sip-pnp", ip=src[0], mac=sub.mac, evidence=ev,
                        details={"vendor": sub.vendor, "model": sub.model, "version": sub.version,
                                 "user_agent": sub.user_agent, "answered": bool(d.url), "decision": d.why},
                        notes=[f"SIP PnP SUBSCRIBE ({d.why})"],
                        factory_default="asks for a provisioning server by SIP PnP (factory default or never "
                                        "provisioned)")
        line = (f"SIP PnP: {sub.mac or 'no MAC'} from {src[0]} vendor={_safe(sub.vendor)} model={_safe(sub.model)}: "
                f"{d.why}")
        log.info("%s", line)
        if self.on_event:
            self.on_event(line)
        if self.on_observation:
            self.on_observation(o)


def _safe(text: str | None, limit: int = 64) -> str:
    """A phone-supplied string fit for one log line (no control characters, bounded)."""
    if text is None:
        return "-"
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, r: Responder, via: str):
        self.r = r
        self.via = via

    def datagram_received(self, data, addr):
        try:
            self.r.datagram(data, addr, self.via)
        except Exception:  # one bad datagram never stops the responder
            log.exception("SIP PnP: could not handle a datagram from %s", addr[0])

    def error_received(self, exc):
        log.debug("SIP PnP socket error: %s", exc)


# ---- discover --sip-pnp ---------------------------------------------------------------------------------


async def probe(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    found: list[Observation] = []

    def on_obs(o: Observation) -> None:
        found.append(o)
        report("found", {"ip": o.ip, "what": f"SIP PnP {o.details.get('vendor')} {o.details.get('model')}"})

    policy = InventoryPolicy(lambda: ctx.inventory, ctx.store, opts.auto_enrol_sites)
    r = Responder(policy, list(opts.interfaces), on_obs)
    await r.start()
    report("listening", {"where": f"{GROUP}:{PORT}", "interfaces": list(opts.interfaces) or local_ipv4()})
    try:
        await asyncio.sleep(opts.timeout)
        if r._tasks:  # NOTIFY transactions in flight finish (bounded by their retransmit schedule)
            await asyncio.wait(set(r._tasks), timeout=sum(NOTIFY_RETRANSMITS) + 1)
    finally:
        r.close()
    return found


# ---- serve --sip-pnp --------------------------------------------------------------------------------------


class ServeResponder:
    """The responder in its own thread and event loop, beside uvicorn; records to the store
    (at most once a minute per device) and logs one line per SUBSCRIBE."""

    RECORD_EVERY = 60.0

    def __init__(self, rt, interfaces: list[str], echo=None):
        self.rt = rt
        self.interfaces = interfaces
        self.echo = echo
        self.policy = InventoryPolicy(lambda: rt.inventory, rt.store, None)  # follows inventory reloads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._recorded: dict[str, float] = {}
        self.responder: Responder | None = None
        self.heartbeat = None  # provisioner.zerotouch.state.PnpHeartbeat once running

    def _record(self, o: Observation) -> None:
        key = o.mac or o.ip or "?"
        now = time.monotonic()
        if now - self._recorded.get(key, -1e9) < self.RECORD_EVERY:
            return
        self._recorded[key] = now
        if len(self._recorded) > 10000:
            self._recorded.clear()
        try:
            from provisioner.discovery import save
            o.identify(self.rt.catalog)
            save(self.rt.store, [o], "serve")
        except Exception:
            log.exception("SIP PnP: could not record an observation")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self.responder = Responder(self.policy, self.interfaces, self._record)
        try:
            loop.run_until_complete(self.responder.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        self._beat()  # zero-touch (issue 19): `provisioner zero-touch` sees this responder on its networks
        try:
            loop.run_forever()
        finally:
            self.responder.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _beat(self) -> None:
        try:
            if self.heartbeat is None:
                from provisioner.zerotouch.state import PnpHeartbeat
                self.heartbeat = PnpHeartbeat(self.rt.store, list(self.interfaces) or local_ipv4())
            self.heartbeat.beat()
        except Exception:
            log.exception("SIP PnP: could not record the responder's heartbeat")
        from provisioner.zerotouch.state import PNP_HEARTBEAT
        self._loop.call_later(PNP_HEARTBEAT, self._beat)

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="sip-pnp", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("SIP PnP responder did not start within 10 s")
        if self._error is not None:
            raise self._error
        where = ", ".join(self.interfaces or local_ipv4() or ["all interfaces"])
        return f"SIP PnP on {GROUP}:{PORT} ({where})"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if self.heartbeat is not None:
            try:
                self.heartbeat.stop()
            except Exception:
                log.exception("SIP PnP: could not remove the responder's heartbeat")


def check_interface(ip: str) -> str:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"{ip!r} is not an IPv4 address") from None
    if ip not in local_ipv4():
        raise ValueError(f"{ip} is not an address of this machine")
    return ip


def auto_enrol_sites(inventory) -> tuple[str, ...]:
    """discovery.sip_pnp.auto_enrol_sites of the inventory, checked against its sites."""
    cfg = getattr(inventory, "discovery", None)
    sites = tuple(cfg.sip_pnp.auto_enrol_sites) if cfg is not None else ()
    unknown = [s for s in sites if s not in inventory.sites]
    if unknown:
        from provisioner.errors import InputError
        raise InputError(f"discovery.sip_pnp.auto_enrol_sites: unknown site(s) {', '.join(unknown)} in "
                         f"{inventory.path} (known: {', '.join(inventory.sites)})")
    return sites


def start_for_serve(rt, interfaces: list[str], echo=print) -> ServeResponder:
    """`serve --sip-pnp`: start the responder thread or fail with an operator's message (exit 2)."""
    from provisioner.errors import InputError
    for ip in interfaces:
        try:
            check_interface(ip)
        except ValueError as e:
            raise InputError(f"--sip-pnp-interface: {e}") from None
    auto_enrol_sites(rt.inventory)  # an unknown site there is an input error at start
    pnp = ServeResponder(rt, list(interfaces), echo)
    try:
        where = pnp.start()
    except OSError as e:
        raise InputError(f"--sip-pnp: cannot listen on {GROUP}:{PORT} ({e.strerror or e})") from None
    echo(f"provisioner: {where}: adopted phones asking from their site get their provisioning URL")
    return pnp
