"""`provisioner discover`, and what `adopt` takes from discovery (vendor/model, --all-discovered)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from provisioner.cli import Seconds, cli, err, out
from provisioner.errors import InputError

ADOPT_WINDOW_HOURS = 24.0  # what --all-discovered and `adopt MAC` look back on


def _print(text: str) -> None:
    out.print(text, markup=False, highlight=False)


# ---- discover --------------------------------------------------------------------------------------------


class _Display:
    """Progress on stderr: a live rich display on a terminal, one line per event otherwise."""

    LABELS = {"mdns": "mDNS browse", "snmp": "SNMP sweep", "sip-pnp": "SIP PnP listen", "ssdp": "SSDP search",
              "passive": "server logs"}

    def __init__(self, probes: list[str], timeout: float):
        self.live = err.is_terminal
        self.counts = {p: 0 for p in probes}
        self.progress = None
        self.tasks = {}
        if self.live:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(),
                                     TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(), console=err,
                                     transient=False)
            for p in probes:
                self.tasks[p] = self.progress.add_task(self.LABELS[p], total=None, status="waiting")

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def __call__(self, probe: str, event: str, info: dict) -> None:
        if event == "found":
            self.counts[probe] += 1
        if self.progress:
            task = self.tasks[probe]
            if event == "done":
                self.progress.update(task, total=1, completed=1,
                                     status=f"{info.get('count', 0)} found in {info.get('seconds', 0):.1f} s")
            elif event == "error":
                self.progress.update(task, total=1, completed=1, status=f"failed: {info.get('error')}")
            elif event == "found":
                self.progress.update(task, status=f"{self.counts[probe]} found (last: {info.get('ip')})")
            elif event == "listening":
                self.progress.update(task, status=f"listening on {info.get('where')}")
            elif event == "progress":
                self.progress.update(task, status=f"{info.get('total')} addresses")
            elif event == "note":
                self.progress.update(task, status=str(info.get("note")))
            elif event == "started":
                self.progress.update(task, status="running")
            return
        if event == "found":
            line = f"{probe}: found {info.get('ip') or '?'} ({info.get('what')})"
        elif event == "done":
            line = f"{probe}: done, {info.get('count', 0)} found in {info.get('seconds', 0):.1f} s"
        elif event == "error":
            line = f"{probe}: failed: {info.get('error')}"
        elif event == "listening":
            line = f"{probe}: listening on {info.get('where')} ({', '.join(info.get('interfaces') or [])})"
        elif event == "progress":
            line = f"{probe}: sweeping {info.get('total')} addresses"
        elif event == "note":
            line = f"{probe}: {info.get('note')}"
        else:
            line = f"{probe}: {event}"
        err.print(line, markup=False, highlight=False)
        err.file.flush()


def _options(rt, subnets, interfaces, timeout, probes, communities, snmp_credentials, snmp_timeout, snmp_retries,
             concurrency):
    from provisioner.discovery import Options, local_ipv4, local_networks
    from provisioner.discovery.config import (SnmpCredentials, check_ipv4, check_subnet, credentials_path,
                                              load_snmp_credentials)
    from provisioner.discovery.sip_pnp import auto_enrol_sites
    inv = rt.inventory
    cfg = inv.discovery
    try:
        subnets = [check_subnet(s) for s in subnets]
        interfaces = [check_ipv4(i) for i in interfaces]
    except ValueError as e:
        raise InputError(str(e)) from None
    local = local_ipv4()
    for ip in interfaces or (cfg.interfaces if cfg else []):
        if ip not in local:
            raise InputError(f"--interface {ip}: not an address of this machine (it has: {', '.join(local) or 'none'})")
    creds = SnmpCredentials()
    path = credentials_path(rt.inventory_path, cfg)
    if path is not None:
        creds = creds.merged(load_snmp_credentials(path))
    if snmp_credentials is not None:
        creds = creds.merged(load_snmp_credentials(snmp_credentials))
    if communities:
        from pydantic import ValidationError
        try:
            creds = creds.merged(SnmpCredentials(communities=list(communities)))
        except ValidationError as e:
            first = e.errors(include_url=False, include_input=False)[0]
            raise InputError(f"--community: {first['msg'].removeprefix('Value error, ')}") from None
    opts = Options.from_config(cfg, probes=tuple(probes), subnets=subnets, interfaces=interfaces, timeout=timeout,
                               snmp=creds, snmp_timeout=snmp_timeout, snmp_retries=snmp_retries,
                               snmp_concurrency=concurrency, auto_enrol_sites=auto_enrol_sites(inv))
    if "snmp" in opts.probes and not opts.subnets:
        opts.subnets = local_networks(opts.interfaces)
    return opts


@cli.command()
@click.option("--subnet", "subnets", multiple=True, metavar="CIDR", help="Sweep with SNMP (repeat; at most a /20 each).")
@click.option("--mdns", is_flag=True, help="Browse mDNS / DNS-SD.")
@click.option("--snmp", is_flag=True, help="SNMP sweep of the subnets (default: the local networks).")
@click.option("--sip-pnp", "sip_pnp", is_flag=True, help="Listen for SIP PnP SUBSCRIBEs (answers adopted phones).")
@click.option("--ssdp", is_flag=True, help="SSDP M-SEARCH (UPnP, TR-064 boxes) and read their descriptions.")
@click.option("--passive", is_flag=True, help="Devices that asked this server for a config (not in inventory).")
@click.option("--interface", "interfaces", multiple=True, metavar="IP",
              help="Address of this machine to listen and send on (repeat; default: all).")
@click.option("--timeout", type=Seconds(0.5, 300), default=None, metavar="S",
              help="How long the listeners run (default 5 s, or discovery.timeout).")
@click.option("--community", "communities", multiple=True, metavar="NAME",
              help="SNMP v2c community (repeat; default 'public'). Prefer --snmp-credentials: a command line is visible to others.")
@click.option("--snmp-credentials", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="YAML with communities and v3 users (0600); also discovery.snmp.credentials_file.")
@click.option("--snmp-timeout", type=Seconds(0.1, 30), default=None, metavar="S")
@click.option("--snmp-retries", type=click.IntRange(0, 5), default=None)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=None, help="SNMP addresses in flight.")
@click.option("--json", "as_json", is_flag=True, help="JSON array for scripts.")
@click.pass_obj
def discover(rt, subnets, mdns, snmp, sip_pnp, ssdp, passive, interfaces, timeout, communities, snmp_credentials,
             snmp_timeout, snmp_retries, concurrency, as_json):
    """Find the phones and routers on the LAN: mDNS, SNMP, SIP PnP, SSDP and the server's own logs, at once."""
    from provisioner import discovery as disc
    chosen = [p for p, on in (("mdns", mdns), ("snmp", snmp), ("sip-pnp", sip_pnp), ("ssdp", ssdp),
                              ("passive", passive)) if on]
    if chosen and subnets and "snmp" not in chosen:
        chosen.append("snmp")  # a subnet is only ever swept with SNMP
    probes = [p for p in disc.PROBES if p in chosen] if chosen else list(disc.PROBES)
    opts = _options(rt, subnets, interfaces, timeout, probes, communities, snmp_credentials, snmp_timeout,
                    snmp_retries, concurrency)
    ctx = disc.Context(rt.catalog, rt.inventory, rt.store)
    t0 = time.monotonic()
    with _Display(probes, opts.timeout) as display:
        try:
            obs = asyncio.run(disc.discover(ctx, opts, display))
        except PermissionError as e:
            raise InputError(f"discover: {e}") from None
    run_id = disc.new_run_id()
    disc.save(rt.store, obs, run_id)
    found = disc.merge(obs, rt.inventory)
    if as_json:
        click.echo(json.dumps([d.as_json() for d in found], indent=2))
        return
    _table(found, time.monotonic() - t0)


