"""SSH-managed (OpenWrt-style) router: a real OpenSSH sshd on 127.0.0.1 (free port, throwaway host key,
a test user created and removed here), a router-like tree for /etc/config in a temp directory, and shell
stand-ins for `uci commit && reload_config` and `passwd` (uci is not installed; test-peers.md §8).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IN_CI, Home, free_port, need
from provisioner import routers
from provisioner.drivers import unixcrypt
from provisioner.drivers.base import ActionFailed, AuthenticationFailed, PinMismatch
from provisioner.runtime import Runtime

SSHD = "/usr/sbin/sshd"
MAC = "9483c4000001"
LOGIN_ENV = "TEST_SSH_LOGIN"

UCI_APPLY = r"""#!/bin/sh
# stand-in for `uci commit && reload_config`: refuses a file that is not UCI, records what it applied
root="$1"
if [ -e "$root/tmp/fail-apply" ]; then echo "uci: Parse error (invalid command) at line 3, byte 0" >&2; exit 1; fi
for f in "$root"/etc/config/*; do
  if grep -Ev "^[[:space:]]*(#|$|config |option |list |package )" "$f" >/dev/null; then
    echo "uci: Parse error in $f" >&2; exit 1
  fi
done
echo "applied $(ls "$root/etc/config" | tr '\n' ' ')" >> "$root/tmp/applied.log"
"""

PASSWD = r"""#!/bin/sh
# stand-in for busybox passwd: the new password twice on stdin, a sha512-crypt hash into <root>/etc/shadow
root="$1"; user="$2"
IFS= read -r p1; IFS= read -r p2
[ -n "$p1" ] && [ "$p1" = "$p2" ] || { echo "passwd: password for $user is unchanged" >&2; exit 1; }
[ -e "$root/tmp/fail-passwd" ] && { echo "passwd: cannot write shadow" >&2; exit 1; }
hash=$(printf '%s' "$p1" | openssl passwd -6 -stdin) || exit 1
awk -F: -v OFS=: -v u="$user" -v h="$hash" '$1==u{$2=h}1' "$root/etc/shadow" > "$root/etc/shadow.new" \
  && mv "$root/etc/shadow.new" "$root/etc/shadow"
echo "passwd: password for $user changed by $(id -un)"
"""


@dataclass
class SshUser:
    name: str
    password: str
    base: Path


@pytest.fixture(scope="module")
def ssh_user():
    need("ssh-keygen", "openssl")
    if not Path(SSHD).exists() or os.geteuid() != 0:
        msg = f"{SSHD} (openssh-server) and root (to create a throwaway user) are needed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    created_run = not Path("/run/sshd").exists()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    name = f"pvr{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    base = Path(tempfile.mkdtemp(prefix="sshrouter-"))
    base.chmod(0o755)
    subprocess.run(["useradd", "-M", "-d", str(base / "home"), "-s", "/bin/sh", name], check=True, timeout=30)
    try:
        (base / "home").mkdir()
        shutil.chown(base / "home", name, name)
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
        yield SshUser(name, password, base)
    finally:
        subprocess.run(["userdel", name], timeout=30, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        if created_run:
            shutil.rmtree("/run/sshd", ignore_errors=True)


class Sshd:
    def __init__(self, user: SshUser, port: int):
        self.user, self.port = user, port
        self.key = user.base / f"host_key_{port}"
        self.proc: subprocess.Popen | None = None

    def new_host_key(self) -> None:
        for p in (self.key, self.key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True, timeout=30)

    def start(self) -> "Sshd":
        if not self.key.exists():
            self.new_host_key()
        conf = self.user.base / f"sshd_config_{self.port}"
        conf.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.key}
PidFile {self.user.base}/sshd_{self.port}.pid
AuthorizedKeysFile none
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
PermitRootLogin no
AllowUsers {self.user.name}
MaxAuthTries 10
Subsystem sftp internal-sftp
""")
        subprocess.run([SSHD, "-t", "-f", str(conf)], check=True, timeout=30)
        self.log = open(self.user.base / f"sshd_{self.port}.log", "a")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.user.base / f"sshd_{self.port}.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def sshd(ssh_user):
    d = Sshd(ssh_user, free_port()).start()
    yield d
    d.stop()


def make_tree(user: SshUser) -> Path:
    """A router-like file tree the test user owns: /etc/config, /etc/shadow, release and board files."""
    root = user.base / f"router-{secrets.token_hex(3)}"
    for d in ("etc/config", "tmp/sysinfo", "sys/class/net/br-lan", "bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/config/system").write_text("config system\n\toption hostname 'OpenWrt'\n\toption timezone 'UTC'\n")
    (root / "etc/config/dropbear").write_text("config dropbear\n\toption PasswordAuth 'on'\n\toption Port '22'\n")
    (root / "etc/config/firewall").write_text("config defaults\n\toption input 'ACCEPT'\n")
    (root / "etc/config/network").write_text("config interface 'lan'\n\toption proto 'static'\n")
    (root / "etc/shadow").write_text("root::0:0:99999:7:::\ndaemon:*:0:0:99999:7:::\n")  # factory: no password
    (root / "etc/openwrt_release").write_text("DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='23.05.3'\n"
                                              "DISTRIB_REVISION='r23809-234f1a2efa'\nDISTRIB_TARGET='ath79/generic'\n")
    (root / "tmp/sysinfo/model").write_text("TP-Link Archer C7 v5\n")
    (root / "sys/class/net/br-lan/address").write_text("94:83:C4:00:00:01\n")
    (root / "bin/uci-apply").write_text(UCI_APPLY)
    (root / "bin/passwd").write_text(PASSWD)
    for p in [root, *root.rglob("*")]:
        shutil.chown(p, user.name, user.name)
    return root


def router_yaml(user: SshUser, sshd: Sshd, root: Path, name: str = "shop gw") -> str:
    return f"""
routers:
  - mac: 94:83:c4:00:00:01
    profile: openwrt
    model: generic
    site: lab
    name: {name}
    address: 127.0.0.1
    management:
      user: {user.name}
      port: {sshd.port}
      password_env: {LOGIN_ENV}
    options:
      root: {root}
      accounts: [root]
      apply_command: sh {{root}}/bin/uci-apply {{root}}
      password_command: sh {{root}}/bin/passwd {{root}} {{user}}
      reboot_command: echo reboot >> {{root}}/tmp/actions.log
      reset_command: echo firstboot >> {{root}}/tmp/actions.log
"""


@pytest.fixture
def setup(home: Home, ssh_user, sshd, monkeypatch):
    root = make_tree(ssh_user)
    with open(home.inventory, "a") as f:
        f.write(router_yaml(ssh_user, sshd, root))
    monkeypatch.setenv(LOGIN_ENV, ssh_user.password)
    rt = Runtime(home=home.path, inventory_path=home.inventory)
    yield rt, root, sshd, home
    rt.store.close()


def shadow_hash(root: Path, user: str = "root") -> str:
    return next(ln.split(":")[1] for ln in (root / "etc/shadow").read_text().splitlines() if ln.startswith(user + ":"))


def applied(root: Path) -> list[str]:
    p = root / "tmp/applied.log"
    return p.read_text().splitlines() if p.exists() else []


def test_push_uploads_uci_sets_unique_password_and_reads_back(setup):
    rt, root, sshd, _ = setup
    steps: list[str] = []
    out = routers.push(rt, MAC, "test", progress=steps.append)
    assert out.ok, out.drift
    assert any("pinned the SSH host key" in s for s in steps)
    system = (root / "etc/config/system").read_text()
    assert "option hostname 'shop-gw'" in system and "option zonename 'Europe/Paris'" in system
    assert "option timezone 'CET-1CEST,M3.5.0,M10.5.0/3'" in system and "list server '0.fr.pool.ntp.org'" in system
    dropbear = (root / "etc/config/dropbear").read_text()
    assert f"option Port '{sshd.port}'" in dropbear and "option Interface 'lan'" in dropbear
    assert (root / "etc/config/network").read_text().startswith("config interface"), "unmanaged files untouched"
    assert len(applied(root)) == 1
    creds = rt.store.credentials(MAC, "active")
    assert set(creds) == {"login", "password:root"}
    h = shadow_hash(root)
    assert h.startswith("$6$") and unixcrypt.verify(creds["password:root"].reveal(), h)
    assert len(creds["password:root"]) == 24 and creds["password:root"] != creds["login"]
    assert out.facts["firmware"] == "23.05.3 r23809-234f1a2efa" and out.facts["model"] == "TP-Link Archer C7 v5"
    assert out.facts["lan_mac"] == "94:83:c4:00:00:01" and out.facts["hostname"] == "shop-gw"
    assert out.facts["passwords"] == {"root": "sha512-crypt hash"}
    assert f"[127.0.0.1]:{sshd.port}" in (rt.home / "routers" / "known_hosts").read_text()
    # read back: no drift; a second push changes nothing on the router
    st = routers.status(rt, MAC)
    assert st.error is None and st.drift == [], st.drift
    again = routers.push(rt, MAC, "test")
    assert again.ok and again.result.changed == [] and len(applied(root)) == 1 and shadow_hash(root) == h
    assert rt.store.device(MAC).state == "provisioned"


def test_drift_shows_a_diff_and_push_restores(setup):
    rt, root, _, _ = setup
    assert routers.push(rt, MAC, "test").ok
    system = root / "etc/config/system"
    system.write_text(system.read_text().replace("'shop-gw'", "'hacked'"))
    (root / "etc/shadow").write_text("root:$1$abc$0123456789abcdefghijkl:0:0:99999:7:::\n")
    st = routers.status(rt, MAC)
    drift = {d.key: d for d in st.drift}
    assert set(drift) == {"file:system", "password:root"}
    assert "-\toption hostname 'hacked'" in drift["file:system"].detail
    assert "+\toption hostname 'shop-gw'" in drift["file:system"].detail
    assert drift["password:root"].actual == "md5-crypt hash"
    out = routers.push(rt, MAC, "test")
    assert out.ok and set(out.result.changed) == {"file:system", "password:root"}
    assert "'shop-gw'" in system.read_text()
    assert unixcrypt.verify(rt.store.credentials(MAC, "active")["password:root"].reveal(), shadow_hash(root))


def test_changed_host_key_is_refused(setup):
    rt, root, sshd, _ = setup
    assert routers.push(rt, MAC, "test").ok
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    with pytest.raises(PinMismatch) as e:
        routers.push(rt, MAC, "test")
    msg = str(e.value)
    assert "SSH host key is not the one pinned on first contact" in msg and msg.count("SHA256:") == 2
    assert f"provisioner routers forget-key {MAC}" in msg
    assert routers.forget_key(rt, MAC, "test") == ["SSH host key"]
    assert routers.push(rt, MAC, "test").ok  # pinned again, logs in with the stored password


def test_wrong_password_is_reported_clearly(setup, monkeypatch):
    rt, root, _, _ = setup
    monkeypatch.setenv(LOGIN_ENV, "not-the-password")
    with pytest.raises(AuthenticationFailed) as e:
        routers.push(rt, MAC, "test")
    msg = str(e.value)
    assert "wrong password: SSH login as" in msg and "was refused" in msg and "not-the-password" not in msg
    assert e.value.exit_code == 4 and applied(root) == []


def test_failed_apply_puts_the_previous_files_back(setup):
    rt, root, _, _ = setup
    before = (root / "etc/config/system").read_text()
    (root / "tmp/fail-apply").write_text("")
    with pytest.raises(ActionFailed) as e:
        routers.push(rt, MAC, "test")
    assert "uci: Parse error" in str(e.value) and "previous files were restored" in str(e.value)
    assert (root / "etc/config/system").read_text() == before
    assert not list((root / "etc/config").glob(".*provisioner-*")), "no temporary file left behind"


def test_interrupted_password_change_resumes_with_the_same_password(setup):
    rt, root, _, _ = setup
    (root / "tmp/fail-passwd").write_text("")
    with pytest.raises(ActionFailed, match="setting the password of 'root' failed"):
        routers.push(rt, MAC, "test")
    pending = rt.store.credentials(MAC, "pending")["password:root"]
    assert rt.store.credentials(MAC, "active") == {}
    (root / "tmp/fail-passwd").unlink()
    assert routers.push(rt, MAC, "test").ok
    assert rt.store.credentials(MAC, "active")["password:root"] == pending
    assert unixcrypt.verify(pending.reveal(), shadow_hash(root))
    rotated = routers.push(rt, MAC, "test", rotate=True)
    new = rt.store.credentials(MAC, "active")["password:root"]
    assert rotated.ok and new != pending and unixcrypt.verify(new.reveal(), shadow_hash(root))
    assert not unixcrypt.verify(pending.reveal(), shadow_hash(root))


def test_cli_push_render_and_routers(setup, ssh_user):
    rt, root, sshd, home = setup
    env = {LOGIN_ENV: ssh_user.password}
    r = home.cli("routers", "render", MAC, env=env)
    assert r.returncode == 0 and "==> system <==" in r.stdout and "option hostname 'shop-gw'" in r.stdout
    r = home.cli("push", MAC, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and set(res["pushed"]["changed"]) == {"file:system", "file:dropbear", "password:root"}
    r = home.cli("routers", "show", MAC, env=env)
    assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
    r = home.cli("routers", "reboot", MAC, env=env)
    assert r.returncode == 0 and (root / "tmp/actions.log").read_text() == "reboot\n"
    r = home.cli("push", MAC, env={LOGIN_ENV: "wrong"}, timeout=60)
    assert r.returncode == 0, "the stored password is tried first: a wrong source does not matter once enrolled"
    stored = rt.store.credentials(MAC, "active")
    for s in stored.values():
        assert s.reveal() not in (home.capture / "cli.log").read_text()
