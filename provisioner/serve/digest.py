"""HTTP Digest (RFC 7616, MD5 with qop=auth: what provisioning clients of phones implement).

Nonces are stateless (timestamp + HMAC), so any replica can check any nonce that shares the key, and
the challenge looks the same for every file name: no hint whether a MAC exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
import time
from dataclasses import dataclass

REALM = "provisioner"
NONCE_TTL = 300
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*(?:,|$)')


def _md5(s: str) -> str:
    return hashlib.md5(s.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    algorithm: str
    opaque: str | None


def parse_authorization(header: str | None) -> DigestCredentials | None:
    if not header or not header[:7].lower() == "digest ":
        return None
    rest = header[7:]
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m:
            return None
        key = m.group(1).lower()
        val = m.group(2) if m.group(2) is not None else m.group(3)
        params[key] = re.sub(r"\\(.)", r"\1", val) if m.group(2) is not None and "\\" in val else val
        pos = m.end()
        if len(params) > 20:
            return None
    try:
        return DigestCredentials(params["username"], params["realm"], params["nonce"], params["uri"],
                                 params["response"], params.get("qop"), params.get("nc"), params.get("cnonce"),
                                 params.get("algorithm", "MD5"), params.get("opaque"))
    except KeyError:
        return None


class DigestAuth:
    def __init__(self, key: bytes | None = None):
        self._key = key or os.urandom(32)

    def __repr__(self) -> str:
        return "DigestAuth(<key>)"

    def _nonce(self, ts: int) -> str:
        raw = struct.pack(">Q", ts)
        mac = hmac.new(self._key, raw, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(raw + mac).decode().rstrip("=")

    def _nonce_age(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 24:
            return None
        (ts,) = struct.unpack(">Q", raw[:8])
        if not hmac.compare_digest(self._nonce(ts), nonce):
            return None
        return time.time() - ts

    def challenge(self, stale: bool = False) -> str:
        nonce = self._nonce(int(time.time()))
        return (f'Digest realm="{REALM}", qop="auth", algorithm=MD5, nonce="{nonce}"'
                + (", stale=true" if stale else ""))

    def verify(self, cred: DigestCredentials, method: str, path: str, password: str) -> tuple[bool, bool]:
        """(ok, stale). Always does the same hashing work, whatever fails first."""
        age = self._nonce_age(cred.nonce)
        ha1 = _md5(f"{cred.username}:{REALM}:{password}")
        ha2 = _md5(f"{method}:{cred.uri}")
        if cred.qop:
            expected = _md5(f"{ha1}:{cred.nonce}:{cred.nc}:{cred.cnonce}:{cred.qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{cred.nonce}:{ha2}")
        ok = hmac.compare_digest(expected.encode(), cred.response.lower().encode())
        uri_path = cred.uri.split("?", 1)[0]
        ok = ok and age is not None and cred.realm == REALM and cred.algorithm.upper() == "MD5" \
            and uri_path == path and cred.qop in (None, "auth")
        return ok and age <= NONCE_TTL, ok and age > NONCE_TTL
