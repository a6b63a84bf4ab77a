"""Phone-facing HTTPS: a bare ASGI app over the pipeline, built for boot storms.

Two routes (`/p/<file>` and `/healthz`) do not need a framework: skipping routing and middleware layers
roughly halves the Python work per request. GETs run on the event loop (a cached answer is pure CPU and
a thread hop costs more than it saves); uploads, which write to the store, go to a worker thread.
"""

from __future__ import annotations

from anyio import to_thread

from provisioner.serve.pipeline import MAX_UPLOAD, Pipeline, Request

SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
PREFIX = "/p/"


async def _send(send, status: int, body: bytes, content_type: str, extra: list | None = None,
                head: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


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
        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            return await _send(send, 200, b"ok\n", "text/plain; charset=utf-8", head=method == "HEAD")
        if not path.startswith(PREFIX) or method not in ("GET", "HEAD", "PUT"):
            return await _send(send, 404, b"not found\n", "text/plain; charset=utf-8")
        headers = {}
        for k, v in scope["headers"]:
            if k in (b"user-agent", b"authorization"):
                headers[k] = v.decode("latin-1")
        client = scope.get("client")
        tls = (scope.get("extensions") or {}).get("tls") or {}
        body = b""
        if method == "PUT":
            more = True
            while more and len(body) <= MAX_UPLOAD:  # bounded: one byte over the limit is enough to refuse
                msg = await receive()
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
        req = Request("https", path[len(PREFIX):], client[0] if client else "0.0.0.0",  # path: already decoded
                      headers.get(b"user-agent"), headers.get(b"authorization"), method, path,
                      tls.get("client_cert"), body)
        if method == "PUT":
            reply = await to_thread.run_sync(pipeline.handle, req)
        else:
            reply = pipeline.handle(req)
        extra = []
        if reply.status == 401:
            extra.append((b"www-authenticate", pipeline.digest.challenge(stale=reply.stale).encode()))
        if reply.retry_after:
            extra.append((b"retry-after", str(reply.retry_after).encode()))
        await _send(send, reply.status, reply.body, reply.content_type, extra, head=method == "HEAD")

    return app
