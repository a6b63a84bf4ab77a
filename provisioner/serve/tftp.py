"""TFTP: tftpy's protocol code with our own event loop, supervised.

tftpy 0.8.7's `TftpServer.listen()` has traps, and this module replaces that loop (the packet parsing,
the RRQ handling with its path check, the blksize/tsize option negotiation and the error answers stay
tftpy's):
- It builds every transfer context with flock=True, so an in-memory answer (BytesIO) kills listen()
  after the transfer. Our loop builds the contexts with flock=False: answers are in-memory buffers.
- It accepts uploads (WRQ) and writes them under its root, from where it serves them to anyone who asks
  that name: a TFTP put of `<mac>.cfg` would replace every phone's bootstrap. Uploads are refused.
- It selects over every session's socket, scans every session for each packet and checks every
  session's timeout after each select: O(sessions) per packet. Our loop uses epoll, finds
  the session by its socket, checks timeouts a few times a second, and sends a download's next DATA
  block itself when the expected ACK arrives (one recvfrom and one sendto per block).
- It treats a packet from a stranger's port as the session's. Ours answers it with error 5 (unknown
  transfer ID) and leaves the transfer alone (RFC 1350).
- Any exception in one transfer escapes listen() and drops every transfer. Ours ends that transfer only;
  the supervising thread still restarts the loop should the loop itself fail.
- A blksize above 65,464 (RFC 2348's maximum; tftpy accepts 65,536, which no UDP datagram carries) is
  negotiated down to 65,464.

Forged requests. A UDP source address costs nothing to forge, so TFTP never counts towards the HTTPS
guard (pipeline.py), and its own limits bound what a forger can make it send and hold:
- new transfers per source address: `security.tftp_requests_per_second`, bursts of twice that; over it a
  request is dropped without an answer (no reflection, no socket);
- a transfer whose peer never acknowledged anything is "unverified": its first packet (DATA 1, or OACK
  with RFC 2347 options) is not retransmitted on a timer. RFC 1350 lets either side retransmit; the
  requester does it by repeating its RRQ, and that is answered with the same packet. It ends after one
  timeout. At most MAX_UNVERIFIED of them at once (the oldest goes first), and `security.tftp_sessions`
  transfers in all: forged requests from many addresses hold a bounded number of sockets;
- a verified transfer (the peer acknowledged, so it receives what we send) retransmits as tftpy does.
A forger can still use up a victim address's rate for as long as it keeps sending: denying that address
TFTP costs the forger a continuous flood, never a one-off.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path

import tftpy
from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpShared import DEF_TIMEOUT_RETRIES, SOCK_TIMEOUT, TftpTimeout, TftpTimeoutExpectACK
from tftpy.TftpStates import TftpStateExpectACK

from provisioner import metrics
from provisioner.serve.pipeline import Pipeline, Request

log = logging.getLogger("provisioner.tftp")
logging.getLogger("tftpy").setLevel(logging.WARNING)

TICK = 0.2  # seconds between timeout checks (and the longest a stop request waits)
MAX_BLKSIZE = 65464  # RFC 2348
MAX_PACKET = 65536
ACK, DATA = 4, 3
UNKNOWN_TID = b"\x00\x05\x00\x05unknown transfer ID\x00"
RRQ = 1
MAX_UNVERIFIED = 256  # transfers waiting for their peer's first ACK: real peers answer within milliseconds
MAX_REPEATS = 3  # repeated RRQs of one transfer answered with its first packet again
MAX_RATE_ENTRIES = 100_000


class _Sent:
    """A DATA datagram our loop sent, shaped like a tftpy packet for tftpy's resendLast()."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: bytes):
        self.buffer = buffer

    def encode(self) -> "_Sent":
        return self

    def __str__(self) -> str:
        return f"DAT block {int.from_bytes(self.buffer[2:4], 'big')}"


def _refuse_upload(path, context):
    return None  # tftpy answers error 2, access violation


def _clamp_blksize(buf: bytes) -> bytes:
    """An RRQ asking for a blksize no UDP datagram can carry asks for RFC 2348's maximum instead."""
    if b"blksize" not in buf.lower():
        return buf
    parts = buf[2:].split(b"\0")
    for i in range(2, len(parts) - 1, 2):
        if parts[i].lower() == b"blksize" and parts[i + 1].isdigit() and int(parts[i + 1]) > MAX_BLKSIZE:
            parts[i + 1] = str(MAX_BLKSIZE).encode()
    return buf[:2] + b"\0".join(parts)


