"""SIP PnP: the wire formats of vendors.md §1.4/§2.4/§4.4/§9.2, the answers (200 OK, NOTIFY with the URL),
who gets one (adopted and on its site's networks; strangers only where the site allows auto-enrol), and
real sipp phones in a namespace site against `discover --sip-pnp`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROVISIONER, REPO, need
from netns import Site, require_namespaces
from provisioner.discovery import sip_pnp as pnp

DATA = Path(__file__).parent / "data"


def sub(uri: str, event: str, ua: str | None = None, frm: str | None = None, extra: str = "") -> bytes:
    lines = [f"SUBSCRIBE {uri} SIP/2.0",
             "Via: SIP/2.0/UDP 10.1.1.41:5060;branch=z9hG4bK-1;rport",
             f"From: {frm or '<' + uri + '>'};tag=abc",
             f"To: <{uri}>", "Call-ID: c1@10.1.1.41", "CSeq: 1 SUBSCRIBE",
             "Contact: <sip:phone@10.1.1.41:5060>", f"Event: {event}", "Accept: application/url", "Expires: 0"]
    if ua:
        lines.append(f"User-Agent: {ua}")
    return ("\r\n".join(lines) + extra + "\r\nContent-Length: 0\r\n\r\n").encode()


# ---- wire formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, event, ua, mac, vendor, model, version", [
    # Yealink (vendors.md §1.4): MAC<mac> in the request user, no separator
    ("sip:MAC001565f4f9e1@224.0.1.75", 'ua-profile;profile-type="device";vendor="yealink";model="W52P";version="25.81.0.10"',
     "Yealink W52P 25.81.0.10", "001565f4f9e1", "yealink", "W52P", "25.81.0.10"),
    # Snom, older firmware (§2.4): MAC%3a, OEM everywhere
    ("sip:MAC%3a000413AABBCC@example.com", 'ua-profile;profile-type="device";vendor="OEM";model="OEM";version="7.1.19"',
     None, "000413aabbcc", "OEM", "OEM", "7.1.19"),
    # Grandstream (§4.4): %3A upper case
    ("sip:MAC%3AC074AD112233@224.0.1.75", 'ua-profile;profile-type="device";vendor="Grandstream";model="GRP2612W";version="1.0.5.67"',
     "Grandstream GRP2612W 1.0.5.67", "c074ad112233", "Grandstream", "GRP2612W", "1.0.5.67"),
    # Planet style (§9.2): MAC=
    ("sip:MAC=00304f112233@224.0.1.75", "ua-profile;profile-type=device;vendor=planet;model=VIP-1000",
     None, "00304f112233", "planet", "VIP-1000", None),
])
def test_parse_vendor_subscribes(uri, event, ua, mac, vendor, model, version):
    s = pnp.parse_pnp(pnp.parse(sub(uri, event, ua)))
    assert (s.mac, s.vendor, s.model, s.version, s.user_agent) == (mac, vendor, model, version, ua)


def test_parse_mac_from_event_and_compact_headers():
    data = (b"SUBSCRIBE sip:224.0.1.75 SIP/2.0\r\nv: SIP/2.0/UDP 10.1.1.9:5060;branch=z9hG4bK-9\r\n"
            b"f: <sip:phone@10.1.1.9>;tag=1\r\nt: <sip:224.0.1.75>\r\ni: x@y\r\nCSeq: 7 SUBSCRIBE\r\n"
            b'o: ua-profile;profile-type="application";vendor="AudioCodes";mac="00:90:8f:60:2a:ac"\r\nl: 0\r\n\r\n')
    s = pnp.parse_pnp(pnp.parse(data))
    assert s.mac == "00908f602aac" and s.vendor == "AudioCodes" and s.call_id == "x@y" and s.cseq == "7 SUBSCRIBE"


@pytest.mark.parametrize("data", [
    b"", b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"\xff\xfe" * 100,
    b"SUBSCRIBE sip:x SIP/2.0\r\n" + b"X-H: 1\r\n" * 70 + b"\r\n",  # too many headers
    b"SUBSCRIBE sip:x SIP/2.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n",  # too large
])
def test_parse_refuses_junk(data):
    assert pnp.parse(data) is None


def test_only_ua_profile_subscribes_count():
    for event in ("presence", "message-summary", "ua-profilex"):
        assert pnp.parse_pnp(pnp.parse(sub("sip:MAC001565f4f9e1@224.0.1.75", event))) is None
    invite = sub("sip:MAC001565f4f9e1@224.0.1.75", "ua-profile").replace(b"SUBSCRIBE", b"INVITE")
    assert pnp.parse_pnp(pnp.parse(invite)) is None


def test_answers_follow_the_dialog():
    s = pnp.parse_pnp(pnp.parse(sub("sip:MAC001565f4f9e1@224.0.1.75",
                                    'ua-profile;profile-type="device";vendor="yealink";model="T46S"')))
    ok = pnp.parse(pnp.build_ok(s, ("10.1.1.41", 5062), "t0", "sip:provisioner@10.1.1.10:40000"))
    assert ok.status == 200 and ok.get("call-id") == "c1@10.1.1.41" and ok.get("cseq") == "1 SUBSCRIBE"
    assert ok.get("via") == "SIP/2.0/UDP 10.1.1.41:5060;branch=z9hG4bK-1;rport=5062"
    assert ok.get("to").endswith(";tag=t0") and ok.get("from").endswith(";tag=abc")
    url = "https://prov.example.net:8443/p/"
    raw = pnp.build_notify(s, "sip:phone@10.1.1.41:5060", ("10.1.1.10", 40000), "t0", url, "z9hG4bKn", 1)
    n = pnp.parse(raw)
    assert n.method == "NOTIFY" and n.uri == "sip:phone@10.1.1.41:5060"
    assert n.get("from") == "<sip:MAC001565f4f9e1@224.0.1.75>;tag=t0"  # the SUBSCRIBE's To, our tag
    assert n.get("to") == "<sip:MAC001565f4f9e1@224.0.1.75>;tag=abc"  # the SUBSCRIBE's From
    assert n.get("event") == s.event and n.get("content-type") == "application/url"
    assert n.get("subscription-state") == "terminated;reason=timeout"
    assert n.body == url.encode() and n.get("content-length") == str(len(url))


# ---- who gets a URL -----------------------------------------------------------------------------------

POLICY_INVENTORY = """\
# SIP PnP policy test
defaults:
  provisioning_url: https://10.99.9.10:8443/p/
  registrar: {host: sip.example.net}
