"""mDNS / DNS-SD browse (python-zeroconf, asyncio) on the chosen interfaces.

Browses the service types phones, ATAs and boxes announce (web UI, SIP) and, through the DNS-SD
enumeration name, any other type announced on the LAN (bounded). Each resolved service becomes an
observation: its address, and its instance name, host name and TXT values as identification text.
vendors.md §9.4: desk phones rarely announce themselves, ATAs and boxes do; the MAC comes from the
neighbour table afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time

from provisioner.discovery import Context, Observation, Options, Report
from provisioner.fingerprint import Evidence

log = logging.getLogger("provisioner.discovery.mdns")

SERVICE_TYPES = (
    "_http._tcp.local.", "_https._tcp.local.", "_sip._udp.local.", "_sip._tcp.local.", "_sips._tcp.local.",
    "_device-info._tcp.local.", "_workstation._tcp.local.", "_ssh._tcp.local.", "_telnet._tcp.local.",
)
ENUMERATION = "_services._dns-sd._udp.local."
MAX_TYPES = 32
MAX_SERVICES = 512
RESOLVE_MS = 1500


def _txt(props: dict) -> dict[str, str]:
    out = {}
    for k, v in list((props or {}).items())[:32]:
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        val = v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))
        out[key[:64]] = val[:128]
    return out


async def probe(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    deadline = time.monotonic() + opts.timeout
    aiozc = AsyncZeroconf(interfaces=list(opts.interfaces) or InterfaceChoice.All, ip_version=IPVersion.V4Only)
    browsers: list[AsyncServiceBrowser] = []
    browsed: set[str] = set()
    pending: set[asyncio.Task] = set()
    seen: set[tuple[str, str]] = set()
    found: list[Observation] = []

    async def resolve(type_: str, name: str) -> None:
        info = AsyncServiceInfo(type_, name)
        left = int(max(0.2, deadline - time.monotonic()) * 1000)
        if not await info.async_request(aiozc.zeroconf, min(RESOLVE_MS, left)):
            return
        addrs = info.parsed_addresses(IPVersion.V4Only)
        instance = name[: -len(type_)].rstrip(".") if name.endswith(type_) else name
        txt = _txt(info.properties)
        texts = [instance, (info.server or "").rstrip(".")] + [f"{k}={v}" if v else k for k, v in txt.items()]
        o = Observation("mdns", ip=addrs[0] if addrs else None,
                        evidence=Evidence(texts=[t for t in texts if t]),
                        details={"service": instance[:128], "type": type_, "port": info.port,
                                 "server": (info.server or "")[:128], "txt": txt},
                        notes=[f"announces {type_.removesuffix('.local.')} {instance!r}"
                               + (f" on port {info.port}" if info.port else "")])
        found.append(o)
        report("found", {"ip": o.ip, "what": f"{instance} ({type_})"})

    def browse(type_: str) -> None:
        if type_ in browsed or len(browsed) >= MAX_TYPES:
            return
        browsed.add(type_)
        browsers.append(AsyncServiceBrowser(aiozc.zeroconf, type_, handlers=[on_change]))

    def on_change(zeroconf, service_type: str, name: str, state_change) -> None:
        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        if service_type == ENUMERATION:
            if name.endswith(".local."):
                browse(name)
            return
        if (service_type, name) in seen or len(seen) >= MAX_SERVICES:
            return
        seen.add((service_type, name))
        t = asyncio.ensure_future(resolve(service_type, name))
        pending.add(t)
        t.add_done_callback(pending.discard)

    try:
        browse(ENUMERATION)
        for t in SERVICE_TYPES:
            browse(t)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if pending:  # resolutions started before the deadline get their own short bound
            await asyncio.wait(set(pending), timeout=RESOLVE_MS / 1000)
    finally:
        for t in list(pending):
            t.cancel()
        for b in browsers:
            await b.async_cancel()
        await aiozc.async_close()
    return found
