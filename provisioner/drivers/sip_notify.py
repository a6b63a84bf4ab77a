"""Phones: an out-of-dialog SIP NOTIFY with the vendor's Event (check-sync, resync, reboot, ...).

Phones pull their configuration over HTTPS, so this driver does not push: it tells the phone to fetch
(resync), to reboot, or to reset where the vendor profile names an Event for it (`sip_notify:` in
vendors/<vendor>.yaml). UDP to the phone's contact address, retransmitted on RFC 3261 timer A
(0.5 s doubling) until a final answer or the timeout; 200 means the phone accepted the request.

A phone may challenge the NOTIFY (Cisco SPA with Auth_Resync-Reboot: "the device challenges with 401 and
acts only after an authenticated retry", with its line's credentials): the driver answers a 401/407 digest
challenge (RFC 2617/3261: MD5, qop auth when offered) with the credentials it was given, each candidate
once (the generation the phone holds may be the active or the pending one during a rotation).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import socket
import time
import uuid
from typing import Any, ClassVar

from provisioner.drivers.base import ActionFailed, AuthenticationFailed, Driver, NotSupported, Progress, Unreachable
from provisioner.errors import InputError
from provisioner.secret import Secret
from provisioner.vendors import VendorProfile

T1 = 0.5
_EVENT = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+(;[A-Za-z0-9!%*_+`'~.=-]+)*$")  # token *( ;param )


class SipNotifyDriver(Driver):
    name = "sip_notify"
    capabilities: ClassVar[frozenset[str]] = frozenset({"resync", "reboot", "factory_reset"})

    def __init__(self, vendor: VendorProfile, host: str, port: int = 5060, mac: str | None = None,
                 timeout: float = 4.0, user: str = "phone", progress: Progress | None = None,
                 credentials: list[tuple[str, Secret]] | tuple = ()):
        super().__init__(progress)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"SIP NOTIFY needs the phone's IP address, not {host!r}") from None
        if not 0 < port < 65536:
            raise InputError(f"bad SIP port {port}")
        if not re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", user):
            raise InputError("bad SIP user part")
        self.vendor, self.host, self.port, self.mac = vendor, host, port, mac
        self.timeout, self.user = timeout, user
        self.credentials = list(credentials)  # (digest user, password) to answer a challenge with, in order
        self.last_response: str | None = None

    @property
    def label(self) -> str:
        return f"{self.vendor.display_name} phone {self.mac or ''} at {self.host}:{self.port}".replace("  ", " ")

    def facts(self) -> dict[str, Any]:
        """A NOTIFY reveals nothing about the phone; what the server knows comes from its fetches."""
        return {"vendor": self.vendor.name, "contact": f"{self.host}:{self.port}", "mac": self.mac,
                "events": {k: v for k, v in self.vendor.sip_notify.model_dump().items() if v}}

    @property
    def capabilities_now(self) -> frozenset[str]:
        ev = self.vendor.sip_notify
        return frozenset(k for k, v in (("resync", ev.resync), ("reboot", ev.reboot), ("factory_reset", ev.reset))
                         if v)

    # ---- actions -------------------------------------------------------------------------------
    def resync(self) -> None:
        self._notify("resync", self.vendor.sip_notify.resync, "fetch its configuration")

    def reboot(self) -> None:
        self._notify("reboot", self.vendor.sip_notify.reboot, "reboot")

    def factory_reset(self) -> None:
        self._notify("reset", self.vendor.sip_notify.reset, "reset to factory settings",
                     self.vendor.reset_instructions)

    def _notify(self, what: str, event: str | None, doing: str, by_hand: str | None = None) -> None:
        if not event:
            raise NotSupported(f"{self.label}: {self.vendor.display_name} has no SIP NOTIFY to {doing}"
                               + (f"; on site: {by_hand}" if by_hand else ""))
        if not _EVENT.match(event):
            raise InputError(f"vendor {self.vendor.name}: sip_notify.{what} {event!r} is not a valid Event value")
        self.progress(f"NOTIFY Event: {event} to {self.host}:{self.port}")
        code, reason = self.send(event)
        if 200 <= code < 300:
            return
        if code in (401, 407):
            if not self.credentials:
                raise AuthenticationFailed(f"{self.label}: the phone asked for authentication ({code} {reason}) "
                                           f"before it would {doing}, and no line credentials are known for it; "
                                           f"trigger it by hand")
            raise AuthenticationFailed(f"{self.label}: the phone refused the line credentials it should hold "
                                       f"({code} {reason}) before it would {doing}; it may not hold its current "
                                       f"config: check its last fetch (`provisioner explain MAC`)")
        raise ActionFailed(f"{self.label}: the phone refused to {doing}: {code} {reason} (Event: {event})")

    def send(self, event: str) -> tuple[int, str]:
        """Send the NOTIFY and wait for its final response, answering each digest challenge with the next
        candidate credentials: (code, reason) of the last final response. Raises Unreachable on timeout."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((self.host, self.port))  # picks the local address toward the phone; sends nothing
            local_ip, local_port = sock.getsockname()[:2]
            call_id = f"{uuid.uuid4()}@{local_ip}"
            tag = secrets.token_hex(6)
            host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
            lhost = f"[{local_ip}]" if family == socket.AF_INET6 else local_ip
            uri = f"sip:{self.user}@{host}:{self.port}"
            auth, cseq, candidates = "", 1, list(self.credentials)
            while True:
                msg = (f"NOTIFY {uri} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP {lhost}:{local_port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                       f"Max-Forwards: 70\r\n"
                       f"From: <sip:provisioner@{lhost}>;tag={tag}\r\n"
                       f"To: <sip:{self.user}@{host}>\r\n"
                       f"Call-ID: {call_id}\r\n"
                       f"CSeq: {cseq} NOTIFY\r\n"
                       f"Contact: <sip:provisioner@{lhost}:{local_port}>\r\n"
                       f"Event: {event}\r\n"
                       f"Subscription-State: terminated\r\n"
                       f"{auth}"
                       f"User-Agent: provisioner\r\n"
                       f"Content-Length: 0\r\n\r\n").encode()
                code, reason, headers = self._transaction(sock, msg, call_id, cseq, event)
                challenge = headers.get("www-authenticate" if code == 401 else "proxy-authenticate", "")
                if code not in (401, 407) or not candidates or not challenge.lower().startswith("digest"):
                    return code, reason
                user, password = candidates.pop(0)
                header = "Authorization" if code == 401 else "Proxy-Authorization"
                auth = f"{header}: {digest_response(challenge, user, password, 'NOTIFY', uri)}\r\n"
                cseq += 1
                self.progress(f"{code} {reason}: answering the digest challenge as {user}")

    def _transaction(self, sock: socket.socket, msg: bytes, call_id: str, cseq: int, event: str
                     ) -> tuple[int, str, dict[str, str]]:
        """One non-INVITE client transaction: send, retransmit on timer A, wait for the final response."""
        deadline = time.monotonic() + self.timeout
        interval, next_send, sent = T1, 0.0, 0
        provisional = refused = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send and not provisional and sent < 11:
                try:
                    sock.send(msg)
                except ConnectionRefusedError:  # the ICMP error of an earlier send, reported now
                    refused = True
                except OSError as e:
                    raise Unreachable(f"{self.label}: cannot send NOTIFY ({e.strerror or e})") from None
                sent += 1
                next_send = now + interval
                interval = min(interval * 2, 4.0)
            wake = deadline if provisional or sent >= 11 else min(next_send, deadline)
            sock.settimeout(max(0.01, wake - now))
            try:
                data = sock.recv(65535)
            except socket.timeout:
                continue
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens there (yet): retry
                refused = True
                continue
            except OSError as e:
                raise Unreachable(f"{self.label}: {e.strerror or e}") from None
            parsed = _parse_response(data, call_id, cseq)
            if parsed is None:
                continue
            code, reason, headers = parsed
            self.last_response = f"{code} {reason}"
            if code < 200:
                provisional = True  # the phone is working on it: stop retransmitting, wait for the final
                continue
            return code, reason, headers
        if refused:
            raise Unreachable(f"{self.label}: nothing listens for SIP at {self.host}:{self.port} (ICMP port "
                              f"unreachable; {sent} NOTIFY sent in {self.timeout:g} s)")
        raise Unreachable(f"{self.label}: no answer to NOTIFY (Event: {event}) within {self.timeout:g} s "
                          f"({sent} sent); is the phone on, registered at this address, and reachable over UDP?")