def _table(found, seconds: float) -> None:
    t = Table(title=f"{len(found)} device(s) found in {seconds:.1f} s", title_justify="left", show_lines=True)
    for col in ("mac", "ip", "vendor", "model", "firmware", "found by", "adopted", "factory default?", "why"):
        t.add_column(col, overflow="fold")
    for d in found:  # Text cells: what devices announce is never rich markup (nor control characters)
        t.add_row(*(Text(x) for x in (
            d.mac or "?", d.ip or "?", d.vendor or "?", d.model or "?", d.firmware or "-", ", ".join(d.found_by),
            f"yes ({d.site})" if d.adopted else "no", "suspected" if d.factory_default else "-",
            "\n".join(d.why[:6]))))
    out.print(t)
    todo = [d for d in found if not d.adopted and d.mac and d.kind in ("phone", "dect", "ata", "conference")]
    if todo:
        _print(f"Adopt with: provisioner adopt MAC --site SITE --line EXT   (or: adopt --all-discovered --site SITE)")


# ---- adopt: what discovery identified ---------------------------------------------------------------------


def _adoptable(rt, obs: dict) -> tuple[str, str] | str:
    """(vendor, model) when this observation names a phone profile and one of its models, else why not."""
    vendor, model = obs.get("vendor"), obs.get("model")
    if not vendor:
        return "vendor not identified"
    prof = rt.catalog.get(vendor)
    if prof is None:
        return f"{vendor} has no phone profile in vendors/" + (" (a router)" if vendor in rt.catalog.routers else "")
    if not model:
        return f"{prof.display_name}, model not identified"
    keys = {k.lower(): k for k in prof.models}
    if model.lower() not in keys:
        return f"{prof.display_name} {model} is not a model of vendors/{vendor}.yaml"
    return vendor, keys[model.lower()]