sites:
  shop:
    networks: [10.99.9.0/25]
  depot:                      # the stock room: phones there may enrol themselves
    networks: [10.99.9.128/25]
    provisioning_url: https://depot.example.net/p/
discovery:
  sip_pnp:
    auto_enrol_sites: [depot]
devices:
  - mac: 80:5e:c0:7b:00:41
    vendor: yealink
    model: T46S
    site: shop
    lines: [{extension: "201", display_name: Counter}]
  - mac: 80:5e:c0:7b:00:43      # adopted for the shop, but plugged in the stock room
    vendor: yealink
    model: T41P
    site: shop
    lines: [{extension: "202", display_name: Moved}]
"""


def test_policy(tmp_path):
    from provisioner.inventory import load_inventory
    from provisioner.runtime import vendors_dir
    from provisioner.vendors import load_catalog
    (tmp_path / "inventory.yaml").write_text(POLICY_INVENTORY)
    inv = load_inventory(tmp_path / "inventory.yaml", load_catalog(vendors_dir()))
    assert pnp.auto_enrol_sites(inv) == ("depot",)
    p = pnp.InventoryPolicy(lambda: inv)  # as serve does: the sites are read from the current inventory
    d = p.decide("805ec07b0041", "10.99.9.41")
    assert d.url == "https://10.99.9.10:8443/p/" and d.adopted and d.site == "shop"
    d = p.decide("805ec07b0043", "10.99.9.200")
    assert d.url is None and "outside its networks" in d.why
    d = p.decide("0004137b0042", "10.99.9.42")
    assert d.url is None and "recorded only" in d.why and "shop does not allow auto-enrol" in d.why
    d = p.decide("805ec07b0050", "10.99.9.150")
    assert d.url == "https://depot.example.net/p/" and "allows auto-enrol" in d.why
    assert p.decide(None, "10.99.9.41").url is None
    assert p.decide("805ec07b0051", "192.0.2.1").url is None  # no site at all
    strict = pnp.InventoryPolicy(lambda: inv, None, ())  # discover with no auto-enrol site
    assert strict.decide("805ec07b0050", "10.99.9.150").url is None


# ---- real phones (sipp) in a namespace site --------------------------------------------------------------

PHONES = {  # host: (last octet, MAC, request user, vendor, model, version, UA)
    "adopted": (41, "80:5e:c0:7b:00:41", "MAC805ec07b0041", "yealink", "T46S", "66.86.0.15", "Yealink SIP-T46S 66.86.0.15"),
    "stranger": (42, "00:04:13:7b:00:42", "MAC%3a0004137B0042", "snom", "snomD785", "10.1.169.16", "snomD785/10.1.169.16"),
    "stockroom": (150, "80:5e:c0:7b:00:50", "MAC805ec07b0050", "yealink", "T54W", "96.86.0.30", "Yealink SIP-T54W 96.86.0.30"),
    "moved": (200, "80:5e:c0:7b:00:43", "MAC805ec07b0043", "yealink", "T41P", "36.83.0.35", "Yealink SIP-T41P 36.83.0.35"),
}


def test_discover_sip_pnp_answers_only_who_may_have_a_url(tmp_path, capture_dir):
    require_namespaces()
    need("sipp")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(POLICY_INVENTORY)
    home = tmp_path / "home"
    with Site("10.99.9", tmp=tmp_path / "site") as site:
        tech = site.add_host("tech", 10)
        for name, (last, mac, *_rest) in PHONES.items():
            site.add_host(name, last, mac=mac)
        cmd = site.cmd(tech, [*PROVISIONER, "--home", str(home), "--inventory", str(inv), "discover", "--sip-pnp",
                              "--interface", tech.ip, "--timeout", "3", "--json"])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=dict(os.environ))
        try:
            line, deadline = "", time.monotonic() + 20
            while "sip-pnp: listening" not in line and time.monotonic() < deadline:
                line = p.stderr.readline()
                assert line, "discover ended before listening"
            for name, (_, _, user, vendor, model, version, ua) in PHONES.items():
                site.pnp_phone(site.hosts[name], user, vendor, model, version, ua, f"sipp-{name}",
                               DATA / "pnp_phone.xml")
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        (capture_dir / "sip-pnp-discover.log").write_text(out + err)
        assert p.returncode == 0, err
        for label, proc in site.procs:
            if label.startswith("sipp-"):
                proc.wait(timeout=20)
        urls = {name: site.pnp_result(f"sipp-{name}") for name in PHONES}

    assert urls["adopted"][0] == "https://10.99.9.10:8443/p/", urls["adopted"][1][-2000:]
    assert urls["stockroom"][0] == "https://depot.example.net/p/", urls["stockroom"][1][-2000:]
    for name in ("stranger", "moved"):
        url, msgs = urls[name]
        assert url is None and "NOTIFY sip:" not in msgs and "SIP/2.0 200" not in msgs, (name, msgs[-2000:])
        assert msgs.count("SUBSCRIBE sip:") >= 2  # it retransmitted, as a phone does without an answer

    rows = {r["mac"]: r for r in json.loads(out)}
    assert {r["found_by"][0] for r in rows.values()} == {"sip-pnp"}
    assert rows["805ec07b0041"]["adopted"] and "sent its provisioning URL" in " ".join(rows["805ec07b0041"]["why"])
    assert "outside its networks" in " ".join(rows["805ec07b0043"]["why"])
    assert rows["0004137b0042"]["vendor"] == "snom" and not rows["0004137b0042"]["adopted"]
    assert rows["805ec07b0050"]["model"] == "T54W" and "allows auto-enrol" in " ".join(rows["805ec07b0050"]["why"])

    # each phone recorded once, however often it retransmitted
    from provisioner.runtime import Runtime
    from provisioner.store.observations import for_mac
    rt = Runtime(home=home, inventory_path=inv)
    try:
        for mac in ("0004137b0042", "805ec07b0043"):
            assert len([o for o in for_mac(rt.store.engine, mac) if o["found_by"] == "sip-pnp"]) == 1
    finally:
        rt.store.close()


def test_responder_dedupes_and_throttles(tmp_path):
    """The responder's logic without sockets: retransmissions get the same 200 again and no second
    NOTIFY; a new SUBSCRIBE within 5 s gets a 200 but no NOTIFY; strangers get no byte at all."""
    import asyncio
    from provisioner.inventory import load_inventory
    from provisioner.runtime import vendors_dir
    from provisioner.vendors import load_catalog
    (tmp_path / "inventory.yaml").write_text(POLICY_INVENTORY)
    inv = load_inventory(tmp_path / "inventory.yaml", load_catalog(vendors_dir()))

    class Sent:
        def __init__(self):
            self.packets = []

        def sendto(self, data, addr):
            self.packets.append((addr, pnp.parse(data)))

        def close(self):
            pass

    seen = []
    r = pnp.Responder(pnp.InventoryPolicy(lambda: inv, None, ()), ["10.99.9.10"], seen.append)
    r._send_t = sent = Sent()
    r.local_port = 40000
    adopted = sub("sip:MAC805ec07b0041@224.0.1.75", 'ua-profile;profile-type="device";vendor="yealink";model="T46S"',
                  "Yealink SIP-T46S 66.86.0.15")
    stranger = sub("sip:MAC%3a0004137B0042@224.0.1.75", 'ua-profile;profile-type="device";vendor="snom"')

    async def scenario():
        src = ("10.99.9.41", 5060)
        r.datagram(adopted, src, "mcast")
        r.datagram(adopted, src, "mcast")  # a retransmission
        r.datagram(adopted.replace(b"c1@10.1.1.41", b"c2@10.1.1.41"), src, "mcast")  # a new one, 0 s later
        r.datagram(stranger, ("10.99.9.42", 5060), "mcast")  # the same Call-ID from elsewhere: its own
        await asyncio.sleep(0.05)
        notify = next(p for _, p in sent.packets if p.method == "NOTIFY")
        branch = notify.get("via").split("branch=")[1].split(";")[0]
        ok = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.99.9.10:40000;branch={branch}\r\nCall-ID: c1@10.1.1.41\r\n"
              "CSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n").encode()
        r.datagram(ok, ("10.99.9.41", 5060), "ucast")  # the phone's answer ends the retransmissions
        await asyncio.wait(set(r._tasks), timeout=5)

    asyncio.run(scenario())
    kinds = [(addr, p.status or p.method) for addr, p in sent.packets]
    phone = ("10.99.9.41", 5060)
    assert kinds == [(phone, 200), (phone, 200), (phone, 200), (phone, "NOTIFY")], kinds  # one NOTIFY, answered
    assert list(r.notified) == [("805ec07b0041", "https://10.99.9.10:8443/p/")]
    assert [o.mac for o in seen] == ["805ec07b0041", "805ec07b0041", "0004137b0042"]  # retransmission not recorded
