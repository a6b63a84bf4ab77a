"""AES-GCM at rest with one master key per home.

The key comes from PROVISIONER_MASTER_KEY (base64, 32 bytes) or from `<home>/master.key`, created 0600
on first use. Each ciphertext is bound to its row by the associated data (device, name, generation),
so a row copied onto another device does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provisioner.errors import ProvisionerError
from provisioner.secret import Secret

KEY_ENV = "PROVISIONER_MASTER_KEY"
NONCE_BYTES = 12


class MasterKeyError(ProvisionerError):
    pass


def _decode_key(text: str, origin: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{origin}: master key is not valid base64") from None
    if len(key) != 32:
        raise MasterKeyError(f"{origin}: master key must be 32 bytes (base64 of 32 random bytes), got {len(key)}")
    return key


def load_or_create_key(home: Path) -> bytes:
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env, KEY_ENV)
    path = home / "master.key"
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise MasterKeyError(f"{path}: master key is readable by others (mode {mode:o}); chmod 600 it")
        return _decode_key(path.read_text(), str(path))
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
    return key


class Keyring:
    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._key = key

    def derive(self, label: str) -> bytes:
        """A sub-key for another purpose (e.g. digest nonces shared by replicas of one fleet)."""
        return hmac.new(self._key, b"provisioner/" + label.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Keyring(<key>)"

    def seal(self, secret: Secret, aad: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.reveal().encode(), aad.encode())

    def open(self, blob: bytes, aad: str) -> Secret:
        try:
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad.encode())
        except InvalidTag:
            raise MasterKeyError(f"credential {aad} does not decrypt: wrong master key or tampered row") from None
        return Secret(plain.decode())
