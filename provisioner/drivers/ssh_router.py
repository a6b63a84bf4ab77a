"""OpenWrt-style routers over SSH (paramiko): UCI files up over SFTP, applied, read back; a unique password.

- Host key: pinned on first contact in `<home>/routers/known_hosts`, verified on every later one; a
  changed key is refused with both fingerprints (pins.py). Password login only (no agent, no key files).
- Files: rendered UCI files (templates/openwrt/) are written into `<root>/<config_dir>` (`/etc/config` on a
  router; the root is a parameter so tests and staging trees can point elsewhere), each through a
  temporary name and an atomic rename; then `apply_command` runs (`uci commit && reload_config` by default).
  If it fails, the previous files are put back and applied again.
- Password: `password_command` (`passwd {user}`) gets the new password twice on stdin (never on a command
  line, where `ps` would show it); read-back checks it against `<root>/etc/shadow` ($1$, $5$, $6$ hashes).
- Read-back: the files as they are now, and the shadow hashes; `compare()` gives a diff per file.

Commands are templates with {root} and {user} (validated, shell-quoted); the profile's `options` set them.
"""

from __future__ import annotations

import difflib
import io
import posixpath
import re
import shlex
import socket
import stat
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

from provisioner.drivers import unixcrypt
from provisioner.drivers.base import (WRITE_ONLY, ActionFailed, AuthenticationFailed, Drift, Driver, DriverError,
                                      PinMismatch, Progress, PushResult, Unreachable, Verifier, compare_states,
                                      scrub)
from provisioner.drivers.pins import endpoint, known_hosts_path, ssh_fingerprint
from provisioner.secret import Secret

_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_UCI_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MAX_FILE = 1 << 20


# ---- UCI ---------------------------------------------------------------------------------------------

def uci_quote(value: Any) -> str:
    """A UCI value in single quotes ('\\'' for a quote inside); control characters are refused."""
    text = value.reveal() if isinstance(value, Secret) else str(value)
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("a value with a control character cannot go into a UCI file")
    return "'" + text.replace("'", "'\\''") + "'"


def parse_uci(text: str) -> list[dict]:
    """UCI file text as [{"type", "name", "options": {k: v}, "lists": {k: [v]}}]; ValueError names the line."""
    sections: list[dict] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True, posix=True)
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
        if not words:
            continue
        kw = words[0]
        if kw == "config" and 2 <= len(words) <= 3 and _UCI_NAME.match(words[1]):
            sections.append({"type": words[1], "name": words[2] if len(words) == 3 else None, "options": {},
                             "lists": {}})
        elif kw in ("option", "list") and len(words) == 3 and _UCI_NAME.match(words[1]) and sections:
            if kw == "option":
                sections[-1]["options"][words[1]] = words[2]
            else:
                sections[-1]["lists"].setdefault(words[1], []).append(words[2])
        elif kw == "package" and len(words) == 2:
            continue
        else:
            raise ValueError(f"line {n}: not a UCI config/option/list line")
    return sections


# ---- what the router should hold ---------------------------------------------------------------------

@dataclass(frozen=True)
class RouterDesired:
    files: dict[str, bytes]  # UCI file name -> content, relative to the config directory
    passwords: dict[str, Secret] = field(default_factory=dict)  # account -> password to set
    passwords_applied: frozenset[str] = frozenset()  # accounts the store knows hold that password already
    force: bool = False

    def secrets(self) -> list[Secret]:
        return list(self.passwords.values())


class ShadowHash(Verifier):
    _NAMES = {"$1$": "md5-crypt", "$5$": "sha256-crypt", "$6$": "sha512-crypt", "$2": "bcrypt"}

    def __init__(self, hashed: str):
        self._hash = hashed

    def matches(self, secret: Secret) -> bool:
        return unixcrypt.verify(secret.reveal(), self._hash)

    def describe(self) -> str:
        if self._hash in ("", "!", "*", "x") or self._hash.startswith(("!", "*")):
            return "no password (empty or locked)" if self._hash in ("",) else "locked account"
        for prefix, name in self._NAMES.items():
            if self._hash.startswith(prefix):
                return f"{name} hash"
        return "hash of an unknown scheme"

    def __repr__(self) -> str:
        return f"ShadowHash({self.describe()})"


