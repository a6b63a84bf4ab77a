"""SNMP sweep of whole subnets: v2c communities and v3 users, pysnmp 7 (asyncio).

Two phases, so that a /24 with 244 silent addresses costs one timeout × (retries + 1), not 244 of them:

1. Liveness, from ONE UDP socket: every address gets a v2c GET (sysDescr, sysObjectID, sysName and
   IP-MIB ipAdEntIfIndex.<address>) per community and, when v3 users are configured, one unauthenticated
   v3 discovery message (any v3 agent answers it with a Report). Messages are encoded once with pysnmp's
   protocol API; answers are matched by source address and request-id. At most `concurrency` addresses
   are in flight; each one is retried `retries` times, `timeout` seconds apart.
2. Detail, with the pysnmp 7 hlapi (asyncio) and only for addresses that answered: the MAC
   (ifPhysAddress of the interface holding the queried address, else the first non-zero one), and for
   v3 agents the system group with each configured user in turn.

Numeric OIDs only: pysnmp bundles SNMPv2-MIB alone; IF-MIB/IP-MIB names would need MIB files.
Communities and keys are never logged or printed: a credential is shown as "community #N" / "v3 user NAME".
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import random
import socket
import time
from dataclasses import dataclass

from provisioner.discovery import FACTORY_COMMUNITIES, Context, Observation, Options, Report, local_ipv4
from provisioner.discovery.config import SnmpCredentials, V3User
from provisioner.fingerprint import Evidence

log = logging.getLogger("provisioner.discovery.snmp")

SYS_DESCR = "1.3.6.1.2.1.1.1.0"
SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
IP_AD_ENT_IF_INDEX = "1.3.6.1.2.1.4.20.1.2"  # .<a.b.c.d>
IF_PHYS_ADDRESS = "1.3.6.1.2.1.2.2.1.6"  # .<ifIndex>
DEFAULT_COMMUNITIES = ("public",)
MAX_WALK = 64  # interfaces read when looking for a MAC
V3_GRACE = 0.2  # after a v3 Report, how long a v2c answer from the same agent may still come
MAX_DATAGRAM = 65535


@dataclass
class Answer:
    ip: str
    credential: str  # "community #1" / "v3 user NAME" (never the secret)
    sys_descr: str | None
    sys_object_id: str | None
    sys_name: str | None
    mac: str | None = None
    if_index: int | None = None
    factory_default: bool = False
    seconds: float = 0.0


# ---- value helpers ------------------------------------------------------------------------------------


def _value(v):
    from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject
    if v is None or isinstance(v, (NoSuchObject, NoSuchInstance, EndOfMibView)):
        return None
    try:
        if not v.isValue:
            return None
    except AttributeError:
        pass
    return v


def _text(v) -> str | None:
    v = _value(v)
    if v is None:
        return None
    try:
        raw = bytes(v.asOctets())
    except AttributeError:
        return str(v)[:255] or None
    return raw.decode("utf-8", "replace").replace("\x00", "").strip()[:255] or None


def _oid(v) -> str | None:
    v = _value(v)
    return str(v) if v is not None else None


def _int(v) -> int | None:
    v = _value(v)
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _mac(v) -> str | None:
    v = _value(v)
    if v is None:
        return None
    try:
        raw = bytes(v.asOctets())
    except AttributeError:
        return None
    if len(raw) != 6 or raw == b"\0" * 6 or raw[0] & 1:
        return None
    return raw.hex()


def targets(subnets: list[str], exclude: set[str] = frozenset()) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for s in subnets:
        net = ipaddress.ip_network(s, strict=False)
        for h in (net.hosts() if net.num_addresses > 2 else iter(net)):
            ip = str(h)
            if ip not in seen and ip not in exclude:
                seen.add(ip)
                out.append(ip)
    return out


# ---- phase 1: liveness from one socket --------------------------------------------------------------


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(content)) + content


def _int_ber(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


def v3_discovery_message(msg_id: int) -> bytes:
    """RFC 3414 §4: an unauthenticated, reportable GET with an empty engine ID and user; every v3
    agent answers it with a Report carrying its engine ID, whoever asks."""
    usm = _tlv(0x30, _tlv(0x04, b"") + _int_ber(0) + _int_ber(0) + _tlv(0x04, b"") + _tlv(0x04, b"")
               + _tlv(0x04, b""))
    pdu = _tlv(0xA0, _int_ber(msg_id) + _int_ber(0) + _int_ber(0) + _tlv(0x30, b""))
    scoped = _tlv(0x30, _tlv(0x04, b"") + _tlv(0x04, b"") + pdu)
    header = _tlv(0x30, _int_ber(msg_id) + _int_ber(65507) + _tlv(0x04, b"\x04") + _int_ber(3))
    return _tlv(0x30, _int_ber(3) + header + _tlv(0x04, usm) + scoped)


def v2c_get_message(community: str, request_id: int, oids: list[str]) -> bytes:
    from pyasn1.codec.ber import encoder
    from pysnmp.proto import api
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.GetRequestPDU()
    p.apiPDU.set_defaults(pdu)
    p.apiPDU.set_request_id(pdu, request_id)
    p.apiPDU.set_varbinds(pdu, [(p.ObjectIdentifier(o), p.Null("")) for o in oids])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


@dataclass
class _Host:
    ip: str
    request_ids: dict[int, int]  # request-id -> community index
    done: asyncio.Future
    v2c: tuple[int, list] | None = None  # (community index, varbinds)
    v3: bool = False
    started: float = 0.0


class _Liveness(asyncio.DatagramProtocol):
    def __init__(self):
        self.hosts: dict[str, _Host] = {}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc):  # ICMP errors of an unconnected socket: silence is what counts
        pass

    def datagram_received(self, data: bytes, addr) -> None:
        h = self.hosts.get(addr[0])
        if h is None or h.done.done() and h.v2c is not None:
            return
        try:
            self._parse(h, data)
        except Exception as e:  # a malformed datagram is dropped, the sweep goes on
            log.debug("undecodable SNMP answer from %s: %s", addr[0], e)

    @staticmethod
    def _parse(h: _Host, data: bytes) -> None:
        from pyasn1.codec.ber import decoder
        from pysnmp.proto import api
        from pysnmp.proto.api.verdec import decode_message_version
        ver = int(decode_message_version(data))
        if ver == 3:
            h.v3 = True
            if not h.done.done():
                asyncio.get_running_loop().call_later(V3_GRACE, _finish, h)
            return
        if ver != api.SNMP_VERSION_2C:
            return
        p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
        msg, _ = decoder.decode(data, asn1Spec=p.Message())
        pdu = p.apiMessage.get_pdu(msg)
        rid = int(p.apiPDU.get_request_id(pdu))
        if rid not in h.request_ids or h.v2c is not None:
            return
        if int(p.apiPDU.get_error_status(pdu)):
            return  # an agent that refuses a plain GET of the system group is not worth a second look
        h.v2c = (h.request_ids[rid], p.apiPDU.get_varbinds(pdu))
        _finish(h)


def _finish(h: _Host) -> None:
    if not h.done.done():
        h.done.set_result(None)


# ---- phase 2: detail with the hlapi --------------------------------------------------------------------


class _Detail:
    """The hlapi side; its engine is made on the first answer (while the silent addresses still run)."""

    def __init__(self, creds: SnmpCredentials, timeout: float, retries: int):
        self._engine = None
        self.creds = creds
        self.timeout = timeout
        self.retries = retries
        self.sem = asyncio.Semaphore(16)

    @property
    def engine(self):
        if self._engine is None:
            from pysnmp.hlapi.v3arch.asyncio import SnmpEngine
            self._engine = SnmpEngine()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close_dispatcher()
            except Exception:
                pass

    def community(self, index: int):
        from pysnmp.hlapi.v3arch.asyncio import CommunityData
        return CommunityData(f"c{index}", self.communities()[index], mpModel=1)

    def communities(self) -> list[str]:
        return self.creds.communities or list(DEFAULT_COMMUNITIES)

    def usm(self, u: V3User):
        from pysnmp.hlapi.v3arch import asyncio as h
        auth = {"md5": h.usmHMACMD5AuthProtocol, "sha": h.usmHMACSHAAuthProtocol,
                "sha224": h.usmHMAC128SHA224AuthProtocol, "sha256": h.usmHMAC192SHA256AuthProtocol,
                "sha384": h.usmHMAC256SHA384AuthProtocol, "sha512": h.usmHMAC384SHA512AuthProtocol}
        priv = {"des": h.usmDESPrivProtocol, "3des": h.usm3DESEDEPrivProtocol, "aes": h.usmAesCfb128Protocol,
                "aes128": h.usmAesCfb128Protocol, "aes192": h.usmAesCfb192Protocol,
                "aes256": h.usmAesCfb256Protocol}
        kw = {}
        if u.auth_key:
            kw.update(authKey=u.auth_key, authProtocol=auth[u.auth or "sha"])
        if u.priv_key:
            kw.update(privKey=u.priv_key, privProtocol=priv[u.priv or "aes"])
        return h.UsmUserData(u.name, **kw)

    async def target(self, ip: str):
        from pysnmp.hlapi.v3arch.asyncio import UdpTransportTarget
        return await UdpTransportTarget.create((ip, 161), timeout=self.timeout, retries=self.retries)

    async def get(self, auth, target, oids: list[str]):
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, get_cmd
        async with self.sem:
            return await get_cmd(self.engine, auth, target, ContextData(),
                                 *(ObjectType(ObjectIdentity(o)) for o in oids))

    async def mac(self, auth, target, if_index: int | None) -> str | None:
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, bulk_walk_cmd
        try:
            if if_index is not None:
                err_ind, err_stat, _, vbs = await self.get(auth, target, [f"{IF_PHYS_ADDRESS}.{if_index}"])
                if not err_ind and not err_stat and vbs and _mac(vbs[0][1]):
                    return _mac(vbs[0][1])
            n = 0
            async with self.sem:
                async for err_ind, err_stat, _, vbs in bulk_walk_cmd(
                        self.engine, auth, target, ContextData(), 0, 16,
                        ObjectType(ObjectIdentity(IF_PHYS_ADDRESS)), lexicographicMode=False):
                    if err_ind or err_stat:
                        return None
                    for _, val in vbs:
                        n += 1
                        if _mac(val):
                            return _mac(val)
                    if n >= MAX_WALK:
                        return None
        except Exception as e:  # the MAC is a bonus: the neighbour table may still have it
            log.debug("SNMP MAC of %s: %s", target, e)
        return None

    async def v3_system(self, ip: str) -> tuple[Answer | None, str | None]:
        from pysnmp.proto import errind
        target = await self.target(ip)
        oids = [SYS_DESCR, SYS_OBJECT_ID, SYS_NAME, f"{IP_AD_ENT_IF_INDEX}.{ip}"]
        refused = None
        for u in self.creds.users:
            auth = self.usm(u)
            try:
                err_ind, err_stat, _, vbs = await self.get(auth, target, oids)
            except Exception as e:
                log.debug("SNMP v3 %s as %s: %s", ip, u.name, e)
                continue
            if err_ind:
                if not isinstance(err_ind, errind.RequestTimedOut):
                    refused = f"refused v3 user {u.name} ({err_ind})"
                continue
            if err_stat:
                refused = f"answered v3 user {u.name} with {err_stat.prettyPrint()}"
                continue
            v = [val for _, val in vbs] + [None] * 4
            a = Answer(ip, f"v3 user {u.name}", _text(v[0]), _oid(v[1]), _text(v[2]), if_index=_int(v[3]))
            a.mac = await self.mac(auth, target, a.if_index)
            return a, None
        return None, refused or "is a v3 agent that none of our users can read"


async def sweep(ips: list[str], creds: SnmpCredentials, timeout: float = 1.0, retries: int = 1,
                concurrency: int = 256, on_answer=None) -> tuple[list[Answer], list[tuple[str, str]]]:
    """Query every address; returns (answers, [(ip, why the agent refused us)])."""
    loop = asyncio.get_running_loop()
    communities = creds.communities or list(DEFAULT_COMMUNITIES)
    transport, proto = await loop.create_datagram_endpoint(_Liveness, local_addr=("0.0.0.0", 0),
                                                           family=socket.AF_INET)
    detail = _Detail(creds, timeout, retries)
    sem = asyncio.Semaphore(concurrency)
    ids = itertools.count(random.randrange(1, 2**30))
    answers: list[Answer] = []
    refusals: list[tuple[str, str]] = []
    t0 = time.monotonic()

    async def host(ip: str) -> None:
        async with sem:
            h = _Host(ip, {}, loop.create_future(), started=time.monotonic())
            msgs = []
            for i, c in enumerate(communities):
                rid = next(ids) & 0x7FFFFFFF
                h.request_ids[rid] = i
                msgs.append(v2c_get_message(c, rid, [SYS_DESCR, SYS_OBJECT_ID, SYS_NAME,
                                                     f"{IP_AD_ENT_IF_INDEX}.{ip}"]))
            if creds.users:
                msgs.append(v3_discovery_message(next(ids) & 0x7FFFFFFF))
            proto.hosts[ip] = h
            try:
                for _ in range(retries + 1):
                    for m in msgs:
                        try:
                            transport.sendto(m, (ip, 161))
                        except OSError:
                            pass
                    try:
                        await asyncio.wait_for(asyncio.shield(h.done), timeout)
                        break
                    except asyncio.TimeoutError:
                        continue
            finally:
                proto.hosts.pop(ip, None)
        if h.v2c is not None:
            idx, vbs = h.v2c
            v = [val for _, val in vbs] + [None] * 4
            a = Answer(ip, f"community #{idx + 1}", _text(v[0]), _oid(v[1]), _text(v[2]), if_index=_int(v[3]),
                       factory_default=communities[idx] in FACTORY_COMMUNITIES)
            a.mac = await detail.mac(detail.community(idx), await detail.target(ip), a.if_index)
        elif h.v3 and creds.users:
            a, why = await detail.v3_system(ip)
            if a is None:
                refusals.append((ip, why))
                return
        elif h.v3:
            refusals.append((ip, "is a v3-only agent (no v3 user configured)"))
            return
        else:
            return
        a.seconds = round(time.monotonic() - t0, 3)
        answers.append(a)
        if on_answer:
            on_answer(a)

    try:
        await asyncio.gather(*(host(ip) for ip in ips))
    finally:
        transport.close()
        detail.close()
    return answers, refusals


def to_observation(a: Answer) -> Observation:
    ev = Evidence(mac=a.mac, sys_descr=a.sys_descr, sys_object_id=a.sys_object_id,
                  texts=[a.sys_name] if a.sys_name else [], text_source="sysName")
    return Observation(
        "snmp", ip=a.ip, mac=a.mac, evidence=ev,
        details={"sysDescr": a.sys_descr, "sysObjectID": a.sys_object_id, "sysName": a.sys_name,
                 "credential": a.credential, "ifIndex": a.if_index},
        notes=[f"answers SNMP ({a.credential}): sysName {a.sys_name!r}"] if a.sys_name else
              [f"answers SNMP ({a.credential})"],
        factory_default="answers SNMP with a factory-default community" if a.factory_default else None)


async def probe(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    if not opts.subnets:
        report("note", {"note": "no subnet to sweep (give --subnet, or discovery.subnets in the inventory)"})
        return []
    ips = targets(opts.subnets, exclude=set(local_ipv4()))
    report("progress", {"total": len(ips)})
    found: list[Observation] = []

    def on_answer(a: Answer) -> None:
        found.append(to_observation(a))
        report("found", {"ip": a.ip, "what": a.sys_descr or a.sys_name or "SNMP agent"})

    _, refusals = await sweep(ips, opts.snmp, opts.snmp_timeout, opts.snmp_retries, opts.snmp_concurrency,
                              on_answer)
    for ip, why in refusals:
        found.append(Observation("snmp", ip=ip, details={"refused": why}, notes=[f"SNMP agent that {why}"]))
    return found
