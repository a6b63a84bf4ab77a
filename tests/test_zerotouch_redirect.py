"""Vendor redirection services against local HTTPS STAND-INS of their documented contracts
(tests/redirect_standins.py): `redirect register | status | remove`, `zero-touch` asking them, decommission
removing the registration, credentials from a file or the environment and never shown. Every request the
documentation does not allow is a recorded violation, and the tests assert there is none."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from conftest import Home
from redirect_standins import SnomSrapsStandIn, YealinkRpsStandIn

URL = "https://10.99.44.1:8443/p/"
COMPANY = "708eb208e44d412dacf5fcf5230ccf1c"
PROFILE = "3c1f00aa11bb22cc33dd44ee55ff6677"

DEVICES = """\
devices:
  - mac: 80:5e:c0:44:00:01
    vendor: yealink
    model: T46S
    site: shop
    lines: [{extension: "301", display_name: Counter}]
  - mac: 80:5e:c0:44:00:02
    vendor: yealink
    model: T54W
    site: shop
    lines: [{extension: "302", display_name: Desk}]
  - mac: 00:04:13:44:00:03
    vendor: snom
    model: D735
    site: shop
    lines: [{extension: "303", display_name: Stock}]
  - mac: 7c:2f:80:44:00:04
    vendor: gigaset
    model: N510
    site: shop
    registrar: {transport: udp}
    policy: {srtp: "off"}
    lines: [{extension: "304", display_name: DECT}]
"""


def _home(tmp: Path, capture_dir: Path, name: str, rps: YealinkRpsStandIn, sraps: SnomSrapsStandIn,
          rps_file: bool = True) -> Home:
    inv = tmp / "inventory.yaml"
    creds = tmp / "yealink-rps.env"
    creds.write_text(f"# RPS AccessKey\nYEALINK_RPS_ACCESS_KEY_ID={rps.key}\nYEALINK_RPS_ACCESS_KEY_SECRET={rps.secret}\n")
    creds.chmod(0o600)
    inv.write_text(f"""\
defaults:
  registrar: {{host: sip.example.net}}
sites:
  shop:
    networks: [10.99.44.0/24]
    provisioning_url: {URL}
