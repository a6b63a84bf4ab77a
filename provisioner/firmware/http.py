"""Images over the phone-facing HTTPS port: /fw/<token>/<file>, GET and HEAD, streamed.

The pipeline decides (identify, authorize, record, count refusals); this layer only streams: the file in
256 KB reads with the transport's flow control (uvicorn waits for the socket to drain), one Range per
request (`bytes=a-b`, `a-`, `-n`; 206, or 416 when outside the file), `If-Range` by ETag (the sha256). A
client that goes away stops the stream; only a response that sent the image's last byte counts as fetched.
"""

from __future__ import annotations

import asyncio
import os
import re

from anyio import to_thread

from provisioner.serve.pipeline import Pipeline, Request

PREFIX = "/fw/"
CHUNK = 256 * 1024
SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


def parse_range(value: str, size: int) -> tuple[int, int] | None | str:
    """(first, last) byte, None to send the whole file (no range, or several), "unsatisfiable"."""
    value = value.strip().replace(" ", "")
    if "," in value:
        return None  # several ranges: allowed to answer with the whole file (RFC 9110 14.2)
    m = _RANGE.match(value)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last n bytes
        n = int(m.group(2))
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


async def _plain(send, status: int, body: bytes, content_type: str, extra: list, head: bool) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS, *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def serve(pipeline: Pipeline, scope, receive, send) -> None:
    method = scope["method"]
    ua = auth = rng = if_range = None
    for k, v in scope["headers"]:
        if k == b"user-agent":
            ua = v.decode("latin-1")
        elif k == b"authorization":
            auth = v.decode("latin-1")
        elif k == b"range":
            rng = v.decode("latin-1")
        elif k == b"if-range":
            if_range = v.decode("latin-1").strip()
    if method not in ("GET", "HEAD"):
        await _plain(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", b"GET, HEAD")],
                     False)
        return
    client = scope.get("client")
    cert = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert")
    path = scope["path"]
    req = Request("https", path[1:], client[0] if client else "0.0.0.0", ua, auth, method, path, cert)
    reply = await to_thread.run_sync(pipeline.handle, req)
    head = method == "HEAD"
    if getattr(reply, "path", None) is None:  # not an image (firmware.serve.FileReply): a plain answer
        extra = []
        if reply.status == 401:
            extra.append((b"www-authenticate", pipeline.digest.challenge(req.ip, stale=reply.stale).encode()))
        if reply.retry_after:
            extra.append((b"retry-after", str(reply.retry_after).encode()))
        await _plain(send, reply.status, reply.body, reply.content_type, extra, head)
        return

    size = reply.size
    first, last, status = 0, size - 1, 200
    if rng and (if_range is None or if_range == reply.etag):
        r = parse_range(rng, size)
        if r == "unsatisfiable":
            await _plain(send, 416, b"range not satisfiable\n", "text/plain; charset=utf-8",
                         [(b"content-range", f"bytes */{size}".encode())], head)
            return
        if r is not None:
            (first, last), status = r, 206
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(last - first + 1).encode()),
               (b"accept-ranges", b"bytes"), (b"etag", reply.etag.encode()), *SECURITY_HEADERS]
    if status == 206:
        headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
    try:
        fd = os.open(reply.path, os.O_RDONLY)
    except OSError:
        await _plain(send, 503, b"unavailable\n", "text/plain; charset=utf-8", [], head)
        return
    gone = asyncio.Event()

    async def watch():  # an http.disconnect while we stream: the phone went away
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.ensure_future(watch())
    sent_all = False
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        pos, remaining = first, last - first + 1
        while remaining > 0 and not gone.is_set():
            chunk = os.pread(fd, min(CHUNK, remaining), pos)
            if not chunk:  # the file shrank under us: stop short, the client sees a truncated body
                break
            pos += len(chunk)
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        sent_all = remaining == 0 and not gone.is_set()
    finally:
        os.close(fd)
        watcher.cancel()
    if sent_all and last == size - 1 and reply.on_complete is not None:
        await to_thread.run_sync(reply.on_complete)
