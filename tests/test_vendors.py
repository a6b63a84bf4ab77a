"""Every phone family through one harness (tests/vendor_kit.py FAMILIES), each test parametrised by family:

- the per-device file parsed with a real parser carries the logical settings, every secret the device's own;
- every key any template of the family renders is in its parameter dictionary (vendors/params/<vendor>.yaml,
  written from the vendor's manuals and other systems' templates) with a value it allows — across transports,
  SRTP policies, time zones, domain-vs-host registrars and the bootstrap/TFTP files;
- golden files of the masked render (a regression check only: UPDATE_GOLDEN=1 rewrites them);
- enrolment then digest with a real `provisioner serve` and curl as the phone;
- what each line's rendered keys say (user, domain, host, port, transport, password) REGISTERs at a real
  Kamailio whose host (127.0.0.1) is not its SIP domain (prov.test);
- every boot sequence of the family's profile (vendors/<vendor>.yaml `boot:`), replayed against a real `serve`:
  no request of it counts against the phone, and the phone ends provisioned.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import time
import xml.etree.ElementTree as ET
import zoneinfo
from contextlib import closing
from pathlib import Path

import pytest

from conftest import REPO, Home, poll, start_server
from provisioner.conformance import Dictionary, check as conforms, keys_of, load_dictionaries
from provisioner.desired import common_context, credential_names, device_context, tz_facts, utc_offset
from provisioner.operations import generate_credentials
from provisioner.registrar import line_secrets
from provisioner.runtime import Runtime
from provisioner.secret import MASK, Secret
from provisioner.vendors import load_catalog
from vendor_kit import FAMILIES, GOLDEN, PARAMS, Family, check, distinct, fixtures, lab_inventory, render

inventory, rt, vendors_home = fixtures("vendors")
FAMILY_IDS = list(FAMILIES)


@pytest.fixture(params=FAMILY_IDS)
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def dictionaries():
    return load_dictionaries(PARAMS)


def test_every_phone_profile_has_a_family_and_a_dictionary(rt, dictionaries):
    assert set(FAMILIES) == set(rt.catalog.vendors) == set(dictionaries)


def test_provisioner_check_accepts_the_lab_inventory(vendors_home):
    r = vendors_home.cli("check")
    assert r.returncode == 0, r.stderr
    assert f"{sum(len(f.macs) for f in FAMILIES.values())} devices" in r.stdout


def test_example_user_agents_fit_their_profile(rt, family):
    for mac in family.macs:
        dev = rt.inventory.device(mac)
        ua = rt.catalog.get(dev.vendor).user_agent_for(dev.model, mac)
        info = rt.catalog.parse_user_agent(ua)
        assert info is not None and info.vendor == dev.vendor and info.mac in (mac, None), ua


# ---- rendered with real secrets, parsed, checked -------------------------------------------------------------

def test_per_device_file_carries_the_logical_settings(rt, family):
    for mac in family.macs:
        dev, vendor, creds, files = render(rt, mac)
        trigger = vendor.trigger.filename_for(mac=mac)
        assert trigger in files
        got = family.read(files[trigger])
        n = len(dev.lines)
        used = [got["lines"][i] for i in range(1, n + 1)]
        for i, (ln, spec) in enumerate(zip(used, dev.lines), start=1):
            check(ln["enabled"], f"{mac} line {i} enabled")
            check(ln["user"] == spec.extension, f"{mac} line {i} user")
            check(ln["auth_user"] == (spec.auth_user or spec.extension), f"{mac} line {i} auth user")
            check(ln["password"] is not None and ln["password"] == creds[f"sip:{spec.extension}"],
                  f"{mac} line {i} SIP password is the device's own")
            check(ln["display_name"] == spec.display_name, f"{mac} line {i} display name")
        check(distinct([ln["password"] for ln in used]), f"{mac} SIP passwords unique per line")
        if family.writes_unused_lines:
            unused = [ln for i, ln in got["lines"].items() if i > n]
            check(len(unused) == vendor.models[dev.model].lines - n, f"{mac} every unused line written")
            for ln in unused:
                check(not ln["enabled"] and not ln["user"] and not (ln["password"] and ln["password"].reveal()),
                      f"{mac} unused lines off and empty")
        factory = vendor.factory_passwords()
        for acct in vendor.web_accounts:
            pw = got[acct]
            check(pw is not None and pw == creds[acct], f"{mac} web {acct} password is the device's own")
            check(pw.reveal() not in factory, f"{mac} web {acct} password is not a factory default")
        check(got["prov_user"] == dev.mac, f"{mac} provisioning user is the MAC")
        check(got["prov_password"] is not None and got["prov_password"] == creds["provisioning"],
              f"{mac} provisioning password handed out")
        check(distinct([creds[c] for c in credential_names(dev, vendor)]), f"{mac} no secret repeated")
        for name, body in files.items():  # only the trigger file carries secrets
            if name != trigger:
                check(not any(s.reveal().encode() in body for s in creds.values()), f"{name} carries no secret")


def _fake(rt: Runtime, mac: str):
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    return dev, vendor, device_context(dev, vendor, {n: Secret("Ch3ck-" + n.replace(":", "")) for n in
                                                     credential_names(dev, vendor)})


def test_markup_in_a_value_stays_a_value(rt, family):
    mac = family.macs[0]
    _, vendor, ctx = _fake(rt, mac)
    nasty = "a\"b'<c/>&d"
    ctx.values["lines"][0]["display_name"] = nasty
    _, body = rt.renderer.device_file(ctx, vendor.trigger)
    assert b"<c/>" not in body or vendor.format == "keyvalue"
    assert family.read(body)["lines"][1]["display_name"] == nasty


# ---- conformance: every rendered key is in the family's parameter dictionary ------------------------------------

ZONES = ["Europe/Paris", "Asia/Kolkata", "America/New_York", "UTC", "Asia/Jerusalem", "Pacific/Chatham",
         "Australia/Sydney", "America/St_Johns", "Europe/Dublin"]


# what provisioner/firmware/rollout.py offer_context() gives a template (74 characters at most: Gigaset N510)
FIRMWARE_OFFER = {"url": "https://prov.example.net:8443/fw/AbCdEfGhIjKlMnOpQrStUv/merkur245_42.bin",
                  "dir_url": "https://prov.example.net:8443/fw/AbCdEfGhIjKlMnOpQrStUv/",
                  "server_path": "prov.example.net:8443/fw/AbCdEfGhIjKlMnOpQrStUv",
                  "status_url": "https://prov.example.net:8443/fw/AbCdEfGhIjKlMnOpQrStUv/firmware.xml",
                  "version": "2.65.0", "filename": "merkur245_42.bin", "transport": "https"}


def _variants(rt: Runtime, mac: str):
    """The device's context with every transport, SRTP policy, one of the zones, a registrar reached at
    another host than its domain, and no blocked prefixes: what a template may be asked to write."""
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    creds = generate_credentials(rt, dev)
    for n, (transport, srtp) in enumerate((t, s) for t in ("udp", "tcp", "tls") for s in ("off", "optional", "required")):
        if vendor.name == "gigaset" and (transport != "udp" or srtp == "required"):
            continue  # refused by the template on purpose (tests/test_vendor_cisco_gigaset_fanvil.py)
        for domain in (None, "prov.test"):
            tz = ZONES[(n * 2 + (domain is None)) % len(ZONES)]
            ctx = device_context(dev, vendor, creds)
            v = ctx.values
            v["registrar"] = {**v["registrar"], "transport": transport, "port": 5061 if transport == "tls" else 5060,
                              **({"domain": domain} if domain else {})}
            v["srtp"] = srtp
            v["policy"] = {**v["policy"], "srtp": srtp, "blocked_prefixes": [] if n % 2 else
                           list(v["policy"]["blocked_prefixes"])}
            v["time"] = {**v["time"], **tz_facts(tz), "timezone": tz, "utc_offset": utc_offset(tz)[0]}
            if n % 2 and vendor.firmware.supported:  # a staged rollout's offer (issue 18): the firmware keys
                v["firmware"] = FIRMWARE_OFFER
            yield vendor, dataclasses.replace(ctx, shared=None)


def test_every_rendered_key_is_in_the_family_dictionary(rt, family, dictionaries):
    """A misspelled or invented key (or a value outside the documented set) fails here, for every file a
    profile names: per-device, common, bootstrap and TFTP answers."""
    d = dictionaries[family.vendor]
    findings, seen = [], set()
    for mac in family.macs:
        dev = rt.inventory.device(mac)
        for vendor, ctx in _variants(rt, mac):
            for spec in vendor.files:
                for template in {spec.template, spec.tftp_template} - {None}:
                    if spec.per_device and template == spec.template:
                        body = rt.renderer.render(vendor, template, ctx.values, "test", spec.xml_root)
                    else:
                        values = {**common_context(vendor, dev.settings, dev.model), "time": ctx.values["time"],
                                  "registrar": ctx.values["registrar"]}
                        body = rt.renderer.render(vendor, template, values, "test", spec.xml_root)
                    findings += [str(f) for f in conforms(d, template, body)]
                    seen |= {d.entry(k)[0] for k, _ in keys_of(d, body) if d.entry(k)}
                for spec in (vendor.firmware.offer_file, vendor.firmware.status_file):  # firmware files (issue 18)
                    if spec is not None and "firmware" in ctx.values:
                        values = {**common_context(vendor, dev.settings, dev.model), "firmware": FIRMWARE_OFFER}
                        body = rt.renderer.render(vendor, spec.template, values, "test", spec.xml_root)
                        findings += [str(f) for f in conforms(d, spec.template, body)]
                        seen |= {d.entry(k)[0] for k, _ in keys_of(d, body) if d.entry(k)}
    assert not findings, "\n".join(sorted(set(findings)))
    assert seen, "nothing was checked"


def test_the_dictionary_check_fails_on_an_invented_key_or_value(dictionaries):
    yealink = dictionaries["yealink"]
    body = (b"#!version:1.0.0.1\naccount.1.sip_server.1.transport = 2\naccount.1.sip_server.1.transport_type = 7\n"
            b"account.1.password = hunter2-secret\naccount.1.enable = 1\n")
    found = [str(f) for f in conforms(yealink, "x.cfg", body)]
    assert any("account.1.sip_server.1.transport: not in the parameter dictionary" in f for f in found)
    assert any("account.1.sip_server.1.transport_type: value '7'" in f for f in found)
    assert len(found) == 2 and not any("hunter2" in f for f in found)
    cisco = dictionaries["cisco"]
    found = [str(f) for f in conforms(cisco, "x.xml", b'<flat-profile><Proxy_1_ ua="nope">a b</Proxy_1_>'
                                                      b'<Password_1_ ua="na">s3cret pw</Password_1_></flat-profile>')]
    assert any("Proxy_1_@ua" in f for f in found) and any("Proxy_1_: value" in f for f in found)
    assert not any("s3cret" in f for f in found)


def test_every_dictionary_entry_names_its_source(dictionaries):
    for d in dictionaries.values():
        for key, p in d.params.items():
            assert p.source and all(d.sources[s].strip() for s in p.source), f"{d.vendor}: {key}"


# ---- golden files of the masked render (the `provisioner render` CLI): a regression check ------------------------

def test_masked_render_matches_the_golden_files(vendors_home, family, tmp_path):
    update = os.environ.get("UPDATE_GOLDEN") == "1"
    differ = []
    for mac in family.macs:
        out = tmp_path / mac
        vendors_home.cli("render", mac, "--out", str(out), check=True)
        rt_ = Runtime(home=vendors_home.path, inventory_path=vendors_home.inventory)
        trigger = rt_.catalog.get(family.vendor).trigger.filename_for(mac=mac)
        for path in sorted(out.iterdir()):
            body = path.read_bytes()
            if family.vendor != "yealink":
                ET.fromstring(body)  # well formed
            assert (MASK.encode() in body) == (path.name == trigger), f"{path.name}: secrets masked, and only there"
            golden = GOLDEN / family.vendor / path.name
            if update:
                golden.parent.mkdir(parents=True, exist_ok=True)
                golden.write_bytes(body)
            elif not golden.exists() or golden.read_bytes() != body:
                differ.append(f"{family.vendor}/{path.name}")
    assert not differ, f"rendered files differ from tests/golden (review, then UPDATE_GOLDEN=1): {differ}"


# ---- end to end: the real server, curl as each phone -----------------------------------------------------------

@pytest.fixture(scope="module")
def lab_server(inventory, tmp_path_factory, capture_dir):
    import shutil
    base = tmp_path_factory.mktemp("vendors-serve")
    inv = base / "inventory.yaml"
    shutil.copy(inventory, inv)
    cap = capture_dir / "test_vendors-serve"
    cap.mkdir(exist_ok=True)
    home = Home(base / "home", inv, cap)
    srv = start_server(home)
    yield srv
    srv.stop()


def test_each_family_enrols_then_needs_digest(lab_server, rt, family):
    srv = lab_server
    mac = family.macs[0]
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    fname = vendor.trigger.filename_for(mac=mac)
    ua = vendor.user_agent_for(dev.model, mac)
    # each phone from its own address, as on a real LAN: the refusals below count against that address only
    here = ("--interface", f"127.0.3.{FAMILY_IDS.index(family.vendor) + 1}")

    def fetch(agent, **kw):
        return srv.curl(fname, agent, extra=here, **kw)

    assert fetch("curl/8.0")[0] == 401, f"{vendor.name}: a foreign User-Agent cannot enrol"
    status, first = fetch(ua)
    assert status == 200, f"{vendor.name}: enrolment fetch of {fname}"
    got = family.read(first)
    user, password = got["prov_user"], got["prov_password"].reveal()
    check(user == mac and len(password) >= 16, f"{vendor.name}: credentials handed out")
    assert fetch(ua)[0] == 401, f"{vendor.name}: second anonymous fetch refused"
    status, again = fetch(ua, user=user, password=password)
    assert status == 200, f"{vendor.name}: digest fetch with the handed-out credentials"
    check(again == first, f"{vendor.name}: digest fetch serves the same config")
    wrong = password[:-1] + ("x" if password[-1] != "x" else "y")
    assert fetch(ua, user=user, password=wrong)[0] == 401, f"{vendor.name}: a wrong password is refused"


# ---- SIP domain vs registrar host: what the rendered config says registers at a real Kamailio ------------------

DOMAIN = "prov.test"

REGISTER_DEVICES = """\
  - {mac: "80:5e:c0:00:02:01", vendor: yealink, model: T46G, site: lab, lines: [{extension: "2101", display_name: Y1}, {extension: "2102", display_name: Y2}]}
  - {mac: "00:02:fd:00:02:02", vendor: cisco, model: SPA504G, site: lab, lines: [{extension: "2201", display_name: C1}, {extension: "2202", display_name: C2}]}
  - {mac: "00:02:fd:00:02:12", vendor: cisco, model: SPA112, site: lab, lines: [{extension: "2211", display_name: ATA}]}
  - {mac: "7c:2f:80:00:02:03", vendor: gigaset, model: C530, site: lab, policy: {srtp: optional}, lines: [{extension: "2301", display_name: G1}, {extension: "2302", display_name: G2}]}
  - {mac: "7c:2f:80:00:02:04", vendor: gigaset_nx70, model: N870, site: lab, lines: [{extension: "2401", display_name: N1}, {extension: "2402", display_name: N2}]}
  - {mac: "0c:38:3e:00:02:05", vendor: fanvil, model: X4U, site: lab, lines: [{extension: "2501", display_name: F1}, {extension: "2502", display_name: F2}]}
  - {mac: "00:04:13:00:02:06", vendor: snom, model: D735, site: lab, lines: [{extension: "2601", display_name: S1}, {extension: "2602", display_name: S2}]}
  - {mac: "00:04:f2:00:02:07", vendor: polycom, model: VVX410, site: lab, lines: [{extension: "2701", display_name: P1}, {extension: "2702", display_name: P2}]}
  - {mac: "00:0b:82:00:02:08", vendor: grandstream, model: GXP2170, site: lab, lines: [{extension: "2801", display_name: GS1}, {extension: "2802", display_name: GS2}]}
