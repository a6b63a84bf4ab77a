"""Anti-harvest: per-source failure counting and temporary bans.

A MAC is not a secret, so scanners walk provisioning servers guessing them. Every failed request for a
device file (unknown MAC, refused credentials, refused enrolment, names no vendor asks for) counts
against its source; past the threshold the source gets 429 for a while, then 403 if it keeps coming
back. A phone's normal digest dance (an anonymous request for its own, known file, answered 401, then
the authenticated one) is not a failure. Sources outside every site network are also counted per
prefix (/24, /64), so a scan spread over many addresses of one network is throttled as one; site
networks never get a prefix ban (one bad host must not cut off a whole office).

In memory, per process: replicas each keep their own counters (a scanner is throttled by each).
"""

from __future__ import annotations

import functools
import ipaddress
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
    failures: deque = field(default_factory=deque)
    banned_until: float = 0.0
    bans: deque = field(default_factory=deque)


@dataclass(frozen=True)
class Verdict:
    status: int  # 429 or 403
    retry_after: int
    reason: str


class Guard:
    def __init__(self, policy: GuardPolicy, is_site_address: Callable[[str], bool],
                 on_ban: Callable[[str, str, int], None] | None = None, clock=time.monotonic):
        self.policy = policy
        self._is_site = is_site_address
        self._on_ban = on_ban
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
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
                self._sources.pop(next(iter(self._sources)))
            src = self._sources[key] = _Source()
        return src

    def check(self, ip: str) -> Verdict | None:
        """A verdict if the source (or its prefix) is banned now."""
        now = self._clock()
        with self._lock:
            for key in (ip, self.prefix_of(ip)):
                src = self._sources.get(key) if key else None
                if src and src.banned_until > now:
                    self.refused_total += 1
                    forbid = len(src.bans) >= self.policy.forbid_after_bans
                    return Verdict(403 if forbid else 429, int(src.banned_until - now) + 1,
                                   f"source {'network ' if key.startswith('net:') else ''}banned "
                                   f"after repeated failed requests")
        return None

    def failure(self, ip: str) -> None:
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
                q.append(now)
                while q and q[0] < now - self.policy.window:
                    q.popleft()
                if len(q) >= limit and src.banned_until <= now:
                    while src.bans and src.bans[0] < now - 86400:
                        src.bans.popleft()
                    src.bans.append(now)
                    factor = 2 ** (len(src.bans) - 1)  # each new ban of the day lasts longer
                    src.banned_until = now + self.policy.ban_seconds * factor
                    q.clear()
                    self.bans_total += 1
                    events.append((key, int(self.policy.ban_seconds * factor)))
        for key, seconds in events:  # outside the lock: the hook writes the audit log
            if self._on_ban:
                self._on_ban(key.removeprefix("net:"), "network" if key.startswith("net:") else "source", seconds)

    def success(self, ip: str) -> None:
        """A device authenticated from this source: its earlier failures were the digest dance or a retry."""
        with self._lock:
            src = self._sources.get(ip)
            if src:
                src.failures.clear()
