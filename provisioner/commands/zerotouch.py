"""Zero-touch commands (issue 19): `dhcp export`, `redirect register|status|remove`, `zero-touch`.

Exit codes: 0 done; 2 bad input; 1 a redirection service refused or could not be reached (what succeeded is
recorded, what failed is listed).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click
from rich.table import Table

from provisioner import operations as ops
from provisioner.cli import actor, cli, err, out
from provisioner.errors import InputError
from provisioner.macaddr import normalize_mac
from provisioner.zerotouch import dhcp as zdhcp
from provisioner.zerotouch import state as zstate


def _p(text: str) -> None:
    out.print(text, markup=False, highlight=False)


# ---- dhcp export ----------------------------------------------------------------------------------------

@cli.group()
def dhcp():
    """DHCP options that point a site's factory-fresh phones at this server."""


@dhcp.command("export")
@click.option("--site", required=True, help="The site whose DHCP server gets the options.")
@click.option("--format", "fmt", type=click.Choice(zdhcp.FORMATS), required=True,
              help="dnsmasq (conf-dir snippet), kea (kea-dhcp4 JSON; add your pools) or isc (dhcpd statements; "
                   "ISC DHCP is end-of-life upstream).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of stdout.")
@click.option("--no-check", is_flag=True, help="Do not let the real server (dnsmasq --test, kea-dhcp4 -t, "
                                              "dhcpd -t) parse the export first.")
@click.pass_obj
def dhcp_export(rt, site: str, fmt: str, out_file: Path | None, no_check: bool):
    """Write the site's zero-touch DHCP options (66, 160, per-vendor classes on option 60); nothing secret."""
    plan = zdhcp.plan(rt.inventory, rt.catalog, site)
    text = zdhcp.render(plan, fmt)
    if not no_check:
        problem = zdhcp.check_with_server(fmt, text)
        if problem:
            raise InputError(f"the {fmt} server does not accept the export: {problem}")
        if zdhcp.server_binary(fmt) is None:
            err.print(f"note: the {fmt} server is not installed here: the export was not checked by it",
                      markup=False, highlight=False)
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # a DHCP server (another user) reads it; it holds no secret
        os.replace(tmp, out_file)
    else:
        click.echo(text, nl=False)
    zstate.record_export(rt.store, site, fmt, plan.url, zdhcp.digest(text), str(out_file.resolve()) if out_file
                         else None, actor())
    for note in plan.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if out_file:
        err.print(f"wrote {out_file} ({fmt}) for site {site}: option 66 = {plan.url}", markup=False, highlight=False)


# ---- redirect -------------------------------------------------------------------------------------------

def _macs(rt, macs: tuple[str, ...], site: str | None) -> list[str]:
    if bool(macs) == bool(site):
        raise InputError("give MAC… or --site SITE")
    if site:
        if site not in rt.inventory.sites:
            raise InputError(f"unknown site {site!r}")
        return [m for m, d in rt.inventory.resolved.items() if d.site == site]
    got = []
    for m in macs:
        try:
            got.append(normalize_mac(m))
        except ValueError as e:
            raise InputError(f"{m!r}: {e}") from None
    return got


def _progress(total: int, label: str, as_json: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[last]}"), console=err, disable=as_json or total < 2, transient=False)


def _run(rt, verb: str, macs: list[str], as_json: bool, fn):
    from provisioner.zerotouch import service
    progress = _progress(len(macs), f"redirect {verb}", as_json)
    with progress:
        task = progress.add_task(verb, total=len(macs), last="")
        results = getattr(service, fn)(rt, macs, *(() if fn == "status" else (actor(),)),
                                       on_result=lambda o: progress.update(task, advance=1, last=o.mac))
    if as_json:
        click.echo(json.dumps([o.__dict__ for o in results], indent=2))
    else:
        t = Table(title=f"redirect {verb}: {len(results)} device(s)", title_justify="left")
        for col in ("mac", "service", "result", "detail"):
            t.add_column(col, overflow="fold")
        for o in results:
            res = "skipped" if o.skipped else ("ok" if o.ok else "failed") if fn != "status" else (
                "error" if not o.ok else ("registered" if o.registered else "not registered"))
            t.add_row(o.mac, o.service or "-", res, o.detail)
        out.print(t)
    if any(not o.ok and not o.skipped for o in results):
        sys.exit(1)


@cli.group()
def redirect():
    """Vendor redirection services (Yealink RPS, Snom SRAPS): the phone's first boot asks its vendor's cloud,
    which sends it here. Credentials: environment or zero_touch.redirect.<service>.credentials_file."""


