"""TFTP with tftpy's dynamic file hook, supervised.

tftpy 0.8.7 traps: a BytesIO answer kills listen() after the transfer (it flocks the file), and any
exception in a transfer's end path escapes listen(). So answers are memfd-backed real files, and the
server runs in a thread that restarts it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import tftpy

from provisioner.serve.pipeline import Pipeline, Request

log = logging.getLogger("provisioner.tftp")
logging.getLogger("tftpy").setLevel(logging.WARNING)


def _real_file(data: bytes):
    try:
        f = os.fdopen(os.memfd_create("tftp-answer", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):
        f = tempfile.TemporaryFile()
    f.write(data)
    f.seek(0)
    return f


class TftpService:
    def __init__(self, pipeline: Pipeline, host: str, port: int, root: Path):
        self.pipeline = pipeline
        self.host, self.port = host, port
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in root.iterdir():  # tftpy serves files under root first; ours must answer everything
            raise RuntimeError(f"TFTP root {root} must stay empty (found {p.name})")
        self.root = root
        self._server: tftpy.TftpServer | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="tftp", daemon=True)
        self.ready = threading.Event()

    def _answer(self, path: str, raddress: str | None = None, rport: int | None = None, **_):
        reply = self.pipeline.handle(Request("tftp", path, raddress or "0.0.0.0"))
        if reply.status != 200:
            return None
        return _real_file(reply.body)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._server = tftpy.TftpServer(str(self.root), dyn_file_func=self._answer)
            try:
                self.ready.set()
                self._server.listen(self.host, self.port)
                if self._stopping.is_set():
                    return
            except Exception:
                if self._stopping.is_set():
                    return
                failures += 1
                log.exception("TFTP server stopped; restarting (%d)", failures)
                time.sleep(min(5.0, 0.2 * failures))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            try:
                self._server.stop(now=True)
            except Exception:
                pass
        self._thread.join(timeout=5)
