"""The phone-facing HTTP protocol: uvicorn's httptools protocol with what phones' servers need.

- the verified client certificate in the ASGI scope (`extensions.tls.client_cert`), since uvicorn does
  not pass it on (mutual TLS, serve/mtls.py);
- a bound on request heads (httptools would buffer a header of any size);
- a deadline for request heads (a slowloris client does not hold a connection slot);
- GET and HEAD answered in the protocol itself (`direct`): in a boot storm the ASGI machinery (a task,
  a request cycle, two send coroutines and two writes per answer) cost more than the pipeline's work.
  Whatever else arrives (uploads, pipelined requests behind one still in progress, over the concurrency
  limit) takes uvicorn's ASGI path unchanged.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from typing import Callable

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("provisioner.serve")

MAX_HEAD = 16 * 1024  # request line + headers: a phone's are well under 2 KB
# seconds from the connection (or a request's first byte) to the end of its head
HEAD_TIMEOUT = float(os.environ.get("PROVISIONER_HEAD_TIMEOUT", "15"))


# (method, path, headers, client ip, client certificate) -> (status, body, headers)
Direct = Callable[[str, str, list, str, "dict | None"], "tuple[int, bytes, list]"]


class PhoneProtocol(HttpToolsProtocol):
    """httptools with the verified client certificate in the scope, and a bound on request heads
    (httptools itself would buffer a header of any size)."""

    direct: Direct | None = None  # set on a subclass by `with_direct`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_body = False
        self._head_timer = None
        self._pending = None  # a GET/HEAD whose head is in, answered when its message completes
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
        method = self.parser.get_method()
        if (self.direct is not None and method in (b"GET", b"HEAD") and not self.parser.should_upgrade()
                and (self.cycle is None or self.cycle.response_complete) and not self.pipeline
                and (self.limit_concurrency is None or len(self.connections) < self.limit_concurrency)
                and not self.url.startswith(b"/fw/")):  # firmware images are streamed by the ASGI app (issue 18)
            path = httptools.parse_url(self.url).path.decode("ascii")  # as uvicorn does: a bad URL is a 400
            self._pending = (method.decode(), urllib.parse.unquote(path) if "%" in path else path)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._pending is None:
            super().on_body(body)
        # a GET's body means nothing here: dropped as it arrives

    def on_message_complete(self) -> None:
        if self._pending is not None:
            (method, path), self._pending = self._pending, None
            self._answer(method, path)
        else:
            super().on_message_complete()
        self._in_body = False
        self._head_bytes = 0

    def _answer(self, method: str, path: str) -> None:
        """What uvicorn's request cycle would write, in one write, then its keep-alive bookkeeping."""
        client = self.client[0] if self.client else "0.0.0.0"
        cert = self.scope["extensions"]["tls"]["client_cert"]
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        try:
            status, body, headers = self.direct(method, path, self.headers, client, cert)
        except Exception:
            log.exception("answering %s %s", method, path)
            body = b"internal error\n"
            status, headers = 500, [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())]
            keep_alive = False
        out = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            out += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if method != "HEAD":
            out.append(body)
        self.transport.write(b"".join(out))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # counts the request; arms the keep-alive timeout


def with_direct(direct: Direct) -> type[PhoneProtocol]:
    """The protocol class uvicorn instantiates per connection, answering GET/HEAD with `direct`."""
    return type("DirectPhoneProtocol", (PhoneProtocol,), {"direct": staticmethod(direct)})


