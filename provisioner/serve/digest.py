"""HTTP Digest (RFC 7616, MD5 with qop=auth: what provisioning clients of phones implement).

Replay resistance (RFC 7616 §3.3 and §5.5):
- a nonce is bound to the client address it was issued to and to the process that issued it (an HMAC
  over time, a counter, this process's random id and the address): a captured header sent from another
  address, or to another process or replica, is answered with a fresh challenge (stale=true);
- qop=auth is required (without it no nonce count or client nonce binds a request);
- the nonce count (nc) of every (device, nonce) is tracked in memory and must grow: the same header
  again, or the same count with another cnonce, is answered with a fresh challenge.
Tracking lives in the process that issued the nonce, which is the only one that accepts it; a phone
whose authenticated retry reaches another process gets stale=true and retries there (one round trip).
Entries are kept for the nonce lifetime; if memory pressure ever forgets one early, nonces issued up to
then are refused as stale rather than trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import re
import struct
import threading
import time
from dataclasses import dataclass

REALM = "provisioner"
NONCE_TTL = 300
MAX_TRACKED = 200_000  # (device, nonce) pairs; only authenticated requests add one
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*(?:,|$)')
_NC = re.compile(r"[0-9a-fA-F]{8}\Z")


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
    def __init__(self, key: bytes | None = None, instance: bytes | None = None):
        self._key = key or os.urandom(32)
        self._instance = instance or os.urandom(8)  # this process's nonces only: their counts are tracked here
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}  # -> (nc, issued), in order of first use
        self._forgotten_until = 0  # nonces issued up to this time lost their record: refused
        self.replays_refused = 0

    def __repr__(self) -> str:
        return "DigestAuth(<key>)"

    def _mac(self, raw: bytes, ip: str) -> bytes:
        return hmac.new(self._key, raw + self._instance + ip.encode(), hashlib.sha256).digest()[:16]

    def _nonce(self, ts: int, ip: str) -> str:
        raw = struct.pack(">QQ", ts, next(self._counter) & 0xFFFFFFFFFFFFFFFF)
        return base64.urlsafe_b64encode(raw + self._mac(raw, ip)).decode().rstrip("=")

    def _issued(self, nonce: str, ip: str) -> int | None:
        """When this process issued `nonce` to `ip`; None if it did not (forged, another address, another
        process, or a key from before a restart)."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 32 or not hmac.compare_digest(self._mac(raw[:16], ip), raw[16:]):
            return None
        return struct.unpack(">Q", raw[:8])[0]

    def challenge(self, ip: str, stale: bool = False) -> str:
        nonce = self._nonce(int(time.time()), ip)
        return (f'Digest realm="{REALM}", qop="auth", algorithm=MD5, nonce="{nonce}"'
                + (", stale=true" if stale else ""))

    def verify(self, cred: DigestCredentials, method: str, path: str, password: str, ip: str) -> tuple[bool, bool]:
        """(ok, stale). Always does the same hashing work, whatever fails first. `stale`: the password was
        right but the nonce cannot be used (too old, issued to another address or process, or its count
        was seen already): the client is sent a fresh challenge, and nothing is served."""
        ha1 = _md5(f"{cred.username}:{REALM}:{password}")
        ha2 = _md5(f"{method}:{cred.uri}")
        expected = _md5(f"{ha1}:{cred.nonce}:{cred.nc}:{cred.cnonce}:{cred.qop}:{ha2}")
        ok = hmac.compare_digest(expected.encode(), cred.response.lower().encode())
        ok = ok and cred.realm == REALM and cred.algorithm.upper() == "MD5" and cred.qop == "auth" \
            and cred.uri.split("?", 1)[0] == path and bool(cred.cnonce) and _NC.match(cred.nc or "") is not None
        if not ok:
            return False, False
        issued = self._issued(cred.nonce, ip)
        now = time.time()
        if issued is None or now - issued > NONCE_TTL:
            return False, True
        return (True, False) if self._fresh(cred.username, cred.nonce, int(cred.nc, 16), issued, now) else (False, True)

    def _fresh(self, user: str, nonce: str, nc: int, issued: int, now: float) -> bool:
        """Record (user, nonce, nc); False for a count not above the last one seen (a replay)."""
        key = (user, nonce)
        with self._lock:
            seen = self._counts.get(key)
            if seen is None and issued <= self._forgotten_until:
                self.replays_refused += 1
                return False
            if seen is not None and nc <= seen[0]:
                self.replays_refused += 1
                return False
            self._counts[key] = (nc, issued)
            if seen is None and len(self._counts) % 256 == 0:
                self._expire(now)
        return True

    def _expire(self, now: float) -> None:
        """Forget counts of nonces past their lifetime (refused by age anyway), oldest first use first."""
        counts = self._counts
        while counts:
            key, (_, issued) = next(iter(counts.items()))
            if issued < now - NONCE_TTL:
                del counts[key]
            elif len(counts) > MAX_TRACKED:
                del counts[key]
                self._forgotten_until = max(self._forgotten_until, issued)
            else:
                break
