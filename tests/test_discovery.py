"""discover on a LAN made of network namespaces (never the root namespace: multicast stays in here):

    10.99.7.0/24, one bridge
    .10  tech      the technician's box: runs `provisioner discover` / `serve --sip-pnp`
    .1   fritz     a FRITZ!Box: SSDP responder + tr64desc.xml from tests/data/fritzbox
    .2   router    net-snmp snmpd, MikroTik-like (sysObjectID in enterprise 14988), a private community
    .21  phoneagt  net-snmp snmpd, phone-like sysDescr, community public + a v3 user
    .30  mdns      avahi-daemon announcing a web UI
    .41  yealink   sipp multicasting a Yealink SIP PnP SUBSCRIBE
    .42  snom      sipp multicasting a Snom SIP PnP SUBSCRIBE

The technician's flow end to end: discover finds each with the right vendor and found_by; adopt takes
the Yealink's vendor/model from discovery and keeps the inventory's comments; serve --sip-pnp hands the
adopted Yealink its provisioning URL in a NOTIFY, and the unknown Snom gets nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROVISIONER, REPO, Home, need
from netns import Site, require_namespaces

DATA = Path(__file__).parent / "data"
FRITZ = REPO / "tests" / "data" / "fritzbox" / "FRITZBox_7530_164.08.02"
PRIVATE_COMMUNITY = "rtr-Comm-9f3k"  # must never appear in any output
V3 = ("monitor", "auth-Key-7d2q", "priv-Key-4m8w")

INVENTORY = """\
# Shop LAN for the discovery tests (a network namespace site).
defaults:
  provisioning_url: https://10.99.7.10:8443/p/   # the technician's box
  registrar:
    host: sip.shop.example.net
  policy:
    enrolment_hours: 2

sites:
  # the shop floor
  shop:
    description: Shop floor
    networks: [10.99.7.0/24]
  lab:
    networks: [127.0.0.0/8]

discovery:
  subnets: [10.99.7.0/24]
  timeout: 4
  snmp:
    credentials_file: snmp-credentials.yaml   # communities and v3 keys live there, 0600
    timeout: 1
    retries: 1

devices:
  # the back-office phone, adopted long ago
  - mac: 80:5e:c0:12:34:56
    vendor: yealink
    model: T46G
    site: lab
    lines:
      - {extension: "101", display_name: Back Office}
"""

AVAHI_SERVICE = """<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name>Yealink T54W</name>
  <service><type>_http._tcp</type><port>80</port><txt-record>model=T54W</txt-record></service>
