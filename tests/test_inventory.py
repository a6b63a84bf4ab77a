"""`provisioner check`: every problem as FILE:LINE: field: message, exit 2; the bundled inventory passes."""

from __future__ import annotations

import re

from conftest import Home

BROKEN = """\
defaults:
  timezone: Mars/Olympus
  policy: {srtp: sometimes}
sites:
  lab:
    networks: [10.0.0.0/33]
  office:
    networks: [192.168.1.0/24]
devices:
  - mac: 80:5e:c0:12:34:zz
    vendor: yealink
    model: T46G
    site: lab
    lines: [{extension: "101", display_name: A}]
  - mac: 80:5e:c0:00:00:01
    vendor: acme
    model: X1
    site: lab
    lines: [{extension: "102", display_name: B}]
  - mac: 80:5e:c0:00:00:02
    vendor: yealink
    model: T99
    site: nowhere
    lines: [{extension: "103", display_name: C}]
  - mac: 80-5E-C0-00-00-03
    vendor: yealink
    model: T41P
    site: office
    lines: [{extension: "201", display_name: D}]
  - mac: 805ec0000003
    vendor: yealink
    model: T41P
    site: office
    lines: [{extension: "202", display_name: E}]
  - mac: 80:5e:c0:00:00:04
    vendor: yealink
    model: T41P
    site: office
    lines: [{extension: "201", display_name: F}]
  - mac: 80:5e:c0:00:00:05
    vendor: yealink
    model: T41P
    site: office
    sip_password: hunter2
    lines: [{extension: "203", display_name: G}]
"""


def problems(stderr: str) -> list[tuple[int, str, str]]:
    out = []
    for line in stderr.splitlines():
        m = re.match(r"^(.+?):(\d+): (\S+): (.+)$", line)
        assert m, f"not FILE:LINE: field: message: {line!r}"
        out.append((int(m.group(2)), m.group(3), m.group(4)))
    return out


def test_bundled_inventory_is_valid(home: Home):
    r = home.cli("check")
    assert r.returncode == 0, r.stderr
    assert "3 devices" in r.stdout


def test_every_problem_named_with_file_line_and_field(home: Home):
    home.inventory.write_text(BROKEN)
    r = home.cli("check")
    assert r.returncode == 2
    assert all(line.startswith(str(home.inventory) + ":") for line in r.stderr.splitlines())
    got = problems(r.stderr)
    fields = {f: (line, msg) for line, f, msg in got}
    assert fields["defaults.timezone"][0] == 2 and "unknown time zone" in fields["defaults.timezone"][1]
    assert fields["defaults.policy.srtp"][0] == 3
    assert fields["sites.lab.networks"][0] == 6 and "bad CIDR" in fields["sites.lab.networks"][1]
    assert fields["devices[0].mac"][0] == 10 and "not a MAC" in fields["devices[0].mac"][1]
    assert fields["devices[1].vendor"][0] == 16 and "unknown vendor 'acme'" in fields["devices[1].vendor"][1]
    assert fields["devices[2].model"][0] == 22 and "unknown yealink model 'T99'" in fields["devices[2].model"][1]
    assert fields["devices[2].site"][0] == 23 and "unknown site 'nowhere'" in fields["devices[2].site"][1]
    # the same MAC written two ways is still a duplicate
    assert fields["devices[4].mac"][0] == 30 and "duplicate MAC" in fields["devices[4].mac"][1]
    assert "devices[5].lines[0].extension" in fields and "already used in site office" in \
        fields["devices[5].lines[0].extension"][1]
    secret_msg = fields["devices[6].sip_password"][1]
    assert "secrets are generated" in secret_msg and "hunter2" not in r.stderr


def test_injection_in_display_name_is_refused(home: Home):
    text = home.inventory.read_text()
    home.inventory.write_text(text.replace('display_name: Alice Martin',
                                           'display_name: "Alice\\naccount.1.password = x"'))
    r = home.cli("check")
    assert r.returncode == 2
    (line, field, msg), = problems(r.stderr)
    assert field == "devices[1].lines[0].display_name" and "would break vendor config formats" in msg
    assert home.inventory.read_text().splitlines()[line - 1].strip().startswith("- {extension: \"103\"")
    # the same without the new line: an '=' is refused as well
    home.inventory.write_text(text.replace('display_name: Alice Martin', 'display_name: "account.1.password = x"'))
    r = home.cli("check")
    assert r.returncode == 2 and "devices[1].lines[0].display_name" in r.stderr
    # render refuses the same inventory
    r = home.cli("render", "80:5e:c0:12:34:57")
    assert r.returncode == 2 and "display_name" in r.stderr


def test_yaml_syntax_error_and_duplicate_key(home: Home):
    home.inventory.write_text("sites:\n  lab:\n    networks: [127.0.0.0/8\n")
    r = home.cli("check")
    assert r.returncode == 2 and re.match(rf"^{re.escape(str(home.inventory))}:\d+: -: ", r.stderr)
    home.inventory.write_text("sites:\n  lab:\n    networks: [127.0.0.0/8]\n  lab:\n    networks: [10.0.0.0/8]\n")
    r = home.cli("check")
    assert r.returncode == 2 and "duplicate key" in r.stderr and ":4: " in r.stderr


def test_missing_inventory_file(home: Home):
    home.inventory.unlink()
    r = home.cli("check")
    assert r.returncode == 2 and "file not found" in r.stderr
