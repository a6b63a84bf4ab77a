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
    assert cfg["account.1.sip_server.1.transport"] == ["2"]  # TLS
    assert cfg["account.1.sip_server.1.port"] == ["5061"]
    assert cfg["account.1.srtp_encryption"] == ["2"]  # policy srtp: required
    assert cfg["account.3.enable"] == ["0"] and cfg["account.16.enable"] == ["0"]  # unused lines off
    admin = creds["admin"].reveal()
    assert f"admin:{admin}" in cfg["static.security.user_password"]
    assert cfg["static.auto_provision.server.password"] == [creds["provisioning"].reveal()]
    assert cfg["static.auto_provision.server.username"] == ["805ec0123456"]
    assert cfg["static.auto_provision.server.url"] == ["https://127.0.0.1:8443/p/"]
    assert cfg["static.trusted_certificates.url"] == ["https://127.0.0.1:8443/p/ca.pem"]
    assert cfg["local_time.time_zone"] == ["+1"]
    assert cfg["dialplan.block_out.number.1"] == ["00x."]
    # never a factory default, never a repeated secret
    factory = rt.catalog.get("yealink").factory_passwords()
    values = [s.reveal() for s in creds.values()]
    assert not factory & set(values) and len(set(values)) == len(values)
    for v in values:
        assert len(v) >= 16


def test_transport_override_per_device(rt):
    _, files = render(rt, "805ec0123458")
    cfg = kv(files["805ec0123458.cfg"])
    assert cfg["account.1.sip_server.1.transport"] == ["1"] and cfg["account.1.sip_server.1.port"] == ["5060"]
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
