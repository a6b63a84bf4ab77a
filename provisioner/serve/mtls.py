"""Mutual TLS: a device may prove itself with its factory certificate (vendor device CA) naming its MAC.

uvicorn does not pass the peer certificate to the app, so a small protocol subclass (PhoneProtocol) puts
the verified certificate (ssl.getpeercert(), only filled when it chained to the configured CA bundle) into the ASGI
scope's `extensions.tls`.
"""

from __future__ import annotations

import os
import re

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from provisioner.macaddr import normalize_mac

_MACISH = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[:\-.]?){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])")


MAX_HEAD = 16 * 1024  # request line + headers: a phone's are well under 2 KB
# seconds from the connection (or a request's first byte) to the end of its head
HEAD_TIMEOUT = float(os.environ.get("PROVISIONER_HEAD_TIMEOUT", "15"))


class PhoneProtocol(HttpToolsProtocol):
    """httptools with the verified client certificate in the scope, and a bound on request heads
    (httptools itself would buffer a header of any size)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_body = False
        self._head_timer = None
        self._arm()  # a connection that never sends a request does not hold a slot for long

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_body and self.transport and not self.transport.is_closing():
            self.transport.close()  # slowloris: the request head did not arrive in time

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._arm()
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                     b"connection: close\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        cert = self.transport.get_extra_info("peercert") if self.transport else None
        self.scope["extensions"] = {"tls": {"client_cert": cert or None}}

    def on_headers_complete(self) -> None:
        self._in_body = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._head_bytes = 0


def cert_macs(cert: dict) -> set[str]:
    """MAC addresses named in a certificate's subject CN or subjectAltName entries."""
    texts = []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k in ("commonName", "serialNumber"):
                texts.append(v)
    for _typ, v in cert.get("subjectAltName", ()):
        texts.append(v)
    out = set()
    for t in texts:
        for m in _MACISH.findall(str(t)):
            try:
                out.add(normalize_mac(m))
            except ValueError:
                pass
    return out
