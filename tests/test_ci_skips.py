"""CI cannot go green on skipped tests: with CI=true (what .ci/run sets) every skip fails unless its reason is
declared permanent, importorskip and collection-time skips included; every run prints the skip count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

CASES = '''
import pytest
from conftest import skip_permanently, run_last

def test_a_missing_peer():
    pytest.skip("missing test peer(s): nothing (installed by .ci/run)")

def test_never_possible_here():
    skip_permanently("this case cannot exist")

@pytest.mark.skipif(True, reason="a condition")
def test_skipif():
    pass

def test_importorskip():
    pytest.importorskip("no_such_module_anywhere")

@run_last
def test_z_runs_last():
    pass

def test_passes():
    pass
'''

WHOLE_FILE = '''
import pytest
pytest.importorskip("no_such_module_anywhere")

def test_never_collected():
    pass
'''


def run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_cases.py").write_text(CASES)
    (tests / "test_whole_file.py").write_text(WHOLE_FILE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA",
                           "--continue-on-collection-errors", str(tests)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_locally_skips_are_skips_and_counted(tmp_path: Path):
    r = run(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout
    assert "skips: 5 (permanent: 1)" in r.stdout
    order = [ln.split("::")[1].split()[0] for ln in r.stdout.splitlines() if "test_cases.py::" in ln and
             (" PASSED" in ln or " SKIPPED" in ln)]
    assert order[-1] == "test_z_runs_last" or order.index("test_z_runs_last") > order.index("test_passes")


def test_in_ci_every_skip_but_a_permanent_one_fails(tmp_path: Path):
    r = run(tmp_path, ci=True)
    assert r.returncode != 0
    out = r.stdout
    for name in ("test_a_missing_peer", "test_skipif", "test_importorskip"):
        assert any(name in ln and ("FAILED" in ln or "ERROR" in ln) for ln in out.splitlines()), (name, out)
    assert "test_whole_file.py" in out and "skipped in CI: could not import 'no_such_module_anywhere'" in out
    assert any("test_never_possible_here" in ln and "SKIPPED" in ln for ln in out.splitlines()), out
    assert "test_passes PASSED" in out
    assert "skips: 5 (permanent: 1; failed because CI=true: 4)" in out


def test_ci_run_sets_ci_and_the_makefile_runs_the_readme_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in ci and ci.rstrip().endswith("make test")
    assert "-qq" in (REPO / "Makefile").read_text()  # `make venv` prints its commands, not pip's chatter
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and "peers:" not in pyproject