def _best(rt, rows: list[dict], vendor: str | None = None) -> tuple[dict | None, str]:
    """The newest, best-scored observation that names an adoptable vendor/model (of `vendor` if given)."""
    why = "not seen by discovery in the last 24 h"
    ranked = sorted(rows, key=lambda r: (r["score"], r["at"]), reverse=True)
    for r in ranked:
        if vendor and r.get("vendor") not in (vendor, None):
            continue
        res = _adoptable(rt, r)
        if isinstance(res, tuple):
            return r, ""
        why = res
    return None, why


def identified(rt, mac: str, vendor: str | None, model: str | None) -> tuple[str, str, str]:
    """(vendor, model, a line saying how they were found) for `adopt MAC` without --vendor/--model."""
    from provisioner.store.observations import for_mac
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=ADOPT_WINDOW_HOURS)
    rows = [r for r in for_mac(rt.store.engine, mac) if r["at"] >= since]
    best, why = _best(rt, rows, vendor)
    if best is None:
        raise InputError(f"{mac}: {why}; give --vendor and --model (or run provisioner discover first)")
    v, m = _adoptable(rt, best)
    if model and model.lower() != m.lower():
        m = model  # the operator's word wins; add_device checks it against the profile
    seen = (f"identified as {rt.catalog.get(v).display_name} {m} by {best['found_by']} "
            f"({best['at']:%Y-%m-%d %H:%M} UTC, from {best.get('ip') or '?'})")
    return v, m, seen


def _next_free_extensions(rt, site: str, start: int | None, n: int) -> list[str]:
    used = {ln.extension for d in rt.inventory.resolved.values() if d.site == site for ln in d.lines}
    used |= {ln.auth_user for d in rt.inventory.resolved.values() if d.site == site for ln in d.lines if ln.auth_user}
    if start is None:
        nums = [int(e) for e in used if re.fullmatch(r"[0-9]{1,9}", e)]
        start = max(nums) + 1 if nums else 100
    out, cur = [], start
    while len(out) < n:
        if str(cur) not in used:
            out.append(str(cur))
        cur += 1
    return out


