"""SIP PnP in the zero-touch picture: a running `serve --sip-pnp` records a heartbeat with the networks it
listens on, `zero-touch` sees it on the device's LAN (and no longer once it stopped), and a factory-fresh
phone (sipp multicasting its SUBSCRIBE in a namespace site) gets its URL from it and enrols with curl."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import PROVISIONER, REPO, Home, need, poll
from netns import Site, require_namespaces

DATA = Path(__file__).parent / "data"
NET = "10.99.45"
SRV = f"{NET}.1"
URL = f"https://{SRV}:8443/p/"
MAC = "805ec0450021"
UA = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:45:00:21"

INVENTORY = f"""\
defaults:
  registrar: {{host: sip.example.net}}
sites:
  shop:
    networks: [{NET}.0/24]
    provisioning_url: {URL}
  elsewhere:
    networks: [10.99.46.0/24]
    provisioning_url: https://10.99.46.1:8443/p/
devices:
  - mac: 80:5e:c0:45:00:21
    vendor: yealink
    model: T46S
    site: shop
    lines: [{{extension: "401", display_name: Counter}}]
  - mac: 80:5e:c0:46:00:22
    vendor: yealink
    model: T46S
    site: elsewhere
    lines: [{{extension: "402", display_name: Far}}]
  - mac: 00:04:f2:45:00:23
    vendor: polycom
    model: VVX400
    site: shop
    lines: [{{extension: "403", display_name: Meeting}}]
"""


def _zt(home: Home) -> dict:
    return {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"]}


def test_serve_sip_pnp_is_seen_on_its_lan_and_a_fresh_phone_enrols_through_it(tmp_path, capture_dir):
    require_namespaces()
    need("sipp", "curl")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    cap = capture_dir / "zt-sip-pnp"
    cap.mkdir(exist_ok=True)
    home = Home(tmp_path / "home", inv, cap)
    assert not _zt(home)[MAC]["sip_pnp"]["in_place"]
    with Site(NET, tmp=tmp_path / "site") as site:
        srv = site.add_host("srv", 1)
        phone = site.add_host("phone", 21, mac="80:5e:c0:45:00:21")
        serve = site.popen(srv, [*PROVISIONER, "--home", str(home.path), "--inventory", str(inv), "serve",
                                 "--https", f"{SRV}:8443", "--tftp", "", "--sip-pnp", "--sip-pnp-interface", SRV],
                           "serve", cwd=REPO)
        assert site.wait_tcp(srv, 8443, timeout=30), site.log("serve")
        zt = poll(lambda: _zt(home), lambda z: z[MAC]["sip_pnp"]["in_place"], timeout=15, every=0.5)
        assert zt[MAC]["sip_pnp"]["in_place"], zt[MAC]
        assert f"{NET}.0/24" in zt[MAC]["sip_pnp"]["detail"]
        assert zt[MAC]["will_provision"] and "SIP PnP" in zt[MAC]["because"]
        far = zt["805ec0460022"]["sip_pnp"]
        assert not far["in_place"] and "not on site elsewhere" in far["detail"]
        poly = zt["0004f2450023"]["sip_pnp"]
        assert not poly["supported"]  # Polycom UCS does not ask by SIP PnP (vendors/polycom.yaml)

        # the factory-fresh phone: SUBSCRIBE, NOTIFY with the URL, then its first fetch enrols it
        site.pnp_phone(phone, "MAC805ec0450021", "yealink", "T46S", "66.86.0.15", "Yealink SIP-T46S 66.86.0.15",
                       "sipp-phone", DATA / "pnp_phone.xml")
        next(p for label, p in site.procs if label == "sipp-phone").wait(timeout=30)
        url, msgs = site.pnp_result("sipp-phone")
        assert url == URL, msgs[-2000:]
        r = site.run(phone, ["curl", "-sS", "--max-time", "10", "--cacert", str(home.path / "tls" / "ca.pem"),
                             "-A", UA, "-o", str(tmp_path / "cfg"), "-w", "%{http_code}", url + f"{MAC}.cfg"])
        assert r.stdout == "200", r.stdout + r.stderr
        assert "static.auto_provision.server.password" in (tmp_path / "cfg").read_text()
        site.stop(serve, timeout=15)
    zt = _zt(home)
    assert not zt[MAC]["sip_pnp"]["in_place"] and "no `serve --sip-pnp`" in zt[MAC]["sip_pnp"]["detail"]
    assert zt[MAC]["state"] == "provisioned"