@redirect.command("register")
@click.argument("macs", nargs=-1)
@click.option("--site", default=None, help="Every device of this site.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def redirect_register(rt, macs, site, as_json):
    """Register devices (their site's provisioning URL) at their vendor's redirection service."""
    targets = _macs(rt, macs, site)
    ops.sync_inventory(rt, actor())  # in the store, enrolment window open, before the phone is sent here
    _run(rt, "register", targets, as_json, "register")


@redirect.command("status")
@click.argument("macs", nargs=-1)
@click.option("--site", default=None, help="Every device of this site.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def redirect_status(rt, macs, site, as_json):
    """Ask the services what they hold for these devices."""
    _run(rt, "status", _macs(rt, macs, site), as_json, "status")


@redirect.command("remove")
@click.argument("macs", nargs=-1)
@click.option("--site", default=None, help="Every device of this site.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def redirect_remove(rt, macs, site, as_json):
    """Remove devices from their vendor's redirection service (decommission does it too)."""
    _run(rt, "remove", _macs(rt, macs, site), as_json, "remove")


# ---- zero-touch ------------------------------------------------------------------------------------------

def _queries(rt, macs: list[str]) -> dict[str, list[str]]:
    """service -> devices to ask it about, for the services configured here (the others: recorded state)."""
    from provisioner.zerotouch import redirect as zredirect
    by_service: dict[str, list[str]] = {}
    for m in macs:
        svc = rt.catalog.get(rt.inventory.resolved[m].vendor).zero_touch.redirect
        if svc and svc not in zredirect.UNSUPPORTED:
            by_service.setdefault(svc, []).append(m)
    return {svc: ms for svc, ms in by_service.items() if zredirect.configured(rt, svc)}


def zero_touch_report(rt, site: str | None = None, live: bool = True, progress=None) -> list:
    """`progress(total)` -> a callback per answer, when services will be asked."""
    from provisioner.zerotouch import service, verdict
    ops.sync_inventory(rt, actor())
    macs = [m for m, d in rt.inventory.resolved.items() if site is None or d.site == site]
    status = {}
    if live:
        queries = _queries(rt, macs)
        total = sum(len(ms) for ms in queries.values())
        tick = progress(total) if (progress and total) else None
        for svc, ms in queries.items():
            for o in service.status(rt, ms, on_result=tick):
                status[o.mac] = o
    return verdict.evaluate(rt, macs, status)


@cli.command("zero-touch")
@click.option("--site", default=None, help="Only this site's devices.")
@click.option("--offline", is_flag=True, help="Do not ask the redirection services; use what was recorded.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def zero_touch(rt, site, offline, as_json):
    """Per device: which zero-touch paths are in place (DHCP export, redirect registration, SIP PnP responder),
    which its vendor supports, and whether it will provision by itself, because …"""
    if site is not None and site not in rt.inventory.sites:
        raise InputError(f"unknown site {site!r} (known: {', '.join(rt.inventory.sites)})")
    bars = []

    def progress(total: int):
        bar = _progress(total, "asking redirection services", as_json)
        bar.start()
        bars.append(bar)
        task = bar.add_task("redirect", total=total, last="")
        return lambda o: bar.update(task, advance=1, last=o.mac)

    try:
        rows = zero_touch_report(rt, site, live=not offline, progress=progress)
    finally:
        for bar in bars:
            bar.stop()
    routers = [r for r in rt.inventory.routers.values() if site is None or r.site == site]
    if as_json:
        click.echo(json.dumps({"devices": [r.as_dict() for r in rows],
                               "routers": [{"mac": r.mac, "site": r.site, "because": "routers are provisioned by "
                                            "push (TR-064/SSH), not by zero-touch"} for r in routers]}, indent=2))
        return
    t = Table(title=f"zero-touch: {len(rows)} device(s)", title_justify="left", show_lines=True)
    for col in ("device", "DHCP option 66", "redirect service", "SIP PnP", "will provision by itself"):
        t.add_column(col, overflow="fold")

    def cell(p) -> str:
        mark = "in place" if p.in_place else ("not supported" if not p.supported else "not in place")
        return f"{mark}: {p.detail}"

    for v in rows:
        t.add_row(f"{v.mac}\n{v.vendor} {v.model}\nsite {v.site}\n{v.state or 'not in store'}",
                  cell(v.dhcp), cell(v.redirect), cell(v.sip_pnp),
                  v.because + ("".join(f"\n→ {x}" for x in v.todo) if not v.will_provision else ""))
    out.print(t)
    for r in routers:
        _p(f"{r.mac} (router, site {r.site}): provisioned by push (TR-064/SSH), not by zero-touch")
    yes = sum(1 for v in rows if v.will_provision)
    _p(f"{yes} of {len(rows)} device(s) will provision by themselves")
