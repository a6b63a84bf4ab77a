"""Off the request path, once a second: enrolment conflicts, bans shared between processes, summaries of
what bans refused, and the retention of fetch events.

- Enrolment conflicts: anonymous requests for enrolled devices that no authenticated retry followed
  (pipeline.settle_suspects).
- Bans: read from the store what other processes and replicas banned since the last look (a second ago),
  so a source banned anywhere is refused everywhere within about a second.
- Summaries: requests refused by a running ban are not recorded one by one (20,000 pipelined requests
  made 20,000 rows); each banned source gets one fetch-event row per interval with the count.
- Retention: fetch events older than `security.fetch_event_days` are deleted in batches of 5,000 rows
  (one short transaction each) at start and every 10 minutes; every replica may do it, deleting twice is
  harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from provisioner.serve.pipeline import Pipeline
from provisioner.store import utcnow

log = logging.getLogger("provisioner.serve")

TICK = 1.0
SUMMARY_EVERY = 5.0
PRUNE_EVERY = 600.0
PRUNE_FIRST = 2.0  # seconds after start


class Housekeeper:
    def __init__(self, pipeline: Pipeline, fetch_event_days: int):
        self.pipeline = pipeline
        self.days = fetch_event_days
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._synced: dt.datetime | None = None
        started = time.monotonic()
        self._next_summary = started + SUMMARY_EVERY
        self._next_prune = started + PRUNE_FIRST

    def start(self) -> "Housekeeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.summarise()  # what the last bans refused goes to the recorder before it closes

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            for step in (self.pipeline.settle_suspects, self.sync_bans, self._maybe_summarise, self._maybe_prune):
                try:
                    step()
                except Exception:  # a database hiccup must not stop the others, nor the next tick
                    log.exception("housekeeping step %s failed", getattr(step, "__name__", step))

    def sync_bans(self) -> None:
        now = utcnow()
        since = None if self._synced is None else self._synced - dt.timedelta(seconds=2)  # clock skew margin
        for key, until, level in self.pipeline.rt.store.bans_since(since, now):
            self.pipeline.guard.adopt(key, until.timestamp(), level)
        self._synced = now

    def _maybe_summarise(self) -> None:
        if time.monotonic() >= self._next_summary:
            self._next_summary = time.monotonic() + SUMMARY_EVERY
            self.summarise()

    def summarise(self) -> None:
        rec = self.pipeline.recorder
        for key, status, count in self.pipeline.guard.drain_refused():
            if rec is not None:
                rec.summary(key.removeprefix("net:"), status, count)

    def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY
        store = self.pipeline.rt.store
        now = utcnow()
        gone = store.prune_fetch_events(now - dt.timedelta(days=self.days), stop=self._stop)
        store.prune_bans(now)
        if gone:
            log.info("pruned %d fetch events older than %d days", gone, self.days)