def _shadow_hashes(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = parts[1]
    return out


class SshRouterDriver(Driver):
    name = "ssh_router"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"facts", "push", "read_back", "resync", "reboot", "factory_reset", "admin_password"})

    def __init__(self, host: str, user: str, passwords: Sequence[Secret], *, home: Path, port: int = 22,
                 root: str = "/", config_dir: str = "etc/config", managed_files: Sequence[str] = (),
                 accounts: Sequence[str] = ("root",), apply_command: str = "uci commit && reload_config",
                 password_command: str = "passwd {user}", reboot_command: str = "reboot",
                 reset_command: str = "firstboot -y && reboot", lan_interface: str = "br-lan",
                 timeout: float = 10.0, command_timeout: float = 60.0, progress: Progress | None = None,
                 label: str | None = None, forget_hint: str = ""):
        super().__init__(progress)
        for a in accounts:
            if not _ACCOUNT.match(a):
                raise ValueError(f"bad account name {a!r}")
        if not posixpath.isabs(root):
            raise ValueError("root must be an absolute path on the router")
        self.host, self.user, self.port, self.home = host, user, port, home
        self._passwords = [p for p in passwords if p is not None]
        self.root = posixpath.normpath(root)
        self.config_dir = posixpath.normpath(posixpath.join(self.root, config_dir))
        if not (self.config_dir + "/").startswith(self.root.rstrip("/") + "/"):
            raise ValueError("config_dir must lie under root")
        self.managed_files = list(managed_files)
        for f in self.managed_files:
            if not _UCI_NAME.match(f):
                raise ValueError(f"bad UCI file name {f!r}")
        self.accounts = list(accounts)
        self.commands = {"apply": apply_command, "password": password_command, "reboot": reboot_command,
                         "reset": reset_command}
        self.lan_interface = lan_interface
        self.timeout, self.command_timeout = timeout, command_timeout
        self._label = label or f"router at {endpoint(host, port)}"
        self.forget_hint = forget_hint or "provisioner routers forget-key MAC"
        self.client = None
        self._sftp = None
        self.login_index: int | None = None
        self.login_secret: Secret | None = None
        self.host_key: str | None = None
        self.pinned_now = False
        self._secrets: list[Secret] = list(self._passwords)

    @property
    def label(self) -> str:
        return self._label

    # ---- connection ----------------------------------------------------------------------------
    def _connect(self, password: Secret):
        import paramiko
        driver = self

        class Tofu(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                path = known_hosts_path(driver.home)
                client.get_host_keys().add(hostname, key.get_name(), key)
                client.save_host_keys(str(path))
                driver.pinned_now = True
                driver.progress(f"pinned the SSH host key of {hostname} on first contact "
                                f"({key.get_name()} {ssh_fingerprint(key)})")

        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts_path(self.home)))
        client.set_missing_host_key_policy(Tofu())
        try:
            client.connect(self.host, self.port, username=self.user, password=password.reveal(),
                           look_for_keys=False, allow_agent=False, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise PinMismatch(
                f"{self.label}: the SSH host key is not the one pinned on first contact (pinned "
                f"{e.expected_key.get_name()} {ssh_fingerprint(e.expected_key)}, now {e.key.get_name()} "
                f"{ssh_fingerprint(e.key)}); refused. A reinstall or factory reset gives a router new host keys, "
                f"and so does someone in the middle: compare the fingerprint on the router's console, then run "
                f"`{self.forget_hint}` to pin the new key.") from None
        except paramiko.AuthenticationException:
            client.close()
            raise
        except (paramiko.SSHException, socket.timeout, OSError) as e:
            client.close()
            raise Unreachable(f"{self.label}: no SSH session ({type(e).__name__}: {e})") from None
        key = client.get_transport().get_remote_server_key()
        self.host_key = f"{key.get_name()} {ssh_fingerprint(key)}"
        return client

    def open(self) -> None:
        if self.client is not None:
            return
        import paramiko
        if not self._passwords:
            raise AuthenticationFailed(f"{self.label}: no password for user {self.user!r} (see the router's "
                                       f"management.password_env / password_file in the inventory)")
        self.progress(f"connecting to {self.label} over SSH")
        for i, pw in enumerate(self._passwords):
            try:
                self.client = self._connect(pw)
            except paramiko.AuthenticationException:
                continue
            self.login_index, self.login_secret = i, pw
            return
        tried = "the stored password" if len(self._passwords) == 1 else f"each of {len(self._passwords)} known passwords"
        raise AuthenticationFailed(
            f"{self.label}: wrong password: SSH login as {self.user!r} was refused with {tried}. If the router "
            f"was reset, give its current password through the inventory's management.password_env or "
            f"password_file; if someone changed it by hand, find out who before you overwrite it.")

    def close(self) -> None:
        for thing in (self._sftp, self.client):
            try:
                if thing is not None:
                    thing.close()
            except Exception:
                pass
        self._sftp = self.client = None

    @property
    def sftp(self):
        self.open()
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
            self._sftp.get_channel().settimeout(self.timeout)
        return self._sftp

    def _command(self, which: str, user: str | None = None) -> str:
        tmpl = self.commands[which]
        return tmpl.replace("{root}", shlex.quote(self.root)).replace("{user}", shlex.quote(user or ""))

    def run(self, cmd: str, stdin: bytes | None = None, timeout: float | None = None) -> tuple[int, str, str]:
        """Run one command; (exit status, stdout, stderr), bounded in time and size."""
        self.open()
        timeout = timeout or self.command_timeout
        try:
            chan = self.client.get_transport().open_session(timeout=self.timeout)
            chan.settimeout(timeout)
            chan.exec_command(cmd)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
        except Exception as e:
            raise Unreachable(f"{self.label}: cannot run a command ({type(e).__name__})") from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            got = False
            while chan.recv_ready():
                out += chan.recv(65536)[: max(0, MAX_FILE - len(out))] or b""
                got = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)[: max(0, MAX_FILE - len(err))] or b""
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                chan.close()
                raise ActionFailed(f"{self.label}: `{cmd.split()[0]}` did not finish within {timeout:g} s")
            if not got:
                time.sleep(0.01)
        rc = chan.recv_exit_status()
        chan.close()
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    # ---- files -----------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self.config_dir, name)

    def _read(self, path: str) -> bytes | None:
        try:
            with self.sftp.open(path, "rb") as f:
                return f.read(MAX_FILE)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise ActionFailed(f"{self.label}: cannot read {path} ({e})") from None

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.provisioner-{uuid.uuid4().hex[:8]}")
        sftp = self.sftp
        try:
            mode = stat.S_IMODE(sftp.stat(path).st_mode)
        except IOError:
            mode = 0o644
        try:
            sftp.putfo(io.BytesIO(data), tmp, confirm=True)
            sftp.chmod(tmp, mode)
            try:
                sftp.posix_rename(tmp, path)
            except IOError:  # a server without the posix-rename extension
                try:
                    sftp.remove(path)
                except IOError:
                    pass
                sftp.rename(tmp, path)
        except IOError as e:
            try:
                sftp.remove(tmp)
            except IOError:
                pass
            raise ActionFailed(f"{self.label}: cannot write {path} ({e})") from None

    def _remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except IOError:
            pass

    def _shadow(self) -> dict[str, str] | None:
        try:
            data = self._read(posixpath.join(self.root, "etc/shadow"))
        except (PermissionError, ActionFailed):
            return None
        return _shadow_hashes(data.decode("utf-8", "replace")) if data is not None else None

    # ---- getters ---------------------------------------------------------------------------------
    def _text(self, rel: str) -> str | None:
        try:
            data = self._read(posixpath.join(self.root, rel))
        except (PermissionError, ActionFailed):
            return None
        return data.decode("utf-8", "replace").strip() if data is not None else None

    def facts(self) -> dict[str, Any]:
        self.open()
        release = {}
        for line in (self._text("etc/openwrt_release") or "").splitlines():
            k, _, v = line.partition("=")
            release[k.strip()] = v.strip().strip("'\"")
        out: dict[str, Any] = {
            "platform": release.get("DISTRIB_ID") or "SSH router",
            "transport": f"ssh {endpoint(self.host, self.port)} (host key {self.host_key}, pinned)",
            "login_user": self.user,
            "model": self._text("tmp/sysinfo/model"),
            "board": self._text("tmp/sysinfo/board_name"),
            "firmware": " ".join(x for x in (release.get("DISTRIB_RELEASE"), release.get("DISTRIB_REVISION")) if x)
            or None,
            "target": release.get("DISTRIB_TARGET"),
        }
        mac = self._text(f"sys/class/net/{self.lan_interface}/address")
        out["lan_mac"] = mac.lower() if mac else None
        try:
            system = parse_uci((self._read(self._path("system")) or b"").decode("utf-8", "replace"))
            out["hostname"] = next((s["options"].get("hostname") for s in system if s["type"] == "system"), None)
        except (ValueError, ActionFailed, PermissionError):
            out["hostname"] = None
        try:
            drop = parse_uci((self._read(self._path("dropbear")) or b"").decode("utf-8", "replace"))
            d = next((s["options"] for s in drop if s["type"] == "dropbear"), {})
            out["ssh"] = {"password_auth": d.get("PasswordAuth"), "root_password_auth": d.get("RootPasswordAuth"),
                          "interface": d.get("Interface") or "(all)", "port": d.get("Port")}
        except (ValueError, ActionFailed, PermissionError):
            out["ssh"] = None
        try:
            fw = parse_uci((self._read(self._path("firewall")) or b"").decode("utf-8", "replace"))
            defaults = next((s["options"] for s in fw if s["type"] == "defaults"), None)
            out["sip_alg"] = None if defaults is None else defaults.get("auto_helper", "1") != "0"
        except (ValueError, ActionFailed, PermissionError):
            out["sip_alg"] = None
        shadow = self._shadow()
        out["passwords"] = None if shadow is None else {a: ShadowHash(shadow[a]).describe() if a in shadow else
                                                        "(no such account)" for a in self.accounts}
        return out

    def read_back(self) -> dict[str, Any]:
        self.open()
        out: dict[str, Any] = {}
        for name in self.managed_files:
            data = self._read(self._path(name))
            out[f"file:{name}"] = None if data is None else data.decode("utf-8", "replace")
        shadow = self._shadow()
        for a in self.accounts:
            if shadow is None:
                out[f"password:{a}"] = WRITE_ONLY
            else:
                out[f"password:{a}"] = ShadowHash(shadow[a]) if a in shadow else None
        return out

    def expected(self, desired: RouterDesired) -> dict[str, Any]:
        out: dict[str, Any] = {f"file:{n}": d.decode("utf-8", "replace") for n, d in desired.files.items()}
        out.update({f"password:{a}": pw for a, pw in desired.passwords.items()})
        return out

    def compare(self, desired: RouterDesired) -> list[Drift]:
        expected, actual = self.expected(desired), self.read_back()
        secrets = desired.secrets()
        out = []
        for d in compare_states(expected, actual):
            if d.kind == "differs" and d.key.startswith("file:"):
                diff = difflib.unified_diff(str(actual[d.key]).splitlines(), str(expected[d.key]).splitlines(),
                                            "on the router", "desired", lineterm="", n=0)
                lines = [scrub(x, secrets) for x in list(diff)[2:22]]
                d = replace(d, expected="(rendered file)", actual="(differs)", detail="\n".join(lines))
            elif d.key.startswith("file:") and d.kind == "missing":
                d = replace(d, expected="(rendered file)")
            out.append(d)
        return out

    # ---- push ------------------------------------------------------------------------------------
    def push(self, desired: RouterDesired) -> PushResult:
        self.open()
        self._secrets.extend(desired.secrets())
        res = PushResult()
        before: dict[str, bytes | None] = {}
        for name, data in desired.files.items():
            if not _UCI_NAME.match(name):
                raise ActionFailed(f"{self.label}: bad UCI file name {name!r}")
            current = self._read(self._path(name))
            if current == data and not desired.force:
                res.unchanged.append(f"file:{name}")
                continue
            before[name] = current
        if before:
            for name in before:
                self.progress(f"uploading {self._path(name)}")
                self._write_atomic(self._path(name), desired.files[name])
                res.changed.append(f"file:{name}")
            self.progress("applying (" + self.commands["apply"].split()[0] + " ...)")
            rc, out, err = self.run(self._command("apply"))
            if rc != 0:
                why = scrub((err or out).strip().splitlines()[-1] if (err or out).strip() else f"exit {rc}",
                            self._secrets)[:200]
                self.progress("apply failed: putting the previous files back")
                for name, old in before.items():
                    if old is None:
                        self._remove(self._path(name))
                    else:
                        self._write_atomic(self._path(name), old)
                rc2, _, _ = self.run(self._command("apply"))
                raise ActionFailed(f"{self.label}: applying the new configuration failed ({why}); the previous "
                                   f"files were restored" + ("" if rc2 == 0 else " but applying them failed too"))
        shadow = None
        for account, pw in desired.passwords.items():
            if not _ACCOUNT.match(account):
                raise ActionFailed(f"{self.label}: bad account name {account!r}")
            if account in desired.passwords_applied and not desired.force:
                shadow = shadow if shadow is not None else self._shadow()
                if shadow is None or (account in shadow and ShadowHash(shadow[account]).matches(pw)):
                    res.unchanged.append(f"password:{account}")
                    continue
            self.progress(f"setting a new password for {account!r}")
            line = pw.reveal()
            if "\n" in line or "\r" in line:
                raise ActionFailed(f"{self.label}: a password with a line break cannot be set")
            rc, out, err = self.run(self._command("password", account), stdin=f"{line}\n{line}\n".encode())
            if rc != 0:
                why = scrub((err or out).strip()[-200:], self._secrets)
                raise ActionFailed(f"{self.label}: setting the password of {account!r} failed (exit {rc}: {why})")
            shadow = self._shadow()
            if shadow is not None and not (account in shadow and ShadowHash(shadow[account]).matches(pw)):
                raise ActionFailed(f"{self.label}: the password of {account!r} was set, but the router's shadow "
                                   f"file does not show it")
            if shadow is None and account == self.user:
                self._prove_login(pw)
            res.changed.append(f"password:{account}")
        return res

    def _prove_login(self, pw: Secret) -> None:
        """Without a readable shadow file: a fresh login with the new password proves it."""
        import paramiko
        try:
            c = self._connect(pw)
        except paramiko.AuthenticationException:
            raise ActionFailed(f"{self.label}: the new password of {self.user!r} does not log in") from None
        c.close()

    # ---- actions -----------------------------------------------------------------------------------
    def resync(self) -> None:
        rc, out, err = self.run(self._command("apply"))
        if rc != 0:
            raise ActionFailed(f"{self.label}: reloading the configuration failed (exit {rc})")

    def _fire(self, which: str, what: str) -> None:
        self.progress(what)
        try:
            rc, out, err = self.run(self._command(which), timeout=min(self.command_timeout, 15.0))
        except (Unreachable, ActionFailed):
            return  # the connection goes down with the router: that is the expected end
        if rc not in (0, -1):
            raise ActionFailed(f"{self.label}: `{self.commands[which].split()[0]}` failed (exit {rc}: "
                               f"{scrub(err.strip()[-200:], self._secrets)})")

    def reboot(self) -> None:
        self._fire("reboot", "rebooting the router")

    def factory_reset(self) -> None:
        self._fire("reset", "resetting the router to factory settings")


__all__ = ["SshRouterDriver", "RouterDesired", "ShadowHash", "parse_uci", "uci_quote", "DriverError"]
