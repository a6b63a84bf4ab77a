"""What the vendor test files share: secret-safe assertions, parsing with a vendor's reader, the module's
inventory/runtime/home fixtures, and a render with freshly generated credentials."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Home
from provisioner.desired import device_context
from provisioner.operations import generate_credentials
from provisioner.runtime import Runtime
from provisioner.secret import Secret


def check(ok: bool, what: str) -> None:
    """Assert on a precomputed bool: a failure shows `what`, never a value that may be a secret."""
    assert ok, what


def distinct(secrets: list[Secret]) -> bool:
    return len({s.reveal() for s in secrets}) == len(secrets)


def parse_with(readers: dict, vendor: str, body: bytes) -> dict:
    """Well-formed XML with the vendor's root, read into logical settings by readers[vendor]."""
    root = ET.fromstring(body)
    expected, reader = readers[vendor]
    assert root.tag == expected, f"{vendor}: root <{root.tag}>, expected <{expected}>"
    return reader(root)


def render(rt: Runtime, mac: str):
    dev = rt.inventory.device(mac)
    vendor = rt.catalog.get(dev.vendor)
    creds = generate_credentials(rt, dev)
    return dev, vendor, creds, rt.renderer.device_files(device_context(dev, vendor, creds))


def lab_inventory(comment: str, blocked_prefixes: str, devices: str) -> str:
    """A test inventory: one lab site on loopback with the settings every vendor test checks, `devices`
    (YAML list items, indented by two) below it."""
    return f"""\
# Test inventory: one lab site on loopback, {comment}
defaults:
  provisioning_url: https://127.0.0.1:8443/p/
  tftp_url: tftp://127.0.0.1:6969/
  timezone: Europe/Paris
  ntp: [0.fr.pool.ntp.org, 1.fr.pool.ntp.org]
  resync_interval: 86400
  registrar:
    host: sip.lab.example.net
    transport: tls
  policy:
    srtp: required
    blocked_prefixes: {blocked_prefixes}
sites:
  lab:
    networks: [127.0.0.0/8]
devices:
""" + devices


def fixtures(prefix: str, text: str):
    """(inventory, rt, home) fixtures for a test module whose devices are in the inventory `text`."""

    @pytest.fixture(scope="module")
    def inventory(tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp(f"{prefix}-inventory") / "inventory.yaml"
        path.write_text(text)
        return path

    @pytest.fixture(scope="module")
    def rt(inventory, tmp_path_factory) -> Runtime:
        return Runtime(home=tmp_path_factory.mktemp(f"{prefix}-home"), inventory_path=inventory)

    @pytest.fixture
    def home(tmp_path, capture_dir, request, inventory) -> Home:
        inv = tmp_path / "inventory.yaml"
        shutil.copy(inventory, inv)
        cap = capture_dir / request.node.name.replace("/", "_")[:80]
        cap.mkdir(exist_ok=True)
        return Home(tmp_path / "home", inv, cap)

    return inventory, rt, home