"""


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory):
    from kamailio.peer import need_peers, start_kamailio
    need_peers()
    k = start_kamailio(tmp_path_factory.mktemp("kamailio-vendors"), DOMAIN)
    yield k
    k.stop()


def test_every_line_registers_user_at_domain_through_the_host(kamailio, family, tmp_path):
    """Registrar host 127.0.0.1, SIP domain prov.test (the Kamailio/Asterisk-behind-a-DNS-name case): each
    family's rendered keys must send REGISTER for user@prov.test to 127.0.0.1, and Kamailio must accept
    the digest of the rendered auth user and password."""
    from kamailio.peer import sipp_register
    from provisioner.registrar.kamailio import KamailioRegistrar
    k = kamailio
    text = lab_inventory("registering at a Kamailio on 127.0.0.1 whose SIP domain is prov.test.", "[]",
                         REGISTER_DEVICES).replace(
        "    host: sip.lab.example.net\n    transport: tls\n",
        f"    host: 127.0.0.1\n    port: {k.port}\n    domain: {DOMAIN}\n    transport: udp\n")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(text)
    run = Runtime(home=tmp_path / "home", inventory_path=inv)
    reg = KamailioRegistrar(f"sqlite:///{k.db}", str(k.db), DOMAIN)
    devices = [d for d in run.inventory.resolved.values() if d.vendor == family.vendor]
    assert devices
    for dev in devices:
        vendor = run.catalog.get(dev.vendor)
        creds = generate_credentials(run, dev)
        _, body = run.renderer.device_file(device_context(dev, vendor, creds), vendor.trigger)
        got = family.read(body)
        reg.set(dev, line_secrets(creds))
        for i, ln in enumerate(dev.lines, start=1):
            r = family.register(got, i)
            assert (r.user, r.domain, r.host, r.port, r.transport) == (ln.extension, DOMAIN, "127.0.0.1", k.port,
                                                                       "udp"), f"{dev.mac} line {i}: {r!r}"
            check(r.password == creds[f"sip:{ln.extension}"], f"{dev.mac} line {i}: the device's own password")
            rc = sipp_register(k, r.user, r.password, server=(r.host, r.port), domain=r.domain, auth=r.auth_user)
            assert rc == 0, f"{dev.mac} line {i}: Kamailio refused {r!r} (sipp exit {rc})"


# ---- boot sequences: a phone's normal boot never counts against it --------------------------------------------

BOOT_MODELS = {"yealink": "T46G", "cisco": "SPA504G", "gigaset": "C530", "gigaset_nx70": "N870", "fanvil": "X4U",
               "snom": "D735", "polycom": "VVX410", "grandstream": "GXP2170"}


def _boot_devices() -> tuple[str, dict]:
    """One device per factory-fresh sequence of each family (the sequences claim its enrolment window)."""
    cat = load_catalog(REPO / "vendors")
    rows, plan = [], {}
    for fi, name in enumerate(FAMILY_IDS):
        vendor = cat.get(name)
        oui = vendor.ouis[0]
        factory = [s for s in vendor.boot if s.state == "factory"]
        macs = [f"{oui}b0{fi:02x}{si:02x}" for si in range(max(1, len(factory)))]
        plan[name] = (macs, factory, [s for s in vendor.boot if s.state == "provisioned"])
        extra = ", registrar: {transport: udp}, policy: {srtp: optional}" if name == "gigaset" else ""
        for si, mac in enumerate(macs):
            rows.append(f'  - {{mac: "{mac}", vendor: {name}, model: {BOOT_MODELS[name]}, site: lab{extra}, '
                        f'lines: [{{extension: "9{fi}{si}1", display_name: Boot}}]}}\n')
    return "".join(rows), plan


@pytest.fixture(scope="module")
def boot_server(tmp_path_factory, capture_dir):
    rows, plan = _boot_devices()
    base = tmp_path_factory.mktemp("boot")
    inv = base / "inventory.yaml"
    inv.write_text(lab_inventory("boot sequences of every family.", "[]", rows))
    cap = capture_dir / "test_vendors-boot"
    cap.mkdir(exist_ok=True)
    home = Home(base / "home", inv, cap)
    srv = start_server(home)
    yield srv, plan
    srv.stop()


def _step(srv, step: str, mac: str, model: str, ua: str, source: str, creds: tuple[str, str] | None,
          tmp: Path) -> tuple[int, bytes]:
    kind, _, name = step.rpartition(":") if step.startswith(("tftp:", "put:")) else ("", "", step)
    name = name.replace("{mac}", mac).replace("{MAC}", mac.upper()).replace("{model}", model)
    if kind == "tftp":
        body = srv.tftp(name, tmp / f"tftp-{name}")
        return (200 if body is not None else 404), body or b""
    extra = ("--interface", source)
    if kind == "put":
        upload = tmp / f"upload-{name}"
        upload.write_bytes(b"# written by the phone\n")
        extra += ("-T", str(upload))
    user, password = creds or (None, None)
    return srv.curl(name, ua, user=user, password=password, extra=extra)


def _events(srv, source: str, at_least: int) -> list[tuple]:
    """(file, status, counted, reason) of the requests from `source` (and the TFTP ones, which come from
    127.0.0.1): waits, bounded, for the event recorder's batches to hold at least `at_least` of them, then
    once more for the batch that may still be on its way."""
    db = srv.home.path / "state.db"

    def rows():
        with closing(sqlite3.connect(db)) as c:
            return c.execute("SELECT filename, status, counted, reason, mac FROM fetch_events WHERE source_ip = ? "
                             "OR transport = 'tftp' ORDER BY id", (source,)).fetchall()
    poll(rows, lambda r: len(r) >= at_least)
    time.sleep(1.0)  # the recorder writes every 0.2 s: one more batch at most
    return rows()


def test_boot_sequences_never_count_against_the_phone_and_end_provisioned(boot_server, family, tmp_path):
    """Each factory-fresh sequence of the profile, then each provisioned one, from the phone's own source
    address: no answer of them counts against the source (fetch_events.counted), the trigger file hands
    out the credentials, and the phone ends provisioned with the config it holds current."""
    srv, plan = boot_server
    macs, factory, provisioned = plan[family.vendor]
    assert factory and provisioned, f"{family.vendor}: the profile writes down no boot sequence"
    fi = FAMILY_IDS.index(family.vendor)
    source = f"127.0.1.{fi + 1}"
    run = Runtime(home=srv.home.path, inventory_path=srv.home.inventory)
    vendor = run.catalog.get(family.vendor)
    model = BOOT_MODELS[family.vendor]
    trigger = vendor.trigger.name
    held: dict[str, tuple[str, str]] = {}
    for mac, seq in zip(macs, factory):
        ua = vendor.user_agent_for(model, mac)
        for step in seq.steps:
            status, body = _step(srv, step, mac, model, ua, source, None, tmp_path)
            if step == trigger:
                assert status == 200, f"{seq.name}: {step} enrols the phone"
                got = family.read(body)
                held[mac] = (got["prov_user"], got["prov_password"].reveal())
        assert mac in held, f"{seq.name}: the sequence never fetched {trigger}"
    for seq in provisioned:
        mac = macs[0]
        ua = vendor.user_agent_for(model, mac)
        for step in seq.steps:
            status, _ = _step(srv, step, mac, model, ua, source, held[mac], tmp_path)
            if step == trigger:
                assert status == 200, f"{seq.name}: {step} with the device's credentials"
    got_rows = _events(srv, source, sum(1 for s in factory + provisioned for x in s.steps
                                        if not x.startswith("tftp:")))
    # The anonymous first request of the digest dance counts like every anonymous refusal (no oracle,
    # docs/security.md) and the phone's authenticated success right after clears it: only what no later
    # success of the same device cleared stays counted against the phone.
    counted = [(f, s, r) for i, (f, s, c, r, m) in enumerate(got_rows)
               if c and not (m and any(m2 == m and s2 in (200, 201) for _, s2, _, _, m2 in got_rows[i + 1:]))]
    assert not counted, f"{family.vendor}: a normal boot counted against the phone: {counted}"
    assert not [r for r in got_rows if r[1] in (403, 429)], f"{family.vendor}: the phone was banned"
    for mac in macs:
        st = run.store.device(mac)
        assert st.state == "provisioned" and st.served_hash == st.desired_hash, f"{mac}: {st.state}"


def test_a_not_served_file_is_answered_alike_for_known_and_unknown_phones(boot_server):
    """A Polycom's <mac>.cfg (Yealink's per-device name) gets the same neutral 404 for every MAC, and a
    scanner walking <mac>.cfg with a Yealink User-Agent is still counted."""
    srv, plan = boot_server
    known = plan["polycom"][0][0]
    ua = "FileTransport PolycomVVX-VVX_410-UA/5.9.7.3480 Type/Application"
    for mac in (known, "0004f2999999"):
        assert srv.curl(f"{mac}.cfg", ua, extra=("--interface", "127.0.2.1"))[0] == 404
    assert srv.curl("0004f2999999.cfg", "Yealink SIP-T46G 66.86.0.15 00:04:f2:99:99:99",
                    extra=("--interface", "127.0.2.2"))[0] == 401
    db = srv.home.path / "state.db"

    def rows():
        with closing(sqlite3.connect(db)) as c:
            return c.execute("SELECT source_ip, status, counted FROM fetch_events WHERE source_ip LIKE '127.0.2.%'"
                             ).fetchall()
    got = poll(rows, lambda r: len(r) >= 3)
    assert sorted(got) == [("127.0.2.1", 404, 0), ("127.0.2.1", 404, 0), ("127.0.2.2", 401, 1)]


# ---- firmware keys (issue 18): the offer renders each family's keys, all in its dictionary -----------------------

def test_the_firmware_offer_writes_the_family_keys_and_only_known_ones(rt, family, dictionaries):
    """A family that manages firmware carries the offered image's URL in the file its profile names (the trigger
    file, or Polycom's per-phone master), every key in its dictionary with a source; the same file without an
    offer carries none; a family that does not manage firmware (Fanvil) never writes one."""
    d = dictionaries[family.vendor]
    mac = family.macs[0]
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    ctx = device_context(dev, vendor, generate_credentials(rt, dev))
    facts = vendor.firmware
    url = FIRMWARE_OFFER["url"].encode()
    plain = rt.renderer.render(vendor, vendor.trigger.template, dict(ctx.values), "test", vendor.trigger.xml_root)
    assert b"/fw/" not in plain, f"{vendor.name}: no firmware key without an offer"
    if not facts.supported:
        assert facts.why and facts.source, f"{vendor.name}: an unmanaged family says why and where that was read"
        return
    assert facts.why and facts.source
    if facts.offer_file is not None:
        spec = facts.offer_file
        body = rt.renderer.render(vendor, spec.template, {**common_context(vendor, dev.settings, dev.model),
                                                           "firmware": FIRMWARE_OFFER}, "test", spec.xml_root)
    else:
        body = rt.renderer.render(vendor, vendor.trigger.template, {**ctx.values, "firmware": FIRMWARE_OFFER},
                                  "test", vendor.trigger.xml_root)
    assert url in body or FIRMWARE_OFFER["server_path"].encode() in body or \
        FIRMWARE_OFFER["status_url"].encode() in body, f"{vendor.name}: the offer is in the file"
    assert not conforms(d, "offer", body)
    new = {d.entry(k)[0] for k, _ in keys_of(d, body)} - {d.entry(k)[0] for k, _ in keys_of(d, plain)}
    assert new or facts.offer_file, f"{vendor.name}: the offer adds keys"
    for key in new:
        assert d.params[key].source, key
