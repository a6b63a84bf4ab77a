"""Shared fixtures: a real `provisioner serve` process on free loopback ports, real clients (curl, tftp).

Every provisioner process's stdout/stderr is kept under the session's capture directory, so the
secret-leak test can scan all of it at the end (tests/test_zz_no_secret_leaks.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
PROVISIONER = [sys.executable, "-m", "provisioner"]
IN_CI = os.environ.get("CI") == "true"

# ---- skips -----------------------------------------------------------------------------------------
# A skip hides a test that did not run. Locally that is fine (a peer such as kamailio is not installed);
# in CI it means CI did not install what the suite needs, so with CI=true (set by .ci/run and by
# `make test-ci`) every skip is turned into a failure: pytest.skip, skipif markers, importorskip, at
# collection or in a test. A test whose case can never run anywhere declares it with a reason that starts
# with "permanent:", e.g. pytest.skip("permanent: FRITZ!OS 7.57 has no TLS port") (`skip_permanently`);
# those stay skips. The summary line "skips: N (permanent: M)" ends every run.
PERMANENT = "permanent:"


def skip_permanently(reason: str) -> None:
    """A skip that CI accepts: this case can never run (not: a peer is missing here)."""
    pytest.skip(f"{PERMANENT} {reason}")


def _skip_reason(rep) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr or "")


_skips = {"all": 0, "permanent": 0, "failed": 0}


def _judge_skip(rep) -> None:
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = _skip_reason(rep)
    _skips["all"] += 1
    if reason.startswith(PERMANENT):
        _skips["permanent"] += 1
    elif IN_CI:
        _skips["failed"] += 1
        rep.outcome = "failed"
        rep.longrepr = (f"skipped in CI: {reason}\n(with CI=true a skip is a failure unless its reason starts "
                        f"with {PERMANENT!r}; see tests/conftest.py)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _judge_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level skip or importorskip skips a whole file at collection
    _judge_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    s = _skips
    terminalreporter.write_line(f"skips: {s['all']} (permanent: {s['permanent']}"
                                + (f"; failed because CI=true: {s['failed']})" if IN_CI else ")"))


def run_last(test):
    """Run this test after every other test of the session, whatever the order pytest collected them in
    (or a plugin shuffled them into): the secret-leak scan reads what every other test left behind."""
    test.run_last = True
    return test


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: getattr(getattr(item, "function", None), "run_last", False))  # stable


def need(*binaries: str) -> None:
    """Skip locally when a Debian peer is missing; in CI a missing peer is a failure (.ci/run installs it)."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        msg = f"missing test peer(s): {', '.join(missing)} (installed by .ci/run)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free loopback port, never one this session handed out already (two calls in a row could
    otherwise get the same port back from the kernel, e.g. HTTPS and --api)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port in 50 tries")


@pytest.fixture(scope="session")
def capture_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("captured-output")


@dataclass
class Home:
    """A --home and an inventory for one test, plus a way to run the CLI against them."""

    path: Path
    inventory: Path
    capture: Path

    def cli(self, *args: str, check: bool = False, timeout: float = 60, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        cmd = [*PROVISIONER, "--home", str(self.path), "--inventory", str(self.inventory), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env={**os.environ, **(env or {})})
        with open(self.capture / "cli.log", "a") as f:
            f.write(f"$ {' '.join(args)}\n{r.stdout}{r.stderr}\n")
        if check and r.returncode != 0:
            raise AssertionError(f"provisioner {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r


@pytest.fixture
def home(tmp_path, capture_dir, request) -> Home:
    """A fresh home with a copy of the bundled inventory.yaml."""
    inv = tmp_path / "inventory.yaml"
    shutil.copy(REPO / "inventory.yaml", inv)
    cap = capture_dir / request.node.name.replace("/", "_")[:80]
    cap.mkdir(exist_ok=True)
    return Home(tmp_path / "home", inv, cap)


@dataclass
class Server:
    home: Home
    proc: subprocess.Popen
    https_port: int
    tftp_port: int
    api_port: int | None = None  # start_server(..., api=True): the helpdesk API (HTTPS, same CA)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/p/"

    @property
    def api_base(self) -> str:
        assert self.api_port, "start_server(..., api=True) starts the helpdesk API"
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca(self) -> Path:
        return self.home.path / "tls" / "ca.pem"

    def curl(self, filename: str, ua: str | None = None, user: str | None = None, password: str | None = None,
             extra: tuple[str, ...] = ()) -> tuple[int, bytes]:
        """Fetch like a phone: returns (HTTP status, body)."""
        need("curl")
        cmd = ["curl", "-sS", "--max-time", "10", "--cacert", str(self.ca), "-o", "-", "-w", "\n%{http_code}"]
        if ua is not None:
            cmd += ["-A", ua]
        if user is not None:
            cmd += ["--digest", "-u", f"{user}:{password}"]
        cmd += [*extra, self.base + filename]
        r = subprocess.run(cmd, capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr.decode()
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code), body

    def tftp(self, filename: str, dest: Path) -> bytes | None:
        """Fetch with the tftp-hpa client; None when the server refused (the client exits 0 anyway)."""
        need("tftp")
        dest.unlink(missing_ok=True)
        r = subprocess.run(["tftp", "127.0.0.1", str(self.tftp_port), "-m", "binary", "-c", "get", filename,
                            str(dest)], capture_output=True, text=True, timeout=30)
        if "Error" in r.stdout + r.stderr or not dest.exists() or dest.stat().st_size == 0:
            return None
        return dest.read_bytes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(home: Home, extra: tuple[str, ...] = (), env: dict | None = None, api: bool = False) -> Server:
    https_port, tftp_port = free_port(), free_port(socket.SOCK_DGRAM)
    api_port = free_port() if api else None
    if api_port:
        extra = (*extra, "--api", f"127.0.0.1:{api_port}")
    log = open(home.capture / f"serve-{https_port}.log", "w")
    proc = subprocess.Popen(
        [*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory), "serve",
         "--https", f"127.0.0.1:{https_port}", "--tftp", f"127.0.0.1:{tftp_port}", *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
    srv = Server(home, proc, https_port, tftp_port, api_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n"
                                 + (home.capture / f"serve-{https_port}.log").read_text())
        try:
            for port in (https_port, api_port) if api_port else (https_port,):
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            break
        except OSError:
            time.sleep(0.1)
    else:
        srv.stop()
        raise AssertionError("serve did not start listening within 30 s")
    return srv


@pytest.fixture
def server(home):
    srv = start_server(home)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL cluster per session; each test asks it for a fresh database."""
    from pg import Cluster, pg_bin
    if pg_bin() is None or os.geteuid() != 0:
        msg = "PostgreSQL server binaries (package postgresql) and root are needed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = Cluster(free_port())
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The store suite runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_cluster").new_database()


def ua_for(mac: str, model: str = "T46G", firmware: str = "66.86.0.15") -> str:
    from provisioner.macaddr import colon
    return f"Yealink SIP-{model} {firmware} {colon(mac)}"


def poll(fetch, done, timeout: float = 10.0, every: float = 0.1):
    """fetch() until done(result) or `timeout` seconds: a bounded wait for what serve writes in batches
    (fetch events). Returns the last result, for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(every)


def kv(body: bytes) -> dict[str, list[str]]:
    """Parse a key = value config (Yealink) into key -> values."""
    out: dict[str, list[str]] = {}
    for line in body.decode().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out