def adopt_all_discovered(rt, site: str, first_extension: int | None, assume_yes: bool, adopt_one) -> None:
    from provisioner.store.observations import since
    inv = rt.inventory
    if site not in inv.sites:
        raise InputError(f"unknown site {site!r} (known: {', '.join(inv.sites) or 'none'})")
    settings = inv.site_settings[site]
    rows = since(rt.store.engine, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=ADOPT_WINDOW_HOURS))
    by_mac: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("mac"):
            by_mac.setdefault(r["mac"], []).append(r)
    plan, skipped = [], []
    for mac, obs in sorted(by_mac.items()):
        if mac in inv.resolved:
            continue
        best, why = _best(rt, obs)
        ips = [o["ip"] for o in obs if o.get("ip")]
        ip = best.get("ip") if best and best.get("ip") else (ips[0] if ips else None)
        if best is None:
            skipped.append((mac, ip, why))
            continue
        if ip and not settings.in_site(ip):
            skipped.append((mac, ip, f"{ip} is outside site {site}'s networks"))
            continue
        vendor, model = _adoptable(rt, best)
        plan.append((mac, ip, vendor, model, best["found_by"]))
    if skipped:
        t = Table(title=f"not adopted: {len(skipped)}", title_justify="left")
        for col in ("mac", "ip", "why"):
            t.add_column(col, overflow="fold")
        for mac, ip, why in skipped:
            t.add_row(mac, ip or "?", Text(why))
        out.print(t)
    if not plan:
        _print(f"nothing to adopt in site {site}: no phone discovered in the last {ADOPT_WINDOW_HOURS:g} h "
               f"is both identified and new (run provisioner discover first)")
        return
    exts = _next_free_extensions(rt, site, first_extension, len(plan))
    t = Table(title=f"to adopt in site {site}: {len(plan)}", title_justify="left")
    for col in ("mac", "ip", "vendor", "model", "found by", "line"):
        t.add_column(col)
    for (mac, ip, vendor, model, by), ext in zip(plan, exts):
        t.add_row(*(Text(x) for x in (mac, ip or "?", vendor, model, by, ext)))
    out.print(t)
    from provisioner.cli import adoption_entry, registrar_not_written
    from provisioner.operations import check_adoption

    def line(vendor: str, model: str, ext: str) -> list[dict]:
        return [{"extension": ext, "display_name": f"{rt.catalog.get(vendor).display_name} {model}"[:64]}]
    # all of them checked before the first is written: one that cannot be provisioned refuses them all
    check_adoption(rt, [adoption_entry(mac, vendor, model, site, line(vendor, model, ext))
                        for (mac, ip, vendor, model, by), ext in zip(plan, exts)])
    if not assume_yes:  # no answer (end of input) aborts: nothing is written
        click.confirm(f"Adopt these {len(plan)} device(s) into {rt.inventory_path}?", default=False, abort=True,
                      err=True)
    done = []
    for (mac, ip, vendor, model, by), ext in zip(plan, exts):
        dev, st = adopt_one(rt, mac, vendor, model, site, line(vendor, model, ext), None,
                            why=f"adopt --all-discovered (found by {by})", next_steps=False, checked=True)
        done.append((dev, st))
    dev, st = done[-1]
    _print("Next, on site:")
    _print(f"  1. Power the phones on (or reboot them) on a network of site {site} "
           f"({', '.join(str(n) for n in settings.networks)}).")
    _print(f"  2. They find {settings.provisioning_url} by SIP PnP when `provisioner serve --sip-pnp` runs on this "
           f"LAN, else by DHCP option 66 or their web UI.")
    _print(f"  3. Each first fetch before {st.enrol_expires_at:%Y-%m-%d %H:%M} UTC enrols the phone; "
           f"check with: provisioner devices")
    registrar_not_written(rt, [dev.mac for dev, _ in done])
