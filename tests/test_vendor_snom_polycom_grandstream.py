"""Snom D7xx (<settings>), Polycom VVX/UCS (<polycomConfig> attributes) and Grandstream GXP/GRP
(<gs_provision> P-values): what is particular to each family (the settings every family shares, golden
files, conformance, enrolment, registration and boot sequences are in tests/test_vendors.py, over
tests/vendor_kit.py's families).

No secret reaches the test output: parsed secrets are wrapped in Secret at once (masked repr) and every
comparison that involves one is computed into a bool first (`check`), so a failure names the field only.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from conftest import start_server
from provisioner.desired import common_context, credential_names, device_context
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from vendor_kit import (FAMILIES, GRP, GXP, IP5000, POLYCOM, SNOM, check, fixtures, read_grandstream, read_polycom,
                        render)

TRIGGER = {SNOM: f"{SNOM.upper()}.xml", POLYCOM: f"{POLYCOM}-user.cfg", IP5000: f"{IP5000}-user.cfg",
           GXP: f"cfg{GXP}.xml", GRP: f"cfg{GRP}.xml"}

inventory, rt, spg_home = fixtures("spg")


def parse(vendor: str, body: bytes) -> dict:
    return FAMILIES[vendor].read(body)


def fake_context(rt: Runtime, mac: str):
    """A device context with fixed, harmless secrets, for tests that change the context."""
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    return vendor, device_context(dev, vendor, {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)})


def common(rt: Runtime, vendor_name: str, filename: str, mac: str) -> bytes:
    """What HTTPS answers for a common file name: rendered from the site's settings, no device."""
    vendor = rt.catalog.get(vendor_name)
    m = next(m for m in rt.catalog.match_file(filename) if m.vendor.name == vendor_name and m.mac is None)
    settings = rt.inventory.device(mac).settings
    return rt.renderer.render(vendor, m.spec.template, common_context(vendor, settings, m.model), "test",
                              m.spec.xml_root)


# ---- profiles and check --------------------------------------------------------------------------------------

def test_profiles_load_with_their_facts(rt):
    cat = rt.catalog
    snom, poly, gs = (cat.get(n) for n in ("snom", "polycom", "grandstream"))
    assert snom.trigger.name == "{MAC}.xml" and poly.trigger.name == "{mac}-user.cfg"
    assert gs.trigger.name == "cfg{mac}.xml"
    assert {m.ovh_name for m in poly.models.values()} >= {"Polycom IP5000"}
    assert poly.models["IP5000"].kind == "conference"
    assert {"D712", "D715", "D725", "D735", "D785"} <= set(snom.models)
    assert {"VVX300", "VVX310", "VVX400", "VVX410", "VVX500", "VVX600"} <= set(poly.models)
    assert {"GXP1628", "GXP2160", "GXP2170", "GRP2612", "GRP2614", "GRP2615"} <= set(gs.models)
    assert max(m.lines for m in gs.models.values()) <= 4  # P-values known for accounts 1-4
    assert snom.ouis == ["000413"] and "0004f2" in poly.ouis and {"000b82", "c074ad"} <= set(gs.ouis)
    # factory passwords known, so never rendered
    assert {"", "0000"} <= snom.factory_passwords() and {"456", "123"} <= poly.factory_passwords()
    assert {"admin", "123"} <= gs.factory_passwords()
    assert snom.sip_notify.resync == "check-sync;reboot=false" and poly.sip_notify.resync == "check-sync"
    assert gs.sip_notify.reboot == "check-sync;reboot=true"
    assert "{mac}-phone.cfg" in poly.uploads
    # every device file has a secret-free TFTP answer
    assert all(v.trigger.tftp_template for v in (snom, poly, gs))


