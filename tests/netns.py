"""A throwaway LAN "site" made of network namespaces: one bridge namespace (the switch) and one namespace
per host, each with a veth into the bridge (../shared/reference/test-peers.md §2.2).

Multicast and broadcast tests run ONLY in here, never in the root namespace (whose default route leads
off the machine). Every interface is created directly inside its namespace, so nothing ever appears in
the root namespace, not even for a moment.

Names carry the pid ("pvt<pid>-<n>-<host>"), so parallel runs never collide, and a later run removes the
namespaces of a run that was killed (its pid is gone). Every process started in a site is stopped by its
own pid when the site closes, and the namespaces are deleted even when the test failed.

    with Site("10.99.7") as site:
        tech = site.add_host("tech", 10)
        site.popen(tech, ["snmpd", ...], "snmpd")
        site.run(tech, ["ping", "-c1", "10.99.7.1"])
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "pvt"
_counter = itertools.count(1)
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def need_root() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces (ip netns) need root"
    for tool in ("ip", "ss", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (iproute2 / util-linux)"
    return None


def require_namespaces() -> None:
    """Skip locally without root or iproute2; in CI (which runs as root) that is a failure."""
    import pytest
    why = need_root()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def _ip(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _namespaces() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _kill_namespace(ns: str) -> None:
    """Stop what still runs in one of OUR namespaces (by pid), then delete it."""
    r = _ip("netns", "pids", ns, check=False)
    for pid in (int(p) for p in r.stdout.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _ip("netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces left behind by runs whose process is gone (a killed pytest, a crashed bench)."""
    removed = []
    for ns in _namespaces():
        m = _NAME.match(ns)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_namespace(ns)
            removed.append(ns)
    return removed


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    mac: str | None
    prefixlen: int = 24

    def __str__(self) -> str:
        return f"{self.name}({self.ip})"


