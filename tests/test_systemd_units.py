"""contrib/systemd units pass `systemd-analyze verify` (with the ExecStart binary pointed at ours)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, need

UNITS = REPO / "contrib" / "systemd"


def test_units_verify_clean(tmp_path: Path):
    need("systemd-analyze")
    exe = Path(sys.executable).parent / "provisioner"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/provisioner/.venv/bin/provisioner", str(exe))
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr  # warnings only show on stderr


def test_units_are_hardened():
    for name in ("provisioner.service", "provisioner-audit.service"):
        text = (UNITS / name).read_text()
        for directive in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "UMask=0077",
                          "StateDirectoryMode=0700", "CapabilityBoundingSet="):
            assert directive in text, (name, directive)
    assert "SuccessExitStatus=3" in (UNITS / "provisioner-audit.service").read_text()
