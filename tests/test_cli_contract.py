"""Every failure is one line on stderr and an exit code of the contract (docs/contract.md), never a
traceback: the cases that used to end in one, then a fuzz over every command's arguments."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import REPO, Home, free_port

CONTRACT = {0, 1, 2, 3, 4, 5}
ONLY = {"audit": {0, 2, 3}}  # the nightly timer knows these three


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(("error: ", "Error: ")), r.stderr
    return lines[-1]


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connection refused at once
        s.bind(("127.0.0.1", port))
    return port


@pytest.mark.parametrize("state,code,says", [
    ("notaurl", 2, "is not a database URL"),
    ("mysql://db.example.net/x", 2, "not supported"),
    ("postgresql+psycopg://u@127.0.0.1:{port}/x", 1, "Connection refused"),
])
def test_state_urls(home: Home, state, code, says):
    for cmd, expected in ((("devices",), code), (("audit",), 2)):
        r = home.cli("--state", state.format(port=closed_port()), *cmd)
        assert r.returncode == expected and says in one_line_error(r), r.stderr


def test_damaged_state_database(home: Home):
    home.cli("devices", check=True)
    db = home.path / "state.db"
    for p in home.path.glob("state.db-*"):
        p.unlink()
    db.write_bytes(b"this is not what SQLite wrote" * 100)
    try:
        r = home.cli("devices")
        assert r.returncode == 1 and "damaged or not a database" in one_line_error(r) and "backup" in r.stderr
        r = home.cli("audit")
        assert r.returncode == 2 and "damaged" in one_line_error(r)
    finally:
        db.unlink()  # the secret-leak scan opens every home's state.db at the end of the session


def test_outputs_that_cannot_be_written(home: Home, tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (("render", "805ec0123456", "--out", str(a_file / "sub")), "does not exist"),
        (("render", "805ec0123456", "--out", "/proc/provisioner-test"), "--out /proc/provisioner-test"),
        (("audit", "--html", "/proc/report.html"), "--html /proc/report.html"),
        (("audit", "--html", str(tmp_path)), "is a directory"),
        (("audit", "--textfile", str(a_file / "x.prom")), "does not exist"),
        (("audit", "--json", "/nonexistent/dir/x.json"), "directory /nonexistent/dir does not exist"),
    ]
    for args, says in cases:
        r = home.cli(*args)
        assert r.returncode == 2 and says in one_line_error(r), (args, r.stderr)
    assert not Path("/nonexistent").exists(), "a refused audit creates no directory"
    assert not list(tmp_path.glob(".*report*")) and a_file.read_text() == "x"


def test_router_option_the_driver_refuses_is_an_inventory_problem(home: Home):
    with open(home.inventory, "a") as f:
        f.write("""
routers:
  - mac: 00:11:22:33:44:55
    profile: openwrt
    model: generic
    site: lab
    address: 127.0.0.1
    management: {user: root, password_env: TEST_ROUTER_PW}
    options: {accounts: ["root;reboot"]}
