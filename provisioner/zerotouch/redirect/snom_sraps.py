"""Snom SRAPS (Secure Redirection and Provisioning Service), its REST API.

Sources:
- Snom, "REST API" (service.snom.com/display/wiki/REST+API): the API is for end-user and reseller accounts;
  authentication is Hawk with SHA-256 MACs over the full URL (host and port), the HTTP verb, the time, a nonce
  and, when there is a body, its content type and payload hash; replay protection by nonce and time.
- Hawk 1.1 (github.com/mozilla/hawk, "Protocol Example", "Payload Validation"): the normalized strings
      hawk.1.header\n<ts>\n<nonce>\n<METHOD>\n<path?query>\n<host>\n<port>\n<hash>\n<ext>\n
      hawk.1.payload\n<content-type without parameters>\n<body>\n
  and the header  Authorization: Hawk id="…", ts="…", nonce="…", hash="…", mac="…".
- The endpoint resource /companies/{company}/endpoints/{mac} (MAC 12 lower-case hex) taking
  {"mac", "autoprovisioning_enabled", "provisioning_profile"} on PUT, as Snom's public SRAPS clients use it.
  The complete reference sits on the SRAPS portal (login): GET (status) and DELETE (remove) on that same
  resource could not be confirmed from a readable Snom document here [U].

The redirect target is a provisioning profile: create one per site in SRAPS whose setting_server is that
site's provisioning URL, and name its id in zero_touch.redirect.snom-sraps.profiles.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from urllib.parse import urlsplit

import httpx

from provisioner.errors import InputError
from provisioner.secret import Secret
from provisioner.zerotouch.redirect import Registration, RedirectError


def payload_hash(content_type: str, body: bytes) -> str:
    ct = content_type.split(";", 1)[0].strip().lower()
    return base64.b64encode(hashlib.sha256(b"hawk.1.payload\n" + ct.encode() + b"\n" + body + b"\n").digest()).decode()


def normalized(ts: str, nonce: str, method: str, url: str, hash_: str = "", ext: str = "") -> str:
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    resource = (u.path or "/") + (("?" + u.query) if u.query else "")
    return f"hawk.1.header\n{ts}\n{nonce}\n{method.upper()}\n{resource}\n{(u.hostname or '').lower()}\n{port}\n" \
           f"{hash_}\n{ext}\n"


def mac_of(key: str, text: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), text.encode(), hashlib.sha256).digest()).decode()


class SnomSraps:
    service = "snom-sraps"

    def __init__(self, api: str, company: str, profiles: dict[str, str], hawk_id: Secret, hawk_key: Secret,
                 ctx: ssl.SSLContext, timeout: float = 15.0):
        self.api = api.rstrip("/")
        self.company = company
        self.profiles = profiles
        self._id, self._key = hawk_id, hawk_key
        self._http = httpx.Client(verify=ctx, timeout=timeout, trust_env=False)

    def __repr__(self) -> str:
        return f"SnomSraps({self.api})"

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, mac: str, body: dict | None = None) -> httpx.Response:
        url = f"{self.api}/companies/{self.company}/endpoints/{mac}"
        ts, nonce = str(int(time.time())), secrets.token_urlsafe(8)
        headers = {"Accept": "application/json"}
        raw = None
        h = ""
        if body is not None:
            raw = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            h = payload_hash("application/json", raw)
        mac_ = mac_of(self._key.reveal(), normalized(ts, nonce, method, url, h))
        auth = f'Hawk id="{self._id.reveal()}", ts="{ts}", nonce="{nonce}"' + (f', hash="{h}"' if h else "") + \
               f', mac="{mac_}"'
        headers["Authorization"] = auth
        try:
            return self._http.request(method, url, content=raw, headers=headers)
        except httpx.HTTPError as e:
            raise RedirectError(f"Snom SRAPS ({self.api}) unreachable: {type(e).__name__}") from None

    @staticmethod
    def _refused(r: httpx.Response, what: str) -> RedirectError:
        detail = ""
        try:
            j = r.json()
            detail = str(j.get("detail") or j.get("message") or j.get("error") or "")[:200] if isinstance(j, dict) else ""
        except ValueError:
            pass
        return RedirectError(f"Snom SRAPS refused {what}: HTTP {r.status_code}{(': ' + detail) if detail else ''}")

    def register(self, mac: str, url: str, site: str | None = None) -> str:
        profile = self.profiles.get(site or "")
        if not profile:
            raise InputError(f"snom-sraps: no provisioning profile for site {site}: set "
                             f"zero_touch.redirect.snom-sraps.profiles.{site} (a SRAPS profile whose setting_server "
                             f"is {url})")
        r = self._call("PUT", mac, {"mac": mac, "autoprovisioning_enabled": True, "provisioning_profile": profile})
        if r.status_code not in (200, 201):
            raise self._refused(r, "the registration")
        return f"assigned to SRAPS provisioning profile {profile} (site {site})"

    def status(self, mac: str) -> Registration:
        r = self._call("GET", mac)
        if r.status_code == 404:
            return Registration(False, None, "not registered at Snom SRAPS")
        if r.status_code != 200:
            raise self._refused(r, "the status query")
        try:
            j = r.json()
        except ValueError:
            raise RedirectError("Snom SRAPS answered without JSON") from None
        profile = j.get("provisioning_profile") if isinstance(j, dict) else None
        site = next((s for s, p in self.profiles.items() if p == profile), None)
        enabled = bool(j.get("autoprovisioning_enabled", True)) if isinstance(j, dict) else False
        detail = f"registered at Snom SRAPS, profile {profile}" + (f" (site {site})" if site else " (no site's)")
        if not enabled:
            detail += "; auto-provisioning disabled"
        return Registration(enabled and site is not None, f"profile:{profile}" if profile else None, detail)

    def remove(self, mac: str) -> str:
        r = self._call("DELETE", mac)
        if r.status_code == 404:
            return "was not registered at Snom SRAPS"
        if r.status_code not in (200, 202, 204):
            raise self._refused(r, "the removal")
        return "removed from Snom SRAPS"
