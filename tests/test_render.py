"""Yealink render: the logical settings come out, secrets are unique, unsafe values are refused."""

from __future__ import annotations

import pytest

from conftest import REPO, kv
from provisioner.desired import credential_names, device_context
from provisioner.errors import RenderError
from provisioner.inventory import load_inventory
from provisioner.operations import generate_credentials
from provisioner.render import Renderer
from provisioner.runtime import Runtime
from provisioner.secret import MASK, Secret
from provisioner.vendors import load_catalog


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    return Runtime(home=tmp_path_factory.mktemp("home"), inventory_path=REPO / "inventory.yaml")


def render(rt, mac, creds=None, masked=False):
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    creds = creds if creds is not None else generate_credentials(rt, dev)
    return creds, rt.renderer.device_files(device_context(dev, vendor, creds, masked=masked))


def test_yealink_device_file_carries_the_logical_settings(rt):
    creds, files = render(rt, "805ec0123456")
    body = files["805ec0123456.cfg"]
    assert body.startswith(b"#!version:1.0.0.1\n")
    cfg = kv(body)
    assert cfg["account.1.user_name"] == ["101"] and cfg["account.2.user_name"] == ["102"]
    assert cfg["account.1.password"] == [creds["sip:101"].reveal()]
    assert cfg["account.2.password"] == [creds["sip:102"].reveal()]
    # Yealink admin guide: sip_server.Y.transport_type 0 UDP, 1 TCP, 2 TLS (the old ".transport" key is read
    # by no firmware: the phone stayed on UDP)
    assert cfg["account.1.sip_server.1.transport_type"] == ["2"]  # TLS
    assert "account.1.sip_server.1.transport" not in cfg
    assert cfg["account.1.sip_server.1.port"] == ["5061"]
    assert cfg["account.1.outbound_proxy_enable"] == ["0"]  # the registrar host is the SIP domain
    assert cfg["account.1.srtp_encryption"] == ["2"]  # policy srtp: required
    assert cfg["account.3.enable"] == ["0"] and cfg["account.16.enable"] == ["0"]  # unused lines off
    admin = creds["admin"].reveal()
    assert f"admin:{admin}" in cfg["static.security.user_password"]
    assert cfg["static.auto_provision.server.password"] == [creds["provisioning"].reveal()]
    assert cfg["static.auto_provision.server.username"] == ["805ec0123456"]
    assert cfg["static.auto_provision.server.url"] == ["https://127.0.0.1:8443/p/"]
    assert cfg["static.trusted_certificates.url"] == ["https://127.0.0.1:8443/p/ca.pem"]
    assert cfg["local_time.time_zone"] == ["+1"]
    # Paris in summer: an explicit rule, last Sunday of March 02:00 to last Sunday of October 03:00
    assert (cfg["local_time.summer_time"], cfg["local_time.dst_time_type"], cfg["local_time.start_time"],
            cfg["local_time.end_time"], cfg["local_time.offset_time"]) == (["1"], ["1"], ["3/5/7/2"], ["10/5/7/3"],
                                                                           ["60"])
    # the file promises "local changes are overwritten": provisioning wins over settings changed on the phone
    assert cfg["static.auto_provision.custom.protect"] == ["0"]
    assert cfg["dialplan.block_out.number.1"] == ["00x."] and cfg["dialplan.block_out.line_id.1"] == ["0"]
    # never a factory default, never a repeated secret
    factory = rt.catalog.get("yealink").factory_passwords()
    values = [s.reveal() for s in creds.values()]
    assert not factory & set(values) and len(set(values)) == len(values)
    for v in values:
        assert len(v) >= 16


def test_transport_override_per_device(rt):
    _, files = render(rt, "805ec0123458")
    cfg = kv(files["805ec0123458.cfg"])
    assert cfg["account.1.sip_server.1.transport_type"] == ["1"] and cfg["account.1.sip_server.1.port"] == ["5060"]
    assert cfg["account.1.auth_name"] == ["104w"]


def test_two_devices_never_share_a_password(rt):
    seen = set()
    for mac in rt.inventory.resolved:
        creds, _ = render(rt, mac)
        for s in creds.values():
            assert s.reveal() not in seen
            seen.add(s.reveal())


def test_common_file_has_no_secret(rt):
    creds, files = render(rt, "805ec0123456")
    common = files["y000000000000.cfg"]
    for s in creds.values():
        assert s.reveal().encode() not in common
    assert b"password" not in common


