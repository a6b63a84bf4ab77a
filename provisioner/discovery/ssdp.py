"""SSDP M-SEARCH for UPnP / TR-064 devices, then a read of their description (routers.md §1.1).

A FRITZ!Box answers for urn:dslforum-org:device:InternetGatewayDevice:1 with the LOCATION of its
tr64desc.xml (http://<box>:49000/tr64desc.xml): modelName and systemVersion/Display give the model and
the firmware, with no login. Descriptions are fetched only from the address that answered (never a
third host named in LOCATION), over plain HTTP, with a size and time bound; no credential is ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit, urlunsplit

from provisioner.discovery import Context, Observation, Options, Report, local_ipv4
from provisioner.fingerprint import Evidence
from provisioner.macaddr import normalize_mac

log = logging.getLogger("provisioner.discovery.ssdp")

GROUP = ("239.255.255.250", 1900)
SEARCH_TARGETS = (
    "urn:dslforum-org:device:InternetGatewayDevice:1",  # TR-064 (FRITZ!Box tr64desc.xml)
    "urn:schemas-upnp-org:device:fritzbox:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "upnp:rootdevice",
)
MX = 2
MAX_DESC = 256 * 1024
FETCH_TIMEOUT = 3.0
MAX_LOCATIONS = 64


def msearch(st: str, mx: int = MX) -> bytes:
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\n"
            f"ST: {st}\r\nUSER-AGENT: provisioner/0.1 UPnP/1.1\r\n\r\n").encode()


def parse_response(data: bytes) -> dict[str, str] | None:
    """Headers (lower-case names) of an SSDP answer or NOTIFY, or None."""
    try:
        text = data[:8192].decode("utf-8", "replace")
    except Exception:
        return None
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    if not lines or not (lines[0].startswith("HTTP/1.1 200") or lines[0].startswith("NOTIFY ")):
        return None
    out = {}
    for line in lines[1:40]:
        k, colon, v = line.partition(":")
        if colon:
            out[k.strip().lower()] = v.strip()[:512]
    return out


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_description(xml: bytes) -> dict[str, str]:
    """modelName, manufacturer, friendlyName, modelNumber, serialNumber, UDN, firmware (systemVersion
    Display for AVM, else softwareVersion/firmwareVersion where a vendor puts one)."""
    if b"<!DOCTYPE" in xml[:2048] or b"<!ENTITY" in xml:
        raise ValueError("description with a DTD refused")
    root = ET.fromstring(xml)
    out: dict[str, str] = {}
    device = None
    for el in root.iter():
        if _strip_ns(el.tag) == "device":
            device = el
            break
    if device is not None:
        for child in device:
            name = _strip_ns(child.tag)
            if name in ("modelName", "manufacturer", "friendlyName", "modelNumber", "serialNumber", "UDN",
                        "modelDescription", "deviceType", "softwareVersion", "firmwareVersion") and child.text:
                out[name] = child.text.strip()[:128]
    for el in root.iter():
        if _strip_ns(el.tag) == "systemVersion":
            for child in el:
                if _strip_ns(child.tag) == "Display" and child.text:
                    out["firmware"] = child.text.strip()[:64]
    out.setdefault("firmware", out.get("softwareVersion") or out.get("firmwareVersion") or "")
    if not out["firmware"]:
        del out["firmware"]
    return out


class _Collector(asyncio.DatagramProtocol):
    def __init__(self):
        self.answers: dict[str, list[dict]] = {}

    def datagram_received(self, data, addr):
        h = parse_response(data)
        if h is not None and len(self.answers) < 1024:
            lst = self.answers.setdefault(addr[0], [])
            if len(lst) < 16:
                lst.append(h)

    def error_received(self, exc):
        pass


def _same_host_url(location: str, ip: str) -> str | None:
    """LOCATION only when it points at the host that answered, over http(s)."""
    try:
        u = urlsplit(location)
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or u.hostname != ip:
        return None
    return location


async def _fetch(client, url: str) -> bytes | None:
    try:
        async with client.stream("GET", url) as r:
            if r.status_code != 200:
                return None
            buf = b""
            async for chunk in r.aiter_bytes():
                buf += chunk
                if len(buf) > MAX_DESC:
                    return None
            return buf
    except Exception as e:
        log.debug("SSDP: %s: %s", url, e)
        return None


async def probe(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    import httpx
    loop = asyncio.get_running_loop()
    ifaces = list(opts.interfaces) or local_ipv4() or ["0.0.0.0"]
    transports = []
    coll = _Collector()
    deadline = time.monotonic() + opts.timeout
    for ip in ifaces:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            s.bind((ip, 0))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
            if ip != "0.0.0.0":
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
            s.setblocking(False)
            tr, _ = await loop.create_datagram_endpoint(lambda: coll, sock=s)
            transports.append(tr)
        except OSError as e:
            s.close()
            report("note", {"note": f"SSDP: cannot send from {ip}: {e.strerror}"})
    try:
        mx = max(1, min(MX, int(opts.timeout / 2) or 1))
        for attempt in range(2):  # UDP: say it twice
            for tr in transports:
                for st in SEARCH_TARGETS:
                    try:
                        tr.sendto(msearch(st, mx), GROUP)
                    except OSError as e:
                        report("note", {"note": f"SSDP: {e.strerror}"})
            await asyncio.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
        listen = min(mx + 0.5, max(0.0, deadline - time.monotonic() - FETCH_TIMEOUT))
        await asyncio.sleep(max(0.5, listen))
    finally:
        for tr in transports:
            tr.close()

    found: list[Observation] = []
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False, trust_env=False,
                                 headers={"User-Agent": "provisioner/0.1 UPnP/1.1"}) as client:
        async def describe(ip: str, answers: list[dict]) -> None:
            locs = []
            for h in answers:
                url = _same_host_url(h.get("location", ""), ip)
                if url and url not in locs:
                    locs.append(url)
            server = next((h.get("server") for h in answers if h.get("server")), None)
            sts = sorted({h.get("st") or h.get("nt") or "" for h in answers} - {""})
            # a TR-064 box describes itself in tr64desc.xml, next to whatever it announced
            for url in list(locs):
                u = urlsplit(url)
                if u.port == 49000 and not u.path.endswith("tr64desc.xml"):
                    locs.append(urlunsplit((u.scheme, u.netloc, "/tr64desc.xml", "", "")))
            desc: dict[str, str] = {}
            used = None
            for url in sorted(dict.fromkeys(locs), key=lambda x: not x.endswith("tr64desc.xml"))[:4]:
                body = await _fetch(client, url)
                if not body:
                    continue
                try:
                    desc = parse_description(body)
                except (ET.ParseError, ValueError) as e:
                    log.debug("SSDP: %s: %s", url, e)
                    continue
                used = url
                break
            mac = None
            serial = desc.get("serialNumber", "")
            if re.fullmatch(r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12}", serial):
                try:
                    mac = normalize_mac(serial)
                except ValueError:
                    mac = None
            notes = [f"answers SSDP ({', '.join(sts[:3])})" if sts else "answers SSDP"]
            if used:
                notes.append(f"{used.rsplit('/', 1)[-1]}: {desc.get('manufacturer', '?')} "
                             f"{desc.get('modelName', '?')}, firmware {desc.get('firmware', '?')}")
            o = Observation("ssdp", ip=ip, mac=mac,
                            evidence=Evidence(mac=mac, manufacturer=desc.get("manufacturer"),
                                              model_name=desc.get("modelName"), firmware=desc.get("firmware"),
                                              texts=[t for t in (server, desc.get("friendlyName")) if t],
                                              text_source="SSDP"),
                            details={"server": server, "st": sts, "location": used, **desc}, notes=notes)
            found.append(o)
            report("found", {"ip": ip, "what": desc.get("modelName") or server or "UPnP device"})

        items = list(coll.answers.items())[:MAX_LOCATIONS]
        if items:
            await asyncio.wait_for(asyncio.gather(*(describe(ip, a) for ip, a in items)),
                                   FETCH_TIMEOUT * 4 + 1)
    return found
