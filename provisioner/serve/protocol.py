"""The phone-facing HTTP protocol: uvicorn's httptools protocol with what phones' servers need.

- the verified client certificate in the ASGI scope (`extensions.tls.client_cert`), since uvicorn does
  not pass it on (mutual TLS, serve/mtls.py);
- a bound on request heads (httptools would buffer a header of any size);
- a deadline for request heads (a slowloris client does not hold a connection slot).
"""

from __future__ import annotations

import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


