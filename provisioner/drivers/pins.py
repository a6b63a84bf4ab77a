"""Trust on first use, kept in files under --home: SSH host keys and TLS certificate fingerprints.

- `<home>/routers/known_hosts`: OpenSSH format (`[host]:port key-type base64`), readable with ssh-keygen -F.
- `<home>/routers/tls_pins`: one line per endpoint, `host:port sha256-hex-of-the-DER-certificate`.

The first contact pins what the device shows; every later contact must show the same, or is refused
with both fingerprints and how to re-pin after checking on site (`provisioner routers forget-key MAC`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from provisioner.drivers.base import PinMismatch, Unreachable

_lock = threading.Lock()


def pins_dir(home: Path) -> Path:
    d = home / "routers"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sha256_colon(der: bytes) -> str:
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def ssh_fingerprint(key) -> str:
    """OpenSSH's SHA256:base64 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class TlsPins:
    """host:port -> SHA-256 of the certificate (DER), hex."""

    def __init__(self, home: Path):
        self.path = pins_dir(home) / "tls_pins"

    def _read(self) -> dict[str, str]:
        out = {}
        try:
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#"):
                    out[parts[0]] = parts[1].lower()
        except FileNotFoundError:
            pass
        return out

    def get(self, host: str, port: int) -> str | None:
        return self._read().get(endpoint(host, port))

    def set(self, host: str, port: int, fingerprint: str) -> None:
        with _lock:
            pins = self._read()
            pins[endpoint(host, port)] = fingerprint.lower()
            _write_atomic(self.path, "".join(f"{k} {v}\n" for k, v in sorted(pins.items())))

    def forget(self, host: str, port: int) -> bool:
        with _lock:
            pins = self._read()
            if pins.pop(endpoint(host, port), None) is None:
                return False
            _write_atomic(self.path, "".join(f"{k} {v}\n" for k, v in sorted(pins.items())))
            return True


def fetch_certificate(host: str, port: int, timeout: float) -> bytes:
    """The DER certificate a TLS endpoint shows (no verification: this is what gets pinned or compared)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise Unreachable(f"no TLS answer from {endpoint(host, port)} ({type(e).__name__}: {e})") from None
    if not der:
        raise Unreachable(f"{endpoint(host, port)} showed no certificate")
    return der


def check_tls_pin(home: Path, host: str, port: int, timeout: float, what: str, forget_hint: str) -> tuple[str, bool]:
    """Pin on first contact, verify after: (sha256 hex, newly pinned)."""
    pins = TlsPins(home)
    der = fetch_certificate(host, port, timeout)
    fp = hashlib.sha256(der).hexdigest()
    known = pins.get(host, port)
    if known is None:
        pins.set(host, port, fp)
        return fp, True
    if known != fp:
        raise PinMismatch(
            f"{what}: the TLS certificate at {endpoint(host, port)} is not the one pinned on first contact "
            f"(pinned SHA256 {_colon(known)}, now {_colon(fp)}); refused. A factory reset or a firmware update "
            f"can make the device a new certificate, and so can someone in the middle: check the certificate "
            f"on site (the box's web page shows it), then run `{forget_hint}` to pin the new one.")
    return fp, False


def _colon(hexdigest: str) -> str:
    h = hexdigest.upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def known_hosts_path(home: Path) -> Path:
    p = pins_dir(home) / "known_hosts"
    if not p.exists():
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    return p


def forget_host_key(home: Path, host: str, port: int) -> bool:
    import paramiko
    path = known_hosts_path(home)
    with _lock:
        keys = paramiko.HostKeys(str(path))
        name = host if port == 22 else f"[{host}]:{port}"
        if name not in keys:
            return False
        del keys[name]
        keys.save(str(path))
    return True
