"""Firmware (issue 18): the library, a staged rollout on a real `provisioner serve`, phones played by curl (with
each vendor's User-Agent) and tftp-hpa, and what `firmware status`, `audit` and the helpdesk API say.

The scenario runs in order on one server: 10 % of a site's T46S are offered the image, only they get it, the
one that comes back on the new version counts as upgraded, one that comes back on the old version counts as
failed and halts the rollout; the helpdesk resumes and pauses it through the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import subprocess
import time
from pathlib import Path

import ssl

import httpx
import pytest

from conftest import Home, need, poll, start_server
from vendor_kit import FAMILIES
from provisioner.firmware import versions
from provisioner.firmware.http import parse_range
from provisioner.firmware.policy import RolloutSettings
from provisioner.firmware.rollout import Rollouts
from provisioner.runtime import Runtime
from provisioner.store.firmware_schema import firmware_attempts, firmware_images

NOW = dt.datetime.now(dt.timezone.utc)
_far = (NOW.hour + 12) % 24
NIGHT = f"{_far:02d}:00-{(_far + 1) % 24:02d}:00"  # a window twelve hours away from now (UTC)

T46S = [f"805ec01800{i:02x}" for i in range(10)]
T46G = "805ec0180100"
NIGHT_T46S = "805ec0180200"
SPARE, SPARE_DOWNGRADE = "805ec0180300", "805ec0180301"
SNOM, POLYCOM, CISCO = "000413180001", "0004f2180001", "0002fd180001"


def colon(mac: str) -> str:
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def yealink_ua(mac: str, version: str = "66.86.0.15", model: str = "T46S") -> str:
    return f"Yealink SIP-{model} {version} {colon(mac)}"


def snom_ua(version: str = "10.1.54.13") -> str:
    return f"Mozilla/4.0 (compatible; snomD735-SIP {version} 2010.12-00001-gd311851f1 (Feb 25 2019 - 14:19:43) " \
           f"{SNOM.upper()} SXM:0 UXM:0 UXMC:0)"


POLYCOM_UA = "FileTransport PolycomVVX-VVX_410-UA/5.9.7.3480 Type/Application"
CISCO_UA = f"Cisco/SPA504G-7.5.5 ({CISCO.upper()})(CBT141400UK)"


def device(mac, vendor, model, site, ext, extra=""):
    return (f"  - {{mac: '{colon(mac)}', vendor: {vendor}, model: {model}, site: {site}, "
            f"lines: [{{extension: '{ext}', display_name: 'P{ext}'}}]{extra}}}\n")


ALERTS: Path | None = None  # where the alert command of the test inventory appends events


def inventory(lab_percent: int = 10, night_window: str = NIGHT) -> str:
    text = f"""\
# firmware tests: the policy in defaults (inherited by every site), rollouts per site, two device overrides
security: {{alert_command: [tee, -a, "{ALERTS}"]}}
defaults:
  timezone: UTC
  registrar: {{host: sip.lab.example.net}}
  firmware:
    yealink: {{T4xS: latest-approved}}
    snom: latest-approved
    polycom: latest-approved
    cisco: latest-approved
  rollout: {{max_failures: 0.25, settle_seconds: 0, timeout_minutes: 30}}
sites:
  lab:
    networks: [127.0.0.0/16]
    rollout: {{percent: {lab_percent}}}
  night:
    networks: [127.1.0.0/16]
    rollout: {{window: "{night_window}"}}
  spare:
    networks: [127.2.0.0/16]
