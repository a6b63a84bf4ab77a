"""The phone-facing HTTP protocol: uvicorn's httptools protocol with what phones' servers need.

- the verified client certificate in the ASGI scope (`extensions.tls.client_cert`), since uvicorn does
  not pass it on (mutual TLS, serve/mtls.py);
- a bound on each request head (httptools would buffer a header of any size), counted per request, so
  pipelined requests arriving in one write are no false 431;
- deadlines: for request heads (a slowloris client does not hold a connection slot) and for request
  bodies (a GET announcing `Content-Length: 1000` and sending nothing, a PUT that never ends); a
  connection cut off by either counts as a failure of its source (guard.py);
- caps on the connections open at once per source address and per network (limits.py), and sources
  under a ban (outside the sites) refused as they connect: one address cannot hold every slot;
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

from provisioner.serve.limits import ConnectionLimits, plain_response

log = logging.getLogger("provisioner.serve")

MAX_HEAD = 16 * 1024  # request line + headers of one request: a phone's are well under 2 KB
MAX_BODY = 256 * 1024  # the largest upload (pipeline.MAX_UPLOAD); a longer announced body is refused at once
# seconds from the connection (or a request's first byte) to the end of its head
HEAD_TIMEOUT = float(os.environ.get("PROVISIONER_HEAD_TIMEOUT", "15"))
BODY_STEP = 64 * 1024  # a body gets `body_seconds` per started 64 KB
LINGER = 1.0  # seconds a refused or cut-off connection may take to flush its answer before it is aborted


# (method, path, headers, client ip, client certificate) -> (status, body, headers)
Direct = Callable[[str, str, list, str, "dict | None"], "tuple[int, bytes, list]"]


class PhoneProtocol(HttpToolsProtocol):
    """httptools with the verified client certificate in the scope, bounded heads and bodies, and
    per-source connection caps."""

    direct: Direct | None = None  # set on a subclass by `with_direct`
    limits: ConnectionLimits | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._unparsed = 0  # bytes received since the parser last completed a head, a body part or a request
        self._progress = 0
        self._in_body = False
        self._head_timer = None
        self._body_timer = None
        self._pending = None  # a GET/HEAD whose head is in, answered when its message completes
        self._ip = self.client[0] if self.client else "0.0.0.0"
        self._admitted = True
        if self.limits is not None:
            refusal = self.limits.admit(self._ip)
            if refusal is not None:
                self._admitted = False
                self._shut(refusal)
                return
        self._arm()  # a connection that never sends a request does not hold a slot for long

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_body and self.transport and not self.transport.is_closing():
            self._cut_off("request head not sent in time")  # slowloris

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._in_body and self.transport and not self.transport.is_closing():
            self._cut_off("request body not sent in time")  # a held body

    def _cut_off(self, why: str) -> None:
        answered = self.cycle is not None and not self.cycle.response_complete  # the ASGI path answers
        self._shut(None if answered else plain_response(408, "request timeout"))
        if self.limits is not None:
            self.limits.held(self._ip, why)

    def _shut(self, answer: bytes | None) -> None:
        """Write `answer`, close, and free everything at once: the connection no longer counts against any
        limit, and a peer that never reads (so never completes the TLS shutdown) is aborted after LINGER
        seconds instead of asyncio's 30."""
        if answer:
            self.transport.write(answer)
        self.transport.close()
        self.loop.call_later(LINGER, self.transport.abort)
        self.connections.discard(self)
        self._cancel_timers()
        if self._admitted and self.limits is not None:
            self.limits.release(self._ip)
        self._admitted = False

    def _cancel_timers(self) -> None:
        for name in ("_head_timer", "_body_timer"):
            t = getattr(self, name, None)
            if t is not None:
                t.cancel()
                setattr(self, name, None)

    def connection_lost(self, exc) -> None:
        self._cancel_timers()
        if self._admitted and self.limits is not None:
            self._admitted = False
            self.limits.release(self._ip)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused as it connected: nothing it sends is read
        in_head = not self._in_body
        if in_head:
            self._arm()
        before = self._progress
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        if not self._in_body and not self.transport.is_closing():
            # bytes of a head still incomplete (a header being dribbled in, a huge one): pipelined requests
            # in one write complete their heads and do not add up
            self._unparsed = 0 if self._progress != before else self._unparsed + len(data)
            if self._unparsed > MAX_HEAD:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._shut(plain_response(431, ""))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        cert = self.transport.get_extra_info("peercert") if self.transport else None
        self.scope["extensions"] = {"tls": {"client_cert": cert or None}}

    def on_headers_complete(self) -> None:
        self._progress += 1
        self._in_body = True
        if self.transport.is_closing():  # refused or cut off earlier in this same read: nothing more runs
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        length, chunked, size = 0, False, len(self.url)
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if size > MAX_HEAD:  # this request's own head (it arrived whole, with others, in one read)
            self._refuse_head()
            return
        if length > MAX_BODY:  # refused before a byte of it is read
            self._shut(plain_response(413, "request body too large"))
            return
        if (length or chunked) and self.limits is not None:
            steps = -(-(length if not chunked else MAX_BODY) // BODY_STEP)
            self._body_timer = self.loop.call_later(self.limits.body_seconds * max(1, steps), self._body_timeout)
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
        self._progress += 1
        if self._pending is None and not self.transport.is_closing():
            super().on_body(body)
        # a GET's body means nothing here: dropped as it arrives

    def on_message_complete(self) -> None:
        self._progress += 1
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.transport.is_closing():
            self._pending = None
        elif self._pending is not None:
            (method, path), self._pending = self._pending, None
            self._answer(method, path)
        else:
            super().on_message_complete()
        self._in_body = False

    def _answer(self, method: str, path: str) -> None:
        """What uvicorn's request cycle would write, in one write, then its keep-alive bookkeeping."""
        cert = self.scope["extensions"]["tls"]["client_cert"]
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        try:
            status, body, headers = self.direct(method, path, self.headers, self._ip, cert)
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


def with_direct(direct: Direct, limits: ConnectionLimits | None = None) -> type[PhoneProtocol]:
    """The protocol class uvicorn instantiates per connection, answering GET/HEAD with `direct`."""
    return type("DirectPhoneProtocol", (PhoneProtocol,), {"direct": staticmethod(direct), "limits": limits})
