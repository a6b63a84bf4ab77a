"""Property tests: hostile file names, TFTP paths and inventory text never crash, escape or leak."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, ua_for
from provisioner.runtime import Runtime
from provisioner.secret import Secret
from provisioner.serve.pipeline import Pipeline, Request
from provisioner.vendors import load_catalog
from provisioner.yamlsrc import ProblemsError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.one_of(
    st.text(max_size=300),
    st.from_regex(r"\A(\.\./|/|%2e%2e%2f|\\|\x00)*[0-9a-fA-F]{12}\.cfg\Z"),
    st.builds(lambda a, b: a + b, st.sampled_from(["../", "/etc/", "..\\", "./", "", "%00"]),
              st.sampled_from(["passwd", "805ec0123456.cfg", "y000000000000.cfg", "ca.pem", "master.key",
                               "state.db"])),
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    rt = Runtime(home=home, inventory_path=REPO / "inventory.yaml")
    from provisioner.operations import sync_inventory
    sync_inventory(rt)
    p = Pipeline(rt, b"-----BEGIN CERTIFICATE-----\n")
    p.guard.policy.ban_after = 10**9  # fuzzing is not an attack we want throttled here
    p.guard.policy.prefix_ban_after = 10**9
    secrets = set()
    for mac in rt.inventory.resolved:
        secrets |= {s.reveal() for s in rt.store.credentials(mac).values()}
    return p, secrets


@FUZZ
@given(name=names, ua=st.one_of(st.none(), st.text(max_size=200), st.just(ua_for("805ec0123456"))))
def test_https_file_names(pipeline, name, ua):
    p, secrets = pipeline
    r = p.handle(Request("https", name, "127.0.0.1", ua, None, "GET", "/p/" + name))
    assert r.status in (200, 401, 404)
    if r.status == 200:
        assert name == "ca.pem" or p.catalog.match_file(name)
    for s in secrets:
        assert s not in r.reason
    if "/" in name or "\\" in name or name.startswith("."):
        assert r.status == 404


@FUZZ
@given(name=names)
def test_tftp_paths_never_escape(pipeline, name, tmp_path_factory):
    p, secrets = pipeline
    r = p.handle(Request("tftp", name, "127.0.0.1"))
    assert r.status in (200, 404)
    if r.status == 200:
        assert b"password" not in r.body.lower() or name.lstrip("/") == "ca.pem"
        for s in secrets:
            assert s.encode() not in r.body
        assert not any(x in name.lstrip("/") for x in ("/", "\\", ".."))


@FUZZ
@given(auth=st.one_of(st.text(max_size=400), st.builds(lambda s: "Digest " + s, st.text(max_size=400))))
def test_authorization_header_garbage(pipeline, auth):
    p, _ = pipeline
    r = p.handle(Request("https", "805ec0123457.cfg", "127.0.0.1", ua_for("805ec0123457"), auth, "GET",
                         "/p/805ec0123457.cfg"))
    assert r.status in (200, 401)


yaml_ish = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=20)


@FUZZ
@given(doc=st.one_of(st.text(max_size=500), yaml_ish.map(repr)))
def test_inventory_loader_reports_problems_only(doc, tmp_path_factory):
    from provisioner.inventory import load_inventory
    d = tmp_path_factory.mktemp("inv")
    (d / "inventory.yaml").write_text(doc)
    catalog = load_catalog(REPO / "vendors")
    try:
        load_inventory(d / "inventory.yaml", catalog)
    except ProblemsError as e:
        assert all(str(p).startswith(str(d / "inventory.yaml") + ":") for p in e.problems)


@FUZZ
@given(doc=st.text(max_size=200))
def test_secret_never_shows_in_errors(doc):
    s = Secret("Z9-never-shown-" + doc)
    assert "never-shown" not in repr(s) + str(s) + f"{s!r} {s!s} {s}"
