"""How many HTTPS connections one source address, and one network, may hold open at once.

Without a cap, one address holding ~4,000 TLS connections (each a GET announcing a body it never sends)
took every slot of the server and every phone got 503. Now:
- a source may hold `connections_per_source` connections (default 256: a site behind one NAT address
  boots all its phones at once), a network (/24, /64) `connections_per_network` (default 1024), the
  server `max_connections` in all (default 4096): holding every slot takes many networks;
- a connection over a cap is answered 503 at once and closed; outside the site networks it also counts
  as a failure of its source (guard.py), so an address that keeps trying is banned;
- a connection cut off by the head or body deadline (protocol.py) counts as a failure of its source;
- a source under a ban outside the sites is refused as it connects (429/403), before it is read.
Counted in the event loop's thread (the protocol's callbacks), per process.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from provisioner import metrics
from provisioner.serve.guard import Guard

REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 429: b"Too Many Requests", 403: b"Forbidden",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def plain_response(status: int, text: str, retry_after: int | None = None) -> bytes:
    body = (text + "\n").encode() if text else b""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")), b"connection: close\r\n",
            b"content-type: text/plain; charset=utf-8\r\n", b"content-length: %d\r\n" % len(body)]
    if retry_after:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join(head) + b"\r\n" + body


class ConnectionLimits:
    def __init__(self, guard: Guard, is_site_address: Callable[[str], bool], per_source: int = 256,
                 per_network: int = 1024, body_seconds: float = 10.0):
        self.guard = guard
        self.is_site = is_site_address
        self.per_source = per_source
        self.per_network = per_network
        self.body_seconds = body_seconds
        self.open: Counter = Counter()  # source address or "net:<prefix>" -> connections open now

    def admit(self, ip: str) -> bytes | None:
        """None when the connection may proceed (and is counted); else what to answer before closing it."""
        verdict = self.guard.check(ip)
        if verdict is not None and not verdict.soft:
            metrics.inc("provisioner_connections_refused_total", (("why", "banned"),))
            return plain_response(verdict.status, "too many failed requests" if verdict.status == 429
                                  else "forbidden", verdict.retry_after)
        net = Guard.prefix_of(ip)
        if self.open[ip] >= self.per_source or (net and self.open[net] >= self.per_network):
            metrics.inc("provisioner_connections_refused_total", (("why", "over a connection cap"),))
            if not self.is_site(ip):  # no phone lives outside the sites: trying again and again is abuse
                self.guard.failure(ip, "connections over the cap")
            return plain_response(503, "too many connections from your address", 5)
        self.open[ip] += 1
        if net:
            self.open[net] += 1
        return None

    def release(self, ip: str) -> None:
        for key in (ip, Guard.prefix_of(ip)):
            if key:
                n = self.open[key] - 1
                if n > 0:
                    self.open[key] = n
                else:
                    self.open.pop(key, None)

    def held(self, ip: str, why: str) -> None:
        """A connection cut off by a deadline: a failure of its source."""
        metrics.inc("provisioner_connections_cut_off_total")
        self.guard.failure(ip, why)
