"""Cisco SPA, Gigaset (SYMB_ITEM and Nx70) and Fanvil (<sysConf>) profiles: rendered, parsed with a real
XML parser, checked for the logical settings, compared with reviewed golden files, and fetched over HTTPS
with each vendor's User-Agent from a real `provisioner serve`.

No secret reaches the test output: parsed secrets are wrapped in Secret at once (masked repr) and every
comparison that involves one is computed into a bool first (`check`), so a failure names the field only.
UPDATE_GOLDEN=1 rewrites tests/golden/<vendor>/ from the current templates (review the diff by eye).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, start_server
from provisioner.desired import credential_names, device_context
from provisioner.errors import RenderError
from provisioner.runtime import Runtime
from provisioner.secret import MASK, Secret
from vendor_kit import check, distinct, fixtures, lab_inventory, parse_with, render

GOLDEN = REPO / "tests" / "golden"

INVENTORY = lab_inventory('one device per profile (and the Cisco ATA).', '["00", "0899", "118"]', """\
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
""")

CISCO, CISCO_ATA, GIGASET, NX70, FANVIL = ("0002fd123456", "0002fd123457", "7c2f80123456", "7c2f80abcdef",
                                           "0c383e123456")
ONE_PER_PROFILE = (CISCO, GIGASET, NX70, FANVIL)


# ---- per-vendor readers: the logical settings out of a parsed file, secrets wrapped at once -----------------

def _unquote(v: str | None) -> str | None:
    return v[1:-1] if v is not None and len(v) >= 2 and v[0] == v[-1] == '"' else v


def read_cisco(root: ET.Element) -> dict:
    def t(name):
        el = root.find(name)
        return None if el is None else (el.text or "")
    lines = {}
    i = 1
    while t(f"Line_Enable_{i}_") is not None:
        lines[i] = {"enabled": t(f"Line_Enable_{i}_") == "Yes", "user": t(f"User_ID_{i}_"),
                    "auth_user": t(f"Auth_ID_{i}_"), "password": t(f"Password_{i}_"),
                    "proxy": t(f"Proxy_{i}_"), "transport": t(f"SIP_Transport_{i}_"),
                    "display_name": t(f"Display_Name_{i}_"), "dial_plan": t(f"Dial_Plan_{i}_"),
                    "secure_call": t(f"Secure_Call_Setting_{i}_")}
        i += 1
    rule = re.fullmatch(r"\[--uid (\S+) --pwd (\S+)\](\S+)", t("Profile_Rule") or "")
    ata = root.find("router-configuration")
    admin = ata.findtext("Web_Login_Admin_Password") if ata is not None else t("Admin_Passwd")
    user = ata.findtext("Web_Login_Guest_Password") if ata is not None else t("User_Password")
    return {
        "lines": {i: {**ln, "password": ln["password"] and Secret(ln["password"])} for i, ln in lines.items()},
        "admin": admin and Secret(admin), "user": user and Secret(user),
        "prov_user": rule and rule[1], "prov_password": rule and Secret(rule[2]), "prov_url": rule and rule[3],
        "ca": t("Custom_CA_Rule"), "time_zone": t("Time_Zone"), "dst_rule": t("Daylight_Saving_Time_Rule"),
        "resync": t("Resync_Periodic"), "secure_call_serv": t("Secure_Call_Serv"),
        "secure_call_setting": t("Secure_Call_Setting"),
    }


def read_gigaset(root: ET.Element) -> dict:
    provider = root.find("Provider")
    items = {el.get("ID"): el.get("value") for el in provider.iter("SYMB_ITEM")}

    def s(id_):  # strings carry their quotes inside the attribute
        v = items.get(id_)
        return _unquote(v)

    lines = {}
    for i in range(1, 7):
        sfx = "" if i == 1 else f"_{i}"
        active = items.get(f"BS_IP_Data1.ucB_SIP_ACCOUNT_IS_ACTIVE_{i}")
        if active is None:
            continue
        pw = s(f"BS_IP_Data1.aucS_SIP_PASSWORD{sfx}")
        lines[i] = {"enabled": int(active, 16) == 1, "user": s(f"BS_IP_Data1.aucS_SIP_USER_ID{sfx}"),
                    "auth_user": s(f"BS_IP_Data3.aucS_SIP_LOGIN_ID{sfx}"), "password": pw and Secret(pw),
                    "server": s(f"BS_IP_Data1.aucS_SIP_SERVER{sfx}"),
                    "display_name": s(f"BS_IP_Data1.aucS_SIP_DISPLAYNAME{sfx}"),
                    "port": items.get(f"BS_IP_Data1.uiI_SIP_SERVER_PORT{sfx}")}
    pin = re.fullmatch(r"0x([0-9]{2}),0x([0-9]{2})", items.get("BS_CUSTOM.aucKdsPin[0]") or "")
    prov_pw = _unquote(provider.find("S_PROV_PASSWORD").get("value"))
    return {
        "raw": items, "lines": lines, "admin": pin and Secret(pin[1] + pin[2]),
        "prov_url": _unquote(provider.find("S_CONFIGFILE_URL").get("value")),
        "prov_user": _unquote(provider.find("S_PROV_USERNAME").get("value")),
        "prov_password": prov_pw and Secret(prov_pw), "mac": provider.find("MAC_ADDRESS").get("value"),
    }


def read_nx70(root: ET.Element) -> dict:
    nvm = root.find("nvm")
    p = {el.get("name"): el.get("value") for el in nvm.iter("param")}
    handsets = [el.get("value") for el in nvm.iter("oper") if el.get("name") == "add_hs"]
    lines = {}
    for hs in handsets:
        pw = p.get(f"SipAccount.{hs}.AuthPassword")
        lines[int(hs)] = {"enabled": True, "user": p.get(f"SipAccount.{hs}.UserName"),
                          "auth_user": p.get(f"SipAccount.{hs}.AuthName"), "password": pw and Secret(pw),
                          "provider": p.get(f"SipAccount.{hs}.ProviderId")}
    url = re.fullmatch(r"https://([^:@/]+):([^@/]+)@(\S+)", p.get("Provisioning.global.ProvisioningServer") or "")
    admin = p.get("WebUIAccounts.1.Password")
    return {
        "params": p, "lines": lines, "admin": admin and Secret(admin),
        "prov_user": url and url[1], "prov_password": url and Secret(url[2]), "prov_url": url and "https://" + url[3],
        "delete_unprovisioned": any(el.get("name") == "DeleteNotProvisionedHS" for el in nvm.iter("oper")),
    }


def read_fanvil(root: ET.Element) -> dict:
    lines = {}
    for el in root.find("sip").iter("line"):
        pw = el.findtext("RegisterPswd")
        lines[int(el.get("index"))] = {
            "enabled": el.findtext("EnableReg") == "1", "user": el.findtext("PhoneNumber"),
            "auth_user": el.findtext("RegisterUser"), "password": pw and Secret(pw),
            "server": el.findtext("RegisterAddr"), "port": el.findtext("RegisterPort"),
            "transport": el.findtext("Transport"), "srtp": el.findtext("MediaCrypto")}
    web = {a.get("index"): (a.findtext("Name"), a.findtext("Password")) for a in root.find("web").iter("account")}
    ap = root.find("ap")
    prov_pw = ap.findtext("DefaultPassword")
    return {
        "lines": lines, "admin": web["1"][1] and Secret(web["1"][1]), "admin_name": web["1"][0],
        "user": web["2"][1] and Secret(web["2"][1]), "user_name": web["2"][0],
        "menu": Secret(root.find("phone").findtext("MenuPassword") or ""),
        "prov_user": ap.findtext("DefaultUsername"), "prov_password": prov_pw and Secret(prov_pw),
        "prov_url": ap.findtext("FlashServerIP"), "prov_file": ap.findtext("FlashFileName"),
        "prov_protocol": ap.findtext("FlashProtocol"), "time_zone": root.find("phone/date").findtext("TimeZone"),
    }


READERS = {"cisco": ("flat-profile", read_cisco), "gigaset": ("ProviderFrame", read_gigaset),
           "gigaset_nx70": ("provisioning", read_nx70), "fanvil": ("sysConf", read_fanvil)}


def parse(vendor: str, body: bytes) -> dict:
    return parse_with(READERS, vendor, body)


# ---- fixtures ------------------------------------------------------------------------------------------------

inventory, rt, cgf_home = fixtures("cgf", INVENTORY)



# ---- profiles and check --------------------------------------------------------------------------------------

def test_profiles_load_with_their_facts(rt):
    cat = rt.catalog
    cisco, giga, nx70, fanvil = (cat.get(n) for n in ("cisco", "gigaset", "gigaset_nx70", "fanvil"))
    assert {m.ovh_name for m in cisco.models.values()} >= {"Cisco SPA504G", "Cisco SPA508G", "Cisco SPA525G",
                                                           "Cisco SPA112"}
    assert cisco.models["SPA112"].kind == "ata"
    assert {m.ovh_name for m in giga.models.values()} >= {"Gigaset C530 IP", "Siemens C610 IP"}
    assert cisco.trigger.name == "{mac}.xml" and giga.trigger.name == "{MAC}.xml"
    assert nx70.trigger.name == "{mac}.xml" and fanvil.trigger.name == "{mac}.cfg"
    assert cisco.trigger.tftp_template and not giga.trigger.tftp_template
    # the Gigaset web login is the 4-digit system PIN; never the factory 0000
    assert giga.passwords["admin"].length == 4 and set(giga.passwords["admin"].alphabet) == set("0123456789")
    assert "0000" in giga.factory_passwords() and "" in cisco.factory_passwords()
    assert any(d.uncertain for d in nx70.factory_defaults)
    assert cisco.sip_notify.resync == "resync" and fanvil.sip_notify.reboot == "check-sync;reboot=true"


def test_provisioner_check_accepts_the_inventory(cgf_home):
    r = cgf_home.cli("check")
    assert r.returncode == 0, r.stderr
    assert "5 devices" in r.stdout


@pytest.mark.parametrize("ua, vendor, model, mac", [
    ("Cisco/SPA508G-7.4.4 (0002FDFF2103)(CBT141400UK)", "cisco", "SPA508G", "0002fdff2103"),
    ("Cisco/SPA525G-7.4.7 (CBT141900G7)", "cisco", "SPA525G", None),
    ("Cisco/SPA112-1.4.1(SR5) (0002FD123457)(CCQ1234567A)", "cisco", "SPA112", "0002fd123457"),
    ("Linksys/SPA-942-6.1.5(a) (88019FA42805)", "cisco", "SPA-942", None),
    ("N510 IP PRO/42.245.00.000.000;7C2F804DF9A9", "gigaset", "N510", "7c2f804df9a9"),
    ("N510 IP PRO/42.245.00.000.000", "gigaset", "N510", None),
    ("Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605", "gigaset_nx70", "N870", "7c2f80e0d605"),
    ('"Gigaset N670 IP PRO/83.V2.65.0+build.d1d6a22;7C2F80E0D606;Handset=2"', "gigaset_nx70", "N670",
     "7c2f80e0d606"),
    ("Fanvil X4 2.10.2.6887 0c383e07e16c", "fanvil", "X4", "0c383e07e16c"),
    ("Fanvil X6U Pro 0.0.10 0c383e2cd782", "fanvil", "X6U Pro", "0c383e2cd782"),
])
def test_user_agents_identify_vendor_model_mac(rt, ua, vendor, model, mac):
    info = rt.catalog.parse_user_agent(ua)
    assert info is not None and (info.vendor, info.model, info.mac) == (vendor, model, mac)


@pytest.mark.parametrize("mac", [CISCO, CISCO_ATA, GIGASET, NX70, FANVIL])
def test_example_user_agent_fits_its_own_profile(rt, mac):
    dev = rt.inventory.device(mac)
    ua = rt.catalog.get(dev.vendor).user_agent_for(dev.model, mac)
    info = rt.catalog.parse_user_agent(ua)
    assert info is not None and info.vendor == dev.vendor and info.mac in (mac, None)


def test_request_file_names_match_the_profiles(rt):
    def vendors(name):
        return {(m.vendor.name, m.mac, m.model) for m in rt.catalog.match_file(name)}
    assert ("cisco", None, "504G") in vendors("spa504G.cfg")  # factory /spa$PSN.cfg
    assert ("cisco", CISCO, None) in vendors(f"{CISCO}.xml")
    assert ("gigaset", GIGASET, None) in vendors(f"{GIGASET.upper()}.xml")
    assert ("gigaset_nx70", NX70, None) in vendors(f"{NX70}.xml")
    assert ("fanvil", FANVIL, None) in vendors(f"{FANVIL}.cfg")
    assert ("fanvil", None, "00X60") in vendors("F0V00X600000.cfg")


# ---- rendered with real secrets, parsed, checked -------------------------------------------------------------

def _common_checks(dev, vendor, creds, got, files, trigger_name):
    n = len(dev.lines)
    used = [got["lines"][i] for i in range(1, n + 1)]
    for i, (ln, spec) in enumerate(zip(used, dev.lines), start=1):
        check(ln["enabled"], f"line {i} enabled")
        check(ln["user"] == spec.extension, f"line {i} user")
        check(ln["auth_user"] == (spec.auth_user or spec.extension), f"line {i} auth user")
        check(ln["password"] is not None and ln["password"] == creds[f"sip:{spec.extension}"],
              f"line {i} SIP password is the device's own")
    check(distinct([ln["password"] for ln in used]), "SIP passwords unique per line")
    factory = vendor.factory_passwords()
    for acct in vendor.web_accounts:
        pw = got[acct]
        check(pw is not None and pw == creds[acct], f"web {acct} password is the device's own")
        check(pw.reveal() not in factory, f"web {acct} password is not a factory default")
    check(got["prov_user"] == dev.mac, "provisioning user is the MAC")
    check(got["prov_password"] is not None and got["prov_password"] == creds["provisioning"],
          "provisioning password handed out")
    check(distinct([creds[n] for n in credential_names(dev, vendor)]), "no secret repeated on the device")
    # only the trigger file carries secrets
    for name, body in files.items():
        if name != trigger_name:
            check(not any(s.reveal().encode() in body for s in creds.values()), f"{name} carries no secret")


def test_cisco_phone_renders_the_logical_settings(rt):
    dev, vendor, creds, files = render(rt, CISCO)
    got = parse("cisco", files[f"{CISCO}.xml"])
    _common_checks(dev, vendor, creds, got, files, f"{CISCO}.xml")
    for i in (1, 2):
        ln = got["lines"][i]
        assert ln["transport"] == "TLS" and ln["proxy"] == "sip.lab.example.net:5061"
        assert ln["dial_plan"] == "(00x.!|0899x.!|118x.!|*xx|xx.)"  # blocked prefixes barred
    assert got["lines"][1]["display_name"] == "Accueil & Co" and got["lines"][2]["display_name"] == "O'Brien"
    assert [got["lines"][i]["enabled"] for i in (3, 4)] == [False, False]  # SPA504G: 4 lines, 2 unused
    assert got["secure_call_serv"] == "Yes" and got["secure_call_setting"] == "Yes"  # srtp: required
    assert got["prov_url"] == "https://127.0.0.1:8443/p/$MA.xml" and got["ca"] == "https://127.0.0.1:8443/p/ca.pem"
    assert got["resync"] == "86400"
    assert got["time_zone"] == "GMT+01:00" and got["dst_rule"] == "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"
    # the secret-free bootstrap (spa$PSN.cfg) points to HTTPS and installs the CA over TFTP
    boot = ET.fromstring(files["spaSPA504G.cfg"])
    assert boot.tag == "flat-profile"
    assert boot.findtext("Profile_Rule") == "https://127.0.0.1:8443/p/$MA.xml"
    assert boot.findtext("Custom_CA_Rule") == "tftp://127.0.0.1:6969/ca.pem"


def test_cisco_ata_renders_router_logins_and_optional_srtp(rt):
    dev, vendor, creds, files = render(rt, CISCO_ATA)
    got = parse("cisco", files[f"{CISCO_ATA}.xml"])
    _common_checks(dev, vendor, creds, got, files, f"{CISCO_ATA}.xml")
    assert got["lines"][1]["transport"] == "TLS" and got["lines"][2]["enabled"] is False
    assert got["lines"][1]["secure_call"] == "Yes"  # optional: offered
    root = ET.fromstring(files[f"{CISCO_ATA}.xml"])
    assert root.find("Admin_Passwd") is None and root.find("router-configuration/Web_Login_Admin_Name").text == "admin"
    check(got["admin"].reveal() != "admin", "ATA admin password is not the factory admin")


def test_gigaset_symb_item_profile(rt):
    dev, vendor, creds, files = render(rt, GIGASET)
    assert list(files) == [f"{GIGASET.upper()}.xml"]
    got = parse("gigaset", files[f"{GIGASET.upper()}.xml"])
    _common_checks(dev, vendor, creds, got, files, f"{GIGASET.upper()}.xml")
    assert got["mac"] == GIGASET.upper()
    # strings double-quoted inside the attribute (quote and ampersand escaped by the XML layer), numbers hex
    raw = got["raw"]
    assert raw["BS_IP_Data1.aucS_SIP_DISPLAYNAME_2"] == '"O\'Neil & Stock"'
    assert got["lines"][1]["server"] == "sip.lab.example.net" and got["lines"][1]["port"] == "0x13c4"  # UDP 5060
    assert [got["lines"][i]["enabled"] for i in range(3, 7)] == [False] * 4
    pin = got["admin"].reveal()
    check(len(pin) == 4 and pin.isdigit() and pin != "0000", "system PIN: 4 digits, not the factory 0000")
    assert got["prov_url"] == f"https://127.0.0.1:8443/p/{GIGASET.upper()}.xml"
    assert raw["BS_IP_Data1.uiI_TIME_TIMEZONE"] == "0x1b" and raw["BS_IP_Data1.uiI_TIME_COUNTRY"] == "0x18"  # GMT+1, FR
    assert raw["BS_IP_Data1.ucB_TIME_USE_AUTOMATIC_DST"] == "0x1"
    for v in raw.values():
        assert v.startswith(('"', "0x")), "every SYMB_ITEM value is a quoted string or hex"


def test_gigaset_refuses_tls_or_required_srtp_it_cannot_do(rt):
    dev = rt.inventory.device(GIGASET)
    vendor = rt.catalog.get("gigaset")
    creds = {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)}
    for key, value, words in (("transport", "tls", "transport_udp"), ("srtp", "required", "srtp_off")):
        ctx = device_context(dev, vendor, creds)
        if key == "transport":
            ctx.values["registrar"] = {**ctx.values["registrar"], "transport": value}
        else:
            ctx.values["srtp"] = value
        with pytest.raises(RenderError, match=words):
            rt.renderer.device_files(ctx)


def test_gigaset_markup_in_a_value_stays_a_value(rt):
    dev = rt.inventory.device(GIGASET)
    vendor = rt.catalog.get("gigaset")
    ctx = device_context(dev, vendor, {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)})
    ctx.values["lines"][0]["display_name"] = "a\"b'<c/>&d"
    body = rt.renderer.device_files(ctx)[f"{GIGASET.upper()}.xml"]
    items = {el.get("ID"): el.get("value") for el in ET.fromstring(body).iter("SYMB_ITEM")}
    assert items["BS_IP_Data1.aucS_SIP_DISPLAYNAME"] == "\"a\"b'<c/>&d\""
    assert b"<c/>" not in body


def test_gigaset_nx70_profile(rt):
    dev, vendor, creds, files = render(rt, NX70)
    got = parse("gigaset_nx70", files[f"{NX70}.xml"])
    _common_checks(dev, vendor, creds, got, files, f"{NX70}.xml")
    root = ET.fromstring(files[f"{NX70}.xml"])
    assert root.get("version") == "1.1" and root.get("productID") == "e2"
    p = got["params"]
    assert p["SipProvider.0.TransportProtocol"] == "3"  # TLS
    assert p["SipProvider.0.RegServerPort"] == "5061" and p["SipProvider.0.RegServerAddress"] == "sip.lab.example.net"
    assert p["SipProvider.0.SRTP_Enabled"] == "1" and p["SipProvider.0.AcceptNonSRTPCalls"] == "0"  # required
    assert sorted(got["lines"]) == [1, 2] and all(ln["provider"] == "0" for ln in got["lines"].values())
    assert got["delete_unprovisioned"]  # handsets beyond the lines are removed
    assert got["prov_url"] == f"https://127.0.0.1:8443/p/{NX70}.xml"  # this file's own URL
    assert p["DmGlobal.0.NtpServer"] == "0.fr.pool.ntp.org" and p["DmGlobal.0.TimeZone"] == "Europe/Paris"


def test_fanvil_sysconf_profile(rt):
    dev, vendor, creds, files = render(rt, FANVIL)
    got = parse("fanvil", files[f"{FANVIL}.cfg"])
    _common_checks(dev, vendor, creds, got, files, f"{FANVIL}.cfg")
    ln = got["lines"][1]
    assert ln["transport"] == "3" and ln["port"] == "5061" and ln["srtp"] == "2"  # TLS, SRTP compulsory
    assert [got["lines"][i]["enabled"] for i in range(2, 13)] == [False] * 11  # X4U: 12 lines
    assert got["admin_name"] == "admin" and got["user_name"] == "user"
    check(got["menu"] == creds["admin"], "menu password replaced (factory 123)")
    assert got["prov_url"] == "https://127.0.0.1:8443/p/" and got["prov_file"] == "$mac.cfg"
    assert got["prov_protocol"] == "5" and got["time_zone"] == "4"  # HTTPS; UTC+1 in quarter hours
    root = ET.fromstring(files[f"{FANVIL}.cfg"])
    assert root.findtext("Version") == "2.0000000000"


def test_a_policy_change_reaches_every_template(rt):
    """srtp: off and transport tcp come out in each vendor's own words."""
    expected = {CISCO: ("TCP", "No"), NX70: ("2", "0"), FANVIL: ("1", "0")}
    for mac, (transport, srtp) in expected.items():
        dev = rt.inventory.device(mac)
        vendor = rt.catalog.get(dev.vendor)
        ctx = device_context(dev, vendor, {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)})
        ctx.values["registrar"] = {**ctx.values["registrar"], "transport": "tcp"}
        ctx.values["srtp"] = "off"
        ctx.values["policy"] = {**ctx.values["policy"], "srtp": "off"}
        name, body = rt.renderer.device_file(ctx, vendor.trigger)
        got = parse(vendor.name, body)
        if vendor.name == "cisco":
            assert (got["lines"][1]["transport"], got["secure_call_serv"]) == (transport, srtp)
        elif vendor.name == "gigaset_nx70":
            p = got["params"]
            assert (p["SipProvider.0.TransportProtocol"], p["SipProvider.0.SRTP_Enabled"]) == (transport, srtp)
        else:
            assert (got["lines"][1]["transport"], got["lines"][1]["srtp"]) == (transport, srtp)


