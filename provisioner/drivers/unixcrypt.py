"""Check a password against a crypt(3) hash from /etc/shadow: $1$ (MD5, BusyBox's default), $5$/$6$ (SHA-crypt).

Python's `crypt` module is deprecated (gone in 3.13), so the three schemes a router's shadow file uses are
written out here from their specifications (Poul-Henning Kamp's MD5-crypt; Ulrich Drepper's
"Unix crypt using SHA-256 and SHA-512"). $2*$ (bcrypt) goes to the bcrypt package when installed.
Only ever used to *verify*: the agent never sets a router password from a hash it made.
"""

from __future__ import annotations

import hashlib
import hmac

_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b64_from_24bit(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_B64[w & 0x3F])
        w >>= 6
    return "".join(out)


def _md5_crypt(pw: bytes, salt: bytes, magic: bytes = b"$1$") -> str:
    salt = salt[:8]
    alt = hashlib.md5(pw + salt + pw).digest()
    ctx = hashlib.md5(pw + magic + salt)
    n = len(pw)
    while n > 0:
        ctx.update(alt[:min(16, n)])
        n -= 16
    i = len(pw)
    while i:
        ctx.update(b"\0" if i & 1 else pw[:1])
        i >>= 1
    final = ctx.digest()
    for r in range(1000):
        c = hashlib.md5()
        c.update(pw if r & 1 else final)
        if r % 3:
            c.update(salt)
        if r % 7:
            c.update(pw)
        c.update(final if r & 1 else pw)
        final = c.digest()
    f = final
    out = (_b64_from_24bit(f[0], f[6], f[12], 4) + _b64_from_24bit(f[1], f[7], f[13], 4)
           + _b64_from_24bit(f[2], f[8], f[14], 4) + _b64_from_24bit(f[3], f[9], f[15], 4)
           + _b64_from_24bit(f[4], f[10], f[5], 4) + _b64_from_24bit(0, 0, f[11], 2))
    return f"{magic.decode()}{salt.decode()}${out}"


_SHA256_ORDER = [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
                 (27, 7, 17), (18, 28, 8), (9, 19, 29)]
_SHA512_ORDER = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
                 (62, 20, 41)]


def _sha_crypt(pw: bytes, setting: str, bits: int) -> str:
    h = hashlib.sha256 if bits == 256 else hashlib.sha512
    size = 32 if bits == 256 else 64
    parts = setting.split("$")  # ['', '5', ('rounds=N',) salt, ...]
    rounds, custom = 5000, False
    rest = parts[2:]
    if rest and rest[0].startswith("rounds="):
        rounds = max(1000, min(999_999_999, int(rest[0][7:])))
        custom = True
        rest = rest[1:]
    salt = (rest[0] if rest else "")[:16].encode()
    b = h(pw + salt + pw).digest()
    a = h(pw + salt)
    n = len(pw)
    while n > size:
        a.update(b)
        n -= size
    a.update(b[:n])
    i = len(pw)
    while i:
        a.update(b if i & 1 else pw)
        i >>= 1
    a_d = a.digest()
    dp = h(pw * len(pw)).digest()
    p = (dp * (len(pw) // size + 1))[:len(pw)]
    ds = h(salt * (16 + a_d[0])).digest()
    s = (ds * (len(salt) // size + 1))[:len(salt)]
    c_d = a_d
    for r in range(rounds):
        c = h()
        c.update(p if r & 1 else c_d)
        if r % 3:
            c.update(s)
        if r % 7:
            c.update(p)
        c.update(c_d if r & 1 else p)
        c_d = c.digest()
    f = c_d
    if bits == 256:
        out = "".join(_b64_from_24bit(f[x], f[y], f[z], 4) for x, y, z in _SHA256_ORDER)
        out += _b64_from_24bit(0, f[31], f[30], 3)
    else:
        out = "".join(_b64_from_24bit(f[x], f[y], f[z], 4) for x, y, z in _SHA512_ORDER)
        out += _b64_from_24bit(0, 0, f[63], 2)
    head = f"${'5' if bits == 256 else '6'}$" + (f"rounds={rounds}$" if custom else "")
    return f"{head}{salt.decode()}${out}"


def supported(hashed: str) -> bool:
    return hashed.startswith(("$1$", "$5$", "$6$", "$2a$", "$2b$", "$2y$"))


def verify(password: str, hashed: str) -> bool:
    """True when `password` is the one behind `hashed`. Unknown or locked (!, *) hashes never match."""
    pw = password.encode()
    try:
        if hashed.startswith("$1$"):
            salt = hashed[3:].split("$", 1)[0].encode()
            calc = _md5_crypt(pw, salt)
        elif hashed.startswith("$5$"):
            calc = _sha_crypt(pw, hashed, 256)
        elif hashed.startswith("$6$"):
            calc = _sha_crypt(pw, hashed, 512)
        elif hashed.startswith(("$2a$", "$2b$", "$2y$")):
            import bcrypt
            return bcrypt.checkpw(pw, hashed.encode())
        else:
            return False
    except (ValueError, IndexError, ImportError):
        return False
    return hmac.compare_digest(calc.encode(), hashed.encode())
