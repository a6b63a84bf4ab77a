"""After the whole flow (and every other test of the session), no generated secret is in any log,
captured provisioner output, or the raw bytes of a state database.

`run_last` (tests/conftest.py) runs it after every other test whatever the order, so that it scans every
--home the session created; run alone, it scans the homes of its own flow.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from conftest import Home, kv, run_last, start_server, ua_for
from provisioner.crypto import Keyring, load_or_create_key
from provisioner.store import make_engine
from provisioner.store.schema import credentials


def _full_flow(home: Home, tmp: Path) -> None:
    home.cli("check", check=True)
    srv = start_server(home)
    try:
        for mac, model in (("805ec0123456", "T46G"), ("805ec0123457", "T41P"), ("805ec0123458", "T46S")):
            status, body = srv.curl(f"{mac}.cfg", ua_for(mac, model))
            assert status == 200
        pw = kv(body)["static.auto_provision.server.password"][0]
        srv.curl("805ec0123458.cfg", ua_for("805ec0123458", "T46S"), user="805ec0123458", password="wrong")
        home.cli("reprovision", "805ec0123458", check=True)
        assert srv.curl("805ec0123458.cfg", ua_for("805ec0123458", "T46S"), user="805ec0123458", password=pw)[0] == 200
        srv.tftp("805ec0123456.cfg", tmp / "boot.cfg")
        for args in (("devices",), ("devices", "--json"), ("render", "805ec0123456"),
                     ("render", "805ec0123458", "--out", str(tmp / "rendered"))):
            home.cli(*args, check=True)
        home.cli("-v", "reprovision", "805ec0123456", "--wait", "1")
    finally:
        srv.stop()


def _homes(base: Path) -> list[Path]:
    return sorted({p.parent for p in base.rglob("master.key") if (p.parent / "state.db").exists()})


def _secrets_of(home_dir: Path) -> set[str]:
    keyring = Keyring(load_or_create_key(home_dir))
    engine = make_engine(f"sqlite:///{home_dir / 'state.db'}")
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(credentials.c.mac, credentials.c.name, credentials.c.generation,
                                       credentials.c.sealed)).all()
    finally:
        engine.dispose()
    return {keyring.open(r.sealed, f"{r.mac}|{r.name}|{r.generation}").reveal() for r in rows}


def _scanned_files(base: Path, capture: Path, homes: list[Path]) -> list[Path]:
    files = [p for p in capture.rglob("*") if p.is_file()]
    for h in homes:
        for p in h.rglob("*"):
            if p.is_file() and p.name not in ("master.key", "ca.key", "server.key"):
                files.append(p)
    return files


@run_last
def test_no_generated_secret_anywhere(home: Home, tmp_path: Path, capture_dir: Path, tmp_path_factory):
    _full_flow(home, tmp_path)
    base = tmp_path_factory.getbasetemp()
    homes = _homes(base)
    assert home.path in homes
    secrets: set[str] = set()
    for h in homes:
        secrets |= _secrets_of(h)
    # a 4-digit handset PIN (Gigaset) matches some bytes of any database or timestamp by chance:
    # only secrets long enough for a match to mean a leak are looked for
    secrets = {s for s in secrets if len(s) >= 8}
    assert len(secrets) >= 20, "the flow must have generated secrets to look for"
    files = _scanned_files(base, capture_dir, homes)
    names = {p.name for p in files}
    assert "state.db" in names and "provisioner.log" in names and "cli.log" in names
    leaks = []
    for path in files:
        data = path.read_bytes()
        for s in secrets:
            if s.encode() in data:
                leaks.append(f"{path.relative_to(base)}: a generated secret ({len(s)} chars)")
                break
    assert not leaks, "secrets found in:\n" + "\n".join(leaks)
