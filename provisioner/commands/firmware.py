"""`provisioner firmware …` (issue 18): the image library, rollout status, pause and resume.

Exit codes: 0 done; 2 bad input (nothing changed); 3 `verify` found an image whose file changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from provisioner.cli import actor, cli, err, out
from provisioner.errors import InputError
from provisioner.firmware import library, rollout
from provisioner.firmware.status import status as rollout_status


def _p(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cli.group()
def firmware():
    """Firmware: the library of approved images, staged rollouts, their status (docs/firmware.md)."""


@firmware.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vendor", required=True, help="The vendor profile (yealink, snom, polycom, ...).")
@click.option("--models", "models", multiple=True, required=True,
              help="Models (or a family, e.g. T4xS) the image is for; repeat or separate with commas.")
@click.option("--version", default=None, help="The image's version, when its file name does not carry it.")
@click.option("--hold", is_flag=True, help="Add it without approving it: `latest-approved` ignores it until "
                                           "`firmware approve`; a policy naming its version still uses it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def firmware_add(rt, file: Path, vendor: str, models: tuple[str, ...], version: str | None, hold: bool,
                 as_json: bool):
    """Copy an image into the library (--home/firmware), its checksum recorded."""
    names = [m.strip() for arg in models for m in arg.split(",") if m.strip()]
    image, how = library.add(rt, file, vendor, names, version, not hold, actor())
    if as_json:
        _p(json.dumps({**image.to_json(), "version_source": how}, indent=2))
        return
    _p(f"added {image.id}: {image.vendor} {image.version} ({how}) for {', '.join(image.models)}, "
       f"{_size(image.size)}, sha256 {image.sha256}")
    if image.filename != file.name:
        _p(f"served as {image.filename}")
    _p("approved: sites with `latest-approved` offer it to their rollouts" if image.approved else
       "held: approve it with `provisioner firmware approve " + image.id + "`")


@firmware.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def firmware_list(rt, as_json: bool):
    """The images in the library."""
    images = library.images(rt.store)
    if as_json:
        _p(json.dumps([i.to_json() for i in images], indent=2))
        return
    if not images:
        _p("the firmware library is empty: provisioner firmware add FILE --vendor V --models M")
        return
    t = Table("id", "vendor", "version", "models", "file", "size", "approved", "added")
    for i in images:
        t.add_row(i.id, i.vendor, i.version, ", ".join(i.models), i.filename, _size(i.size),
                  "yes" if i.approved else "held", f"{i.added_at:%Y-%m-%d %H:%M} by {i.added_by}")
    out.print(t)


@firmware.command("remove")
@click.argument("image_id")
@click.option("--force", is_flag=True, help="Also when a policy pins its version or devices are mid-upgrade.")
@click.pass_obj
def firmware_remove(rt, image_id: str, force: bool):
    """Remove an image from the library (file and record)."""
    image = library.remove(rt, image_id, force, actor())
    _p(f"removed {image.id}: {image.vendor} {image.version}")


@firmware.command("approve")
@click.argument("image_id")
@click.pass_obj
def firmware_approve(rt, image_id: str):
    """Let `latest-approved` policies take this image."""
    image = library.set_approved(rt, image_id, True, actor())
    _p(f"approved {image.id}: {image.vendor} {image.version}")


@firmware.command("hold")
@click.argument("image_id")
@click.pass_obj
def firmware_hold(rt, image_id: str):
    """Keep `latest-approved` policies off this image (a policy naming its version still uses it)."""
    image = library.set_approved(rt, image_id, False, actor())
    _p(f"held {image.id}: {image.vendor} {image.version}")


@firmware.command("verify")
@click.pass_obj
def firmware_verify(rt):
    """Hash every image in full against its recorded checksum (exit 3 when one changed)."""
    bad = 0
    for image in library.images(rt.store):
        problem = library.VERIFIED.problem(rt.home, image, full=True)
        _p(f"{image.id} {image.vendor} {image.version}: {problem or 'ok'}")
        bad += bool(problem)
    if bad:
        err.print(f"{bad} image(s) changed since they were added: they are refused to every device",
                  markup=False, highlight=False)
        raise SystemExit(3)


@firmware.command("status")
@click.option("--site", default=None, help="Only this site.")
@click.option("--devices", is_flag=True, help="One line per device as well.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def firmware_status(rt, site: str | None, devices: bool, as_json: bool):
    """Per site and model: target, upgraded, pending, failed, not selected, and the rollout's state."""
    if site is not None and site not in rt.inventory.site_settings:
        raise InputError(f"unknown site {site!r} (known: {', '.join(sorted(rt.inventory.site_settings))})")
    rows = rollout_status(rt, site=site)
    if as_json:
        _p(json.dumps([r.to_json() for r in rows], indent=2, default=str))
        return
    if not rows:
        _p("no device is under a firmware policy" + (f" on site {site}" if site else "") +
           " (inventory: firmware: and rollout:, docs/firmware.md)")
        return
    t = Table("site", "vendor", "model", "target", "rollout", "devices", "upgraded", "pending", "failed",
              "not selected", "other")
    for r in rows:
        state = r.rollout + (f" {r.percent:g} %" if r.rollout == "active" else "") + \
            (f" {r.window}" if r.window and r.rollout == "active" else "")
        t.add_row(r.site, r.vendor, r.model, r.target or "-", state, str(r.devices), str(r.upgraded),
                  str(r.pending), str(r.failed), str(r.not_selected), str(r.other))
    out.print(t)
    for r in rows:
        if r.note:
            _p(f"{r.site} {r.vendor} {r.model}: {r.note}")
    if devices:
        d = Table("mac", "site", "model", "runs", "target", "status", "why")
        for r in rows:
            for x in r.by_device:
                d.add_row(x.mac, x.site, x.model, x.version or "?", x.target or "-", x.category, x.why)
        out.print(d)


@firmware.command("pause")
@click.option("--site", required=True)
@click.option("--vendor", default=None, help="Only this vendor's rollouts on the site.")
@click.option("--reason", default="paused by an operator", show_default=True)
@click.pass_obj
def firmware_pause(rt, site: str, vendor: str | None, reason: str):
    """Stop offering images on a site (devices already offered one may still be fetching it: see status)."""
    rollout.pause(rt, site, vendor, reason, actor())
    _p(f"firmware rollouts on site {site}{' for ' + vendor if vendor else ''} paused")


@firmware.command("resume")
@click.option("--site", required=True)
@click.option("--vendor", default=None, help="Only this vendor's rollouts on the site.")
@click.pass_obj
def firmware_resume(rt, site: str, vendor: str | None):
    """Lift the pauses and halts of a site. Failures so far still count: while their share stays above
    rollout.max_failures, the next failure halts the rollout again."""
    n = rollout.resume(rt, site, vendor, actor())
    _p(f"{n} pause(s)/halt(s) lifted on site {site}" if n else f"nothing was paused or halted on site {site}")
