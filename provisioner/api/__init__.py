"""Helpdesk API and web page: served by `provisioner serve --api HOST:PORT` in the serve process.

The API runs on its own uvicorn server in a thread (its own event loop), over HTTPS with the serve
process's certificate; jobs run in a bounded worker (threads) in the same process.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from provisioner.errors import InputError

log = logging.getLogger("provisioner.api")

WORKER_THREADS = 4  # jobs running at once in this process (a reprovision holds one while it waits)


class ApiService:
    def __init__(self, rt, host: str, port: int, certfile: str, keyfile: str, threads: int = WORKER_THREADS):
        from provisioner.api.app import create_app
        from provisioner.api.jobs import JobQueue, JobWorker
        self.queue = JobQueue(rt.store)
        self.worker = JobWorker(rt, self.queue, threads=threads)
        app = create_app(rt, self.queue, on_submit=self.worker.notify)
        config = uvicorn.Config(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                                log_level="warning", access_log=False, server_header=False, proxy_headers=False,
                                lifespan="off", timeout_keep_alive=15, limit_concurrency=256)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)
        self.host, self.port = host, port

    def start(self, timeout: float = 15.0) -> None:
        self.worker.start()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise InputError(f"--api {self.host}:{self.port}: the helpdesk API could not start")
            time.sleep(0.05)
        log.info("helpdesk API on https://%s:%d/", self.host, self.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.worker.stop()  # running jobs see the stop and end as failed; their operations stay consistent
        if self.thread.is_alive():
            self.thread.join(timeout=10)