@pytest.mark.parametrize("ua, vendor, model, mac", [
    ("Mozilla/4.0 (compatible; snomD785-SIP 10.1.169.16 2010.12-00001-gd311851f1 (Feb 25 2019 - 14:19:43) "
     "00041396D9B4 SXM:0 UXM:0 UXMC:0)", "snom", "D785", "00041396d9b4"),
    ("Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)",
     "snom", "D785", "000413922d24"),
    ("Mozilla/4.0 (compatible; snom710-SIP 8.7.5.35 1.1.5-IFX-05.01.12 000413741767)", "snom", "710",
     "000413741767"),
    ("Mozilla/4.0 (compatible; snom710-SIP 8.7.3.19 1.1.5-IFX-05.01.12)", "snom", "710", None),
    ("FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430 Type/Application", "polycom", "VVX_400", None),
    ("FileTransport PolycomVVX-VVX_101-UA/5.4.3.1014 Type/Updater", "polycom", "VVX_101", None),
    ("FileTransport PolycomSoundStationIP-SSIP_5000-UA/4.0.15.1009", "polycom", "SSIP_5000", None),
    ("FileTransport PolycomSoundPointIP-SPIP_335-UA/4.2.1.0275", "polycom", "SPIP_335", None),
    ("Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872", "grandstream", "GXP2135", "000b828aa872"),
    ("Grandstream Model HW GRP2614 SW 1.0.5.15 DevId c074ad0b63ee", "grandstream", "GRP2614", "c074ad0b63ee"),
    ("Grandstream Model HW HT801 V1.1A SW 1.0.17.5 DevId c074ad273a10", "grandstream", "HT801", "c074ad273a10"),
    ("Grandstream Model HW GXV3350  V1.3A SW 1.0.1.8 DevId c074ad150b88", "grandstream", "GXV3350", "c074ad150b88"),
    ("Grandstream GXP2000 (gxp2000e.bin:1.2.5.3/boot55e.bin:1.1.6.9) DevId 000b822726c8", "grandstream",
     "GXP2000", "000b822726c8"),
])
def test_user_agents_identify_vendor_model_mac(rt, ua, vendor, model, mac):
    info = rt.catalog.parse_user_agent(ua)
    assert info is not None and (info.vendor, info.model, info.mac) == (vendor, model, mac)


@pytest.mark.parametrize("ua", ["Snom D785 10.1.1.1 000413aabbcc", "Yealink SIP-T46G 66.86.0.15 80:5e:c0:12:34:56",
                                "Fanvil X4 2.10.2.6887 0c383e07e16c", "curl/8.0"])
def test_other_user_agents_are_not_claimed(rt, ua):
    info = rt.catalog.parse_user_agent(ua)
    assert info is None or info.vendor not in ("snom", "polycom", "grandstream")


def test_request_file_names_match_the_profiles(rt):
    def vendors(name):
        return {(m.vendor.name, m.mac, m.model) for m in rt.catalog.match_file(name)}
    assert ("snom", None, "D735") in vendors("snomD735.htm")
    # the per-MAC index is a common (secret-free) file: {model} reads "<model>-<MAC>"
    assert vendors(f"snomD735-{SNOM.upper()}.htm") == {("snom", None, f"D735-{SNOM.upper()}")}
    assert ("snom", None, "D735") in vendors("snomD735.xml")
    assert ("snom", SNOM, None) in vendors(f"{SNOM.upper()}.xml")
    # 000000000000.cfg is a literal: Polycom's alone, although it fits Yealink's and Fanvil's {mac}.cfg
    assert vendors("000000000000.cfg") == {("polycom", None, None)}
    assert vendors(f"{POLYCOM}-user.cfg") == {("polycom", POLYCOM, None)}
    assert "polycom" not in {v for v, _, _ in vendors(f"{POLYCOM}.cfg")}
    assert vendors("cfg.xml") == {("grandstream", None, None)}
    assert ("grandstream", None, "gxp2170") in vendors("cfggxp2170.xml")
    assert ("grandstream", GXP, None) in vendors(f"cfg{GXP}.xml")
    assert [p.name for p, mac in rt.catalog.match_upload(f"{POLYCOM}-phone.cfg")] == ["polycom"]


