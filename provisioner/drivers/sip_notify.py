"""Phones: an out-of-dialog SIP NOTIFY with the vendor's Event (check-sync, resync, reboot, ...).

Phones pull their configuration over HTTPS, so this driver does not push: it tells the phone to fetch
(resync), to reboot, or to reset where the vendor profile names an Event for it (`sip_notify:` in
vendors/<vendor>.yaml). UDP to the phone's contact address, retransmitted on RFC 3261 timer A
(0.5 s doubling) until a final answer or the timeout; 200 means the phone accepted the request.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import time
import uuid
from typing import Any, ClassVar

from provisioner.drivers.base import ActionFailed, AuthenticationFailed, Driver, NotSupported, Progress, Unreachable
from provisioner.errors import InputError
from provisioner.vendors import VendorProfile

T1 = 0.5
_EVENT = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+(;[A-Za-z0-9!%*_+`'~.=-]+)*$")  # token *( ;param )


class SipNotifyDriver(Driver):
    name = "sip_notify"
    capabilities: ClassVar[frozenset[str]] = frozenset({"resync", "reboot", "factory_reset"})

    def __init__(self, vendor: VendorProfile, host: str, port: int = 5060, mac: str | None = None,
                 timeout: float = 4.0, user: str = "phone", progress: Progress | None = None):
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
        if code == 200 or 200 <= code < 300:
            return
        if code in (401, 407):
            raise AuthenticationFailed(f"{self.label}: the phone asked for authentication ({code} {reason}) "
                                       f"before it would {doing}; allow unauthenticated NOTIFY from the "
                                       f"provisioning server in its SIP settings, or trigger it by hand")
        raise ActionFailed(f"{self.label}: the phone refused to {doing}: {code} {reason} (Event: {event})")

    def send(self, event: str) -> tuple[int, str]:
        """Send one NOTIFY and wait for its final response: (code, reason). Raises Unreachable on timeout."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((self.host, self.port))  # picks the local address toward the phone; sends nothing
            local_ip, local_port = sock.getsockname()[:2]
            branch = "z9hG4bK" + secrets.token_hex(8)
            call_id = f"{uuid.uuid4()}@{local_ip}"
            tag = secrets.token_hex(6)
            host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
            lhost = f"[{local_ip}]" if family == socket.AF_INET6 else local_ip
            msg = (f"NOTIFY sip:{self.user}@{host}:{self.port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {lhost}:{local_port};branch={branch};rport\r\n"
                   f"Max-Forwards: 70\r\n"
                   f"From: <sip:provisioner@{lhost}>;tag={tag}\r\n"
                   f"To: <sip:{self.user}@{host}>\r\n"
                   f"Call-ID: {call_id}\r\n"
                   f"CSeq: 1 NOTIFY\r\n"
                   f"Contact: <sip:provisioner@{lhost}:{local_port}>\r\n"
                   f"Event: {event}\r\n"
                   f"Subscription-State: terminated\r\n"
                   f"User-Agent: provisioner\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
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
                parsed = _parse_response(data, call_id)
                if parsed is None:
                    continue
                code, reason = parsed
                self.last_response = f"{code} {reason}"
                if code < 200:
                    provisional = True  # the phone is working on it: stop retransmitting, wait for the final
                    continue
                return code, reason
        if refused:
            raise Unreachable(f"{self.label}: nothing listens for SIP at {self.host}:{self.port} (ICMP port "
                              f"unreachable; {sent} NOTIFY sent in {self.timeout:g} s)")
        raise Unreachable(f"{self.label}: no answer to NOTIFY (Event: {event}) within {self.timeout:g} s "
                          f"({sent} sent); is the phone on, registered at this address, and reachable over UDP?")


def _parse_response(data: bytes, call_id: str) -> tuple[int, str] | None:
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
    cseq = headers.get("cseq", "")
    if cid != call_id or not cseq.upper().endswith("NOTIFY"):
        return None  # a stray answer to something else
    return int(m.group(1)), m.group(2)[:80]
