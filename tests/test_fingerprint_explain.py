"""Fingerprinting from what devices send (vendors.md corpus), and `provisioner explain` answering the
technician's question "why does this phone get a 401/404?" from a real server's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Home, Server, poll, ua_for
from provisioner.discovery.sip_pnp import parse, parse_pnp
from provisioner.fingerprint import Evidence, identify
from provisioner.runtime import Runtime


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from conftest import REPO
    rt = Runtime(home=tmp_path_factory.mktemp("fp"), inventory_path=REPO / "inventory.yaml", state_url=None)
    return rt.catalog


# (User-Agent, file asked for) -> (vendor, model, firmware, MAC): the strings of vendors.md
REQUESTS = [
    ("Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc", "805ec0aabbcc.cfg", ("yealink", "T46S", "66.86.0.15", "805ec0aabbcc")),
    ("Yealink SIP-T46G 28.83.0.50 00:15:65:12:34:56", "001565123456.cfg", ("yealink", "T46G", "28.83.0.50", "001565123456")),
    ("Cisco/SPA508G-7.4.4 (0002FDFF2103)(CBT141400UK)", "0002fdff2103.xml", ("cisco", "SPA508G", "7.4.4", "0002fdff2103")),
    ("N510 IP PRO/42.245.00.000.000;7C2F804DF9A9", None, ("gigaset", "N510", "42.245.00.000.000", "7c2f804df9a9")),
    ("Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605", None, ("gigaset_nx70", "N870", None, "7c2f80e0d605")),
    ("Fanvil X4U 2.10.2.6887 0c383e07e16c", "0c383e07e16c.cfg", ("fanvil", "X4U", "2.10.2.6887", "0c383e07e16c")),
    ("Mozilla/4.0 (compatible; snomD785-SIP 10.1.169.16 2010.12-00001-gd311851f1 (Feb 25 2019 - 14:19:43) "
     "00041396D9B4 SXM:0 UXM:0 UXMC:0)", "00041396D9B4.xml", ("snom", "D785", "10.1.169.16", "00041396d9b4")),
    # Polycom puts no MAC in its User-Agent: the file name gives it
    ("FileTransport PolycomVVX-VVX_400-UA/4.1.4.7430 Type/Application", "0004f2aabbcc-user.cfg",
     ("polycom", "VVX400", "4.1.4.7430", "0004f2aabbcc")),
    ("Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872", "cfg000b828aa872.xml",
     ("grandstream", "GXP2135", "1.0.7.97", "000b828aa872")),
]


@pytest.mark.parametrize("ua,filename,expected", REQUESTS, ids=[r[2][0] + "-" + r[2][1] for r in REQUESTS])
def test_requests_identify_vendor_model_firmware_mac(catalog, ua, filename, expected):
    ident = identify(catalog, Evidence(user_agent=ua, filename=filename))
    vendor, model, firmware, mac = expected
    assert (ident.vendor, ident.model, ident.mac) == (vendor, model, mac), ident.reasons
    if firmware:
        assert ident.firmware == firmware
    assert ident.score >= 0.9 and any("User-Agent" in r for r in ident.reasons)
    assert ident.conflicts == []


def test_a_user_agent_mac_that_is_not_the_files_mac_is_flagged(catalog):
    ident = identify(catalog, Evidence(user_agent="Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc",
                                       filename="805ec0aabbcd.cfg"))
    assert ident.vendor == "yealink"
    assert any("805ec0aabbcd" in c and "805ec0aabbcc" in c for c in ident.conflicts)


def test_a_user_agent_of_another_vendor_than_the_file_name_is_flagged(catalog):
    ident = identify(catalog, Evidence(user_agent="Fanvil X4U 2.10.2.6887 0c383e07e16c",
                                       filename="0c383e07e16c.xml"))
    assert any("fanvil" in c and "cisco" in c for c in ident.conflicts), ident.conflicts


def test_oui_alone_gives_a_weak_answer_with_its_reason(catalog):
    ident = identify(catalog, Evidence(mac="00:02:FD:12:34:56"))
    assert ident.vendor == "cisco" and ident.score < 0.5
    assert ident.reasons == ["OUI 00:02:fd belongs to cisco"]
    assert identify(catalog, Evidence(mac="02:00:00:00:00:01")).vendor is None


SUBSCRIBE = (
    "SUBSCRIBE sip:{user}@224.0.1.75 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776;rport\r\n"
    "From: <sip:{user}@224.0.1.75>;tag=1\r\nTo: <sip:{user}@224.0.1.75>\r\nCall-ID: 1@192.0.2.10\r\n"
    "CSeq: 1 SUBSCRIBE\r\nContact: <sip:{user}@192.0.2.10:5060>\r\n"
    'Event: ua-profile;profile-type="device";vendor="{vendor}";model="{model}";version="{version}"\r\n'
    "Accept: application/url\r\nExpires: 0\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n")

# vendors.md §1.4, §6.5, §9.2: the Request-URI forms of each vendor
PNP = [
    (dict(user="MAC805ec0aabbcc", vendor="yealink", model="T46S", version="66.86.0.15",
          ua="Yealink SIP-T46S 66.86.0.15"), ("yealink", "T46S", "805ec0aabbcc")),
    (dict(user="MAC%3a7C2F80E0D605", vendor="OEM", model="OEM", version="83.V2.11.0",
          ua="Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605"), ("gigaset_nx70", "N870", "7c2f80e0d605")),
    (dict(user="MAC%3a000413AABBCC", vendor="OEM", model="OEM", version="10.1.169.16", ua="snomD785/10.1.169.16"),
     ("snom", "D785", "000413aabbcc")),
    (dict(user="MAC%3AC074AD112233", vendor="Grandstream", model="GRP2612W", version="1.0.5.67",
          ua="Grandstream GRP2612W 1.0.5.67"), ("grandstream", "GRP2612W", "c074ad112233")),
]


@pytest.mark.parametrize("fields,expected", PNP, ids=[p[1][0] for p in PNP])
def test_sip_pnp_subscribes_are_identified(catalog, fields, expected):
    sub = parse_pnp(parse(SUBSCRIBE.format(**fields).encode()))
    assert sub is not None
    ident = identify(catalog, Evidence(mac=sub.mac, user_agent=sub.user_agent, pnp_vendor=sub.vendor,
                                       pnp_model=sub.model, pnp_version=sub.version))
    assert (ident.vendor, ident.model, ident.mac) == expected, ident.reasons
    assert any("SIP PnP" in r or "User-Agent" in r for r in ident.reasons)


# ---- explain ---------------------------------------------------------------------------------------

def _explain(home: Home, mac: str, expect_rows: int) -> dict:
    """`explain --json`, once the server's batched fetch records have landed (bounded wait)."""
    return poll(lambda: json.loads(home.cli("explain", mac, "--json", check=True).stdout),
                lambda res: len(res["requests"]) >= expect_rows, every=0.2)