def test_masked_render_shows_no_secret(rt):
    _, files = render(rt, "805ec0123456", creds={}, masked=True)
    cfg = kv(files["805ec0123456.cfg"])
    assert cfg["account.1.password"] == [MASK]
    assert cfg["static.auto_provision.server.password"] == [MASK]


@pytest.mark.parametrize("name", ["Alice\naccount.1.password = x", "account.1.password = x", "tab\there"])
def test_render_refuses_values_that_break_the_format(rt, name):
    dev = rt.inventory.device("805ec0123457")
    vendor = rt.catalog.get("yealink")
    ctx = device_context(dev, vendor, {n: Secret("S3cret-" + n) for n in credential_names(dev, vendor)})
    ctx.values["lines"][0]["display_name"] = name
    with pytest.raises(RenderError) as e:
        rt.renderer.device_files(ctx)
    msg = str(e.value)
    assert "device 805ec0123457" in msg and "lines[0].display_name" in msg
    assert "S3cret" not in msg


def test_a_secret_with_a_new_line_is_refused_without_showing_it(rt):
    dev = rt.inventory.device("805ec0123457")
    vendor = rt.catalog.get("yealink")
    creds = {n: Secret("Good-" + n) for n in credential_names(dev, vendor)}
    creds["admin"] = Secret("bad\nstatic.wui.http_enable = 1")
    with pytest.raises(RenderError) as e:
        rt.renderer.device_files(device_context(dev, vendor, creds))
    assert "web.admin.password" in str(e.value) and "http_enable" not in str(e.value)


def test_undefined_variable_is_an_error_not_an_empty_value(tmp_path, rt):
    (tmp_path / "yealink").mkdir()
    (tmp_path / "yealink" / "device.cfg.j2").write_text("#!version:1.0.0.1\naccount.1.password = {{ web.admin.pasword }}\n")
    r = Renderer(tmp_path)
    dev = rt.inventory.device("805ec0123457")
    vendor = rt.catalog.get("yealink")
    ctx = device_context(dev, vendor, {n: Secret("x" * 12) for n in credential_names(dev, vendor)})
    with pytest.raises(RenderError, match="pasword"):
        r.render(vendor, "yealink/device.cfg.j2", ctx.values, "device 805ec0123457")


def test_secret_repr_and_str_are_masked():
    s = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert "hunter2" not in repr({"a": s}) and "hunter2" not in str([s])
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(s)


def test_catalog_rejects_a_profile_without_a_trigger_file(tmp_path):
    (tmp_path / "acme.yaml").write_text(
        "name: acme\ndisplay_name: Acme\nformat: keyvalue\nfiles:\n  - {name: x.cfg, template: t}\n"
        "passwords: {sip: {}, provisioning: {}}\nmodels: {A1: {}}\n")
    from provisioner.yamlsrc import ProblemsError
    with pytest.raises(ProblemsError) as e:
        load_catalog(tmp_path)
    assert "acme.yaml:1: -: exactly one file must be the trigger" in str(e.value)


def test_standard_offset_in_both_hemispheres():
    from provisioner.desired import utc_offset
    assert utc_offset("Europe/Paris") == ("+1", 60)
    assert utc_offset("Australia/Sydney") == ("+10", 600)  # not its January (summer) offset
    assert utc_offset("Asia/Kolkata") == ("+5.5", 330)
    assert utc_offset("America/New_York") == ("-5", -300)


def test_one_devices_context_cannot_change_what_another_device_renders(rt, tmp_path):
    """The site part of a context is computed once and shared; neither code nor a template can modify it,
    and a value replaced for one device is still checked even though the site part was checked before."""
    vendor = rt.catalog.get("yealink")
    a, b = rt.inventory.device("805ec0123456"), rt.inventory.device("805ec0123457")
    ctx = device_context(a, vendor, {n: Secret("S3cret-" + n) for n in credential_names(a, vendor)})
    with pytest.raises(TypeError):
        ctx.values["registrar"]["host"] = "evil.example.net"
    with pytest.raises(AttributeError):
        ctx.values["time"]["ntp"].append("evil.example.net")
    ctx.values["registrar"] = {**ctx.values["registrar"], "host": "x.example.net\naccount.1.enable = 0"}
    with pytest.raises(RenderError, match=r"registrar\.host"):
        rt.renderer.device_files(ctx)
    _, files = render(rt, b.mac)
    assert kv(files[f"{b.mac}.cfg"])["account.1.sip_server.1.address"] == ["sip.lab.example.net"]

    (tmp_path / "yealink").mkdir()
    (tmp_path / "yealink" / "device.cfg.j2").write_text(
        "#!version:1.0.0.1\n{{ lines.append(1) }}x = 1\n")
    fresh = device_context(a, vendor, {n: Secret("S3cret-" + n) for n in credential_names(a, vendor)})
    with pytest.raises(RenderError, match="SecurityError") as e:
        Renderer(tmp_path).render(vendor, "yealink/device.cfg.j2", fresh.values, "device a", shared=fresh.shared)
    assert len(fresh.values["lines"]) == len(a.lines)