# ---- golden files of the masked render (the `provisioner render` CLI) -------------------------------------------

def test_masked_render_matches_the_golden_files(cgf_home, tmp_path):
    update = os.environ.get("UPDATE_GOLDEN") == "1"
    vendor_of = {CISCO: "cisco", CISCO_ATA: "cisco", GIGASET: "gigaset", NX70: "gigaset_nx70", FANVIL: "fanvil"}
    differ = []
    for mac, vendor in vendor_of.items():
        out = tmp_path / mac
        cgf_home.cli("render", mac, "--out", str(out), check=True)
        for path in sorted(out.iterdir()):
            body = path.read_bytes()
            ET.fromstring(body)  # well formed
            if path.name.endswith((".xml", ".cfg")) and not path.name.startswith(("spa", "F0V")):
                assert MASK.encode() in body, f"{path.name}: secrets masked"
            golden = GOLDEN / vendor / path.name
            if update:
                golden.parent.mkdir(parents=True, exist_ok=True)
                golden.write_bytes(body)
            elif not golden.exists() or golden.read_bytes() != body:
                differ.append(f"{vendor}/{path.name}")
    assert not differ, f"rendered files differ from tests/golden (review, then UPDATE_GOLDEN=1): {differ}"


# ---- end to end: the real server, curl as each phone -----------------------------------------------------------

