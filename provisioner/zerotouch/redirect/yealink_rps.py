"""Yealink RPS (Redirection and Provisioning Service), its JSON API.

Source: Yealink, "Yealink Json API for RPS Management Platform" (the vendor's API document):
- §1.1 service URL https://api-dm.yealink.com:8443; requests POST/GET /api/open/v1/…
- §1.3 signature: the system headers X-Ca-Key (AccessKey ID), X-Ca-Timestamp (milliseconds), X-Ca-Nonce
  (unique per request), Content-MD5 (base64 MD5 of the body, when there is one); the string to sign is
      METHOD "\n" [Content-MD5:<md5> "\n"] X-Ca-Key:<id> "\n" X-Ca-Nonce:<nonce> "\n" X-Ca-Timestamp:<ms> "\n"
      <path without its leading "/"> ["\n" <sorted query k=v joined with &>]
  HMAC-SHA256 with the AccessKey secret, base64, sent as X-Ca-Signature; §1.3.6 replay: timestamp window and
  nonce used once.
- §1.4 answers {"ret": <0 on failure>, "data": …, "error": {"msg": "<key>", "fieldErrors": […]}}
- §2.1/2.2 POST server/add {serverName, url}, POST server/list {key, skip, limit, autoCount}
- §3.1 POST device/add {macs: [...], serverId, uniqueServerUrl}; §3.2 POST device/list {key, skip, limit,
  autoCount}; §3.5 GET device/checkMac?mac=…; §3.7 POST device/edit {id, serverId, uniqueServerUrl};
  §3.9 POST device/delete {ids: [...]}
Independent public clients agree on these (e.g. automationadmin.com "Yealink Rest API", 2019).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from urllib.parse import urlencode

import httpx

from provisioner.secret import Secret
from provisioner.zerotouch.redirect import Registration, RedirectError

PREFIX = "/api/open/v1"


def string_to_sign(method: str, headers: dict[str, str], path: str, query: dict[str, str] | None = None) -> str:
    """§1.3.3: the headers are the system headers in this order; path without its leading slash."""
    parts = [method.upper()]
    for name in ("Content-MD5", "X-Ca-Key", "X-Ca-Nonce", "X-Ca-Timestamp"):
        if name in headers:
            parts.append(f"{name}:{headers[name]}")
    s = "\n".join(parts) + "\n" + path.lstrip("/")
    if query:
        s += "\n" + "&".join(k if not query[k] else f"{k}={query[k]}" for k in sorted(query))
    return s


def sign(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()  # the API's body digest, not a security check


class YealinkRps:
    service = "yealink-rps"

    def __init__(self, api: str, key: Secret, secret: Secret, server_name: str, ctx: ssl.SSLContext,
                 timeout: float = 15.0):
        self.api = api.rstrip("/")
        self._key, self._secret = key, secret
        self.server_name = server_name
        self._http = httpx.Client(verify=ctx, timeout=timeout, trust_env=False)
        self._server_id: str | None = None

    def __repr__(self) -> str:
        return f"YealinkRps({self.api})"

    def close(self) -> None:
        self._http.close()

    # -- the signed call ----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict | None = None, query: dict[str, str] | None = None):
        full = PREFIX + path
        raw = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"X-Ca-Key": self._key.reveal(), "X-Ca-Nonce": secrets.token_hex(16),
                   "X-Ca-Timestamp": str(int(time.time() * 1000))}
        if raw is not None:
            headers["Content-MD5"] = content_md5(raw)
        sig = sign(self._secret.reveal(), string_to_sign(method, headers, full, query))
        send = {**headers, "X-Ca-Signature": sig, "Accept": "application/json"}
        if raw is not None:
            send["Content-Type"] = "application/json;charset=UTF-8"
        url = self.api + full + (("?" + urlencode(query)) if query else "")
        try:
            r = self._http.request(method, url, content=raw, headers=send)
        except httpx.HTTPError as e:
            raise RedirectError(f"Yealink RPS ({self.api}) unreachable: {type(e).__name__}") from None
        try:
            answer = r.json()
        except ValueError:
            raise RedirectError(f"Yealink RPS answered HTTP {r.status_code} without JSON") from None
        if r.status_code >= 300 or not isinstance(answer, dict) or (answer.get("ret") or 0) < 0:
            err = answer.get("error") if isinstance(answer, dict) else None
            msg = (err or {}).get("msg") if isinstance(err, dict) else None
            raise RedirectError(f"Yealink RPS refused {path}: {msg or 'HTTP ' + str(r.status_code)}",)
        return answer.get("data")

    # -- verbs ------------------------------------------------------------------------------------------------

    def _server(self, url: str) -> str:
        if self._server_id:
            return self._server_id
        page = self._call("POST", "/server/list", {"key": self.server_name, "skip": 0, "limit": 50,
                                                   "autoCount": False}) or {}
        for s in page.get("data") or []:
            if s.get("serverName") == self.server_name:
                self._server_id = str(s["id"])
                return self._server_id
        made = self._call("POST", "/server/add", {"serverName": self.server_name, "url": url}) or {}
        if not made.get("id"):
            raise RedirectError("Yealink RPS created the server entry without an id")
        self._server_id = str(made["id"])
        return self._server_id

    def _device(self, mac: str) -> dict | None:
        page = self._call("POST", "/device/list", {"key": mac, "skip": 0, "limit": 50, "autoCount": False}) or {}
        for d in page.get("data") or []:
            if str(d.get("mac", "")).lower().replace(":", "").replace("-", "") == mac:
                return d
        return None

    def register(self, mac: str, url: str, site: str | None = None) -> str:
        server = self._server(url)
        existing = self._device(mac)
        if existing is None:
            self._call("POST", "/device/add", {"macs": [mac], "serverId": server, "uniqueServerUrl": url})
            return f"added to RPS server {self.server_name}"
        self._call("POST", "/device/edit", {"id": existing["id"], "serverId": server, "uniqueServerUrl": url})
        return f"updated on RPS server {self.server_name}"

    def status(self, mac: str) -> Registration:
        d = self._device(mac)
        if d is None:
            return Registration(False, None, "not registered at Yealink RPS")
        url = d.get("uniqueServerUrl") or d.get("serverUrl")
        return Registration(True, url, f"registered at Yealink RPS (server {d.get('serverName') or '?'})")

    def remove(self, mac: str) -> str:
        d = self._device(mac)
        if d is None:
            return "was not registered at Yealink RPS"
        self._call("POST", "/device/delete", {"ids": [d["id"]]})
        return "removed from Yealink RPS"
