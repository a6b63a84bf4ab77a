"""The vendor test harness: one description per phone family (`FAMILIES`), used by the one parametrised
test module tests/test_vendors.py (and the vendor-specific tests next to it).

A `Family` says which devices of the shared lab inventory belong to it, how to read its per-device file
into logical settings (readers wrap every secret in `Secret` at once), and how the lines of that file
register: the REGISTER a phone sends for each line as its vendor documents the keys (AOR user and domain,
the host and port it goes to, the transport, the digest user and password). Anything that describes every
family (render, golden files, conformance with the parameter dictionaries, a real REGISTER at Kamailio,
the boot sequences replayed against `serve`) is written once, in tests/test_vendors.py.

No secret reaches the test output: comparisons involving one are computed into a bool first (`check`).
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, Home, kv
from provisioner.desired import device_context
from provisioner.operations import generate_credentials
from provisioner.runtime import Runtime
from provisioner.secret import Secret

GOLDEN = REPO / "tests" / "golden"
PARAMS = REPO / "vendors" / "params"


def check(ok: bool, what: str) -> None:
    """Assert on a precomputed bool: a failure shows `what`, never a value that may be a secret."""
    assert ok, what


def distinct(secrets: list[Secret]) -> bool:
    return len({s.reveal() for s in secrets}) == len(secrets)


def _secret(v: str | None) -> Secret | None:
    return None if v is None else Secret(v)


def _unquote(v: str | None) -> str | None:
    return v[1:-1] if v is not None and len(v) >= 2 and v[0] == v[-1] == '"' else v


def render(rt: Runtime, mac: str):
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    creds = generate_credentials(rt, dev)
    return dev, vendor, creds, rt.renderer.device_files(device_context(dev, vendor, creds))


# ---- what a line registers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Registration:
    """The REGISTER a line sends, as its vendor's keys say: To/From user@domain (request URI sip:domain),
    sent to host:port over transport, answered with the digest of auth_user/password."""

    user: str
    domain: str
    host: str
    port: int
    transport: str  # udp | tcp | tls
    auth_user: str
    password: Secret

    def __repr__(self) -> str:  # never the password
        return (f"Registration({self.user}@{self.domain} via {self.host}:{self.port}/{self.transport}, "
                f"auth {self.auth_user})")


def _host_port(text: str, default: int = 5060) -> tuple[str, int]:
    host, sep, port = (text or "").rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else (text, default)


# ---- readers: the logical settings out of a file, secrets wrapped at once -----------------------------------

def read_yealink(body: bytes) -> dict:
    v = {k: vals[-1] for k, vals in kv(body).items()}
    users = dict(x.split(":", 1) for x in kv(body).get("static.security.user_password", []))
    lines = {}
    for key in v:
        m = re.fullmatch(r"account\.([0-9]+)\.enable", key)
        if m:
            i = m[1]
            lines[int(i)] = {"enabled": v[key] == "1", "user": v.get(f"account.{i}.user_name"),
                             "auth_user": v.get(f"account.{i}.auth_name"),
                             "password": _secret(v.get(f"account.{i}.password")),
                             "display_name": v.get(f"account.{i}.display_name"),
                             "server": v.get(f"account.{i}.sip_server.1.address"),
                             "port": v.get(f"account.{i}.sip_server.1.port"),
                             "transport": v.get(f"account.{i}.sip_server.1.transport_type"),
                             "proxy_on": v.get(f"account.{i}.outbound_proxy_enable") == "1",
                             "proxy": v.get(f"account.{i}.outbound_proxy.1.address"),
                             "proxy_port": v.get(f"account.{i}.outbound_proxy.1.port")}
    return {"values": {k: x for k, x in v.items() if "password" not in k}, "lines": lines,
            "admin": _secret(users.get("admin")), "user": _secret(users.get("user")),
            "prov_user": v.get("static.auto_provision.server.username"),
            "prov_password": _secret(v.get("static.auto_provision.server.password")),
            "prov_url": v.get("static.auto_provision.server.url")}


def register_yealink(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    host, port = (ln["proxy"], int(ln["proxy_port"])) if ln["proxy_on"] else (ln["server"], int(ln["port"]))
    return Registration(ln["user"], ln["server"], host, port, {"0": "udp", "1": "tcp", "2": "tls"}[ln["transport"]],
                        ln["auth_user"], ln["password"])


def read_cisco(root: ET.Element) -> dict:
    def t(name):
        el = root.find(name)
        return None if el is None else (el.text or "")
    lines = {}
    i = 1
    while t(f"Line_Enable_{i}_") is not None:
        lines[i] = {"enabled": t(f"Line_Enable_{i}_") == "Yes", "user": t(f"User_ID_{i}_"),
                    "auth_user": t(f"Auth_ID_{i}_"), "password": _secret(t(f"Password_{i}_")),
                    "proxy": t(f"Proxy_{i}_"), "outbound_on": t(f"Use_Outbound_Proxy_{i}_") == "Yes",
                    "outbound": t(f"Outbound_Proxy_{i}_"), "transport": t(f"SIP_Transport_{i}_"),
                    "display_name": t(f"Display_Name_{i}_"), "dial_plan": t(f"Dial_Plan_{i}_"),
                    "secure_call": t(f"Secure_Call_Setting_{i}_")}
        i += 1
    rule = re.fullmatch(r"\[--uid (\S+) --pwd (\S+)\](\S+)", t("Profile_Rule") or "")
    ata = root.find("router-configuration")
    admin = ata.findtext("Web_Login_Admin_Password") if ata is not None else t("Admin_Passwd")
    user = ata.findtext("Web_Login_Guest_Password") if ata is not None else t("User_Password")
    return {
        "lines": lines, "admin": _secret(admin), "user": _secret(user),
        "prov_user": rule and rule[1], "prov_password": rule and Secret(rule[2]), "prov_url": rule and rule[3],
        "ca": t("Custom_CA_Rule"), "time_zone": t("Time_Zone"), "dst_rule": t("Daylight_Saving_Time_Rule"),
        "resync": t("Resync_Periodic"), "secure_call_serv": t("Secure_Call_Serv"),
        "secure_call_setting": t("Secure_Call_Setting"),
        "router_time": {el.tag: el.text for el in ata.find("Time_Setup")} if ata is not None else None,
    }


def register_cisco(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    domain, port = _host_port(ln["proxy"])
    host, port = _host_port(ln["outbound"]) if ln["outbound_on"] else (domain, port)
    return Registration(ln["user"], domain, host, port, ln["transport"].lower(), ln["auth_user"], ln["password"])


def read_gigaset(root: ET.Element) -> dict:
    provider = root.find("Provider")
    items = {el.get("ID"): el.get("value") for el in provider.iter("SYMB_ITEM")}

    def s(id_):  # strings carry their quotes inside the attribute
        return _unquote(items.get(id_))

    lines = {}
    for i in range(1, 7):
        sfx = "" if i == 1 else f"_{i}"
        active = items.get(f"BS_IP_Data1.ucB_SIP_ACCOUNT_IS_ACTIVE_{i}")
        if active is None:
            continue
        lines[i] = {"enabled": int(active, 16) == 1, "user": s(f"BS_IP_Data1.aucS_SIP_USER_ID{sfx}"),
                    "auth_user": s(f"BS_IP_Data3.aucS_SIP_LOGIN_ID{sfx}"),
                    "password": _secret(s(f"BS_IP_Data1.aucS_SIP_PASSWORD{sfx}")),
                    "server": s(f"BS_IP_Data1.aucS_SIP_SERVER{sfx}"),
                    "registrar": s(f"BS_IP_Data1.aucS_SIP_REGISTRAR{sfx}"),
                    "domain": s(f"BS_IP_Data1.aucS_SIP_DOMAIN{sfx}"),
                    "display_name": s(f"BS_IP_Data1.aucS_SIP_DISPLAYNAME{sfx}"),
                    "port": items.get(f"BS_IP_Data1.uiI_SIP_REGISTRAR_PORT{sfx}")}
    pin = re.fullmatch(r"0x([0-9]{2}),0x([0-9]{2})", items.get("BS_CUSTOM.aucKdsPin[0]") or "")
    return {
        "raw": items, "lines": lines, "admin": pin and Secret(pin[1] + pin[2]),
        "prov_url": _unquote(provider.find("S_CONFIGFILE_URL").get("value")),
        "prov_user": _unquote(provider.find("S_PROV_USERNAME").get("value")),
        "prov_password": _secret(_unquote(provider.find("S_PROV_PASSWORD").get("value"))),
        "mac": provider.find("MAC_ADDRESS").get("value"),
    }


def register_gigaset(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    return Registration(ln["user"], ln["domain"], ln["registrar"], int(ln["port"], 16), "udp", ln["auth_user"],
                        ln["password"])


def read_nx70(root: ET.Element) -> dict:
    nvm = root.find("nvm")
    p = {el.get("name"): el.get("value") for el in nvm.iter("param")}
    handsets = [el.get("value") for el in nvm.iter("oper") if el.get("name") == "add_hs"]
    lines = {}
    for hs in handsets:
        lines[int(hs)] = {"enabled": True, "user": p.get(f"SipAccount.{hs}.UserName"),
                          "auth_user": p.get(f"SipAccount.{hs}.AuthName"),
                          "password": _secret(p.get(f"SipAccount.{hs}.AuthPassword")),
                          "display_name": p.get(f"SipAccount.{hs}.DisplayName"),
                          "provider": p.get(f"SipAccount.{hs}.ProviderId")}
    url = re.fullmatch(r"https://([^:@/]+):([^@/]+)@(\S+)", p.get("Provisioning.global.ProvisioningServer") or "")
    return {
        "params": {k: v for k, v in p.items() if "Password" not in k and "ProvisioningServer" not in k},
        "lines": lines, "admin": _secret(p.get("WebUIAccounts.1.Password")),
        "prov_user": url and url[1], "prov_password": url and Secret(url[2]), "prov_url": url and "https://" + url[3],
        "delete_unprovisioned": any(el.get("name") == "DeleteNotProvisionedHS" for el in nvm.iter("oper")),
        "provider": {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith("SipProvider.0.")},
    }


def register_nx70(got: dict, i: int) -> Registration:
    ln, prov = got["lines"][i], got["provider"]
    return Registration(ln["user"], prov["Domain"], prov["RegServerAddress"], int(prov["RegServerPort"]),
                        {"1": "udp", "2": "tcp", "3": "tls"}[prov["TransportProtocol"]], ln["auth_user"],
                        ln["password"])


def read_fanvil(root: ET.Element) -> dict:
    lines = {}
    for el in root.find("sip").iter("line"):
        lines[int(el.get("index"))] = {
            "enabled": el.findtext("EnableReg") == "1", "user": el.findtext("PhoneNumber"),
            "auth_user": el.findtext("RegisterUser"), "password": _secret(el.findtext("RegisterPswd")),
            "display_name": el.findtext("DisplayName"),
            "server": el.findtext("RegisterAddr"), "port": el.findtext("RegisterPort"),
            "proxy": el.findtext("ProxyAddr"), "proxy_port": el.findtext("ProxyPort"),
            "transport": el.findtext("Transport"), "srtp": el.findtext("MediaCrypto")}
    web = {a.get("index"): (a.findtext("Name"), a.findtext("Password")) for a in root.find("web").iter("account")}
    ap = root.find("ap")
    return {
        "lines": lines, "admin": _secret(web["1"][1]), "admin_name": web["1"][0],
        "user": _secret(web["2"][1]), "user_name": web["2"][0],
        "menu": Secret(root.find("phone").findtext("MenuPassword") or ""),
        "prov_user": ap.findtext("DefaultUsername"), "prov_password": _secret(ap.findtext("DefaultPassword")),
        "prov_url": ap.findtext("FlashServerIP"), "prov_file": ap.findtext("FlashFileName"),
        "prov_protocol": ap.findtext("FlashProtocol"), "time_zone": root.find("phone/date").findtext("TimeZone"),
    }


def register_fanvil(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    host, port = (ln["proxy"], int(ln["proxy_port"])) if ln["proxy"] else (ln["server"], int(ln["port"]))
    return Registration(ln["user"], ln["server"], host, port, {"0": "udp", "1": "tcp", "3": "tls"}[ln["transport"]],
                        ln["auth_user"], ln["password"])


def read_snom(root: ET.Element) -> dict:
    ps = root.find("phone-settings")
    assert ps.get("e") == "2"
    by_idx: dict[tuple[str, str | None], str] = {}
    for el in ps:
        key = (el.tag, el.get("idx"))
        assert key not in by_idx, f"snom: {key} set twice"
        assert el.get("perm") == "R", f"snom: {el.tag} is read-only for the user"
        by_idx[key] = el.text or ""

    def g(name, idx=None):
        return by_idx.get((name, None if idx is None else str(idx)))
    lines = {}
    for (name, idx) in by_idx:
        if name == "user_active" and idx is not None:
            i = int(idx)
            lines[i] = {"enabled": g("user_active", i) == "on", "user": g("user_name", i),
                        "auth_user": g("user_pname", i), "password": _secret(g("user_pass", i)),
                        "host": g("user_host", i), "outbound": g("user_outbound", i),
                        "display_name": g("user_realname", i), "label": g("user_idle_text", i),
                        "srtp": g("user_srtp", i), "savp": g("user_savp", i)}
    return {
        "settings": {k: v for (k, i), v in by_idx.items() if i is None and "pass" not in k},
        "lines": lines, "admin": _secret(g("http_pass")), "admin_name": g("http_user"),
        "webserver_admin": _secret(g("webserver_admin_password")), "admin_mode": _secret(g("admin_mode_password")),
        "admin_mode_confirm": _secret(g("admin_mode_password_confirm")),
        "user": _secret(g("webserver_user_password")), "user_name": g("webserver_user_name"),
        "prov_user": g("http_client_user"), "prov_password": _secret(g("http_client_pass")),
        "prov_url": g("setting_server"), "ca": [c.get("url") for c in root.iter("certificate")],
    }


def register_snom(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    target, _, params = (ln["outbound"] or ln["host"]).partition(";")
    host, port = _host_port(target)
    transport = dict(p.split("=", 1) for p in params.split(";") if "=" in p).get("transport", "udp")
    return Registration(ln["user"], ln["host"], host, port, transport, ln["auth_user"], ln["password"])


def read_polycom(root: ET.Element) -> dict:
    attrs: dict[str, str] = {}
    for el in root.iter():
        for k, v in el.attrib.items():
            assert k not in attrs, f"polycom: {k} set twice"
            attrs[k] = v
    lines = {}
    i = 1
    while f"reg.{i}.address" in attrs:
        address = attrs[f"reg.{i}.address"]
        lines[i] = {"enabled": bool(address), "user": address.partition("@")[0], "domain": address.partition("@")[2],
                    "auth_user": attrs[f"reg.{i}.auth.userId"], "password": _secret(attrs[f"reg.{i}.auth.password"]),
                    "server": attrs.get(f"reg.{i}.server.1.address"), "port": attrs.get(f"reg.{i}.server.1.port"),
                    "transport": attrs.get(f"reg.{i}.server.1.transport"),
                    "display_name": attrs.get(f"reg.{i}.displayName")}
        i += 1
    secret_keys = ("auth.password", "localAdminPassword", "localUserPassword", "prov.password")
    return {
        "attrs": {k: v for k, v in attrs.items() if not k.endswith(secret_keys)}, "lines": lines,
        "admin": _secret(attrs.get("device.auth.localAdminPassword")),
        "user": _secret(attrs.get("device.auth.localUserPassword")),
        "prov_user": attrs.get("device.prov.user"), "prov_password": _secret(attrs.get("device.prov.password")),
        "prov_url": attrs.get("device.prov.serverName"),
    }


def register_polycom(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    transport = {"UDPOnly": "udp", "TCPOnly": "tcp", "TLS": "tls"}[ln["transport"]]
    return Registration(ln["user"], ln["domain"], ln["server"], int(ln["port"]), transport, ln["auth_user"],
                        ln["password"])


# account 1 has its own P-values; accounts 2-4 are (n + 2) * 100 + offset
_GS_FIRST = {"active": 271, "server": 47, "proxy": 48, "user": 35, "auth": 36, "password": 34, "display": 3,
             "transport": 130, "srtp": 183, "dialplan": 290}
_GS_OFFSET = {"active": 1, "server": 2, "proxy": 3, "user": 4, "auth": 5, "password": 6, "display": 7,
              "transport": 48, "srtp": 43, "dialplan": 59}


def gs_p(n: int, key: str) -> str:
    return f"P{_GS_FIRST[key] if n == 1 else (n + 2) * 100 + _GS_OFFSET[key]}"


def read_grandstream(root: ET.Element) -> dict:
    assert root.get("version") == "1"
    config = root.find("config")
    p: dict[str, str] = {}
    for el in config:
        assert re.fullmatch(r"P[0-9]+", el.tag), f"grandstream: <{el.tag}> is not a P-value"
        assert el.tag not in p, f"grandstream: {el.tag} set twice"
        p[el.tag] = el.text or ""
    lines = {}
    for n in range(1, 5):
        if gs_p(n, "active") not in p:
            continue
        lines[n] = {"enabled": p[gs_p(n, "active")] == "1", "user": p.get(gs_p(n, "user")),
                    "auth_user": p.get(gs_p(n, "auth")), "password": _secret(p.get(gs_p(n, "password"))),
                    "server": p.get(gs_p(n, "server")), "proxy": p.get(gs_p(n, "proxy")),
                    "transport": p.get(gs_p(n, "transport")), "srtp": p.get(gs_p(n, "srtp")),
                    "dialplan": p.get(gs_p(n, "dialplan")), "display_name": p.get(gs_p(n, "display"))}
    secret_p = {"P2", "P196", "P1361"} | {gs_p(n, "password") for n in range(1, 5)}
    return {
        "p": {k: v for k, v in p.items() if k not in secret_p}, "lines": lines,
        "admin": _secret(p.get("P2")), "user": _secret(p.get("P196")),
        "prov_user": p.get("P1360"), "prov_password": _secret(p.get("P1361")), "prov_path": p.get("P237"),
    }


def register_grandstream(got: dict, i: int) -> Registration:
    ln = got["lines"][i]
    domain, port = _host_port(ln["server"])
    host, port = _host_port(ln["proxy"]) if ln["proxy"] else (domain, port)
    return Registration(ln["user"], domain, host, port, {"0": "udp", "1": "tcp", "2": "tls"}[ln["transport"]],
                        ln["auth_user"], ln["password"])


# ---- the families ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    vendor: str
    macs: tuple[str, ...]  # its devices in INVENTORY; the first one is the family's representative
    read: Callable[[bytes], dict]  # the per-device (trigger) file -> logical settings
    register: Callable[[dict, int], Registration]  # logical settings, line index -> what it registers
    writes_unused_lines: bool = True  # unused accounts are written (off and empty), not left out
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.vendor


def _xml_reader(root_tag: str, reader: Callable[[ET.Element], dict]) -> Callable[[bytes], dict]:
    def read(body: bytes) -> dict:
        root = ET.fromstring(body)
        assert root.tag == root_tag, f"root <{root.tag}>, expected <{root_tag}>"
        return reader(root)
    return read


YEALINK, YEALINK_TCP = "805ec0123456", "805ec0123458"
CISCO, CISCO_ATA, GIGASET, NX70, FANVIL = ("0002fd123456", "0002fd123457", "7c2f80123456", "7c2f80abcdef",
                                           "0c383e123456")
SNOM, POLYCOM, IP5000, GXP, GRP = "000413123456", "0004f2123456", "0004f2abcdef", "000b82123456", "c074ad123456"

FAMILIES: dict[str, Family] = {f.vendor: f for f in (
    Family("yealink", (YEALINK, YEALINK_TCP), read_yealink, register_yealink),
    Family("cisco", (CISCO, CISCO_ATA), _xml_reader("flat-profile", read_cisco), register_cisco),
    Family("gigaset", (GIGASET,), _xml_reader("ProviderFrame", read_gigaset), register_gigaset),
    Family("gigaset_nx70", (NX70,), _xml_reader("provisioning", read_nx70), register_nx70,
           writes_unused_lines=False),
    Family("fanvil", (FANVIL,), _xml_reader("sysConf", read_fanvil), register_fanvil),
    Family("snom", (SNOM,), _xml_reader("settings", read_snom), register_snom),
    Family("polycom", (POLYCOM, IP5000), _xml_reader("polycomConfig", read_polycom), register_polycom),
    Family("grandstream", (GXP, GRP), _xml_reader("gs_provision", read_grandstream), register_grandstream),
)}

# one lab site on loopback; every family's devices, with the variations the vendor tests check
LAB_HEADER = """\
# Test inventory: one lab site on loopback, {comment}
defaults:
  provisioning_url: https://127.0.0.1:8443/p/
  tftp_url: tftp://127.0.0.1:6969/
  timezone: Europe/Paris
  ntp: [0.fr.pool.ntp.org, 1.fr.pool.ntp.org]
  resync_interval: 86400
  registrar:
    host: sip.lab.example.net
    transport: tls
  policy:
    srtp: required
    blocked_prefixes: {blocked_prefixes}