</service-group>
"""

PHONES = {  # host: (MAC, SIP PnP request user part, vendor, model, firmware, User-Agent)
    "yealink": ("80:5e:c0:7a:00:41", "MAC805ec07a0041", "yealink", "T46S", "66.86.0.15", "Yealink SIP-T46S 66.86.0.15"),
    "snom": ("00:04:13:7a:00:42", "MAC%3a0004137A0042", "snom", "snomD785", "10.1.169.16", "snomD785/10.1.169.16"),
}


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    require_namespaces()
    need("snmpd", "sipp", "avahi-daemon")
    tmp = tmp_path_factory.mktemp("lan")
    site = Site("10.99.7", tmp=tmp / "site")
    try:
        site.add_host("tech", 10)
        fritz = site.add_host("fritz", 1, mac="3c:a6:2f:7a:00:01")
        router = site.add_host("router", 2, mac="48:8f:5a:7a:00:02")
        agent = site.add_host("phoneagt", 21, mac="80:5e:c0:7a:00:21")
        avahi = site.add_host("mdns", 30, mac="80:5e:c0:7a:00:30")
        for name, last in (("yealink", 41), ("snom", 42)):
            site.add_host(name, last, mac=PHONES[name][0])
        site.snmpd(router, "RouterOS RB4011iGS+ 7.15.3", "shop-gw", "1.3.6.1.4.1.14988.1", community=PRIVATE_COMMUNITY)
        site.snmpd(agent, "Yealink SIP-T46S 66.86.0.15", "desk-12", v3=V3)
        site.avahi(avahi, "fakephone", AVAHI_SERVICE)
        site.popen(fritz, [sys.executable, str(DATA / "fake_fritzbox.py"), fritz.ip, str(FRITZ)], "fritz")
        assert site.wait_udp(router, 161) and site.wait_udp(agent, 161), "snmpd did not start"
        assert site.wait_tcp(fritz, 49000), site.log("fritz")
        assert site.wait_udp(avahi, 5353), site.log("avahi-mdns")
        yield site
    finally:
        site.close()


@pytest.fixture
def shop(tmp_path, capture_dir, request) -> Home:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    creds = tmp_path / "snmp-credentials.yaml"
    creds.write_text(f"# SNMP secrets for discovery (never in inventory.yaml)\ncommunities: [{PRIVATE_COMMUNITY}, public]\n"
                     f"users:\n  - {{name: {V3[0]}, auth: sha, auth_key: {V3[1]}, priv: aes, priv_key: {V3[2]}}}\n")
    creds.chmod(0o600)
    cap = capture_dir / request.node.name.replace("/", "_")[:80]
    cap.mkdir(exist_ok=True)
    return Home(tmp_path / "home", inv, cap)


def cli_in(site: Site, host: str, home: Home, *args: str, **kw) -> subprocess.Popen:
    """`provisioner ARGS` inside a host namespace (its output is captured for the leak scan by the caller)."""
    cmd = site.cmd(site.hosts[host], [*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                                      *args])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "COLUMNS": "200"}, **kw)


def wait_line(stream, needle: str, timeout: float) -> list[str]:
    """Read lines until one holds `needle` (bounded in time and count)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(lines) < 1000:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen within {timeout} s:\n{''.join(lines)}")


def phones_subscribe(site: Site, round_: str, names=("yealink", "snom")) -> dict[str, subprocess.Popen]:
    procs = {}
    for name in names:
        mac, user, vendor, model, version, ua = PHONES[name]
        procs[name] = site.pnp_phone(site.hosts[name], user, vendor, model, version, ua, f"sipp-{name}-{round_}",
                                     DATA / "pnp_phone.xml")
    return procs


def by_ip(rows: list[dict]) -> dict[str, dict]:
    return {r["ip"]: r for r in rows}