def test_explain_a_known_phone_that_lost_its_credentials(server: Server, home: Home):
    mac = "805ec0123456"
    assert server.curl(f"{mac}.cfg", ua_for(mac))[0] == 200  # enrolment
    assert server.curl(f"{mac}.cfg", ua_for(mac))[0] == 401  # e.g. after a factory reset
    res = _explain(home, mac, 2)
    assert res["inventory"]["vendor"] == "yealink" and res["state"]["state"] == "provisioned"
    last, first = res["requests"][0], res["requests"][1]
    assert (first["status"], last["status"]) == (200, 401)
    assert "window is closed" in last["reason"] and "provisioner reset" in last["hint"]
    assert last["identified"]["vendor"] == "yealink" and last["identified"]["model"] == "T46G"
    assert any("provisioner reset" in c for c in res["conclusion"])
    text = home.cli("explain", mac, check=True).stdout
    assert "window is closed" in text and "provisioner reset" in text and "yealink T46G" in text


def test_explain_an_unknown_phone_and_an_impostor(server: Server, home: Home):
    stranger = "805ec0999999"
    assert server.curl(f"{stranger}.cfg", ua_for(stranger))[0] == 401
    res = _explain(home, stranger, 1)
    assert res["inventory"] is None and res["state"] is None
    assert res["requests"][0]["reason"] == "unknown device"
    assert "provisioner adopt" in res["requests"][0]["hint"]
    assert any("not in inventory.yaml" in c for c in res["conclusion"])

    victim = "805ec0123457"
    assert server.curl(f"{victim}.cfg", ua_for("805ec0aaaaaa", "T41P"))[0] == 401
    res = _explain(home, victim, 1)
    row = res["requests"][0]
    assert "User-Agent" in row["reason"] and "User-Agent" in row["hint"]
    assert any("805ec0aaaaaa" in c for c in row["conflicts"])


def test_explain_refuses_a_bad_mac(home: Home):
    r = home.cli("explain", "not-a-mac")
    assert r.returncode == 2 and "not-a-mac" in r.stderr


def test_explain_names_a_file_no_vendor_asks_for(server: Server, home: Home, tmp_path: Path):
    mac = "805ec0123458"
    assert server.curl(f"{mac}.conf", ua_for(mac, "T46S"))[0] == 404
    res = _explain(home, mac, 1)
    assert res["requests"][0]["status"] == 404 and "vendor profile" in res["requests"][0]["hint"]
