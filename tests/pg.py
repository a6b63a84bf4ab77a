"""A throwaway PostgreSQL cluster for the test session (test-peers.md §11): initdb as the postgres user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self, port: int):
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="prov-pg-"))
        self.port = port
        self.user = "postgres"
        pw = pwd.getpwnam(self.user)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "pg.log"), "-w", "-o",
                  f"-k {self.dir} -h 127.0.0.1 -p {port} -c fsync=off -c synchronous_commit=off "
                  f"-c full_page_writes=off -c shared_buffers=16MB", "start")
        self._n = 0

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bin / tool), *args], check=True, capture_output=True, timeout=60,
                       user=self.user, group=self.user)

    def new_database(self) -> str:
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, timeout=30)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