@dataclass
class Site:
    """A bridge plus hosts on <net>.0/24; use as a context manager (or call close())."""

    net: str = "10.99.7"  # the first three octets
    tmp: Path | None = None  # where configs and logs go (pytest's tmp_path, so the leak scan sees them)
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self):
        sweep_stale()
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.sw = f"{self.tag}-sw"
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._logs: list = []
        try:
            self._add_ns(self.sw)
            _ip("-n", self.sw, "link", "add", "br0", "type", "bridge")
            # no STP delay: a plain switch
            _ip("-n", self.sw, "link", "set", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
                check=False)
            _ip("-n", self.sw, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # ---- building ---------------------------------------------------------------------------------

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str, last_octet: int, mac: str | None = None, extra_ips: tuple[str, ...] = (),
                 ip: str | None = None, prefixlen: int = 24) -> Host:
        """A host namespace with eth0 (optionally with a given MAC) at <net>.<last_octet>/24 (or ip/prefixlen)."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        ns = f"{self.tag}-{name}"
        self._add_ns(ns)
        port = f"s{len(self.hosts) + 1}"
        cmd = ["link", "add", "name", "eth0", "netns", ns]
        if mac:
            cmd += ["address", mac]
        _ip(*cmd, "type", "veth", "peer", "name", port, "netns", self.sw)
        _ip("-n", self.sw, "link", "set", port, "master", "br0")
        _ip("-n", self.sw, "link", "set", port, "up")
        ip = ip or f"{self.net}.{last_octet}"
        _ip("-n", ns, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
        for extra in extra_ips:
            _ip("-n", ns, "addr", "add", extra if "/" in extra else f"{extra}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")  # multicast stays on this LAN
        h = Host(name, ns, ip, mac.lower() if mac else None, prefixlen)
        self.hosts[name] = h
        return h

    # ---- running things inside ----------------------------------------------------------------------

    @staticmethod
    def cmd(host: Host, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host.ns, *argv]

    def run(self, host: Host, argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(host, argv), timeout=timeout, **kw)

    def popen(self, host: Host, argv: list[str], label: str, **kw) -> subprocess.Popen:
        """Start a process in a host; its output goes to <tmp>/<label>.log; stopped by pid at close()."""
        log = open(self.tmp / f"{label}.log", "w")
        self._logs.append(log)
        kw.setdefault("stdout", log)
        kw.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen(self.cmd(host, argv), **kw)
        self.procs.append((label, p))
        return p

    def log(self, label: str) -> str:
        path = self.tmp / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen, timeout: float = 5) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def wait_udp(self, host: Host, port: int, timeout: float = 5.0) -> bool:
        """True once something in `host` listens on UDP `port` (bounded polling of ss)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run(host, ["ss", "-Hlun", f"sport = :{port}"], timeout=5)
            if r.stdout.strip():
                return True
            time.sleep(0.05)
        return False

    def wait_tcp(self, host: Host, port: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run(host, ["ss", "-Hltn", f"sport = :{port}"], timeout=5)
            if r.stdout.strip():
                return True
            time.sleep(0.05)
        return False

    # ---- peers ----------------------------------------------------------------------------------------

    def snmpd(self, host: Host, sys_descr: str, sys_name: str, sys_object_id: str | None = None,
              community: str = "public", v3: tuple[str, str, str] | None = None,
              allow: str | None = None) -> subprocess.Popen:
        """net-snmp snmpd on <host ip>:161, answering `allow` (default the site's /24) (test-peers.md §3)."""
        d = self.tmp / f"snmpd-{host.name}"
        (d / "persist").mkdir(parents=True, exist_ok=True)
        lines = [f"rocommunity {community} {allow or self.net + '.0/24'}",
                 f"sysName {sys_name}", f"sysDescr {sys_descr}", "sysLocation test site",
                 "sysContact test@example.invalid", "sysServices 72"]
        if sys_object_id:
            lines.append(f"sysObjectID {sys_object_id}")
        if v3:
            user, auth, priv = v3
            lines += [f'createUser {user} SHA "{auth}" AES "{priv}"', f"rouser {user} priv"]
        conf = d / "snmpd.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        return self.popen(host, ["env", f"SNMP_PERSISTENT_DIR={d / 'persist'}", "snmpd", "-f", "-Lo", "-C",
                                 "-c", str(conf), "-m", "", f"udp:{host.ip}:161"], f"snmpd-{host.name}")

    def avahi(self, host: Host, host_name: str, service_xml: str) -> subprocess.Popen:
        """avahi-daemon publishing one static service, in a private mount namespace so that neither
        /etc/avahi/services nor /run of the machine is touched (test-peers.md §7 (d))."""
        d = self.tmp / f"avahi-{host.name}"
        (d / "services").mkdir(parents=True, exist_ok=True)
        (d / "services" / "test.service").write_text(service_xml)
        conf = d / "avahi-daemon.conf"
        conf.write_text(f"[server]\nhost-name={host_name}\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\n"
                        "enable-dbus=no\nratelimit-burst=1000\n[publish]\npublish-workstation=no\n"
                        "[wide-area]\nenable-wide-area=no\n")
        # a private /run (tmpfs) holds avahi's pid file: another avahi-daemon on the machine is no conflict
        script = (f"mount --bind {d / 'services'} /etc/avahi/services && mount -t tmpfs tmpfs /run && "
                  f"mkdir -p /run/avahi-daemon && "
                  f"exec avahi-daemon -f {conf} --no-drop-root --no-chroot --no-rlimits")
        return self.popen(host, ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          f"avahi-{host.name}")

    def pnp_phone(self, host: Host, uri_user: str, vendor: str, model: str, version: str, ua: str,
                  label: str, scenario: Path, timeout: float = 12) -> subprocess.Popen:
        """sipp playing a phone that multicasts one SIP PnP SUBSCRIBE from <host ip>:5060 and logs the
        URL of the NOTIFY it gets ("PNP-URL <url>" in <label>-log.txt; messages in <label>-msg.txt)."""
        return self.popen(host, [
            "sipp", "-sf", str(scenario), "-i", host.ip, "-p", "5060", "-m", "1", "-nostdin",
            "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-key", "uri_user", uri_user, "-key", "pnp_vendor", vendor, "-key", "pnp_model", model,
            "-key", "pnp_version", version, "-key", "ua", ua,
            "-trace_logs", "-log_file", str(self.tmp / f"{label}-log.txt"),
            "-trace_msg", "-message_file", str(self.tmp / f"{label}-msg.txt"),
            "224.0.1.75:5060"], label)

    def pnp_result(self, label: str) -> tuple[str | None, str]:
        """(the URL the phone logged, or None; every SIP message it saw or sent)."""
        logf, msgf = self.tmp / f"{label}-log.txt", self.tmp / f"{label}-msg.txt"
        log = logf.read_text(errors="replace") if logf.exists() else ""
        msgs = msgf.read_text(errors="replace") if msgf.exists() else ""
        m = re.search(r"PNP-URL (\S+)", log)
        return (m.group(1) if m else None), msgs

    # ---- teardown ---------------------------------------------------------------------------------------

    def close(self) -> None:
        for _, p in reversed(self.procs):
            try:
                self.stop(p, timeout=3)
            except Exception:
                pass
        for f in self._logs:
            f.close()
        for ns in reversed(self.namespaces):
            _kill_namespace(ns)  # anything a process forked is stopped by pid, then the namespace goes
        self.namespaces.clear()

    def __enter__(self) -> "Site":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