def test_snom_settings_file(rt):
    dev, vendor, creds, files = render(rt, SNOM)
    assert sorted(files) == sorted([f"{SNOM.upper()}.xml", "snomD735.htm", "snomD735.xml"])
    got = parse("snom", files[f"{SNOM.upper()}.xml"])
    for i in (1, 2):
        ln = got["lines"][i]
        assert ln["host"] == "sip.lab.example.net" and ln["outbound"] == "sip.lab.example.net:5061;transport=tls"
        assert (ln["srtp"], ln["savp"]) == ("on", "mandatory")  # srtp: required
    assert got["lines"][1]["display_name"] == "Accueil & Co" and got["lines"][2]["label"] == "Bureau"
    assert sorted(got["lines"]) == list(range(1, 13))  # D735: 12 identities, 10 switched off
    # the admin password replaces the web login and the admin-mode PIN (factory 0000) alike
    for key in ("webserver_admin", "admin_mode", "admin_mode_confirm"):
        check(got[key] == creds["admin"], f"snom {key} is the device's admin password")
    assert got["admin_name"] == "admin" and got["user_name"] == "user"
    s = got["settings"]
    assert got["prov_url"] == f"https://127.0.0.1:8443/p/{SNOM.upper()}.xml"  # pinned to its own file
    assert s["settings_refresh_timer"] == "86400" and s["pnp_config"] == "off" and s["webserver_type"] == "https"
    assert got["ca"] == ["https://127.0.0.1:8443/p/ca.pem"]
    assert s["ntp_server"] == "0.fr.pool.ntp.org" and s["timezone"] == "FRA+1"
    # the bootstrap settings: setting server, CA (over TFTP where the site allows it), no credentials
    boot = ET.fromstring(files["snomD735.xml"])
    assert boot.tag == "settings" and boot.find("phone-settings/setting_server").text == "https://127.0.0.1:8443/p/"
    assert [c.get("url") for c in boot.iter("certificate")] == ["tftp://127.0.0.1:6969/ca.pem"]
    assert boot.find("phone-settings/http_client_pass") is None


def test_snom_index_files_list_the_right_settings_file(rt):
    def listed(filename):
        root = ET.fromstring(common(rt, "snom", filename, SNOM))
        assert root.tag == "setting-files"
        return [f.get("url") for f in root.iter("file")]
    base = "https://127.0.0.1:8443/p/"
    assert listed("snomD735.htm") == [base + "snomD735.xml"]
    assert listed(f"snomD735-{SNOM.upper()}.htm") == [base + f"{SNOM.upper()}.xml"]
    assert listed("snomD735-000413abcdef.htm") == [base + "000413ABCDEF.xml"]  # the file name is upper-case
    # anything else is the generic list: nothing but a 12-digit hex MAC reaches a URL
    assert listed("snomD735-nonsense.htm") == [base + "snomD735.xml"]
    assert listed("snomD735-0004131234567.htm") == [base + "snomD735.xml"]


def test_polycom_vvx_configuration(rt):
    dev, vendor, creds, files = render(rt, POLYCOM)
    assert sorted(files) == sorted(["000000000000.cfg", f"{POLYCOM}-user.cfg"])
    got = parse("polycom", files[f"{POLYCOM}-user.cfg"])
    a = got["attrs"]
    for i in (1, 2):
        ln = got["lines"][i]
        assert (ln["server"], ln["port"], ln["transport"], ln["domain"]) == ("sip.lab.example.net", "5061", "TLS",
                                                                            "sip.lab.example.net")
    assert got["lines"][1]["display_name"] == "Salle Bleue & Co"
    assert sorted(got["lines"]) == list(range(1, 13))  # VVX410: 12 registrations
    assert (a["sec.srtp.enable"], a["sec.srtp.offer"], a["sec.srtp.require"]) == ("1", "1", "1")
    # device.* settings apply only with their .set companions
    assert a["device.set"] == "1"
    for key in ("device.auth.localAdminPassword", "device.auth.localUserPassword", "device.prov.serverType",
                "device.prov.serverName", "device.prov.user", "device.prov.password"):
        assert a[key + ".set"] == "1", key
    assert a["device.prov.serverType"] == "3" and got["prov_url"] == "https://127.0.0.1:8443/p/"
    assert (a["prov.polling.enabled"], a["prov.polling.mode"], a["prov.polling.period"]) == ("1", "rel", "86400")
    assert a["tcpIpApp.sntp.address"] == "0.fr.pool.ntp.org" and a["tcpIpApp.sntp.gmtOffset"] == "3600"
    assert a["tcpIpApp.sntp.daylightSavings.enable"] == "1"
    assert a["tcpIpApp.sntp.daylightSavings.start.month"] == "3"
    assert a["tcpIpApp.sntp.daylightSavings.start.dayOfWeek.lastInMonth"] == "1"  # last Sunday of March
    # the default master file names the per-device file by the phone's own macro
    master = ET.fromstring(files["000000000000.cfg"])
    assert master.tag == "APPLICATION" and master.get("CONFIG_FILES") == "[PHONE_MAC_ADDRESS]-user.cfg"


