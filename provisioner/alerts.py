"""Alert hook: a security event (ban, lock, tampering) runs a command and/or posts to a webhook.

The event is a small JSON object (kind, target, reason, time) — never a secret. The command gets it on
stdin (no shell); the webhook gets it as a POST body. Both run off the request path, bounded in time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import subprocess
import threading

log = logging.getLogger("provisioner.alerts")


class Alerts:
    def __init__(self, command: list[str] | None = None, webhook: str | None = None, timeout: float = 10.0):
        self.command = command
        self.webhook = webhook
        self.timeout = timeout
        self._q: queue.Queue = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        if command or webhook:
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    def notify(self, kind: str, target: str, reason: str, **details) -> None:
        event = {"kind": kind, "target": target, "reason": reason,
                 "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **details}
        log.warning("security event %s %s: %s", kind, target, reason)
        if self._thread is None:
            return
        try:
            self._q.put_nowait(event)
        except queue.Full:
            log.error("alert queue full; event %s %s not sent", kind, target)

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
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=self.timeout + 1)