""")
    line = home.inventory.read_text().splitlines().index('    options: {accounts: ["root;reboot"]}') + 1
    r = home.cli("check")
    assert r.returncode == 2 and f"inventory.yaml:{line}: routers[0].options: bad account name" in r.stderr, r.stderr
    r = home.cli("routers", "show", "00:11:22:33:44:55", env={"TEST_ROUTER_PW": "whatever-it-is"})
    assert r.returncode == 2 and f"inventory.yaml:{line}: routers[0].options" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ("serve", "--https", "nowhere"), ("serve", "--https", "127.0.0.1:70000"), ("serve", "--tftp", "::1"),
    ("serve", "--https", "127.0.0.1:{port}", "--api", "127.0.0.1:{port}"),
    ("serve", "--https", "127.0.0.1:{port}", "--sip-pnp-interface", "127.0.0.1"),
    ("discover", "--subnet", "not-a-network"), ("discover", "--subnet", "10.0.0.0/8"),
    ("discover", "--timeout", "nan"), ("discover", "--passive", "--snmp-credentials", "/nonexistent/creds.yaml"),
    ("reprovision", "805ec0123456", "--wait", "nan"), ("reset", "805ec0123456", "--wait", "-1"),
])
def test_commands_that_would_run_long_refuse_bad_arguments_at_once(home: Home, args):
    """serve and discover are left out of the fuzz below (they listen, or sweep networks): their bad
    arguments are refused before they start."""
    port = free_port()
    r = home.cli(*(a.format(port=port) for a in args), timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


# ---- fuzz ------------------------------------------------------------------------------------------

def commands() -> list[tuple[tuple[str, ...], click.Command]]:
    from provisioner.cli import cli

    def walk(cmd, path=()):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, path + (name,))
        else:
            yield path, cmd
    return list(walk(cli))


LONG_RUNNING = {("serve",), ("discover",)}  # covered above and below with safe arguments only
SECONDS = ["-1", "0", "0.05", "nan", "inf", "-inf", "1e309", "x", "", "86401", "0x10"]
INTEGERS = ["-1", "0", "1", "2", "257", "65536", "99999999999999999999", "1.5", "x", ""]
MACS = ["80:5e:c0:12:34:56", "805ec0123457", "80-5E-C0-12-34-58", "80:5e:c0:99:99:99", "not-a-mac", "",
        "ff:ff:ff:ff:ff:ff", "805ec012345", "805ec01234567", "0x805ec0123456", "80:5e:c0:12:34:56\n", "%s%n"]
WORDS = ["lab", "nowhere", "yealink", "T46S", "gigaset", "N510", "-", "--", "a" * 300, "101:Desk", "150", "{x}",
         "$(reboot)", "viewer", "admin", "ops"]
TEXT = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.text(max_size=40))


def path_values(base: Path) -> list[str]:
    return [str(base / "out"), str(base / "a-file" / "sub"), "/proc/provisioner-fuzz/x", "/nonexistent/dir/x.json",
            str(base), "-", "", str(base / "existing-output")]


def value_for(param: click.Parameter, base: Path):
    t = param.type
    if isinstance(t, click.Choice):
        return st.one_of(st.sampled_from(list(t.choices)), TEXT)
    if isinstance(t, (click.FloatRange,)) or type(t).__name__ == "Seconds":
        return st.sampled_from(SECONDS)
    if isinstance(t, (click.IntRange, click.types.IntParamType)):
        return st.sampled_from(INTEGERS)
    if isinstance(t, click.Path) or param.name in ("json_out",):
        return st.sampled_from(path_values(base))
    if param.name == "mac":
        return st.one_of(st.sampled_from(MACS), st.sampled_from(MACS), st.sampled_from(MACS), TEXT)
    return TEXT


@st.composite
def invocation(draw, base: Path):
    path, cmd = draw(st.sampled_from([c for c in commands() if c[0] not in LONG_RUNNING] + [(("discover",), None)]))
    if cmd is None:  # discover: only what reads this server's own logs (no network), plus bad values
        from provisioner.cli import cli
        cmd = cli.commands["discover"]
        allowed = {"timeout", "as_json", "snmp_credentials", "snmp_timeout", "snmp_retries", "concurrency",
                   "communities"}
        args = ["--passive"]
    else:
        allowed = None
        args = []
    for p in cmd.params:
        if allowed is not None and p.name not in allowed:
            continue
        if isinstance(p, click.Argument):
            if draw(st.integers(0, 9)) > 0:
                args.append(draw(value_for(p, base)))
            continue
        if not draw(st.booleans()):
            continue
        flag = p.opts[0]
        if p.is_flag:
            args.append(flag)
        else:
            for _ in range(draw(st.integers(1, 2)) if p.multiple else 1):
                args += [flag, draw(value_for(p, base))]
    glob = []
    if draw(st.integers(0, 7)) == 0:
        glob += ["--state", draw(st.sampled_from(["notaurl", "sqlite:///" + str(base / "other" / "state.db"),
                                                 f"postgresql+psycopg://u@127.0.0.1:{closed_port()}/x", ""]))]
    if draw(st.booleans()):
        glob.append("-v")
    return list(path), glob + list(path) + args


class Hung(BaseException):
    pass


@pytest.fixture(scope="module")
def fuzz_home(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-fuzz")
    inv = base / "inventory.yaml"
    shutil.copy(REPO / "inventory.yaml", inv)
    (base / "a-file").write_text("x")  # never written: only ever a would-be parent directory
    (base / "existing-output").write_text("x")
    return base


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_every_command(fuzz_home: Path, data):
    """No traceback and an exit code of the contract, whatever the arguments (audit: 0/3/2 only)."""
    from provisioner.cli import cli
    path, argv = data.draw(invocation(fuzz_home))
    argv = ["--home", str(fuzz_home / "home"), "--inventory", str(fuzz_home / "inventory.yaml"), *argv]

    def hung(*_):
        raise Hung(f"provisioner {' '.join(argv)} ran for more than 60 s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        cwd = os.getcwd()
        os.chdir(fuzz_home)  # relative paths ("-" for --html) land here
        try:
            r = CliRunner().invoke(cli, argv, prog_name="provisioner", input="n\n")
        finally:
            os.chdir(cwd)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    event(f"{path[0]} exit {r.exit_code}")
    assert r.exception is None or isinstance(r.exception, SystemExit), (argv, repr(r.exception), text[-2000:])
    assert "Traceback (most recent call last)" not in text, (argv, text[-3000:])
    assert "internal error" not in text, (argv, text[-2000:])
    assert r.exit_code in ONLY.get(path[0], CONTRACT), (argv, r.exit_code, text[-2000:])
    assert not Path("/nonexistent").exists() and not Path("/proc/provisioner-fuzz").exists()
    assert (fuzz_home / "a-file").read_text() == "x"
    if re.search(r"^error: ", text, re.M):
        assert r.exit_code != 0, (argv, text[-2000:])