def test_yealink_registers_user_at_domain_through_the_registrar_host(rt):
    """registrar {host: 127.0.0.1, domain: prov.test}: the account's server is the domain (AOR, request URI),
    the outbound proxy the host (Yealink admin guide, account.X.outbound_proxy.Y.*)."""
    dev = rt.inventory.device("805ec0123457")
    vendor = rt.catalog.get("yealink")
    ctx = device_context(dev, vendor, {n: Secret("S3cret-" + n) for n in credential_names(dev, vendor)})
    ctx.values["registrar"] = {**ctx.values["registrar"], "host": "127.0.0.1", "domain": "prov.test", "port": 5070,
                               "transport": "udp"}
    _, body = rt.renderer.device_file(ctx, vendor.trigger)
    cfg = kv(body)
    assert cfg["account.1.sip_server.1.address"] == ["prov.test"]
    assert cfg["account.1.sip_server.1.transport_type"] == ["0"]
    assert (cfg["account.1.outbound_proxy_enable"], cfg["account.1.outbound_proxy.1.address"],
            cfg["account.1.outbound_proxy.1.port"]) == (["1"], ["127.0.0.1"], ["5070"])


def _yealink_time(rt, zone: str) -> dict[str, str]:
    from provisioner.desired import common_context, tz_facts
    vendor = rt.catalog.get("yealink")
    settings = rt.inventory.device("805ec0123456").settings
    ctx = common_context(vendor, settings)
    ctx["time"] = {**ctx["time"], **tz_facts(zone), "timezone": zone}
    body = rt.renderer.render(vendor, "yealink/common.cfg.j2", ctx, "test")
    return {k: v[-1] for k, v in kv(body).items() if k.startswith("local_time.")}


def _yealink_change(year: int, rule: str) -> tuple[int, int, int, int]:
    """Month/Week (5 = last)/Day of Week (1 Monday ... 7 Sunday)/Hour -> (month, day, hour) of that year."""
    import calendar
    month, week, weekday, hour = (int(x) for x in rule.split("/"))
    days = [d for d in range(1, calendar.monthrange(year, month)[1] + 1)
            if calendar.weekday(year, month, d) == weekday - 1]
    return month, days[-1] if week == 5 else days[week - 1], hour


# zones whose POSIX rule changes at a time Yealink's whole-hour form cannot write (Friday 02:00 after the
# 4th Thursday, Saturday 02:00 after it, 24:00, -1:00, 02:45): the phone's own table decides (summer_time 2)
YEALINK_AUTOMATIC = {"Africa/Cairo", "America/Godthab", "America/Nuuk", "America/Santiago", "America/Scoresbysund",
                     "Asia/Gaza", "Asia/Hebron", "Asia/Jerusalem", "Asia/Tel_Aviv", "Chile/Continental", "Egypt",
                     "Israel", "NZ-CHAT", "Pacific/Chatham"}


# zones tzdata gives yearly one-off changes no rule can express (Morocco's Ramadan hour): phones keep the zone's
# standing rule (+01 all year), an hour ahead during Ramadan; docs/vendors.md says so
RULELESS = {"Africa/Casablanca", "Africa/El_Aaiun"}