class _RateLimit:
    """A token bucket per source address: `rate` new transfers a second, bursts of 2 x rate."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, 2 * rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, host: str, now: float) -> bool:
        tokens, last = self._buckets.get(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[host] = (tokens, now)
            return False
        if len(self._buckets) >= MAX_RATE_ENTRIES:  # memory bound: full buckets are the default anyway
            self._buckets = {h: v for h, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
        self._buckets[host] = (tokens - 1, now)
        return True


class _Server(tftpy.TftpServer):
    """tftpy's server with our listen(); stop() and the session contexts are tftpy's."""

    rate: float = 10.0
    max_sessions: int = 1024

    def listen(self, listenip="", listenport=69, timeout=SOCK_TIMEOUT, retries=DEF_TIMEOUT_RETRIES):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((listenip or "0.0.0.0", listenport))
        self.sock.setblocking(False)
        _, self.listenport = self.sock.getsockname()
        self._timeout, self._retries = timeout, retries
        self._poll = poll = select.epoll()
        self._by_fd: dict[int, TftpContextServer] = {}
        self._unverified: OrderedDict[str, TftpContextServer] = OrderedDict()
        self._limit = _RateLimit(self.rate)
        server_fd = self.sock.fileno()
        poll.register(server_fd, select.EPOLLIN)
        self.is_running.set()
        checked = time.monotonic()
        by_fd = self._by_fd
        try:
            while not self.shutdown_immediately and not (self.shutdown_gracefully and not self.sessions):
                try:
                    events = poll.poll(TICK)
                except InterruptedError:
                    continue
                for fd, _ in events:
                    if fd == server_fd:
                        self._request()
                    else:
                        ctx = by_fd.get(fd)
                        if ctx is not None:
                            self._packet(ctx)
                now = time.monotonic()
                if now - checked >= TICK:
                    checked = now
                    self._timeouts()
        finally:
            for ctx in list(self.sessions.values()):
                self._finish(ctx)
            poll.close()
            self.sock.close()
            self.is_running.clear()
            self.shutdown_gracefully = self.shutdown_immediately = False

    def _request(self) -> None:
        """A packet on the server port: a new transfer, or a requester repeating its request."""
        try:
            buf, (host, port) = self.sock.recvfrom(MAX_PACKET)
        except OSError:
            return
        key = f"{host}:{port}"
        if self.shutdown_gracefully:
            return
        now = time.monotonic()
        ctx = self.sessions.get(key)
        if ctx is not None:  # a repeated RRQ: our first packet was lost (RFC 1350), or a forger repeats itself
            if (not ctx.verified and buf[:2] == b"\x00\x01" and ctx.repeats < MAX_REPEATS and ctx.last_pkt
                    and self._limit.allow(host, now)):  # an answer like any other: within the source's rate
                ctx.repeats += 1
                try:
                    ctx.sock.sendto(ctx.last_pkt.encode().buffer, (ctx.host, ctx.port))
                except OSError:
                    pass
            return
        if not self._limit.allow(host, now):
            metrics.inc("provisioner_tftp_dropped_total", (("why", "source rate"),))
            return
        if len(self._unverified) >= MAX_UNVERIFIED:  # forged requests from many addresses: the oldest goes
            self._finish(next(iter(self._unverified.values())))
            metrics.inc("provisioner_tftp_dropped_total", (("why", "unverified transfers"),))
        if len(self.sessions) >= self.max_sessions:
            metrics.inc("provisioner_tftp_dropped_total", (("why", "transfers"),))
            return
        ctx = TftpContextServer(host, port, self._timeout, self.root, self.dyn_file_func, self.upload_open,
                                retries=self._retries, flock=False)
        try:
            ctx.start(_clamp_blksize(buf))
        except TftpTimeoutExpectACK:
            ctx.timeout_expectACK = True
        except Exception as e:  # refused, not found, malformed: tftpy sent the error where it had one
            log.debug("TFTP request from %s refused: %s", key, e)
            self._close(ctx)
            return
        if ctx.state is None:
            self._close(ctx)
            return
        ctx.sock.setblocking(False)
        ctx.key = key
        ctx.fd = fd = ctx.sock.fileno()
        ctx.blksize = ctx.getBlocksize()
        ctx.verified = False
        ctx.repeats = 0
        self.sessions[key] = ctx
        self._unverified[key] = ctx
        self._by_fd[fd] = ctx
        self._poll.register(fd, select.EPOLLIN)

    def _packet(self, ctx: TftpContextServer) -> None:
        """A packet for a transfer under way; the expected ACK of a download is answered here."""
        try:
            buf, addr = ctx.sock.recvfrom(MAX_PACKET)
        except BlockingIOError:
            return
        except OSError:
            self._finish(ctx)
            return
        if addr[1] != ctx.tidport or addr[0] != ctx.address:
            try:
                ctx.sock.sendto(UNKNOWN_TID, addr)
            except OSError:
                pass
            return
        now = time.time()
        ctx.last_update = now
        if not ctx.verified:  # the peer answered from the address we sent to: it is really there
            ctx.verified = True
            self._unverified.pop(ctx.key, None)
        state = ctx.state
        if len(buf) == 4 and buf[0] == 0 and buf[1] == ACK and type(state) is TftpStateExpectACK:
            block = (buf[2] << 8) | buf[3]
            if block == ctx.next_block:
                ctx.retry_count = 0
                ctx.timeout_expectACK = False
                if ctx.pending_complete:
                    self._finish(ctx)  # the ACK of the last block: done
                    return
                block = (block + 1) & 0xFFFF
                ctx.next_block = block
                size = ctx.blksize
                data = ctx.fileobj.read(size)
                pkt = b"\x00\x03" + block.to_bytes(2, "big") + data
                try:
                    ctx.sock.sendto(pkt, (ctx.host, ctx.tidport))
                except OSError:
                    self._finish(ctx)
                    return
                ctx.pending_complete = len(data) < size
                ctx.last_pkt = _Sent(pkt)
                ctx.metrics.last_dat_time = now
                return
        try:  # everything else the way tftpy's own cycle() does it
            ctx.state = state.handle(ctx.factory.parse(buf), addr[0], addr[1])
            ctx.retry_count = 0
        except TftpTimeoutExpectACK:
            ctx.timeout_expectACK = True
            return
        except Exception as e:
            log.debug("TFTP transfer %s ended: %s", ctx.key, e)
            self._finish(ctx)
            return
        if ctx.state is None:
            self._finish(ctx)

    def _timeouts(self) -> None:
        now = time.time()
        for ctx in list(self.sessions.values()):
            try:
                ctx.checkTimeout(now)
                continue
            except TftpTimeout:
                pass
            if not ctx.verified:  # never acknowledged: no retransmission to an address that may be forged
                log.debug("TFTP transfer %s: no answer from the peer, dropped", ctx.key)
                self._finish(ctx)
                continue
            ctx.retry_count += 1
            if ctx.retry_count >= ctx.retries:
                log.debug("TFTP transfer %s gave up after %d retries", ctx.key, ctx.retry_count)
                self._finish(ctx)
                continue
            try:
                ctx.state.resendLast()
            except Exception:
                self._finish(ctx)
                continue
            ctx.timeout_expectACK = False
            ctx.last_update = now  # the next resend comes a full timeout later

    def _finish(self, ctx: TftpContextServer) -> None:
        self.sessions.pop(getattr(ctx, "key", None), None)
        self._unverified.pop(getattr(ctx, "key", None), None)
        fd = getattr(ctx, "fd", None)
        if self._by_fd.pop(fd, None) is not None:
            try:
                self._poll.unregister(fd)
            except OSError:
                pass
        self._close(ctx)

    @staticmethod
    def _close(ctx: TftpContextServer) -> None:
        try:
            ctx.end()
        except Exception:
            log.debug("closing a TFTP transfer failed", exc_info=True)


class TftpService:
    def __init__(self, pipeline: Pipeline, host: str, port: int, root: Path, rate: float = 10.0,
                 max_sessions: int = 1024):
        self.pipeline = pipeline
        self.rate, self.max_sessions = rate, max_sessions
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
        if hasattr(reply, "open"):  # a firmware image, read from the library (provisioner/firmware/serve.py)
            return reply.open()
        return io.BytesIO(reply.body)  # safe: our loop never flocks it (see the module docstring)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._server = _Server(str(self.root), dyn_file_func=self._answer, upload_open=_refuse_upload)
            self._server.rate, self._server.max_sessions = self.rate, self.max_sessions
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