def test_discover_adopt_serve(lan: Site, shop: Home):
    # ---- discover: every probe at once, from the technician's box -------------------------------
    t0 = time.monotonic()
    p = cli_in(lan, "tech", shop, "discover", "--json", "--interface", "10.99.7.10")
    try:
        head = wait_line(p.stderr, "sip-pnp: listening", 20)
        sipps = phones_subscribe(lan, "discover")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    elapsed = time.monotonic() - t0
    (shop.capture / "cli.log").write_text(f"$ discover --json\n{out}{''.join(head)}{err}\n")
    assert p.returncode == 0, err
    for s in sipps.values():
        s.wait(timeout=20)
    rows = by_ip(json.loads(out))
    assert elapsed < 20, elapsed

    fritz = rows["10.99.7.1"]
    assert fritz["found_by"] == ["ssdp"] and fritz["vendor"] in ("fritzbox", "avm")
    assert fritz["model"] == "FRITZ!Box 7530" and fritz["firmware"] == "164.08.02" and fritz["kind"] == "router"
    assert fritz["mac"] == "3ca62f7a0001"  # the box's serialNumber is no usable MAC: the neighbour table gave it

    router = rows["10.99.7.2"]
    assert router["found_by"] == ["snmp"] and router["vendor"] == "mikrotik" and router["kind"] == "router"
    assert router["mac"] == "488f5a7a0002"  # ifPhysAddress
    assert not router["factory_default"]  # it answered the private community only

    agent = rows["10.99.7.21"]
    assert agent["found_by"] == ["snmp"] and agent["vendor"] == "yealink"
    assert (agent["model"], agent["firmware"], agent["mac"]) == ("T46S", "66.86.0.15", "805ec07a0021")
    assert agent["factory_default"] and "factory-default community" in agent["factory_default_why"][0]

    web = rows["10.99.7.30"]
    assert web["found_by"] == ["mdns"] and web["vendor"] == "yealink" and web["model"] == "T54W"
    assert web["mac"] == "805ec07a0030"

    yea = rows["10.99.7.41"]
    assert yea["found_by"] == ["sip-pnp"] and yea["vendor"] == "yealink" and yea["model"] == "T46S"
    assert yea["mac"] == "805ec07a0041" and yea["firmware"] == "66.86.0.15" and yea["factory_default"]
    assert not yea["adopted"] and yea["site"] == "shop"
    snom = rows["10.99.7.42"]
    assert snom["found_by"] == ["sip-pnp"] and snom["vendor"] == "snom" and snom["mac"] == "0004137a0042"
    assert snom["model"] in ("D785", "snomD785")

    # nobody is adopted yet: nobody got a URL, during discovery either
    for name in PHONES:
        url, msgs = lan.pnp_result(f"sipp-{name}-discover")
        assert url is None and "NOTIFY sip:" not in msgs, (name, msgs[-2000:])
    for secret in (PRIVATE_COMMUNITY, *V3[1:]):
        assert secret not in out + err

    # ---- adopt: vendor and model from discovery; comments kept; check passes; twice refused ------
    before = shop.inventory.read_text()
    r = shop.cli("adopt", "80:5e:c0:7a:00:41", "--site", "shop", "--line", "201:Shop Counter")
    assert r.returncode == 0, r.stderr
    assert "identified as Yealink T46S by sip-pnp" in r.stdout
    after = shop.inventory.read_text()
    assert after.startswith(before.rstrip("\n")) and "# the back-office phone, adopted long ago" in after
    assert shop.cli("check").returncode == 0
    r = shop.cli("adopt", "805ec07a0041", "--site", "shop", "--line", "202")
    assert r.returncode == 2 and "already adopted" in r.stderr

    # ---- serve --sip-pnp: the adopted phone gets its URL, the stranger nothing ---------------------
    srv = lan.popen(lan.hosts["tech"], [*PROVISIONER, "--home", str(shop.path), "--inventory", str(shop.inventory),
                                        "serve", "--https", "10.99.7.10:8443", "--tftp", "", "--sip-pnp",
                                        "--sip-pnp-interface", "10.99.7.10"], "serve", cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while "SIP PnP on 224.0.1.75:5060" not in lan.log("serve"):
            assert srv.poll() is None and time.monotonic() < deadline, lan.log("serve")
            time.sleep(0.1)
        sipps = phones_subscribe(lan, "serve")
        for s in sipps.values():
            s.wait(timeout=20)
    finally:
        lan.stop(srv, timeout=15)
    serve_log = lan.log("serve")
    (shop.capture / "serve.log").write_text(serve_log)
    url, msgs = lan.pnp_result("sipp-yealink-serve")
    assert url == "https://10.99.7.10:8443/p/", msgs[-3000:]
    assert "Content-Type: application/url" in msgs and "Subscription-State: terminated;reason=timeout" in msgs
    url, msgs = lan.pnp_result("sipp-snom-serve")
    assert url is None and "NOTIFY sip:" not in msgs and "SIP/2.0 200" not in msgs, msgs[-2000:]
    assert "805ec07a0041" in serve_log and "sent its provisioning URL" in serve_log
    assert "0004137a0042" in serve_log and "unknown device: recorded only" in serve_log
    # serve recorded what it saw, for adopt
    from provisioner.runtime import Runtime
    from provisioner.store.observations import for_mac
    rt = Runtime(home=shop.path, inventory_path=shop.inventory)
    try:
        seen = [o for o in for_mac(rt.store.engine, "0004137a0042") if o["run_id"] == "serve"]
        assert len(seen) == 1 and seen[0]["found_by"] == "sip-pnp" and seen[0]["vendor"] == "snom"
    finally:
        rt.store.close()


def test_discover_table(lan: Site, shop: Home):
    """The people's view: a table with what, where, how found and why; SSDP and SNMP only, quick."""
    p = cli_in(lan, "tech", shop, "discover", "--ssdp", "--subnet", "10.99.7.0/28", "--timeout", "2",
               "--interface", "10.99.7.10")
    out, err = p.communicate(timeout=60)
    (shop.capture / "cli.log").write_text(f"$ discover --ssdp --subnet\n{out}{err}\n")
    assert p.returncode == 0, err
    assert "device(s) found" in out
    for text in ("10.99.7.1", "FRITZ!Box 7530", "164.08.02", "ssdp", "10.99.7.2", "mikrotik", "snmp"):
        assert text in out, (text, out)
    assert "10.99.7.41" not in out  # not swept, not listened for
    assert "Adopt with" not in out  # routers only: nothing a phone profile could adopt
    assert "snmp: sweeping 13 addresses" in err  # a /28 but this box and "ssdp: done" in err
    assert PRIVATE_COMMUNITY not in out + err


def test_discover_input_errors(shop: Home):
    """Refused before any packet is sent (so these run in the root namespace safely)."""
    for args, message in [
        (["--subnet", "10.0.0.0/8"], "sweep at most 4096"),
        (["--subnet", "nonsense"], "bad CIDR"),
        (["--interface", "192.0.2.77", "--passive"], "not an address of this machine"),
    ]:
        r = shop.cli("discover", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    shop.inventory.write_text(INVENTORY.replace("  subnets: [10.99.7.0/24]", "  subnets: [10.99.7.0/33]"))
    r = shop.cli("check")
    assert r.returncode == 2 and "discovery.subnets" in r.stderr
    shop.inventory.write_text(INVENTORY.replace("discovery:\n", "discovery:\n  sip_pnp: {auto_enrol_sites: [mars]}\n"))
    r = shop.cli("check")
    assert r.returncode == 2 and "discovery.sip_pnp.auto_enrol_sites[0]: unknown site 'mars'" in r.stderr, r.stderr
    shop.inventory.write_text(INVENTORY.replace("discovery:\n", "discovery:\n  snmp_community: public\n"))
    r = shop.cli("check")
    assert r.returncode == 2 and "discovery.snmp_community: unknown field" in r.stderr, r.stderr
    (shop.inventory.parent / "snmp-credentials.yaml").chmod(0o644)
    shop.inventory.write_text(INVENTORY)
    r = shop.cli("discover", "--snmp", "--subnet", "127.0.0.0/30")
    assert r.returncode == 2 and "readable by others" in r.stderr


# ---- pieces, without a network --------------------------------------------------------------------------


def test_identify_and_merge():
    from provisioner.discovery import Observation, merge
    from provisioner.fingerprint import Evidence
    from provisioner.runtime import vendors_dir
    from provisioner.vendors import load_catalog
    cat = load_catalog(vendors_dir())
    obs = [
        Observation("snmp", ip="10.0.0.5", mac="805ec0000005",
                    evidence=Evidence(sys_descr="Yealink SIP-T46S 66.86.0.15")),
        Observation("mdns", ip="10.0.0.5", evidence=Evidence(texts=["Yealink T46S"])),  # no MAC: joins by IP
        Observation("sip-pnp", ip="10.0.0.5", mac="805ec0000005",
                    evidence=Evidence(pnp_vendor="yealink", pnp_model="t46s", pnp_version="66.86.0.15"),
                    factory_default="asks by SIP PnP"),
        Observation("ssdp", ip="10.0.0.1", evidence=Evidence(manufacturer="AVM", model_name="FRITZ!Box 7590",
                                                             firmware="154.07.57")),
        Observation("snmp", ip="10.0.0.9", evidence=Evidence(sys_object_id="1.3.6.1.4.1.8072.3.2.10")),
    ]
    for o in obs:
        o.identify(cat)
    rows = {d.ip: d for d in merge(obs)}
    phone = rows["10.0.0.5"]
    assert (phone.mac, phone.vendor, phone.model, phone.firmware) == ("805ec0000005", "yealink", "T46S", "66.86.0.15")
    assert phone.found_by == ["mdns", "snmp", "sip-pnp"] and phone.factory_default == ["asks by SIP PnP"]
    assert any("OUI 80:5e:c0" in w for w in phone.why)
    box = rows["10.0.0.1"]
    assert box.vendor in ("avm", "fritzbox") and box.model == "FRITZ!Box 7590" and box.firmware == "154.07.57"
    assert box.kind == "router" and box.mac is None
    linux = rows["10.0.0.9"]
    assert linux.vendor is None and any("net-snmp agent" in w for w in linux.why)


def test_snmp_messages_decode():
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api
    from pysnmp.proto.api.verdec import decode_message_version
    from provisioner.discovery import snmp
    raw = snmp.v3_discovery_message(4242)
    assert int(decode_message_version(raw)) == 3
    from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
    msg, rest = decoder.decode(raw, asn1Spec=SNMPv3Message())
    assert rest == b"" and int(msg["msgGlobalData"]["msgID"]) == 4242
    assert bytes(msg["msgGlobalData"]["msgFlags"]) == b"\x04"  # reportable, no auth, no priv
    raw = snmp.v2c_get_message("c0mm", 77, [snmp.SYS_DESCR, f"{snmp.IP_AD_ENT_IF_INDEX}.10.0.0.1"])
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    msg, _ = decoder.decode(raw, asn1Spec=p.Message())
    pdu = p.apiMessage.get_pdu(msg)
    assert int(p.apiPDU.get_request_id(pdu)) == 77
    assert [str(o) for o, _ in p.apiPDU.get_varbinds(pdu)] == ["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.4.20.1.2.10.0.0.1"]
    assert snmp.targets(["10.0.0.0/30"], {"10.0.0.1"}) == ["10.0.0.2"]


def test_ssdp_description_and_answers():
    from provisioner.discovery import ssdp
    d = ssdp.parse_description((FRITZ / "tr64desc.xml").read_bytes())
    assert d["manufacturer"] == "AVM" and d["modelName"] == "FRITZ!Box 7530" and d["firmware"] == "164.08.02"
    other = FRITZ.parent / "FRITZBox_7590_154.07.57" / "tr64desc.xml"
    assert ssdp.parse_description(other.read_bytes())["firmware"] == "154.07.57"
    with pytest.raises(ValueError):  # entity tricks are refused before parsing
        ssdp.parse_description(b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>')
    h = ssdp.parse_response(b"HTTP/1.1 200 OK\r\nLOCATION: http://10.0.0.1:49000/tr64desc.xml\r\nST: upnp:rootdevice\r\n\r\n")
    assert h["location"] == "http://10.0.0.1:49000/tr64desc.xml"
    assert ssdp._same_host_url("http://10.0.0.1:49000/tr64desc.xml", "10.0.0.1")
    assert ssdp._same_host_url("http://169.254.169.254/latest", "10.0.0.1") is None  # no third host
    assert ssdp._same_host_url("file:///etc/passwd", "10.0.0.1") is None


def test_arp_table(tmp_path):
    from provisioner.discovery import arp_table
    f = tmp_path / "arp"
    f.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                 "10.0.0.1         0x1         0x2         3c:a6:2f:00:00:01     *        eth0\n"
                 "10.0.0.2         0x1         0x0         00:00:00:00:00:00     *        eth0\n")
    assert arp_table(f) == {"10.0.0.1": "3ca62f000001"}