def test_yealink_daylight_saving_is_right_for_every_zone_the_inventory_allows(rt):
    """Every IANA zone (the inventory accepts any): the rendered local_time.* keys, read the way Yealink's
    admin guide defines them, give the UTC offset tzdata gives an hour before and an hour after each DST
    change of 2025-2030 — or the zone is one the form cannot express and is left to the phone's table."""
    import datetime as dt
    import zoneinfo
    checked = automatic = 0
    for zone in sorted(zoneinfo.available_timezones()):
        t = _yealink_time(rt, zone)
        z = zoneinfo.ZoneInfo(zone)
        sign, _, rest = t["local_time.time_zone"][0], None, t["local_time.time_zone"][1:]
        h, _, m = rest.partition(":")
        std = (1 if sign == "+" else -1) * (int(h) * 60 + int(m or 0))
        if t["local_time.summer_time"] == "2":
            automatic += 1
            assert zone in YEALINK_AUTOMATIC, f"{zone}: left to the phone's table"
            continue
        assert zone not in YEALINK_AUTOMATIC, zone
        if zone in RULELESS:
            continue
        for year in range(2025, 2031):
            if t["local_time.summer_time"] == "0":
                for month in (1, 4, 7, 10):
                    off = dt.datetime(year, month, 15, 12, tzinfo=z).utcoffset()
                    assert off == dt.timedelta(minutes=std), f"{zone} {year}-{month}: {off} vs {std} min"
                continue
            save = int(t["local_time.offset_time"])
            for key, before, after in (("start", std, std + save), ("end", std + save, std)):
                month, day, hour = _yealink_change(year, t[f"local_time.{key}_time"])
                # the change happens at that local wall-clock hour (standard time at the start, DST at the end)
                instant = dt.datetime(year, month, day, hour, tzinfo=dt.timezone.utc) - dt.timedelta(minutes=before)
                for delta, want in ((-60, before), (60, after)):
                    at = (instant + dt.timedelta(minutes=delta)).astimezone(z)
                    assert at.utcoffset() == dt.timedelta(minutes=want), \
                        f"{zone} {year} {key} {t[f'local_time.{key}_time']}: {delta:+} min -> {at.utcoffset()}"
        checked += 1
    assert automatic == len(YEALINK_AUTOMATIC) and checked > 500


def _transitions(z, year: int):
    """The instants (UTC) where zone z changes its offset during the year: a daily scan, then the minute."""
    import datetime as dt
    out = []
    t = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.timezone.utc)
    while t < end:
        nxt = t + dt.timedelta(days=1)
        if t.astimezone(z).utcoffset() != nxt.astimezone(z).utcoffset():
            lo, hi = t, nxt
            while hi - lo > dt.timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(z).utcoffset() == lo.astimezone(z).utcoffset():
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        t = nxt
    return out


# Palestine: tzdata changes at Saturday 02:00 after the 4th Thursday ("M3.4.4/50") and around Ramadan (one-off
# changes): no POSIX M-rule inside the day expresses it; the rule moves the change into that Thursday, a day
# early, and the Ramadan changes are missed (docs/vendors.md says so)
POSIX_APPROXIMATE = {"Asia/Gaza", "Asia/Hebron"}


def test_posix_rule_is_right_for_every_zone_the_inventory_allows(monkeypatch):
    """Grandstream's P246 (and any POSIX-rule key): the rule, read by the C library's own POSIX TZ parser (an
    independent reader), gives tzdata's offset an hour either side of each change of 2025-2030 (three hours
    where the rule had to move a change that falls outside the day into it: Asia/Jerusalem's Friday 02:00)."""
    import datetime as dt
    import os
    import time
    import zoneinfo
    from provisioner.desired import tz_facts
    checked = 0
    try:
        for zone in sorted(zoneinfo.available_timezones()):
            if zone in RULELESS | POSIX_APPROXIMATE:
                continue
            f = tz_facts(zone)
            dst = f["dst"]
            margin = 60 if not dst or (dst["start"]["exact"] and dst["end"]["exact"]) else 180
            monkeypatch.setenv("TZ", f["posix_rule"])
            time.tzset()
            z = zoneinfo.ZoneInfo(zone)
            for year in range(2025, 2031):
                instants = [dt.datetime(year, m, 15, 12, tzinfo=dt.timezone.utc) for m in (1, 4, 7, 10)]
                for change in _transitions(z, year):
                    instants += [change - dt.timedelta(minutes=margin), change + dt.timedelta(minutes=margin)]
                for at in instants:
                    want = at.astimezone(z).utcoffset().total_seconds()
                    got = time.localtime(at.timestamp()).tm_gmtoff
                    assert got == want, f"{zone} {f['posix_rule']} at {at:%Y-%m-%d %H:%M}Z: {got} vs {want}"
            checked += 1
    finally:
        monkeypatch.delenv("TZ", raising=False)
        time.tzset()
    assert checked > 500
