"""Cisco SPA, Gigaset (SYMB_ITEM and Nx70) and Fanvil (<sysConf>): what is particular to each family (the
settings every family shares, golden files, conformance, enrolment, registration and boot sequences are in
tests/test_vendors.py, over tests/vendor_kit.py's families).

No secret reaches the test output: parsed secrets are wrapped in Secret at once (masked repr) and every
comparison that involves one is computed into a bool first (`check`), so a failure names the field only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from conftest import start_server
from provisioner.desired import credential_names, device_context, tz_facts, utc_offset
from provisioner.errors import RenderError
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from vendor_kit import (CISCO, CISCO_ATA, FAMILIES, FANVIL, GIGASET, NX70, check, fixtures, read_cisco, read_fanvil,
                        read_gigaset, read_nx70, render)

inventory, rt, cgf_home = fixtures("cgf")


def parse(vendor: str, body: bytes) -> dict:
    return FAMILIES[vendor].read(body)

# ---- profiles and check --------------------------------------------------------------------------------------

def test_profiles_load_with_their_facts(rt):
    cat = rt.catalog
    cisco, giga, nx70, fanvil = (cat.get(n) for n in ("cisco", "gigaset", "gigaset_nx70", "fanvil"))
    assert {m.ovh_name for m in cisco.models.values()} >= {"Cisco SPA504G", "Cisco SPA508G", "Cisco SPA525G",
                                                           "Cisco SPA112"}
    assert cisco.models["SPA112"].kind == "ata"
    assert {m.ovh_name for m in giga.models.values()} >= {"Gigaset C530 IP", "Siemens C610 IP"}
    assert cisco.trigger.name == "{mac}.xml" and giga.trigger.name == "{MAC}.xml"
    # a factory-fresh Nx70 asks for %MACD.xml (MAC upper-case, gigawiki): the name its own URL pins too
    assert nx70.trigger.name == "{MAC}.xml" and fanvil.trigger.name == "{mac}.cfg"
    assert cisco.trigger.tftp_template and not giga.trigger.tftp_template
    # the Gigaset web login is the 4-digit system PIN; never the factory 0000
    assert giga.passwords["admin"].length == 4 and set(giga.passwords["admin"].alphabet) == set("0123456789")
    assert "0000" in giga.factory_passwords() and "" in cisco.factory_passwords()
    assert any(d.uncertain for d in nx70.factory_defaults)
    assert cisco.sip_notify.resync == "resync" and fanvil.sip_notify.reboot == "check-sync;reboot=true"


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


def test_request_file_names_match_the_profiles(rt):
    def vendors(name):
        return {(m.vendor.name, m.mac, m.model) for m in rt.catalog.match_file(name)}
    assert ("cisco", None, "504G") in vendors("spa504G.cfg")  # factory /spa$PSN.cfg
    assert ("cisco", CISCO, None) in vendors(f"{CISCO}.xml")
    assert ("gigaset", GIGASET, None) in vendors(f"{GIGASET.upper()}.xml")
    assert ("gigaset_nx70", NX70, None) in vendors(f"{NX70.upper()}.xml")
    assert ("fanvil", FANVIL, None) in vendors(f"{FANVIL}.cfg")
    assert ("fanvil", None, "00X60") in vendors("F0V00X600000.cfg")


def test_cisco_phone_renders_the_logical_settings(rt):
    dev, vendor, creds, files = render(rt, CISCO)
    got = parse("cisco", files[f"{CISCO}.xml"])
    for i in (1, 2):
        ln = got["lines"][i]
        assert ln["transport"] == "TLS" and ln["proxy"] == "sip.lab.example.net:5061"
        assert ln["dial_plan"] == "(00x.!|0899x.!|118x.!|+33899x.!|*xx|xx.)"  # blocked prefixes barred
    assert got["lines"][1]["display_name"] == "Accueil & Co" and got["lines"][2]["display_name"] == "O'Brien"
    assert [got["lines"][i]["enabled"] for i in (3, 4)] == [False, False]  # SPA504G: 4 lines, 2 unused
    assert got["secure_call_serv"] == "Yes" and got["secure_call_setting"] == "Yes"  # srtp: required
    assert got["prov_url"] == "https://127.0.0.1:8443/p/$MA.xml" and got["ca"] == "https://127.0.0.1:8443/p/ca.pem"
    assert got["resync"] == "86400"
    assert got["time_zone"] == "GMT+01:00" and got["dst_rule"] == "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"
    # the secret-free bootstrap (spa$PSN.cfg) points to HTTPS and installs the CA over TFTP
    boot = ET.fromstring(files["spa504G.cfg"])
    assert boot.tag == "flat-profile"
    assert boot.findtext("Profile_Rule") == "https://127.0.0.1:8443/p/$MA.xml"
    assert boot.findtext("Custom_CA_Rule") == "tftp://127.0.0.1:6969/ca.pem"


def test_cisco_ata_renders_router_logins_and_optional_srtp(rt):
    dev, vendor, creds, files = render(rt, CISCO_ATA)
    got = parse("cisco", files[f"{CISCO_ATA}.xml"])
    assert got["lines"][1]["transport"] == "TLS" and got["lines"][2]["enabled"] is False
    assert got["lines"][1]["secure_call"] == "Yes"  # optional: offered
    root = ET.fromstring(files[f"{CISCO_ATA}.xml"])
    assert root.find("Admin_Passwd") is None and root.find("router-configuration/Web_Login_Admin_Name").text == "admin"
    check(got["admin"].reveal() != "admin", "ATA admin password is not the factory admin")


def test_cisco_ata_router_clock_uses_this_ntp_server_and_its_own_zone_form(rt):
    """The ATA's router section keeps its own clock (Cisco ATA 191/192 provisioning guide, Time_Setup):
    Time_Server_Mode manual (auto would take DHCP's), the router's '±HH N D' zone entry and the zone's
    rule with Auto_Adjust_Clock (the rule takes precedence over the entry's own DST)."""
    _, _, _, files = render(rt, CISCO_ATA)
    got = read_cisco(ET.fromstring(files[f"{CISCO_ATA}.xml"]))
    assert got["router_time"] == {"Time_Server_Mode": "manual", "Time_Server": "0.fr.pool.ntp.org",
                                  "Time_Zone": "+01 2 2", "Auto_Adjust_Clock": "1",
                                  "Daylight_Saving_Time_Rule": "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"}
    dev = rt.inventory.device(CISCO_ATA)
    vendor = rt.catalog.get("cisco")
    for zone, entry, dst in (("America/New_York", "-05 2 1", "start=3/8/7/2:0:0;end=11/1/7/2:0:0;save=1:0:0"),
                             ("Asia/Tokyo", "+09 1 0", None), ("Asia/Kolkata", None, None)):
        ctx = device_context(dev, vendor, {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)})
        ctx.values["time"] = {**ctx.values["time"], **tz_facts(zone), "timezone": zone,
                              "utc_offset": utc_offset(zone)[0]}
        _, body = rt.renderer.device_file(ctx, vendor.trigger)
        t = read_cisco(ET.fromstring(body))["router_time"]
        assert t.get("Time_Zone") == entry and t.get("Daylight_Saving_Time_Rule") == dst, zone
        assert t["Auto_Adjust_Clock"] == ("1" if dst else "0") and t["Time_Server_Mode"] == "manual"


def test_cisco_registers_user_at_domain_through_the_outbound_proxy(rt):
    dev = rt.inventory.device(CISCO)
    vendor = rt.catalog.get("cisco")
    ctx = device_context(dev, vendor, {n: Secret("Ch3ck-" + n) for n in credential_names(dev, vendor)})
    ctx.values["registrar"] = {**ctx.values["registrar"], "host": "10.0.0.5", "domain": "prov.test", "port": 5080}
    _, body = rt.renderer.device_file(ctx, vendor.trigger)
    ln = read_cisco(ET.fromstring(body))["lines"][1]
    assert (ln["proxy"], ln["outbound_on"], ln["outbound"]) == ("prov.test", True, "10.0.0.5:5080")


def test_gigaset_symb_item_profile(rt):
    dev, vendor, creds, files = render(rt, GIGASET)
    assert list(files) == [f"{GIGASET.upper()}.xml"]
    got = parse("gigaset", files[f"{GIGASET.upper()}.xml"])
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


def test_gigaset_nx70_profile(rt):
    dev, vendor, creds, files = render(rt, NX70)
    got = parse("gigaset_nx70", files[f"{NX70.upper()}.xml"])
    root = ET.fromstring(files[f"{NX70.upper()}.xml"])
    assert root.get("version") == "1.1" and root.get("productID") == "e2"
    p = got["params"]
    assert p["SipProvider.0.TransportProtocol"] == "3"  # TLS
    assert p["SipProvider.0.RegServerPort"] == "5061" and p["SipProvider.0.RegServerAddress"] == "sip.lab.example.net"
    assert p["SipProvider.0.SRTP_Enabled"] == "1" and p["SipProvider.0.AcceptNonSRTPCalls"] == "0"  # required
    assert sorted(got["lines"]) == [1, 2] and all(ln["provider"] == "0" for ln in got["lines"].values())
    assert got["delete_unprovisioned"]  # handsets beyond the lines are removed
    assert got["prov_url"] == f"https://127.0.0.1:8443/p/{NX70.upper()}.xml"  # this file's own URL
    assert p["DmGlobal.0.NtpServer"] == "0.fr.pool.ntp.org" and p["DmGlobal.0.TimeZone"] == "Europe/Paris"


def test_fanvil_sysconf_profile(rt):
    dev, vendor, creds, files = render(rt, FANVIL)
    got = parse("fanvil", files[f"{FANVIL}.cfg"])
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


def test_cisco_and_fanvil_bootstrap_files_over_tftp_and_https(cgf_home, tmp_path):
    """The factory TFTP request of a Cisco gets the secret-free bootstrap, over HTTPS too (the common file);
    TFTP never hands out a device file; the Fanvil model file is the secret-free bootstrap."""
    srv = start_server(cgf_home)
    try:
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