devices:
"""
    for i, mac in enumerate(T46S):
        text += device(mac, "yealink", "T46S", "lab", 3000 + i)
    text += device(T46G, "yealink", "T46G", "lab", 3100)
    text += device(NIGHT_T46S, "yealink", "T46S", "night", 3200)
    text += device(SPARE, "yealink", "T46S", "spare", 3300)
    text += device(SPARE_DOWNGRADE, "yealink", "T46S", "spare", 3301, ", rollout: {allow_downgrade: true}")
    text += device(SNOM, "snom", "D735", "lab", 3400)
    text += device(POLYCOM, "polycom", "VVX410", "lab", 3500)
    text += device(CISCO, "cisco", "SPA504G", "lab", 3600, ", rollout: {transport: tftp}")
    return text


IMAGES = {  # file name, add arguments, size
    "yealink": ("T46S(T48S,T42S,T41S)-66.86.0.20.rom", ["--vendor", "yealink", "--models", "T4xS"], 3_000_000),
    "snom": ("snomD735-10.1.60.1-SIP-r.bin", ["--vendor", "snom", "--models", "D735"], 1_000_000),
    "polycom": ("3111-48400-001.sip.ld", ["--vendor", "polycom", "--models", "VVX410", "--version", "6.4.3.1234"],
                1_000_000),
    "cisco": ("spa50x-30x-7-6-2c.bin", ["--vendor", "cisco", "--models", "SPA504G"], 300_000),
}


class Lab:
    def __init__(self, home: Home, srv, files: dict[str, Path]):
        self.home, self.srv, self.files = home, srv, files
        self.passwords: dict[str, str] = {}
        self.sha = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}

    def get(self, path: str, ua: str | None = None, mac: str | None = None, source: str | None = None,
            extra: tuple = (), head: bool = False) -> tuple[int, bytes, str]:
        """curl as a phone: path below https://127.0.0.1:PORT, the device's digest credentials when `mac` is
        given, `source` as the source address. (status, body, response headers)."""
        need("curl")
        cmd = ["curl", "-sS", "--max-time", "20", "--cacert", str(self.srv.ca), "-o", "-", "-D", "/dev/stderr",
               "-w", "\n%{http_code}"]
        if ua is not None:
            cmd += ["-A", ua]
        if mac is not None:
            cmd += ["--digest", "-u", f"{mac}:{self.passwords[mac]}"]
        if source is not None:
            cmd += ["--interface", source]
        if head:
            cmd += ["-I"]
        cmd += [*extra, f"https://127.0.0.1:{self.srv.https_port}{path}"]
        r = subprocess.run(cmd, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code), body, r.stderr.decode(errors="replace")

    def config(self, mac: str, ua: str, name: str | None = None, source: str | None = None) -> bytes:
        """The device's config; its first fetch enrols it (the password is kept for the next ones)."""
        name = name or f"{mac}.cfg"
        status, body, _ = self.get(f"/p/{name}", ua, mac if mac in self.passwords else None, source)
        assert status == 200, (mac, status, body[:200])
        if mac not in self.passwords:  # the enrolment answer: its provisioning password, read by the family reader
            vendor = Runtime(home=self.home.path, inventory_path=self.home.inventory).inventory.device(mac).vendor
            self.passwords[mac] = FAMILIES[vendor].read(body)["prov_password"].reveal()
        return body

    def cli(self, *args, check=True):
        return self.home.cli(*args, check=check)

    def status(self, site: str = "lab") -> dict:
        rows = json.loads(self.cli("firmware", "status", "--site", site, "--json").stdout)
        return {(r["vendor"], r["model"]): r for r in rows}

    def fetches(self, limit: int = 50) -> list[dict]:
        return Runtime(home=self.home.path, inventory_path=self.home.inventory).store.fetches(limit=limit)

    def event(self, filename_part: str, source: str | None = None, status: int = 404) -> dict:
        """The latest fetch event of a request answered `status` (the recorder writes in batches: a bounded
        poll)."""
        def find():
            return next((e for e in self.fetches() if filename_part in e["filename"] and e["status"] == status
                         and (source is None or e["source_ip"] == source)), None)
        return poll(find, lambda e: e is not None)