sites:
  lab:
    networks: [127.0.0.0/8]
"""

DEVICES = """\
  - mac: 80:5e:c0:12:34:56
    vendor: yealink
    model: T46G
    site: lab
    name: reception
    lines:
      - {extension: "101", display_name: Reception, number: "+33102030401"}
      - {extension: "102", display_name: Reception 2}
  # a T4xS with its own registrar transport
  - mac: 80:5e:c0:12:34:58
    vendor: yealink
    model: T46S
    site: lab
    registrar: {transport: tcp}
    lines:
      - {extension: "104", display_name: Workshop, auth_user: "104w"}
  - mac: 00:02:fd:12:34:56
    vendor: cisco
    model: SPA504G
    site: lab
    lines:
      - {extension: "201", display_name: "Accueil & Co", number: "+33102030401"}
      - {extension: "202", display_name: "O'Brien", auth_user: "202a"}
  - mac: 00:02:fd:12:34:57
    vendor: cisco
    model: SPA112
    site: lab
    policy: {srtp: optional}
    lines:
      - {extension: "203", display_name: Fax}
  # No known SIP-over-TLS/SRTP parameter for this family: the device says so explicitly
  - mac: 7c:2f:80:12:34:56
    vendor: gigaset
    model: C530
    site: lab
    registrar: {transport: udp}
    policy: {srtp: optional}
    lines:
      - {extension: "301", display_name: Atelier}
      - {extension: "302", display_name: "O'Neil & Stock"}
  - mac: 7c:2f:80:ab:cd:ef
    vendor: gigaset_nx70
    model: N870
    site: lab
    lines:
      - {extension: "401", display_name: DECT 1}
      - {extension: "402", display_name: DECT 2, auth_user: "402x"}
  - mac: 0c:38:3e:12:34:56
    vendor: fanvil
    model: X4U
    site: lab
    lines:
      - {extension: "501", display_name: Fanvil}
  - mac: 00:04:13:12:34:56
    vendor: snom
    model: D735
    site: lab
    lines:
      - {extension: "601", display_name: "Accueil & Co", number: "+33102030401"}
      - {extension: "602", display_name: "O'Brien", auth_user: "602a", label: Bureau}
  - mac: 00:04:f2:12:34:56
    vendor: polycom
    model: VVX410
    site: lab
    lines:
      - {extension: "701", display_name: "Salle Bleue & Co"}
      - {extension: "702", display_name: "O'Neil", auth_user: "702p"}
  # the OVH Plug & Phone conference phone, in another zone and with SRTP offered only
  - mac: 00:04:f2:ab:cd:ef
    vendor: polycom
    model: IP5000
    site: lab
    timezone: America/New_York
    policy: {srtp: optional}
    lines:
      - {extension: "703", display_name: Conference}
  - mac: 00:0b:82:12:34:56
    vendor: grandstream
    model: GXP2170
    site: lab
    lines:
      - {extension: "801", display_name: "Grand & Stream"}
      - {extension: "802", display_name: Second}
      - {extension: "803", display_name: Third, auth_user: "803x"}
  - mac: c0:74:ad:12:34:56
    vendor: grandstream
    model: GRP2612
    site: lab
    policy: {srtp: optional, blocked_prefixes: []}
    lines:
      - {extension: "804", display_name: Accueil}