def _params(text: str) -> dict[str, str]:
    """key=value / key="value" pairs of a Digest challenge (commas inside quotes kept)."""
    return {m[1].lower(): m[2] if m[2] is not None else m[3]
            for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', text)}


def digest_response(challenge: str, user: str, password: Secret, method: str, uri: str, nc: int = 1) -> str:
    """The Authorization value answering a Digest challenge (RFC 2617 as SIP uses it: MD5, qop auth when the
    challenge offers it). The password only ever enters the hashes."""
    p = _params(challenge.split(None, 1)[1] if " " in challenge else "")
    if p.get("algorithm", "MD5").upper() not in ("MD5", ""):
        raise ActionFailed(f"the phone asks for digest algorithm {p['algorithm']}, not MD5")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()
    realm, nonce = p.get("realm", ""), p.get("nonce", "")
    ha1 = md5(f"{user}:{realm}:{password.reveal()}")
    ha2 = md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    if "auth" in [q.strip() for q in p.get("qop", "").split(",")]:
        cnonce, count = secrets.token_hex(8), f"{nc:08x}"
        out += f', response="{md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")}", qop=auth, nc={count}, ' \
               f'cnonce="{cnonce}"'
    else:
        out += f', response="{md5(f"{ha1}:{nonce}:{ha2}")}"'
    if "opaque" in p:
        out += f', opaque="{p["opaque"]}"'
    return out


def _parse_response(data: bytes, call_id: str, cseq: int = 1) -> tuple[int, str, dict[str, str]] | None:
    try:
        text = data.decode("utf-8", "replace")
    except Exception:
        return None
    head, _, _ = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    m = re.match(r"SIP/2\.0 (\d{3}) ?(.*)$", lines[0])
    if not m:
        return None
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers.setdefault(k.strip().lower(), v.strip())
    cid = headers.get("call-id") or headers.get("i")
    seq = headers.get("cseq", "").split()
    if cid != call_id or len(seq) != 2 or seq[1].upper() != "NOTIFY" or seq[0] != str(cseq):
        return None  # a stray answer to something else (or to an earlier try of this NOTIFY)
    return int(m.group(1)), m.group(2)[:80], headers
