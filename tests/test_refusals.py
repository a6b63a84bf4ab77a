"""A refusal changes nothing: for every command that writes (inventory.yaml, the store, the registrar, a
file), a refused invocation exits 2 (5 for a refused one-time code) and leaves all of them as they were.
The registrar is a real Kamailio; the store is compared table by table."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from conftest import Home
from kamailio.peer import kamailio_inventory, need_peers, start_kamailio

DECOMMISSIONED = "805ec0123458"


def snapshot(home: Home, k, tmp: Path) -> dict:
    with closing(sqlite3.connect(home.path / "state.db")) as c:
        tables = [t for (t,) in c.execute("select name from sqlite_master where type = 'table' order by name")]
        store = {t: sorted(map(repr, c.execute(f'select * from "{t}"'))) for t in tables}
    with closing(sqlite3.connect(k.db)) as c:  # every table: subscriber, address, provisioner's tags
        names = [t for (t,) in c.execute("select name from sqlite_master where type = 'table' order by name")]
        registrar = {t: sorted(map(repr, c.execute(f'select * from "{t}"'))) for t in names}
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if "kamailio" not in p.parts and
                   "home" not in p.parts)
    return {"inventory": home.inventory.read_bytes(), "store": store, "registrar": registrar, "files": files,
            "/nonexistent": Path("/nonexistent").exists()}


REFUSED = [
    # adopt: everything is checked before the inventory, the store or the registrar is touched
    (2, "adopt", "7c:2f:80:12:34:99", "--vendor", "gigaset", "--model", "N510", "--site", "lab", "--line", "150"),
    (2, "adopt", "80:5e:c0:12:34:56", "--vendor", "yealink", "--model", "T46S", "--site", "lab", "--line", "150"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T46S", "--site", "nowhere", "--line", "150"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "nokia", "--model", "T46S", "--site", "lab", "--line", "150"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T99", "--site", "lab", "--line", "150"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T46S", "--site", "lab", "--line", "101"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T46S", "--site", "lab", "--line", "1\n2"),
    (2, "adopt", "not-a-mac", "--vendor", "yealink", "--model", "T46S", "--site", "lab", "--line", "150"),
    (2, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T46S", "--site", "lab"),
    (2, "adopt", "--all-discovered", "--site", "nowhere", "--yes"),
    (2, "adopt", "--all-discovered", "--site", "lab", "--line", "150"),
    # reprovision: refused before any secret is rotated
    (2, "reprovision", "805ec0123456", "--wait", "-5"),
    (2, "reprovision", "805ec0123456", "--wait", "nan"),
    (2, "reprovision", "80:5e:c0:99:99:99"),
    (2, "reprovision", DECOMMISSIONED),
    (2, "reprovision", "--site", "nowhere"),
    (2, "reprovision", "805ec0123456", "--all"),
    (2, "reprovision", "--all", "--concurrency", "0"),
    # lifecycle
    (2, "reset", "80:5e:c0:99:99:99"), (2, "reset", DECOMMISSIONED), (2, "reset", "805ec0123456", "--wait", "-1"),
    (2, "decommission", "80:5e:c0:99:99:99"), (2, "decommission", "not-a-mac"),
    (2, "credentials", "revoke", DECOMMISSIONED), (2, "credentials", "revoke", "80:5e:c0:99:99:99"),
    (2, "credentials", "reveal", "80:5e:c0:99:99:99", "--otp", "123456"),
    (5, "credentials", "reveal", "805ec0123456", "--otp", "000000", "--operator", "nobody"),
    (2, "unlock", "805ec0123456"),
    # outputs
    (2, "audit", "--json", "/nonexistent/dir/x.json"), (2, "audit", "--html", "{tmp}"),
    (2, "audit", "--textfile", "{tmp}/a-file/x.prom"),
    (2, "render", "805ec0123456", "--out", "{tmp}/a-file/sub"), (2, "render", "80:5e:c0:99:99:99", "--out", "{tmp}/r"),
    # routers, tokens, second factor, registrar
    (2, "push", "805ec0123456"), (2, "push", "80:5e:c0:99:99:99", "--rotate"),
    (2, "routers", "reboot", "00:00:00:00:00:01"), (2, "routers", "reset", "00:00:00:00:00:01", "--yes"),
    (2, "routers", "forget-key", "00:00:00:00:00:01"),
    (2, "api", "tokens", "revoke", "999"), (2, "api", "tokens", "create", "--role", "root", "--name", "x"),
    (2, "otp", "enroll", "--operator", "bad name!"),
    (2, "registrar", "list", "--site", "nowhere"),
]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, capture_dir):
    need_peers()
    tmp = tmp_path_factory.mktemp("refusals")
    k = start_kamailio(tmp / "kamailio", "prov.test")
    inv = tmp / "inventory.yaml"
    inv.write_text(kamailio_inventory((Path(__file__).parent.parent / "inventory.yaml").read_text(), k))
    cap = capture_dir / "refusals"
    cap.mkdir(exist_ok=True)
    home = Home(tmp / "home", inv, cap)
    home.cli("check", check=True)
    home.cli("devices", check=True)  # the store synced: a refused command has nothing left to sync
    home.cli("decommission", DECOMMISSIONED, check=True)
    (tmp / "a-file").write_text("x")
    pristine = {"inventory": inv.read_bytes(), "store": _copy(home.path / "state.db", tmp / "store.pristine"),
                "registrar": _copy(k.db, tmp / "kamailio.pristine")}
    yield home, k, tmp, pristine
    k.stop()


def _copy(db: Path, to: Path) -> Path:
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(to)) as dst:
        src.backup(dst)
    return to


def _restore(home: Home, k, pristine: dict) -> None:
    """Whatever a case did (it must do nothing), the next one starts from the same state: one command that
    wrongly changed the inventory must not make the following refusals pass for another reason."""
    home.inventory.write_bytes(pristine["inventory"])
    _copy(pristine["store"], home.path / "state.db")
    _copy(pristine["registrar"], k.db)


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: " ".join(c[1:])[:60])
def test_a_refused_command_changes_nothing(rig, case):
    home, k, tmp, pristine = rig
    code, *args = case
    before = snapshot(home, k, tmp)
    try:
        r = home.cli(*(a.replace("{tmp}", str(tmp)) for a in args), env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"},
                     timeout=30)
        after = snapshot(home, k, tmp)
    finally:
        _restore(home, k, pristine)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if code == 5:  # the refused one-time code is recorded, on purpose: that is what the audit log is for
        log = [x for x in after["store"]["audit_log"] if x not in before["store"]["audit_log"]]
        assert len(log) == 1 and "otp.refused" in log[0]
        after["store"]["audit_log"] = before["store"]["audit_log"]
        after["store"]["audit_head"] = before["store"]["audit_head"]
    for part in ("inventory", "registrar", "files", "/nonexistent"):
        assert after[part] == before[part], part
    changed = [t for t in before["store"] if after["store"].get(t) != before["store"][t]]
    assert changed == [], f"store tables changed: {changed}"


def test_the_gigaset_refusal_names_the_fix(home: Home):
    """The bundled inventory's site registers over TLS with SRTP required, which the N510 family has no known
    parameter for: the refusal says what would work, and that does."""
    before = home.inventory.read_bytes()
    r = home.cli("adopt", "7c:2f:80:12:34:99", "--vendor", "gigaset", "--model", "N510", "--site", "lab",
                 "--line", "150")
    assert r.returncode == 2 and "nothing was changed" in r.stderr
    assert "no known SIP over TLS or TCP parameter" in r.stderr
    assert "`registrar: {transport: udp}` and `policy: {srtp: optional}` on this device" in r.stderr
    assert "--transport udp --srtp optional" in r.stderr
    assert "Gigaset Nx70" in r.stderr and "--vendor gigaset_nx70" in r.stderr
    assert home.inventory.read_bytes() == before and not (home.path / "state.db").exists()
    r = home.cli("adopt", "7c:2f:80:12:34:99", "--vendor", "gigaset", "--model", "N510", "--site", "lab",
                 "--line", "150", "--transport", "udp", "--srtp", "optional")
    assert r.returncode == 0, r.stderr
    assert "    registrar: {transport: udp}\n    policy: {srtp: optional}\n" in home.inventory.read_text()
    assert home.cli("check").returncode == 0