"""

INVENTORY = (LAB_HEADER.format(comment="one or two devices of every phone family.",
                               blocked_prefixes='["00", "0899", "118", "+33899"]') + "devices:\n" + DEVICES)


def lab_inventory(comment: str, blocked_prefixes: str, devices: str) -> str:
    """A test inventory: the lab site above with `devices` (YAML list items, indented by two) below it."""
    return LAB_HEADER.format(comment=comment, blocked_prefixes=blocked_prefixes) + "devices:\n" + devices


def fixtures(prefix: str, text: str = INVENTORY):
    """(inventory, rt, home) fixtures for a test module whose devices are in the inventory `text`."""

    @pytest.fixture(scope="module")
    def inventory(tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp(f"{prefix}-inventory") / "inventory.yaml"
        path.write_text(text)
        return path

    @pytest.fixture(scope="module")
    def rt(inventory, tmp_path_factory) -> Runtime:
        return Runtime(home=tmp_path_factory.mktemp(f"{prefix}-home"), inventory_path=inventory)

    @pytest.fixture
    def home(tmp_path, capture_dir, request, inventory) -> Home:
        inv = tmp_path / "inventory.yaml"
        shutil.copy(inventory, inv)
        cap = capture_dir / request.node.name.replace("/", "_")[:80]
        cap.mkdir(exist_ok=True)
        return Home(tmp_path / "home", inv, cap)

    return inventory, rt, home
