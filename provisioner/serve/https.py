"""Phone-facing HTTPS: a thin Starlette app over the pipeline (async server for boot storms)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from provisioner.serve.pipeline import MAX_UPLOAD, Pipeline, Request

SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def create_app(pipeline: Pipeline) -> Starlette:
    async def fetch(request: HttpRequest) -> Response:
        client = request.client.host if request.client else "0.0.0.0"
        tls = request.scope.get("extensions", {}).get("tls") or {}
        body = b""
        if request.method == "PUT":
            async for chunk in request.stream():  # bounded: one byte over the limit is enough to refuse
                body += chunk
                if len(body) > MAX_UPLOAD:
                    break
        req = Request("https", request.path_params["filename"], client, request.headers.get("user-agent"),
                      request.headers.get("authorization"), request.method, request.url.path,
                      tls.get("client_cert"), body)
        reply = await run_in_threadpool(pipeline.handle, req)
        headers = dict(SECURITY_HEADERS)
        if reply.status == 401:
            headers["WWW-Authenticate"] = pipeline.digest.challenge(stale=reply.stale)
        if reply.retry_after:
            headers["Retry-After"] = str(reply.retry_after)
        body = b"" if request.method == "HEAD" else reply.body
        return Response(body, status_code=reply.status, media_type=reply.content_type, headers=headers)

    async def health(_request: HttpRequest) -> Response:
        return PlainTextResponse("ok\n", headers=SECURITY_HEADERS)

    async def not_found(_request: HttpRequest, _exc) -> Response:
        return PlainTextResponse("not found\n", status_code=404, headers=SECURITY_HEADERS)

    return Starlette(
        routes=[Route("/p/{filename}", fetch, methods=["GET", "HEAD", "PUT"]), Route("/healthz", health)],
        exception_handlers={404: not_found, 405: not_found},
    )