def _events(text: str) -> list[dict]:
    """The alert command's stdin, appended event after event (JSON objects back to back)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        obj, end = dec.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def fw_path(body: bytes) -> str:
    m = re.search(rb"(?:https|tftp)://[^/\s\"<]+(/fw/[A-Za-z0-9_-]+/[A-Za-z0-9._+-]+)", body)
    assert m, body[-600:]
    return m.group(1).decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, capture_dir):
    global ALERTS
    base = tmp_path_factory.mktemp("firmware")
    ALERTS = base / "alerts.jsonl"
    inv = base / "inventory.yaml"
    inv.write_text(inventory())
    cap = capture_dir / "test_firmware"
    cap.mkdir(exist_ok=True)
    home = Home(base / "home", inv, cap)
    files = {}
    rnd = random.Random(18)
    for vendor, (name, args, size) in IMAGES.items():
        p = base / "downloads" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rnd.randbytes(size))
        files[vendor] = p
        home.cli("firmware", "add", str(p), *args, check=True)
    srv = start_server(home, api=True)
    try:
        yield Lab(home, srv, files)
    finally:
        srv.stop()


# ---- the library ----------------------------------------------------------------------------------------------

def test_library_add_parses_versions_and_refuses_without_leaving_anything(home, tmp_path):
    rom = tmp_path / "T46S(T48S,T42S,T41S)-66.86.0.20.rom"
    rom.write_bytes(b"yealink image " * 1000)
    r = home.cli("firmware", "add", str(rom), "--vendor", "yealink", "--models", "T4xS", "--json", check=True)
    got = json.loads(r.stdout)
    assert got["version"] == "66.86.0.20" and got["version_source"] == "from the file name"
    assert got["models"] == ["T41S", "T42S", "T46S", "T48S"]  # the family, expanded
    assert got["sha256"] == hashlib.sha256(rom.read_bytes()).hexdigest()
    stored = home.path / "firmware" / got["id"] / got["file"]
    assert stored.read_bytes() == rom.read_bytes() and stored.stat().st_mode & 0o777 == 0o400
    library = home.path / "firmware"
    before = sorted(p.relative_to(library) for p in library.rglob("*"))

    gs = tmp_path / "gxp2170fw.bin"
    gs.write_bytes(b"grandstream image")
    refusals = [
        (["add", str(gs), "--vendor", "grandstream", "--models", "GXP2170"], "give it with --version"),
        (["add", str(rom), "--vendor", "yealink", "--models", "T46S"], "already in the library"),
        (["add", str(gs), "--vendor", "fanvil", "--models", "X4U", "--version", "2.12.1"], "not managed"),
        (["add", str(gs), "--vendor", "yealink", "--models", "T99Z", "--version", "1.0"], "no yealink model"),
        (["add", str(tmp_path / "x-1.2.3.4.rom"), "--vendor", "yealink", "--models", "T46S"], "does not exist"),
    ]
    wrong = tmp_path / "T46S-66.86.0.21.rom"
    wrong.write_bytes(b"another image")
    refusals.append((["add", str(wrong), "--vendor", "yealink", "--models", "T46S", "--version", "66.86.0.22"],
                     "the file name says 66.86.0.21"))
    for args, why in refusals:
        r = home.cli("firmware", *args)
        assert r.returncode == 2 and why in r.stderr + r.stdout, (args, r.stdout, r.stderr)
    assert sorted(p.relative_to(library) for p in library.rglob("*")) == before, "a refusal leaves no file"
    listed = json.loads(home.cli("firmware", "list", "--json", check=True).stdout)
    assert [i["id"] for i in listed] == [got["id"]], "and no record"

    r = home.cli("firmware", "add", str(gs), "--vendor", "grandstream", "--models", "GXP2170", "--version",
                 "1.0.11.23", "--hold", "--json", check=True)
    held = json.loads(r.stdout)
    assert held["approved"] is False
    home.cli("firmware", "approve", held["id"], check=True)
    home.cli("firmware", "remove", held["id"][:8], check=True)
    assert not (library / held["id"]).exists()
    assert [i["id"] for i in json.loads(home.cli("firmware", "list", "--json", check=True).stdout)] == [got["id"]]


def test_an_unknown_policy_key_names_the_file_and_line(home):
    text = home.inventory.read_text().replace("sites:\n", "sites:\n", 1)
    text = re.sub(r"(\n  lab:\n)", r"\1    firmware: {yealink: {T99: latest-approved}, fanvil: latest-approved}\n",
                  text, count=1)
    home.inventory.write_text(text)
    r = home.cli("check")
    assert r.returncode == 2
    assert re.search(r"inventory.yaml:\d+: sites.lab.firmware.yealink.T99: no yealink model or family", r.stderr)
    assert "sites.lab.firmware.fanvil: Fanvil firmware is not managed here" in r.stderr


# ---- pure rules: versions, selection, window, ranges ------------------------------------------------------------

def test_versions_compare_as_phones_write_them():
    assert versions.same("42.245", "42.245.00.000.000")
    assert versions.older("7.5.5", "7-6-2c") and versions.older("7.6.2", "7.6.2c") and versions.older("7.6.2c", "7.6.3")
    assert versions.older("66.86.0.15", "66.86.0.20") and not versions.older("66.86.0.20", "66.86.0.20")
    assert versions.older("9.1", "10.0")


def test_selection_is_deterministic_and_grows_as_a_prefix(tmp_path):
    inv = tmp_path / "inventory.yaml"
    lines = ["defaults: {registrar: {host: sip.example.net}, firmware: latest-approved}",
             "sites:", "  s: {networks: [127.0.0.0/8]}", "devices:"]
    macs = [f"805ec019{i:04x}" for i in range(200)]
    lines += [f"  - {{mac: '{m}', vendor: yealink, model: T46S, site: s, lines: [{{extension: '{4000 + i}', "
              f"display_name: P}}]}}" for i, m in enumerate(macs)]
    inv.write_text("\n".join(lines) + "\n")
    rt = Runtime(home=tmp_path / "home", inventory_path=inv)
    from provisioner.firmware.library import Image
    image = Image("0" * 16, "0" * 64, "yealink", ("T46S",), "66.86.0.20", "x.rom", 1, "t" * 22, True, NOW, "test")
    chosen = []
    for percent in (1, 5, 10, 30, 50, 100):
        text = inv.read_text()
        inv.write_text(re.sub(r"firmware: latest-approved(, rollout: \{percent: [0-9]+\})?",
                              f"firmware: latest-approved, rollout: {{percent: {percent}}}", text))
        rt.reload_inventory()
        ro = Rollouts(rt)
        picked = {d.mac for d in rt.inventory.resolved.values() if ro.selected(d, image)}
        assert len(picked) == math.ceil(200 * percent / 100), percent
        assert picked == {d.mac for d in rt.inventory.resolved.values() if Rollouts(rt).selected(d, image)}
        if chosen:
            assert chosen[-1] <= picked, f"{percent} %: every device selected before stays selected"
        chosen.append(picked)
    # another target version picks other canaries (the rank hashes the target too)
    other = Image("1" * 16, "1" * 64, "yealink", ("T46S",), "66.86.0.30", "y.rom", 1, "u" * 22, True, NOW, "test")
    inv.write_text(inv.read_text().replace("percent: 100", "percent: 10"))
    rt.reload_inventory()
    ro = Rollouts(rt)
    assert {d.mac for d in rt.inventory.resolved.values() if ro.selected(d, other)} != chosen[2]


def test_window_and_range_rules():
    r = RolloutSettings(window="02:00-05:00")
    at = lambda h, m=0: dt.datetime(2025, 1, 1, h, m)  # noqa: E731
    assert r.in_window(at(2)) and r.in_window(at(4, 59)) and not r.in_window(at(5)) and not r.in_window(at(1, 59))
    assert r.in_window(at(5, 30), dt.timedelta(hours=1)) and not r.in_window(at(6), dt.timedelta(hours=1))
    night = RolloutSettings(window="22:00-04:00")
    assert night.in_window(at(23)) and night.in_window(at(3)) and not night.in_window(at(12))
    assert RolloutSettings().in_window(at(12))
    assert RolloutSettings(percent=10).selected_count(10) == 1 and RolloutSettings(percent=10).selected_count(3) == 1
    assert parse_range("bytes=0-99", 1000) == (0, 99) and parse_range("bytes=900-", 1000) == (900, 999)
    assert parse_range("bytes=-100", 1000) == (900, 999) and parse_range("bytes=990-5000", 1000) == (990, 999)
    assert parse_range("bytes=1000-", 1000) == "unsatisfiable" and parse_range("bytes=0-1,5-9", 1000) is None


# ---- the staged rollout on a real server ------------------------------------------------------------------------

def _selected(lab: Lab, macs: list[str], upgraded: tuple = ()) -> list[str]:
    """The devices whose config carries the offer, each reporting the version it runs."""
    return [m for m in macs
            if b"static.firmware.url" in lab.config(m, yealink_ua(m, "66.86.0.20" if m in upgraded else "66.86.0.15"))]


def test_ten_percent_of_the_site_is_offered_the_image(lab):
    selected = _selected(lab, T46S)
    assert len(selected) == 1, selected
    # the documented rank: sha256 of site|vendor|model|target|MAC, lowest first
    rank = sorted(T46S, key=lambda m: hashlib.sha256(f"lab|yealink|T46S|66.86.0.20|{m}".encode()).hexdigest())
    assert selected == rank[:1]
    lab.selected = selected[0]
    assert b"firmware" not in lab.config(T46G, yealink_ua(T46G, "28.86.0.15", "T46G")), "T46G: not in the policy"
    # the offer is served, not part of the config's identity: the device is in sync, nothing drifts
    rows = {d["mac"]: d for d in json.loads(lab.cli("devices", "--json").stdout)}
    assert rows[lab.selected]["in_sync"], rows[lab.selected]
    st = lab.status()[("yealink", "T46S")]
    assert (st["target"], st["devices"], st["pending"], st["not_selected"]) == ("66.86.0.20", 10, 1, 9)


def test_the_image_goes_to_the_selected_device_only(lab):
    sel = lab.selected
    path = lab.path = fw_path(lab.config(sel, yealink_ua(sel)))
    status, body, headers = lab.get(path, yealink_ua(sel))
    assert status == 200 and hashlib.sha256(body).hexdigest() == lab.sha["yealink"]
    status, part, headers = lab.get(path, yealink_ua(sel), extra=("-r", "1000-1999"))
    assert status == 206 and part == lab.files["yealink"].read_bytes()[1000:2000]
    assert "content-range: bytes 1000-1999/3000000" in headers.lower()
    status, _, headers = lab.get(path, yealink_ua(sel), head=True)
    assert status == 200 and "content-length: 3000000" in headers.lower()

    other = next(m for m in T46S if m != sel)
    refused = {
        "127.0.0.11": (yealink_ua(other), "was never offered"),  # a T46S outside the 10 %
        "127.0.0.12": (yealink_ua(T46G, "28.86.0.15", "T46G"), "T46G is not a model this image is for"),
        "127.0.0.13": ("curl/8.0", "not a Yealink phone"),  # an unknown client
        "127.0.0.14": ("Grandstream Model HW GXP2170 SW 1.0.11.23 DevId 000b82180001", "not a Yealink phone"),
    }
    for source, (ua, why) in refused.items():
        status, body, _ = lab.get(path, ua, source=source)
        assert status == 404 and body == b"not found\n", (ua, status)
        ev = lab.event(path.split("/")[-1], source)
        assert why in ev["reason"] and ev["counted"] is True, ev
    status, _, _ = lab.get(path.replace(path.split("/")[2], "A" * 22), yealink_ua(sel), source="127.0.0.15")
    assert status == 404 and lab.event("AAAAAAAAAAAAAAAAAAAAAA", "127.0.0.15")["counted"] is True


def test_refused_image_requests_are_banned_like_any_other(lab):
    # from outside every site: a hard ban (429); inside a site a ban only withholds anonymous service (401,
    # docs/security.md), since a NAT address may carry a site's phones
    codes = [lab.get(lab.path, "curl/8.0", source="127.9.0.66")[0] for _ in range(11)]
    assert codes[:10] == [404] * 10 and codes[10] == 429, codes


def test_upgraded_then_failed_and_the_rollout_halts(lab):
    a = lab.selected
    lab.config(a, yealink_ua(a, "66.86.0.20"))  # A comes back on the new image
    st = lab.status()[("yealink", "T46S")]
    assert st["upgraded"] == 1 and st["failed"] == 0, st

    lab.home.inventory.write_text(inventory(lab_percent=30))  # serve reloads the edited inventory by itself
    rank = sorted(T46S, key=lambda m: hashlib.sha256(f"lab|yealink|T46S|66.86.0.20|{m}".encode()).hexdigest())
    b, c = rank[1], rank[2]
    assert poll(lambda: b"static.firmware.url" in lab.config(b, yealink_ua(b)), bool, timeout=15), \
        "percent 30: the next devices of the same rank are offered"
    assert set(_selected(lab, T46S, upgraded=(a,))) == {b, c}, "A is upgraded (no offer); B and C are selected"
    path = fw_path(lab.config(b, yealink_ua(b)))
    status, body, _ = lab.get(path, yealink_ua(b))
    assert status == 200 and len(body) == 3_000_000
    assert b"static.firmware.url" not in lab.config(b, yealink_ua(b, "66.86.0.15")), \
        "B came back with the old version: failed, not offered again"
    st = lab.status()[("yealink", "T46S")]
    assert (st["upgraded"], st["failed"], st["rollout"]) == (1, 1, "halted"), st
    assert "1 of 2" in st["note"] and "max_failures 25 %" in st["note"]
    assert b"static.firmware.url" not in lab.config(c, yealink_ua(c)), "halted: C is not offered any more"
    status, _, _ = lab.get(path, yealink_ua(c), source="127.0.0.21")
    assert status == 404
    ev = lab.event(path.split("/")[-1], "127.0.0.21")
    assert "rollout halted" in ev["reason"] and ev["counted"] is False, "an offered phone is never banned for it"
    out = lab.cli("firmware", "status", "--site", "lab").stdout
    assert "halted" in out and "1 of 2 yealink T46S that fetched 66.86.0.20 failed" in out
    alerts = poll(lambda: ALERTS.read_text() if ALERTS.exists() else "", lambda t: "rollout-halted" in t)
    event = next(e for e in _events(alerts) if e["kind"] == "firmware.rollout-halted")
    assert (event["kind"], event["target"], event["model"], event["version"]) == \
        ("firmware.rollout-halted", "lab", "T46S", "66.86.0.20")


def test_the_helpdesk_resumes_and_pauses_rollouts_through_the_api(lab):
    ctx = ssl.create_default_context(cafile=str(lab.srv.ca))
    tok = {role: json.loads(lab.cli("api", "tokens", "create", "--role", role, "--name", f"fw-{role}",
                                    "--json").stdout)["token"] for role in ("viewer", "helpdesk")}

    def api(role):
        return httpx.Client(base_url=lab.srv.api_base, verify=ctx, timeout=15,
                            headers={"Authorization": f"Bearer {tok[role]}"})

    with api("viewer") as v:
        rows = v.get("/api/v1/firmware/status", params={"site": "lab"}).json()
        assert {r["model"]: r["rollout"] for r in rows if r["vendor"] == "yealink"}["T46S"] == "halted"
        assert v.post("/api/v1/firmware/sites/lab/resume").status_code == 403, "viewers cannot resume"
        assert all("token" not in json.dumps(i) for i in v.get("/api/v1/firmware/images").json())
    rank = sorted(T46S, key=lambda m: hashlib.sha256(f"lab|yealink|T46S|66.86.0.20|{m}".encode()).hexdigest())
    c = rank[2]
    with api("helpdesk") as h:
        r = h.post("/api/v1/firmware/sites/lab/resume", json={"vendor": "yealink"})
        assert r.status_code == 200 and r.json()["lifted"] == 1, r.text
        assert poll(lambda: b"static.firmware.url" in lab.config(c, yealink_ua(c)), bool, timeout=5)
        r = h.post("/api/v1/firmware/sites/lab/pause", json={"reason": "storm on site"})
        assert r.status_code == 200 and r.json()["action"] == "paused"
        assert poll(lambda: b"static.firmware.url" not in lab.config(c, yealink_ua(c)), bool, timeout=5)
        rows = h.get("/api/v1/firmware/status", params={"site": "lab"}).json()
        assert {r["rollout"] for r in rows} == {"paused"} and "storm on site" in rows[0]["note"]
        assert h.post("/api/v1/firmware/sites/nowhere/pause").status_code == 404
        assert h.post("/api/v1/firmware/sites/lab/resume").json()["lifted"] == 1
    entries = Runtime(home=lab.home.path, inventory_path=lab.home.inventory).store.audit_entries(limit=50)
    assert any(e["action"] == "firmware.rollout-paused" and e["actor"] == "api:fw-helpdesk" for e in entries)


def test_outside_the_window_the_device_is_not_offered(lab):
    src = "127.1.0.5"
    body = lab.config(NIGHT_T46S, yealink_ua(NIGHT_T46S), source=src)
    assert b"firmware" not in body
    d = next(x for x in lab.status("night")[("yealink", "T46S")]["by_device"])
    assert d["state"] == "outside-window" and NIGHT in d["why"], d
    here = f"{NOW.hour:02d}:00-{(NOW.hour + 2) % 24:02d}:00"
    lab.home.inventory.write_text(inventory(lab_percent=30, night_window=here))
    assert poll(lambda: b"static.firmware.url" in lab.config(NIGHT_T46S, yealink_ua(NIGHT_T46S), source=src),
                bool, timeout=15), "inside its window, the device is offered the image"


def test_no_downgrade_unless_the_policy_allows_it(lab):
    src = "127.2.0.5"
    newer = "66.86.0.99"
    assert b"firmware" not in lab.config(SPARE, yealink_ua(SPARE, newer), source=src)
    d = next(x for x in lab.status("spare")[("yealink", "T46S")]["by_device"] if x["mac"] == SPARE)
    assert d["state"] == "newer" and "no downgrade" in d["why"]
    body = lab.config(SPARE_DOWNGRADE, yealink_ua(SPARE_DOWNGRADE, newer), source=src)
    assert b"static.firmware.url" in body, "rollout.allow_downgrade on the device: offered"


def test_polycom_gets_a_per_phone_master_naming_the_image(lab):
    lab.config(POLYCOM, POLYCOM_UA, name=f"{POLYCOM}-user.cfg")  # enrolment
    status, _, _ = lab.get(f"/p/{POLYCOM}.cfg", POLYCOM_UA)
    assert status == 401, "the per-phone master with an offer needs the device's credentials"
    status, master, _ = lab.get(f"/p/{POLYCOM}.cfg", POLYCOM_UA, mac=POLYCOM)
    assert status == 200 and b"APP_FILE_PATH=\"https://" in master and b"6.4.3.1234" in master
    default = lab.get("/p/000000000000.cfg", POLYCOM_UA)[1]
    assert b'APP_FILE_PATH="sip.ld"' in default and b"not managed" not in default
    path = fw_path(master)
    status, body, _ = lab.get(path, POLYCOM_UA)  # no MAC in a Polycom User-Agent: the offer's source address
    assert status == 200 and hashlib.sha256(body).hexdigest() == lab.sha["polycom"]
    status, _, _ = lab.get(path, POLYCOM_UA, source="127.0.0.31")
    assert status == 404 and lab.event(path.split("/")[-1], "127.0.0.31")["counted"] is True
    yealink_cfg = lab.get(f"/p/{T46S[5]}.cfg", yealink_ua(T46S[5]), mac=T46S[5])
    assert yealink_cfg[0] == 200 and b"APPLICATION" not in yealink_cfg[1], "<mac>.cfg stays Yealink's for a Yealink"


def test_cisco_takes_its_image_over_tftp(lab, tmp_path):
    need("tftp")
    body = lab.config(CISCO, CISCO_UA, name=f"{CISCO}.xml")
    m = re.search(rb"<Upgrade_Rule ua=\"na\">tftp://[^/]+(/fw/[^<]+)</Upgrade_Rule>", body)
    assert m and b"<Upgrade_Enable ua=\"na\">Yes</Upgrade_Enable>" in body, body[-800:]
    name = m.group(1).decode().lstrip("/")
    got = lab.srv.tftp(name, tmp_path / "fw.bin")
    assert got is not None and hashlib.sha256(got).hexdigest() == lab.sha["cisco"]
    st = poll(lambda: lab.status()[("cisco", "SPA504G")], lambda s: s["by_device"][0]["state"] == "fetched")
    assert st["by_device"][0]["state"] == "fetched", st
    assert lab.srv.tftp(name.replace(name.split("/")[1], "B" * 22), tmp_path / "x.bin") is None
    # it never comes back: past rollout.timeout_minutes (30) after the fetch, the attempt is failed
    rt = Runtime(home=lab.home.path, inventory_path=lab.home.inventory)
    with rt.store.write() as c:
        c.execute(firmware_attempts.update().where(firmware_attempts.c.mac == CISCO).values(
            fetched_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=31)))
    d = lab.status()[("cisco", "SPA504G")]
    assert (d["failed"], d["rollout"]) == (1, "halted") and "never came back" in d["by_device"][0]["why"], d


def test_snom_settings_file_and_a_changed_image_is_refused(lab):
    body = lab.config(SNOM, snom_ua(), name=f"{SNOM.upper()}.xml")
    assert b"<update_policy perm=\"R\">auto_update</update_policy>" in body
    m = re.search(rb"<firmware_status perm=\"R\">https://[^/]+(/fw/[^<]+)</firmware_status>", body)
    assert m, body[-600:]
    status, settings, _ = lab.get(m.group(1).decode(), snom_ua())
    assert status == 200 and settings.startswith(b"<?xml") and b"<firmware perm=\"R\">https://" in settings
    path = fw_path(settings)
    status, image, _ = lab.get(path, snom_ua())
    assert status == 200 and hashlib.sha256(image).hexdigest() == lab.sha["snom"]

    rt = Runtime(home=lab.home.path, inventory_path=lab.home.inventory)
    with rt.store.engine.connect() as c:
        row = c.execute(firmware_images.select().where(firmware_images.c.vendor == "snom")).one()
    stored = lab.home.path / "firmware" / row.id / row.filename
    stored.chmod(0o600)
    with open(stored, "r+b") as f:  # one byte changed on disk since `firmware add`
        f.seek(500_000)
        f.write(b"\x00" if image[500_000] else b"\x01")
    status, _, _ = lab.get(path, snom_ua(), source="127.0.0.41")
    assert status == 503
    assert lab.event(path.split("/")[-1], "127.0.0.41", status=503)["counted"] is False
    assert b"firmware_status" not in lab.config(SNOM, snom_ua(), name=f"{SNOM.upper()}.xml"), "no offer any more"
    r = lab.cli("firmware", "verify", check=False)
    assert r.returncode == 3 and "no longer hashes" in r.stdout
    assert any(e["action"] == "firmware.checksum-mismatch" for e in rt.store.audit_entries(limit=100))


def test_audit_reports_firmware_below_the_policy_and_unknown_images(lab):
    r = lab.cli("audit", "--json", "-", check=False)
    assert r.returncode == 3
    found = json.loads(r.stdout)["findings"]
    below = {f["device"] for f in found if f["type"] == "firmware" and "below the site policy" in f["what"]}
    assert (set(T46S) - {lab.selected}) & below, "the T46S not yet upgraded are below the policy"
    assert lab.selected not in below, "the upgraded one is not"
    unknown = [f for f in found if f["type"] == "firmware-image"]
    assert any("66.86.0.15" in f["what"] for f in unknown), "a version no library image has"
    assert not any(f["device"] == lab.selected and f["type"] == "firmware-image" for f in found), \
        "the upgraded device runs a library image"
    assert any(f["type"] == "firmware-library" and f["severity"] == "high" for f in found), "the changed snom file"


def test_a_newer_approved_image_becomes_the_target_and_the_old_url_goes_quiet(lab, tmp_path):
    """latest-approved follows the library: once 66.86.0.21 is added, the spare site's device that may
    downgrade is offered it, and the 66.86.0.20 URL it was given before is refused without counting."""
    src = "127.2.0.5"
    old = fw_path(lab.config(SPARE_DOWNGRADE, yealink_ua(SPARE_DOWNGRADE, "66.86.0.99"), source=src))
    rom = tmp_path / "T46S(T48S,T42S,T41S)-66.86.0.21.rom"
    rom.write_bytes(random.Random(21).randbytes(100_000))
    lab.cli("firmware", "add", str(rom), "--vendor", "yealink", "--models", "T46S")
    new = poll(lambda: fw_path(lab.config(SPARE_DOWNGRADE, yealink_ua(SPARE_DOWNGRADE, "66.86.0.99"), source=src)),
               lambda p: p != old, timeout=10)
    assert new != old and new.endswith("66.86.0.21.rom")
    status, _, _ = lab.get(old, yealink_ua(SPARE_DOWNGRADE, "66.86.0.99"), source=src)
    assert status == 404
    ev = lab.event(old.split("/")[-1], src)
    assert "no longer this device's target" in ev["reason"] and ev["counted"] is False
    status, body, _ = lab.get(new, yealink_ua(SPARE_DOWNGRADE, "66.86.0.99"), source=src)
    assert status == 200 and body == rom.read_bytes()
    status, _, _ = lab.get(new, yealink_ua(SPARE_DOWNGRADE, "66.86.0.21"), source=src)
    assert status == 404, "back on 66.86.0.21, the phone asking its old URL again downloads nothing"
    assert lab.event(new.split("/")[-1], src)["reason"].endswith("the device already runs it")
