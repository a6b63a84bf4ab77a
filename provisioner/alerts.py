"""Alert hook: a security event (ban, lock, enrolment conflict, tampering) runs a command and/or posts to
a webhook.

The event is a small JSON object (kind, target, reason, time) — never a secret. The command gets it on
stdin (no shell); the webhook gets it as a POST body. Both run off the request path, bounded in time.

A botnet banned address by address made one alert per address (1,407 in 15 s). Events are therefore
de-duplicated (the same kind and target again within `repeat_seconds`: not re-sent) and rate-limited
(`per_minute`); what was held back is counted and sent as one `alerts.suppressed` event once the rate
allows, or when the process stops. Every event is still in the audit log and the metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import subprocess
import threading
import time
from collections import Counter, deque

log = logging.getLogger("provisioner.alerts")


class Alerts:
    def __init__(self, command: list[str] | None = None, webhook: str | None = None, timeout: float = 10.0,
                 per_minute: int = 10, repeat_seconds: float = 3600.0, clock=time.monotonic):
        self.command = command
        self.webhook = webhook
        self.timeout = timeout
        self.per_minute = per_minute
        self.repeat_seconds = repeat_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}  # (kind, target) -> when last sent
        self._sent: deque = deque()  # times of the alerts sent within the last minute
        self._held: Counter = Counter()  # kind -> events held back since the last summary
        self._q: queue.Queue = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        if command or webhook:
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    def _admit(self, kind: str, target: str) -> tuple[bool, dict | None]:
        """(send this event?, a summary of held-back events to send first)."""
        now = self._clock()
        with self._lock:
            while self._sent and self._sent[0] <= now - 60:
                self._sent.popleft()
            last = self._last.get((kind, target))
            if last is not None and now - last < self.repeat_seconds:
                self._held[kind] += 1
                return False, None
            summary = None
            if self._held and len(self._sent) < self.per_minute:
                summary = self._summary()
                self._sent.append(now)
            if len(self._sent) >= self.per_minute:
                self._held[kind] += 1
                return False, summary
            self._sent.append(now)
            self._last[(kind, target)] = now
            if len(self._last) > 100_000:
                self._last = {k: t for k, t in self._last.items() if now - t < self.repeat_seconds}
            return True, summary

    def _summary(self) -> dict:
        held, self._held = self._held, Counter()
        n = sum(held.values())
        return _event("alerts.suppressed", "-", f"{n} further security events not sent one by one (rate limit "
                      f"or repeats); they are in the audit log", counts=dict(held))

    def notify(self, kind: str, target: str, reason: str, **details) -> None:
        send, summary = self._admit(kind, target)
        if summary is not None:
            self._enqueue(summary)
        if not send:
            return
        log.warning("security event %s %s: %s", kind, target, reason)
        self._enqueue(_event(kind, target, reason, **details))

    def _enqueue(self, event: dict) -> None:
        if self._thread is None:
            return
        try:
            self._q.put_nowait(event)
        except queue.Full:
            log.error("alert queue full; event %s %s not sent", event["kind"], event["target"])

    def _run(self) -> None:
        while True:
            event = self._q.get()
            if event is None:
                return
            body = json.dumps(event).encode()
            if self.command:
                try:
                    subprocess.run(self.command, input=body, timeout=self.timeout, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except (OSError, subprocess.SubprocessError) as e:
                    log.error("alert command failed: %s", type(e).__name__)
            if self.webhook:
                try:
                    import httpx
                    httpx.post(self.webhook, content=body, timeout=self.timeout,
                               headers={"Content-Type": "application/json"}).raise_for_status()
                except Exception as e:
                    log.error("alert webhook failed: %s", type(e).__name__)

    def close(self) -> None:
        with self._lock:
            summary = self._summary() if self._held else None
        if summary is not None:
            log.warning("security events held back by the alert rate limit: %s", summary["counts"])
            self._enqueue(summary)
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=self.timeout * 2 + 1)


def _event(kind: str, target: str, reason: str, **details) -> dict:
    return {"kind": kind, "target": target, "reason": reason,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **details}
