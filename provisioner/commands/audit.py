"""`provisioner audit`: exit 0 compliant, 3 findings, 2 input error (design.md §2)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from rich.table import Table

from provisioner.cli import actor, cli, out, writable_file
from provisioner.errors import OutputError


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # reports and metrics hold no secret; node_exporter and browsers must read them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@cli.command()
@click.option("--json", "json_out", metavar="FILE|-", default=None, help="Write the findings as JSON (schema in docs/audit.md).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one self-contained HTML report.")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write Prometheus metrics for node_exporter's textfile collector.")
@click.option("--probe-defaults", is_flag=True,
              help="Try each vendor's factory web login on devices on their site networks (opt-in, logged).")
@click.option("--probe-port", type=click.IntRange(1, 65535), default=None, help="Port of the phones' web UI (default: the scheme's).")
@click.option("--probe-scheme", type=click.Choice(["http", "https"]), default="http", show_default=True)
@click.pass_obj
def audit(rt, json_out, html_out, textfile, probe_defaults, probe_port, probe_scheme):
    """Compare every device with what it should be: drift, stale, firmware, overrides, policy, defaults."""
    from provisioner import audit as auditing
    # every output is checked before anything runs: a typo in a path changes nothing (exit 2)
    for option, path in (("--json", None if json_out in (None, "-") else Path(json_out)), ("--html", html_out),
                         ("--textfile", textfile)):
        if path is not None:
            writable_file(path, option)
    probe = auditing.default_credentials_probe(probe_port, probe_scheme) if probe_defaults else None
    if probe_defaults:
        rt.store.audit(actor(), "audit.probe-defaults", None, "operator asked for the factory-default probe")
    report = auditing.run_audit(rt, probe=probe)
    if json_out == "-":
        click.echo(auditing.write_json(report))
    for option, path, text in (("--json", None if json_out in (None, "-") else Path(json_out), auditing.write_json),
                               ("--html", html_out, auditing.to_html), ("--textfile", textfile, auditing.metrics_text)):
        if path is not None:
            try:
                _write_atomic(path, text(report))
            except OSError as e:
                raise OutputError(f"{option} {path}: {e.strerror or type(e).__name__}") from None
    if json_out != "-":
        _print(report)
    sys.exit(3 if report.counted else 0)


def _print(report) -> None:
    if not report.findings:
        out.print(f"compliant: {report.devices} devices, no findings", markup=False)
        return
    for sev in ("critical", "high", "medium", "low", "info"):
        rows = [f for f in report.findings if f.severity == sev]
        if not rows:
            continue
        t = Table(title=f"{sev}: {len(rows)}", title_justify="left", show_lines=False)
        for col in ("site", "device", "type", "what", "evidence", "fix"):
            t.add_column(col, overflow="fold")
        for f in rows:
            t.add_row(f.site or "-", f.device or "-", f.type, f.what, f.evidence, f.fix)
        out.print(t)
    s = report.summary()
    out.print(f"{s['findings']} finding(s) on {report.devices} devices", markup=False)
