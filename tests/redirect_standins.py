"""STAND-INS, not the vendors' services: local HTTPS servers that implement the documented contract of Yealink
RPS and Snom SRAPS, so that provisioner's clients can be tested where the real clouds are out of reach.

They are written from the vendors' documents (cited in provisioner/zerotouch/redirect/*.py), independently of
the clients: every request the contract does not allow (unknown path or method, missing or wrong signature,
reused nonce, stale timestamp, wrong body digest, a field the API does not take) is refused AND recorded in
`violations`, which the tests assert empty. A stand-in agreeing with the client is a regression check, not
proof that the vendor's cloud accepts the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit


class _Base(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls_dir: Path, handler):
        from provisioner.serve.tls import ensure_tls
        tls_dir.mkdir(parents=True, exist_ok=True)
        tls = ensure_tls(tls_dir, {"127.0.0.1"})
        super().__init__(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.ca = tls.ca_cert
        self.violations: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.nonces: set[str] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def _reply(self, status: int, payload=None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _violation(self, what: str, status: int, payload=None) -> None:
        with self.server.lock:
            self.server.violations.append(f"{self.command} {self.path}: {what}")
        self._reply(status, payload)


# ---- Yealink RPS ("Yealink Json API for RPS Management Platform") -------------------------------------------

RPS_BODY = {  # allowed fields per endpoint (§2, §3); required ones first in the tuple
    "server/add": ({"serverName", "url"}, {"authName", "password", "certificateUrl"}),
    "server/list": (set(), {"key", "skip", "limit", "autoCount"}),
    "device/add": ({"macs"}, {"serverId", "uniqueServerUrl", "remark", "authName", "password"}),
    "device/list": (set(), {"key", "status", "skip", "limit", "autoCount"}),
    "device/edit": ({"id"}, {"serverId", "uniqueServerUrl", "remark", "authName", "password"}),
    "device/delete": ({"ids"}, set()),
}
RPS_QUERY = {"device/checkMac": {"mac"}}
RPS_WINDOW_MS = 15 * 60 * 1000  # §1.3.6: requests outside the timestamp window are refused [window U]


def rps_expected_signature(secret: str, method: str, headers, path: str, query: dict) -> str:
    """§1.3.3, written here from the document: METHOD, then Content-MD5 (if any), X-Ca-Key, X-Ca-Nonce,
    X-Ca-Timestamp as "Name:value" lines, then the path without "/", then the sorted query."""
    lines = [method]
    if headers.get("Content-MD5") is not None:
        lines.append("Content-MD5:" + headers["Content-MD5"])
    for h in ("X-Ca-Key", "X-Ca-Nonce", "X-Ca-Timestamp"):
        lines.append(f"{h}:{headers.get(h)}")
    text = "\n".join(lines) + "\n" + path[1:]
    if query:
        text += "\n" + "&".join(f"{k}={v}" if v else k for k, v in sorted(query.items()))
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


class RpsHandler(_Handler):
    def _handle(self, method: str) -> None:
        srv: YealinkRpsStandIn = self.server
        u = urlsplit(self.path)
        srv.requests.append((method, u.path))
        m = re.fullmatch(r"/api/open/v1/([a-zA-Z]+/[a-zA-Z]+)", u.path)
        op = m.group(1) if m else None
        allowed = (op in RPS_BODY and method == "POST") or (op in RPS_QUERY and method == "GET")
        if not allowed:
            return self._violation("not in the RPS API", 404, {"ret": -1, "data": None,
                                                               "error": {"msg": "not.found"}})
        raw = self._body()
        h = self.headers
        for need in ("X-Ca-Key", "X-Ca-Nonce", "X-Ca-Timestamp", "X-Ca-Signature"):
            if not h.get(need):
                return self._violation(f"missing {need}", 401, {"ret": -1, "error": {"msg": "sign.missing"}})
        if h["X-Ca-Key"] != srv.key:
            return self._violation("unknown AccessKey ID", 401, {"ret": -1, "error": {"msg": "key.invalid"}})
        try:
            ts = int(h["X-Ca-Timestamp"])
        except ValueError:
            ts = 0
        if abs(time.time() * 1000 - ts) > RPS_WINDOW_MS:
            return self._violation("timestamp outside the window", 401, {"ret": -1, "error": {"msg": "ts.invalid"}})
        with srv.lock:
            if h["X-Ca-Nonce"] in srv.nonces:
                srv.violations.append(f"{method} {u.path}: nonce replayed")
                return self._reply(401, {"ret": -1, "error": {"msg": "nonce.used"}})
            srv.nonces.add(h["X-Ca-Nonce"])
        if method == "POST":
            md5 = base64.b64encode(hashlib.md5(raw).digest()).decode()
            if h.get("Content-MD5") != md5:
                return self._violation("Content-MD5 missing or wrong", 400, {"ret": -1, "error": {"msg": "md5"}})
            if not (h.get("Content-Type") or "").startswith("application/json"):
                return self._violation("body is not JSON", 400, {"ret": -1, "error": {"msg": "content.type"}})
        elif raw or h.get("Content-MD5"):
            return self._violation("a GET with a body", 400, {"ret": -1, "error": {"msg": "body"}})
        query = dict(parse_qsl(u.query, keep_blank_values=True))
        want = rps_expected_signature(srv.secret, method, h, u.path, query)
        if not hmac.compare_digest(want, h["X-Ca-Signature"]):
            return self._violation("bad signature", 401, {"ret": -1, "error": {"msg": "sign.invalid"}})
        if method == "GET":
            if set(query) != RPS_QUERY[op]:
                return self._violation(f"query {sorted(query)}", 400, {"ret": -1, "error": {"msg": "param"}})
            return self._reply(200, {"ret": 1, "data": {"existed": query["mac"].lower() in srv.devices},
                                     "error": None})
        try:
            body = json.loads(raw)
        except ValueError:
            return self._violation("body is not JSON", 400, {"ret": -1, "error": {"msg": "json"}})
        required, optional = RPS_BODY[op]
        if not isinstance(body, dict) or not required <= set(body) or set(body) - required - optional:
            return self._violation(f"fields {sorted(body) if isinstance(body, dict) else body} not allowed for {op}",
                                   400, {"ret": -1, "error": {"msg": "param.invalid"}})
        return self._reply(200, srv.operate(op, body))

    def do_POST(self):
        self._handle("POST")

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")


class YealinkRpsStandIn(_Base):
    """STAND-IN for Yealink RPS: servers and devices in memory."""

    def __init__(self, tls_dir: Path, key: str, secret: str):
        super().__init__(tls_dir, RpsHandler)
        self.key, self.secret = key, secret
        self.servers: dict[str, dict] = {}  # id -> {serverName, url}
        self.devices: dict[str, dict] = {}  # mac -> {id, mac, serverId, uniqueServerUrl}
        self._ids = iter(range(1000, 10**6))

    def operate(self, op: str, b: dict) -> dict:
        ok = lambda data=None: {"ret": 1, "data": data, "error": None}  # noqa: E731
        fail = lambda key: {"ret": -1, "data": None, "error": {"msg": key, "fieldErrors": []}}  # noqa: E731
        with self.lock:
            if op == "server/add":
                if any(s["serverName"] == b["serverName"] for s in self.servers.values()):
                    return fail("server.name.existed")
                sid = str(next(self._ids))
                self.servers[sid] = {"id": sid, "serverName": b["serverName"], "url": b["url"]}
                return ok({"id": sid})
            if op == "server/list":
                rows = [s for s in self.servers.values() if not b.get("key") or b["key"] in s["serverName"]]
                return ok({"total": len(rows), "data": rows})
            if op == "device/add":
                if not isinstance(b["macs"], list) or not all(re.fullmatch(r"[0-9a-fA-F]{12}", m) for m in b["macs"]):
                    self.violations.append(f"device/add: MACs {b['macs']!r}")
                    return fail("device.mac.invalid")
                if b.get("serverId") and b["serverId"] not in self.servers:
                    return fail("server.not.found")
                for m in b["macs"]:
                    if m.lower() in self.devices:
                        return fail("device.mac.existed")
                for m in b["macs"]:
                    self.devices[m.lower()] = {"id": str(next(self._ids)), "mac": m.lower(),
                                               "serverId": b.get("serverId"),
                                               "serverName": self.servers.get(b.get("serverId"), {}).get("serverName"),
                                               "uniqueServerUrl": b.get("uniqueServerUrl")}
                return ok()
            if op == "device/list":
                rows = [d for d in self.devices.values() if not b.get("key") or b["key"].lower() in d["mac"]]
                return ok({"total": len(rows), "data": rows})
            if op == "device/edit":
                d = next((d for d in self.devices.values() if d["id"] == b["id"]), None)
                if d is None:
                    return fail("device.not.found")
                d.update({k: b[k] for k in ("serverId", "uniqueServerUrl") if k in b})
                return ok()
            if op == "device/delete":
                for i in b["ids"]:
                    for mac in [m for m, d in self.devices.items() if d["id"] == i]:
                        del self.devices[mac]
                return ok()
        return fail("not.implemented")


# ---- Snom SRAPS (REST API, Hawk) --------------------------------------------------------------------------

SRAPS_FIELDS = {"mac", "autoprovisioning_enabled", "provisioning_profile", "name", "settings_manager"}
HAWK_SKEW = 60  # seconds; Hawk's default allowance is 60 s


def hawk_attrs(header: str) -> dict[str, str]:
    if not header.startswith("Hawk "):
        return {}
    return dict(re.findall(r'(\w+)="([^"\\]*)"', header[5:]))


class SrapsHandler(_Handler):
    def _handle(self, method: str) -> None:
        srv: SnomSrapsStandIn = self.server
        u = urlsplit(self.path)
        srv.requests.append((method, u.path))
        m = re.fullmatch(rf"/api/v1/companies/{re.escape(srv.company)}/endpoints/([0-9a-f]{{12}})", u.path)
        if not m or method not in ("PUT", "GET", "DELETE"):
            return self._violation("not in the SRAPS API", 404, {"detail": "Not found."})
        mac = m.group(1)
        raw = self._body()
        a = hawk_attrs(self.headers.get("Authorization") or "")
        if not all(k in a for k in ("id", "ts", "nonce", "mac")) or a["id"] != srv.hawk_id:
            return self._violation("no valid Hawk header", 401, {"detail": "Authentication credentials were not "
                                                                           "provided."})
        if abs(time.time() - int(a["ts"])) > HAWK_SKEW:
            return self._violation("Hawk ts outside the allowed skew", 401, {"detail": "Stale timestamp"})
        with srv.lock:
            if a["nonce"] in srv.nonces:
                srv.violations.append(f"{method} {u.path}: nonce replayed")
                return self._reply(401, {"detail": "Replay"})
            srv.nonces.add(a["nonce"])
        payload_hash = ""
        if raw:
            ct = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            payload_hash = base64.b64encode(hashlib.sha256(b"hawk.1.payload\n" + ct.encode() + b"\n" + raw + b"\n")
                                            .digest()).decode()
            if a.get("hash") != payload_hash:
                return self._violation("payload hash missing or wrong", 401, {"detail": "Bad payload hash"})
        host, _, port = (self.headers.get("Host") or "").partition(":")
        norm = (f"hawk.1.header\n{a['ts']}\n{a['nonce']}\n{method}\n{self.path}\n{host.lower()}\n"
                f"{port or 443}\n{a.get('hash', '')}\n{a.get('ext', '')}\n")
        want = base64.b64encode(hmac.new(srv.hawk_key.encode(), norm.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(want, a["mac"]):
            return self._violation("bad Hawk MAC", 401, {"detail": "Bad MAC"})
        with srv.lock:
            if method == "GET":
                e = srv.endpoints.get(mac)
                return self._reply(200, e) if e else self._reply(404, {"detail": "Not found."})
            if method == "DELETE":
                return self._reply(204) if srv.endpoints.pop(mac, None) else self._reply(404, {"detail": "Not found."})
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict) or set(body) - SRAPS_FIELDS or body.get("mac") != mac \
                    or not body.get("provisioning_profile"):
                srv.violations.append(f"PUT {u.path}: body {body!r}")
                return self._reply(400, {"detail": "Invalid endpoint"})
            srv.endpoints[mac] = {"mac": mac, "autoprovisioning_enabled": body.get("autoprovisioning_enabled", True),
                                  "provisioning_profile": body["provisioning_profile"]}
            return self._reply(200, srv.endpoints[mac])

    def do_PUT(self):
        self._handle("PUT")

    def do_GET(self):
        self._handle("GET")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_POST(self):
        self._handle("POST")


class SnomSrapsStandIn(_Base):
    """STAND-IN for Snom SRAPS: one company's endpoints in memory."""

    def __init__(self, tls_dir: Path, company: str, hawk_id: str, hawk_key: str):
        super().__init__(tls_dir, SrapsHandler)
        self.company, self.hawk_id, self.hawk_key = company, hawk_id, hawk_key
        self.endpoints: dict[str, dict] = {}
