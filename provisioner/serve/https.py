"""Phone-facing HTTPS: two routes (`/p/<file>` and `/healthz`) over the pipeline, built for boot storms.

`answer` is the whole of it. The phone protocol (protocol.py) calls it directly for GET and HEAD, with no
ASGI task per request; the bare ASGI app below serves what remains (uploads, which read a body and write
to the store in a worker thread). No framework: routing and middleware layers would double the Python
work per request.
"""

from __future__ import annotations

from anyio import to_thread

from provisioner.firmware import http as firmware_http
from provisioner.serve.pipeline import MAX_UPLOAD, Pipeline, Request

SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
PREFIX = "/p/"
TEXT = "text/plain; charset=utf-8"


def _reply(status: int, body: bytes, content_type: str, extra: list | None = None) -> tuple[int, bytes, list]:
    return status, body, [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                          *SECURITY_HEADERS, *(extra or [])]


def answer(pipeline: Pipeline, method: str, path: str, headers: list[tuple[bytes, bytes]], client_ip: str,
           client_cert: dict | None, body: bytes = b"") -> tuple[int, bytes, list]:
    """(status, body, headers) for one request; `path` is already percent-decoded. HEAD: the caller drops
    the body and keeps its length."""
    if path == "/healthz" and method in ("GET", "HEAD"):
        return _reply(200, b"ok\n", TEXT)
    if not path.startswith(PREFIX) or method not in ("GET", "HEAD", "PUT"):
        return _reply(404, b"not found\n", TEXT)
    ua = auth = None
    for k, v in headers:
        if k == b"user-agent":
            ua = v.decode("latin-1")
        elif k == b"authorization":
            auth = v.decode("latin-1")
    reply = pipeline.handle(Request("https", path[len(PREFIX):], client_ip, ua, auth, method, path, client_cert,
                                    body))
    extra = []
    if reply.status == 401:
        extra.append((b"www-authenticate", pipeline.digest.challenge(client_ip, stale=reply.stale).encode()))
    if reply.retry_after:
        extra.append((b"retry-after", str(reply.retry_after).encode()))
    return _reply(reply.status, reply.body, reply.content_type, extra)


def create_app(pipeline: Pipeline):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope["method"]
        client = scope.get("client")
        cert = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert")
        if scope["path"].startswith(firmware_http.PREFIX):  # images, streamed (provisioner/firmware/http.py)
            await firmware_http.serve(pipeline, scope, receive, send)
            return
        args = (pipeline, method, scope["path"], scope["headers"], client[0] if client else "0.0.0.0", cert)
        if method == "PUT" and scope["path"].startswith(PREFIX):
            body, more = b"", True
            while more and len(body) <= MAX_UPLOAD:  # bounded: one byte over the limit is enough to refuse
                msg = await receive()
                if msg["type"] == "http.disconnect":  # cut off (body deadline) or gone: nothing is stored
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
            status, data, headers = await to_thread.run_sync(answer, *args, body)
        else:
            status, data, headers = answer(*args)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    return app