def test_polycom_ip5000_in_another_zone_with_optional_srtp(rt):
    dev, vendor, creds, files = render(rt, IP5000)
    got = parse("polycom", files[f"{IP5000}-user.cfg"])
    a = got["attrs"]
    assert sorted(got["lines"]) == [1]
    assert (a["sec.srtp.enable"], a["sec.srtp.offer"], a["sec.srtp.require"]) == ("1", "1", "0")
    assert a["tcpIpApp.sntp.gmtOffset"] == "-18000"
    # second Sunday of March, first Sunday of November
    assert a["tcpIpApp.sntp.daylightSavings.start.date"] == "8"
    assert a["tcpIpApp.sntp.daylightSavings.stop.date"] == "1"
    assert a["tcpIpApp.sntp.daylightSavings.stop.month"] == "11"


def test_grandstream_p_values(rt):
    dev, vendor, creds, files = render(rt, GXP)
    assert sorted(files) == sorted([f"cfg{GXP}.xml", "cfg.xml", "cfggxp2170.xml"])
    got = parse("grandstream", files[f"cfg{GXP}.xml"])
    p = got["p"]
    for i in (1, 2, 3):
        ln = got["lines"][i]
        assert (ln["server"], ln["transport"], ln["srtp"]) == ("sip.lab.example.net:5061", "2", "2")
        assert ln["dialplan"] == r"{ !00x+ | !0899x+ | !118x+ | !\+33899x+ | x+ | \+x+ | *x+ | *xx*x+ }"
    assert got["lines"][1]["display_name"] == "Grand & Stream"
    assert p["P401"] == "1" and p["P501"] == "1" and p["P601"] == "0"  # accounts 2, 3 on; 4 off
    assert (p["P212"], got["prov_path"], p["P194"], p["P193"]) == ("2", "127.0.0.1:8443/p", "1", "1440")
    # no takeover by DHCP, SIP PnP or a SIP reset; web over HTTPS only
    assert (p["P145"], p["P1411"], p["P1414"], p["P26015"], p["P1650"]) == ("0", "0", "0", "0", "0")
    # P64 "customize" with the self-defined zone P246: a POSIX rule (Grandstream's config template)
    assert p["P30"] == "0.fr.pool.ntp.org" and p["P64"] == "customize"
    assert p["P246"] == "STD-1DST-2,M3.5.0/02:00:00,M10.5.0/03:00:00"
    boot = read_grandstream(ET.fromstring(files["cfg.xml"]))
    assert boot["p"]["P212"] == "2" and boot["prov_path"] == "127.0.0.1:8443/p" and boot["prov_user"] is None


def test_grandstream_without_call_policy(rt):
    dev, vendor, creds, files = render(rt, GRP)
    got = parse("grandstream", files[f"cfg{GRP}.xml"])
    assert got["lines"][1]["srtp"] == "1" and got["lines"][1]["dialplan"] is None  # optional; no prefixes
    assert sorted(got["lines"]) == [1, 2] and got["lines"][2]["enabled"] is False


