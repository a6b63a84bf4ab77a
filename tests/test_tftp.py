"""TFTP with tftp-hpa as the phone: secret-free bootstrap, whatever the MAC; survives many transfers."""

from __future__ import annotations

from pathlib import Path

from conftest import Server, kv


def test_bootstrap_over_tftp_has_no_secret(server: Server, tmp_path: Path):
    boot = server.tftp("805ec0123456.cfg", tmp_path / "boot.cfg")
    assert boot is not None and boot.startswith(b"#!version:1.0.0.1")
    cfg = kv(boot)
    assert cfg["static.auto_provision.server.url"] == ["https://127.0.0.1:8443/p/"]
    assert not any("password" in k for k in cfg)
    # the HTTPS answer holds secrets the bootstrap does not
    status, full = server.curl("805ec0123456.cfg", "Yealink SIP-T46G 66.86.0.15 80:5e:c0:12:34:56")
    assert status == 200
    secret = kv(full)["account.1.password"][0]
    assert secret.encode() not in boot


def test_unknown_mac_gets_the_same_bootstrap(server: Server, tmp_path: Path):
    a = server.tftp("805ec0123456.cfg", tmp_path / "a")
    b = server.tftp("805ec0abcdef.cfg", tmp_path / "b")
    assert a is not None and a.startswith(b"#!version:1.0.0.1"), "the known MAC gets the bootstrap"
    assert b == a, "an unknown MAC gets the very same bytes"


def test_ca_and_common_file_and_refusals(server: Server, tmp_path: Path):
    assert server.tftp("ca.pem", tmp_path / "ca").startswith(b"-----BEGIN CERTIFICATE-----")
    assert server.tftp("y000000000000.cfg", tmp_path / "c") is not None
    assert server.tftp("../../etc/passwd", tmp_path / "d") is None
    assert server.tftp("/etc/passwd", tmp_path / "e") is None
    assert server.tftp("whatever.bin", tmp_path / "f") is None


def test_server_survives_many_transfers(server: Server, tmp_path: Path):
    # tftpy dies after a BytesIO answer; ours must keep serving
    for i in range(25):
        assert server.tftp("805ec0123457.cfg", tmp_path / "x") is not None, f"transfer {i} failed"
    assert server.proc.poll() is None


def test_full_configs_over_tftp_only_where_the_site_says_so(home, tmp_path: Path):
    from conftest import start_server
    text = home.inventory.read_text().replace("    tftp: bootstrap ", "    tftp: full      ")
    home.inventory.write_text(text)
    srv = start_server(home)
    try:
        full = srv.tftp("805ec0123456.cfg", tmp_path / "full.cfg")
        assert full is not None and b"account.1.password" in full
        boot = srv.tftp("805ec0abcdef.cfg", tmp_path / "boot.cfg")  # unknown MAC: bootstrap only
        assert boot is not None and b"password" not in boot
    finally:
        srv.stop()


def test_an_upload_cannot_replace_what_phones_get(server: Server, tmp_path: Path):
    """tftpy accepts a write request into its root and then serves that file to everyone: a `tftp put`
    of <mac>.cfg would point phones at another provisioning server. Ours refuses every upload."""
    import subprocess
    before = server.tftp("805ec0123456.cfg", tmp_path / "before")
    evil = tmp_path / "805ec0123456.cfg"
    evil.write_bytes(b"#!version:1.0.0.1\nstatic.auto_provision.server.url = https://evil.example/\n")
    r = subprocess.run(["tftp", "127.0.0.1", str(server.tftp_port), "-m", "binary", "-c", "put", str(evil),
                        "805ec0123456.cfg"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert "Error" in r.stdout + r.stderr, "the server must refuse the write request"
    after = server.tftp("805ec0123456.cfg", tmp_path / "after")
    assert before is not None and before.startswith(b"#!version:1.0.0.1")
    assert after == before and b"evil.example" not in after
