"""Anti-harvest: per-source failure counting and temporary bans.

A MAC is not a secret, so scanners walk provisioning servers guessing them. Every refused request for a
device file counts against its source, whether the MAC exists or not (an anonymous request for an
enrolled device counts like one for an unknown MAC: the counter tells nothing). A device's own digest
dance (its anonymous request, the 401, its authenticated request) is no failure: the success clears the
failures of that MAC from that source, and only those (one valid credential buys no guessing).
Connections held open without a request, or with a body that never comes, count too (protocol.py).

Only HTTPS is counted: a TCP handshake proves the source address, a UDP datagram does not (TFTP keeps
its own limits, tftp.py). A ban is never cheaper to cause than the service it denies:
- outside every site network, a source is refused (429, then 403 when it keeps coming back), and so is
  its network (/24, /64) when many of its addresses fail: no phone lives there;
- inside a site network one address may be a NAT with the site's phones behind it, and one bad host
  must not cut them off: a banned site address gets the 401 challenge for every anonymous request (no
  identification, no enrolment, the same answer whatever the MAC) while requests with valid
  credentials are served. Sites never get a network ban.

Per process: the failure counters (with R processes a scanner gets up to R x ban_after tries before its
first ban). Shared through the store: the bans themselves and their escalation (`sync`), so a source
banned by one process or replica is refused by all within a second.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from provisioner.inventory import parse_ip


@dataclass
class GuardPolicy:
    ban_after: int = 10  # failures within `window` seconds
    window: float = 600.0
    ban_seconds: float = 900.0
    prefix_ban_after: int = 40
    forbid_after_bans: int = 3  # bans within a day before 403 instead of 429
    max_sources: int = 200_000  # memory bound: oldest entries are forgotten first


@dataclass
class _Source:
    failures: deque = field(default_factory=deque)  # (time, tag): tag is the MAC asked for, or a kind
    banned_until: float = 0.0
    bans: deque = field(default_factory=deque)  # times of this key's bans within the last day
    refused: int = 0  # requests refused by the running ban, not yet summarised
    refused_status: int = 0


@dataclass(frozen=True)
class Verdict:
    status: int  # 429 or 403 (hard ban); 401 for a site address (anonymous requests get the challenge only)
    retry_after: int
    reason: str

    @property
    def soft(self) -> bool:
        return self.status == 401


class Guard:
    def __init__(self, policy: GuardPolicy, is_site_address: Callable[[str], bool],
                 on_ban: Callable[[str, str, int, int], None] | None = None, clock=time.time):
        self.policy = policy
        self._is_site = is_site_address
        self._on_ban = on_ban  # (target, "source" | "network", seconds, level)
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._banned: set[str] = set()  # keys with a ban that may still run: check() is free without any
        self._ended: list[tuple[str, int, int]] = []  # refusals of bans that ran out, not yet summarised
        self.failures_total = 0
        self.bans_total = 0
        self.refused_total = 0

    @staticmethod
    @functools.lru_cache(maxsize=16384)  # every request asks; the answer for an address never changes
    def prefix_of(ip: str) -> str | None:
        addr = parse_ip(ip)
        if addr is None:
            return None
        bits = 24 if addr.version == 4 else 64
        return "net:" + str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))

    def _get(self, key: str) -> _Source:
        src = self._sources.get(key)
        if src is None:
            if len(self._sources) >= self.policy.max_sources:
                for old in list(itertools.islice(self._sources, 1000)):  # the oldest, unless banned now
                    if old not in self._banned:
                        del self._sources[old]
            src = self._sources[key] = _Source()
        return src

    def check(self, ip: str) -> Verdict | None:
        """A verdict if the source (or its network) is banned now."""
        if not self._banned:
            return None
        now = self._clock()
        with self._lock:
            for key in (ip, self.prefix_of(ip)):
                if key not in self._banned:
                    continue
                src = self._sources.get(key)
                if src is None or src.banned_until <= now:
                    self._banned.discard(key)
                    if src is not None and src.refused:
                        self._ended.append((key, src.refused_status, src.refused))
                        src.refused = 0
                    continue
                self.refused_total += 1
                retry = int(src.banned_until - now) + 1
                if key == ip and self._is_site(ip):
                    status = 401
                    reason = "source banned after repeated failed requests (a site address: anonymous " \
                             "requests get the challenge only)"
                else:
                    status = 403 if len(src.bans) >= self.policy.forbid_after_bans else 429
                    reason = (f"source {'network ' if key.startswith('net:') else ''}banned after repeated "
                              f"failed requests")
                src.refused += 1
                src.refused_status = status
                return Verdict(status, retry, reason)
        return None

    def failure(self, ip: str, tag: str | None = None) -> None:
        now = self._clock()
        events = []
        with self._lock:
            self.failures_total += 1
            keys = [(ip, self.policy.ban_after)]
            prefix = self.prefix_of(ip)
            if prefix and not self._is_site(ip):
                keys.append((prefix, self.policy.prefix_ban_after))
            for key, limit in keys:
                src = self._get(key)
                q = src.failures
                q.append((now, tag))
                while q and q[0][0] < now - self.policy.window:
                    q.popleft()
                if len(q) >= limit and src.banned_until <= now:
                    events.append(self._ban(key, src, now))
        for key, seconds, level in events:  # outside the lock: the hook writes the audit log and the store
            if self._on_ban:
                self._on_ban(key.removeprefix("net:"), "network" if key.startswith("net:") else "source",
                             seconds, level)

    def _ban(self, key: str, src: _Source, now: float) -> tuple[str, int, int]:
        while src.bans and src.bans[0] < now - 86400:
            src.bans.popleft()
        src.bans.append(now)
        factor = 2 ** (len(src.bans) - 1)  # each new ban of the day lasts longer
        src.banned_until = now + self.policy.ban_seconds * factor
        src.failures.clear()
        self._banned.add(key)
        self.bans_total += 1
        return key, int(self.policy.ban_seconds * factor), len(src.bans)

    def success(self, ip: str, tag: str) -> None:
        """A device authenticated from this source: its own earlier anonymous request was the digest
        dance, not a guess. Only the failures naming this device go."""
        with self._lock:
            for key in (ip, self.prefix_of(ip)):
                src = self._sources.get(key) if key else None
                if src is not None and src.failures:
                    q = src.failures
                    for i in range(len(q) - 1, -1, -1):  # its own anonymous request is usually the last
                        if q[i][1] == tag:
                            del q[i]

    # ---- shared with the other processes and replicas (serve/housekeeping.py) ----------------------

    def adopt(self, key: str, until: float, level: int) -> None:
        """A ban decided elsewhere (another process or replica): refused here too, escalation included."""
        now = self._clock()
        if until <= now:
            return
        with self._lock:
            src = self._get(key)
            if until > src.banned_until:
                src.banned_until = until
                src.failures.clear()
            while len(src.bans) < level:
                src.bans.appendleft(now)
            self._banned.add(key)

    def drain_refused(self) -> list[tuple[str, int, int]]:
        """(key, status, requests) refused by running bans since the last call: recorded as one summary
        each instead of a fetch event per request."""
        with self._lock:
            out, self._ended = self._ended, []
            for key in list(self._banned):
                src = self._sources.get(key)
                if src is not None and src.refused:
                    out.append((key, src.refused_status, src.refused))
                    src.refused = 0
        return out