def test_a_policy_change_reaches_every_template(rt):
    """transport tcp and srtp off come out in each vendor's own words."""
    for mac in (SNOM, POLYCOM, GXP):
        vendor, ctx = fake_context(rt, mac)
        ctx.values["registrar"] = {**ctx.values["registrar"], "transport": "tcp", "port": 5060}
        ctx.values["srtp"] = "off"
        ctx.values["policy"] = {**ctx.values["policy"], "srtp": "off"}
        _, body = rt.renderer.device_file(ctx, vendor.trigger)
        got = parse(vendor.name, body)
        ln = got["lines"][1]
        if vendor.name == "snom":
            assert (ln["outbound"], ln["srtp"], ln["savp"]) == ("sip.lab.example.net:5060;transport=tcp", "off", "off")
        elif vendor.name == "polycom":
            a = got["attrs"]
            assert (ln["transport"], a["sec.srtp.enable"], a["sec.srtp.require"]) == ("TCPOnly", "0", "0")
        else:
            assert (ln["transport"], ln["srtp"], ln["server"]) == ("1", "0", "sip.lab.example.net:5060")


def test_common_files_and_tftp_answers_are_secret_free(spg_home, tmp_path):
    srv = start_server(spg_home)
    try:
        snom_ua = "Mozilla/4.0 (compatible; snomD735-SIP 10.1.169.16 2010.12-00001-gd311851f1 (Feb 25 2019) " \
                  f"{SNOM.upper()} SXM:0 UXM:0 UXMC:0)"
        poly_ua = "FileTransport PolycomVVX-VVX_410-UA/5.9.7.3480 Type/Application"
        gs_ua = f"Grandstream Model HW GXP2170 SW 1.0.11.6 DevId {GXP}"
        # the phone's own Snom index is answered without credentials and lists its settings file
        status, index = srv.curl(f"snomD735-{SNOM.upper()}.htm", snom_ua)
        assert status == 200  # the inventory's provisioning URL, whatever port this test server has
        assert [f.get("url") for f in ET.fromstring(index).iter("file")] == [f"https://127.0.0.1:8443/p/{SNOM.upper()}.xml"]
        bodies = {}
        for name, ua, root in (("snomD735.htm", snom_ua, "setting-files"), ("snomD735.xml", snom_ua, "settings"),
                               ("000000000000.cfg", poly_ua, "APPLICATION"), ("cfg.xml", gs_ua, "gs_provision"),
                               ("cfggxp2170.xml", gs_ua, "gs_provision")):
            status, body = srv.curl(name, ua)
            assert status == 200 and ET.fromstring(body).tag == root, f"common file {name}"
            bodies[name] = body
        # TFTP never hands out a device file: each one gets its vendor's secret-free bootstrap
        for name, root in ((f"{SNOM.upper()}.xml", "settings"), (f"{POLYCOM}-user.cfg", "polycomConfig"),
                           (f"cfg{GXP}.xml", "gs_provision"), ("000000000000.cfg", "APPLICATION"),
                           (f"snomD735-{SNOM.upper()}.htm", "setting-files")):
            body = srv.tftp(name, tmp_path / name)
            assert body is not None and ET.fromstring(body).tag == root, f"TFTP {name}"
            bodies["tftp:" + name] = body
        poly_boot = read_polycom(ET.fromstring(bodies[f"tftp:{POLYCOM}-user.cfg"]))
        assert poly_boot["attrs"]["device.prov.serverType"] == "3" and poly_boot["prov_password"] is None
        for name, body in bodies.items():
            for word in (b"user_pass", b"http_client_pass", b"auth.password", b"localAdminPassword",
                         b"prov.password", b"<P34>", b"<P2>", b"<P1361>", b"********"):
                assert word not in body, f"{name} carries no secret setting"
        # a Polycom asking for <mac>.cfg (the per-phone master we do not serve) gets a 404 that does not count
        # against it, known MAC or not, and falls back to 000000000000.cfg; the name stays Yealink's/Fanvil's
        # per-device file for their own phones
        assert srv.curl(f"{POLYCOM}.cfg", poly_ua)[0] == 404
        assert srv.curl("0004f2999999.cfg", poly_ua)[0] == 404
        # an unknown Polycom MAC gets the same 401 as a known one
        assert srv.curl("0004f2999999-user.cfg", poly_ua)[0] == 401
    finally:
        srv.stop()