def _handed_out(vendor: str, body: bytes) -> tuple[str, str]:
    got = parse(vendor, body)
    return got["prov_user"], got["prov_password"].reveal()


def test_each_vendor_enrols_then_needs_digest(cgf_home, tmp_path):
    srv = start_server(cgf_home)
    try:
        rt_inv = Runtime(home=cgf_home.path, inventory_path=cgf_home.inventory)  # inventory and catalog only
        for mac in ONE_PER_PROFILE:
            dev = rt_inv.inventory.device(mac)
            vendor = rt_inv.catalog.get(dev.vendor)
            fname = vendor.trigger.filename_for(mac=mac)
            ua = vendor.user_agent_for(dev.model, mac)
            status, first = srv.curl(fname, ua)
            assert status == 200, f"{vendor.name}: enrolment fetch of {fname}"
            user, password = _handed_out(vendor.name, first)  # parses with the vendor's root
            check(user == mac and len(password) >= 16, f"{vendor.name}: credentials handed out")
            status, _ = srv.curl(fname, ua)
            assert status == 401, f"{vendor.name}: second anonymous fetch refused"
            status, again = srv.curl(fname, ua, user=user, password=password)
            assert status == 200, f"{vendor.name}: digest fetch with the handed-out credentials"
            same = again == first
            check(same, f"{vendor.name}: digest fetch serves the same config")
            status, _ = srv.curl(fname, ua, user=user, password=password[:-1] + ("x" if password[-1] != "x" else "y"))
            assert status == 401, f"{vendor.name}: a wrong password is refused"
        # Cisco: the factory TFTP request gets the secret-free bootstrap, over HTTPS too (the common file)
        boot = srv.tftp("/spa504G.cfg", tmp_path / "spa504G.cfg")
        assert boot is not None and ET.fromstring(boot).findtext("Profile_Rule").endswith("/p/$MA.xml")
        assert b"--pwd" not in boot
        status, common = srv.curl("spa504G.cfg", "Cisco/SPA504G-7.6.2 (0002FD123456)(CBT141400UK)")
        assert status == 200 and ET.fromstring(common).tag == "flat-profile" and b"--pwd" not in common
        tboot = srv.tftp(f"{CISCO}.xml", tmp_path / "cisco-device.xml")  # TFTP never hands out the device file
        assert tboot is not None and b"--pwd" not in tboot and b"Password_1_" not in tboot
        status, fcommon = srv.curl("F0V0X4U00000.cfg", "Fanvil X4U 2.12.16.17 0c383e123456")
        assert status == 200 and ET.fromstring(fcommon).tag == "sysConf" and b"DefaultPassword" not in fcommon
    finally:
        srv.stop()
