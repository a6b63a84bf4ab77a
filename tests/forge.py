"""Forged-source UDP on loopback, as an attacker anywhere on the path would send it: a raw IPv4 socket
(IPPROTO_RAW, so the test writes the IP header and picks any source address and port). The datagram goes
to 127.0.0.1 only and never leaves the machine; the answers go to the forged address, where a test may
listen (a "victim") or nothing does (the kernel drops them).

Needs root (CAP_NET_RAW): skipped locally without it, a failure in CI (which runs as root).
"""

from __future__ import annotations

import os
import socket
import struct


def require_raw_sockets() -> None:
    import pytest
    if os.geteuid() != 0:
        msg = "forged-source UDP needs a raw socket (root)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """IPv4 + UDP; the kernel fills in the IP checksum and id; UDP checksum 0 (none) is valid over IPv4."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


class Forger:
    """Sends UDP datagrams with any source address (loopback destinations only)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sent_bytes = 0  # UDP payload bytes, what an amplification factor is measured against

    def send(self, src: str, sport: int, dport: int, payload: bytes, dst: str = "127.0.0.1") -> None:
        assert dst.startswith("127."), "forged packets stay on loopback"
        self.sock.sendto(udp_packet(src, sport, dst, dport, payload), (dst, 0))
        self.sent_bytes += len(payload)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Forger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rrq(filename: str, mode: str = "octet", **options: str) -> bytes:
    """A TFTP read request (RFC 1350), with RFC 2347 options if given."""
    out = b"\x00\x01" + filename.encode() + b"\x00" + mode.encode() + b"\x00"
    for k, v in options.items():
        out += k.encode() + b"\x00" + str(v).encode() + b"\x00"
    return out
