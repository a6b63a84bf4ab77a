"""The docs a clone can follow: self-contained, the contract in step with the real CLI, and the README
walk-through working on a fresh ./var and again on the same one."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from conftest import REPO, free_port, need

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_do_not_point_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "/work/shared" not in text, doc.name
        for ref in re.findall(r"`(docs/[\w.-]+\.md)`", text):
            assert (REPO / ref).exists(), f"{doc.name} names {ref}, which does not exist"
    assert (REPO / "docs" / "contract.md").exists() and (REPO / "docs" / "registrars.md").exists()


def leaf_commands() -> list[tuple[str, ...]]:
    from provisioner.cli import cli

    def walk(cmd, path=()):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + (name,))
        else:
            yield path
    return sorted(walk(cli))


def contract_rows() -> list[tuple[str, str, str]]:
    text = (REPO / "docs" / "contract.md").read_text()
    table = text[text.index("## Commands"):text.index("## Device states")]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`provisioner"):
            rows.append(tuple(cells))
    return rows


def test_contract_names_every_command_and_only_real_ones():
    rows = contract_rows()
    from provisioner.cli import cli
    firsts = {re.match(r"`provisioner ([\w-]+)", r[0]).group(1) for r in rows}
    assert firsts <= set(cli.commands), firsts - set(cli.commands)
    for path in leaf_commands():
        assert any(r[0].startswith(f"`provisioner {path[0]}") and all(w in r[0] for w in path) for r in rows), \
            f"provisioner {' '.join(path)} is not in docs/contract.md"
    # options the table names exist on the command
    for first, *_ in rows:
        m = re.match(r"`provisioner ([\w-]+)", first)
        cmd = cli.commands[m.group(1)]
        opts = set()
        for c in (cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]):
            for c2 in (c.commands.values() if isinstance(c, click.Group) else [c]):
                opts |= {o for p in c2.params for o in p.opts if o.startswith("--")}
        named = set(re.findall(r"(--[a-z][\w-]*)", first))
        assert named <= opts, (first, named - opts)


def test_contract_exit_codes_are_the_code_s():
    from provisioner.cli import ONLY_EXIT_CODES
    audit = next(r for r in contract_rows() if r[0].startswith("`provisioner audit"))
    assert set(map(int, re.findall(r"\b(\d)\b", audit[2]))) == set(ONLY_EXIT_CODES["audit"]) == {0, 2, 3}
    unit = (REPO / "contrib" / "systemd" / "provisioner-audit.service").read_text()
    assert "SuccessExitStatus=3" in unit


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Fetch a config like a phone does"):]
    return section[section.index("```sh\n") + 6:section.index("```\n", section.index("```sh\n") + 6)]


def test_readme_walkthrough_works_twice_on_the_same_var(tmp_path: Path, capture_dir: Path):
    """`make run` in one terminal, the README's commands in another; then the same commands again."""
    need("curl", "tftp")
    https, tftp = free_port(), free_port(socket.SOCK_DGRAM)
    work = tmp_path / "clone"
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "provisioner"  # what `make venv` installs, from this interpreter
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m provisioner \"$@\"\n")
    shim.chmod(0o755)
    inv = (REPO / "inventory.yaml").read_text().replace(":8443/", f":{https}/").replace(":6969/", f":{tftp}/")
    (work / "inventory.yaml").write_text(inv)
    script = walkthrough().replace("127.0.0.1:8443", f"127.0.0.1:{https}").replace("127.0.0.1 6969", f"127.0.0.1 {tftp}")
    assert f":{https}/" in script and f"127.0.0.1 {tftp}" in script
    log = open(capture_dir / "readme-serve.log", "w")
    srv = subprocess.Popen([str(shim), "--home", "var", "--inventory", "inventory.yaml", "serve", "--https",
                            f"127.0.0.1:{https}", "--tftp", f"127.0.0.1:{tftp}"], cwd=work, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", https), timeout=0.2).close()
                break
            except OSError:
                assert srv.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        configs = []
        for run in (1, 2):
            for f in ("first.cfg", "new.cfg", "boot.cfg"):
                (work / f).unlink(missing_ok=True)
            r = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=120)
            with open(tmp_path / "walkthrough.log", "a") as f:  # not in capture_dir: step 1 shows secrets
                f.write(f"--- run {run}: exit {r.returncode}\n{r.stdout}{r.stderr}")
            assert r.returncode == 0, (run, r.stderr)
            assert "curl: (22)" not in r.stderr, (run, r.stderr)  # -f: step 1 or 5 refused
            first = (work / "first.cfg").read_text()
            assert re.search(r"server\.password = \S{16,}", first), run
            assert r.stdout.count("HTTP/1.1 401 Unauthorized") == 2, (run, r.stdout)
            assert "password" not in (work / "boot.cfg").read_text()
            new = (work / "new.cfg").read_text()
            assert new != first and "account.1.password" in new
            configs.append(first)
        assert configs[0] != configs[1], "the second run enrolled a factory-fresh phone with new secrets"
    finally:
        srv.terminate()
        srv.wait(timeout=15)
        log.close()