zero_touch:
  redirect:
    yealink-rps:
      api: {rps.url}
      server_name: acme-prov
      ca_file: {rps.ca}
      {"credentials_file: yealink-rps.env" if rps_file else ""}
    snom-sraps:
      api: {sraps.url}/api/v1
      company: {COMPANY}
      profiles: {{shop: {PROFILE}}}
      ca_file: {sraps.ca}
{DEVICES}""")
    cap = capture_dir / name
    cap.mkdir(exist_ok=True)
    return Home(tmp / "home", inv, cap)


@pytest.fixture
def standins(tmp_path):
    rps = YealinkRpsStandIn(tmp_path / "rps-tls", "ak-" + secrets.token_hex(6), "sk-" + secrets.token_hex(16))
    sraps = SnomSrapsStandIn(tmp_path / "sraps-tls", COMPANY, "ck_" + secrets.token_hex(8), secrets.token_hex(16))
    with rps, sraps:
        yield rps, sraps
    assert not rps.violations, rps.violations
    assert not sraps.violations, sraps.violations


def _sraps_env(sraps) -> dict:
    return {"SNOM_SRAPS_HAWK_ID": sraps.hawk_id, "SNOM_SRAPS_HAWK_KEY": sraps.hawk_key}


def _no_secret(text: str, *secrets_: str) -> None:
    for s in secrets_:
        assert s not in text


def test_register_status_remove_and_zero_touch(tmp_path, capture_dir, standins):
    rps, sraps = standins
    home = _home(tmp_path, capture_dir, "zt-redirect", rps, sraps)
    env = _sraps_env(sraps)
    r = home.cli("redirect", "register", "--site", "shop", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr  # the Gigaset is skipped (no API), not a failure
    res = {o["mac"]: o for o in json.loads(r.stdout)}
    assert res["805ec0440001"]["ok"] and res["805ec0440002"]["ok"] and res["000413440003"]["ok"]
    assert res["7c2f80440004"]["skipped"] and "MAC-ID" in res["7c2f80440004"]["detail"]
    # what the stand-ins hold now: the site's URL per Yealink MAC (one RPS server entry), the profile per Snom
    assert {m: d["uniqueServerUrl"] for m, d in rps.devices.items()} == {"805ec0440001": URL, "805ec0440002": URL}
    assert [s["serverName"] for s in rps.servers.values()] == ["acme-prov"]
    assert sraps.endpoints["000413440003"]["provisioning_profile"] == PROFILE
    # registering again updates (device/edit), it does not fail on "device.mac.existed"
    assert home.cli("redirect", "register", "805ec0440001", env=env).returncode == 0
    assert len(rps.devices) == 2

    st = json.loads(home.cli("redirect", "status", "--site", "shop", "--json", env=env, check=True).stdout)
    st = {o["mac"]: o for o in st}
    assert st["805ec0440001"]["registered"] and st["805ec0440001"]["url"] == URL
    assert st["000413440003"]["registered"] and "site shop" in st["000413440003"]["detail"]

    # zero-touch asks the services (live) and sees them in place
    zt = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", env=env, check=True).stdout)["devices"]}
    assert zt["805ec0440001"]["redirect"]["in_place"] and "asked now" in zt["805ec0440001"]["redirect"]["detail"]
    assert zt["805ec0440001"]["will_provision"] and "redirection service" in zt["805ec0440001"]["because"]
    assert zt["000413440003"]["will_provision"]
    assert not zt["7c2f80440004"]["will_provision"] and "no API here" in zt["7c2f80440004"]["redirect"]["detail"]
    # ... and it changes when the service forgets a device behind our back
    del rps.devices["805ec0440002"]
    zt = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", env=env, check=True).stdout)["devices"]}
    assert not zt["805ec0440002"]["redirect"]["in_place"] and not zt["805ec0440002"]["will_provision"]

    r = home.cli("redirect", "remove", "805ec0440001", "000413440003", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "805ec0440001" not in rps.devices and not sraps.endpoints
    _no_secret(capture_dir.joinpath("zt-redirect", "cli.log").read_text(), rps.secret, sraps.hawk_key,
               rps.key, sraps.hawk_id)


def test_decommission_removes_the_registration(tmp_path, capture_dir, standins):
    rps, sraps = standins
    home = _home(tmp_path, capture_dir, "zt-redirect-decom", rps, sraps)
    env = _sraps_env(sraps)
    home.cli("redirect", "register", "805ec0440001", "000413440003", env=env, check=True)
    assert "805ec0440001" in rps.devices and "000413440003" in sraps.endpoints
    home.cli("decommission", "805ec0440001", env=env, check=True)
    home.cli("decommission", "000413440003", env=env, check=True)
    assert "805ec0440001" not in rps.devices and not sraps.endpoints
    zt = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", env=env,
                                                    check=True).stdout)["devices"]}
    assert not zt["805ec0440001"]["will_provision"] and "decommissioned" in zt["805ec0440001"]["because"]


def test_decommission_with_the_service_down_says_so_and_redirect_remove_retries(tmp_path, capture_dir, standins):
    rps, sraps = standins
    home = _home(tmp_path, capture_dir, "zt-redirect-down", rps, sraps)
    env = _sraps_env(sraps)
    home.cli("redirect", "register", "000413440003", env=env, check=True)
    bad = {**env, "SNOM_SRAPS_HAWK_KEY": "wrong-key"}  # the service refuses this run
    r = home.cli("decommission", "000413440003", env=bad, check=True)
    assert "Still registered for redirection" in r.stdout and "redirect remove" in r.stdout
    assert "000413440003" in sraps.endpoints
    assert sraps.violations == ["DELETE /api/v1/companies/%s/endpoints/000413440003: bad Hawk MAC" % COMPANY]
    sraps.violations.clear()  # the refusal we provoked on purpose
    zt = json.loads(home.cli("zero-touch", "--json", "--offline", env=env, check=True).stdout)["devices"]
    assert "remove-failed" in next(d for d in zt if d["mac"] == "000413440003")["redirect"]["detail"]
    home.cli("redirect", "remove", "000413440003", env=env, check=True)
    assert not sraps.endpoints


def test_a_request_off_the_contract_is_refused_by_the_stand_in(tmp_path, standins):
    """The stand-ins check what the documents require: a client signing with the wrong secret, or sending a
    field the API does not take, is refused (so the tests above can fail)."""
    import ssl
    from provisioner.secret import Secret
    from provisioner.zerotouch.redirect import RedirectError
    from provisioner.zerotouch.redirect.yealink_rps import YealinkRps
    rps, sraps = standins
    ctx = ssl.create_default_context(cafile=str(rps.ca))
    c = YealinkRps(rps.url, Secret(rps.key), Secret("not-the-secret"), "acme-prov", ctx)
    with pytest.raises(RedirectError, match="sign.invalid"):
        c.register("805ec0440001", URL)
    c.close()
    assert rps.violations and "bad signature" in rps.violations[0]
    rps.violations.clear()
    c = YealinkRps(rps.url, Secret(rps.key), Secret(rps.secret), "acme-prov", ctx)
    with pytest.raises(RedirectError, match="param.invalid"):
        c._call("POST", "/device/add", {"macs": ["805ec0440001"], "uniqueServerUrl": URL, "sipPassword": "x"})
    c.close()
    assert rps.violations and "not allowed" in rps.violations[0]
    rps.violations.clear()


def test_missing_credentials_are_a_plain_error(tmp_path, capture_dir, standins, monkeypatch):
    rps, sraps = standins
    home = _home(tmp_path, capture_dir, "zt-redirect-nocreds", rps, sraps, rps_file=False)
    monkeypatch.delenv("YEALINK_RPS_ACCESS_KEY_ID", raising=False)
    r = home.cli("redirect", "register", "805ec0440001")
    assert r.returncode == 1
    assert "YEALINK_RPS_ACCESS_KEY_ID and YEALINK_RPS_ACCESS_KEY_SECRET" in r.stdout
    assert not rps.devices and not rps.requests  # nothing was sent
    (tmp_path / "yealink-rps.env").chmod(0o644)
    inv = home.inventory.read_text().replace("      ca_file: " + str(rps.ca) + "\n",
                                             "      ca_file: " + str(rps.ca) + "\n      credentials_file: yealink-rps.env\n", 1)
    home.inventory.write_text(inv)
    r = home.cli("redirect", "register", "805ec0440001")
    assert r.returncode == 1 and "chmod 600" in r.stdout
