"""Command line: parses, calls operations, prints with rich (tables for people, --json for scripts).

Exit codes (design.md §2): 0 ok, 2 bad input, 4 device did not confirm in time, 5 OTP refused.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from provisioner import operations as ops
from sqlalchemy.exc import SQLAlchemyError

from provisioner.errors import InputError, OutputError, ProvisionerError, RenderError, first_line, os_message
from provisioner.inventory import load_inventory
from provisioner.inventory_edit import add_device
from provisioner.macaddr import normalize_mac
from provisioner.runtime import Runtime, state_label, templates_dir, vendors_dir
from provisioner.yamlsrc import ProblemsError

# wide enough for the tables when piped (tests, logs); a terminal keeps its own width
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


class Seconds(click.FloatRange):
    """A number of seconds in a range; NaN is refused too (click's FloatRange lets it through, and a wait of
    NaN seconds never ends)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return v


def writable_file(path: Path, option: str) -> Path:
    """A file the command will write: its directory must exist and be writable (never created for it), and
    it must not be a directory. Checked before the command changes anything (OutputError, exit 2)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{option} {path}: not writable by this user")
    return path


def writable_dir(path: Path, option: str) -> Path:
    """A directory the command writes into: it may be created, but not its parents."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: not a directory")
    if not path.exists():
        writable_file(path, option)  # its parent exists and is writable
    elif not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: not writable by this user")
    return path


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}"


# `audit` runs from a timer that knows 0 (compliant), 3 (findings) and 2 (could not audit): nothing else
ONLY_EXIT_CODES = {"audit": (0, 2, 3)}


class Group(click.Group):
    """Turns every failure into one line on stderr and the contract's exit code (docs/contract.md): our
    exceptions carry theirs; the database's and the OS's are said plainly; anything else is an internal
    error, its traceback only with -v. Never a secret: exceptions that may hold one show their type only."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProblemsError as e:
            for p in e.problems:
                err.print(str(p), markup=False, highlight=False)
            self._exit(ctx, 2)
        except ProvisionerError as e:
            err.print(f"error: {e}", markup=False, highlight=False)
            self._exit(ctx, e.exit_code)
        except SQLAlchemyError as e:  # the database went away (or broke) after it was opened
            label = state_label(ctx.obj.url) if isinstance(ctx.obj, Runtime) else "state database"
            err.print(f"error: state database {label}: {first_line(e)}", markup=False, highlight=False)
            self._exit(ctx, 1)
        except OSError as e:
            err.print(f"error: {os_message(e)}", markup=False, highlight=False)
            self._exit(ctx, 1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as e:
            if getattr(ctx.obj, "verbose", False):
                import traceback
                traceback.print_exc()
            err.print(f"error: internal error ({type(e).__name__}); run with -v for the traceback, and report it",
                      markup=False, highlight=False)
            self._exit(ctx, 1)

    @staticmethod
    def _exit(ctx, code: int) -> None:
        allowed = ONLY_EXIT_CODES.get(ctx.invoked_subcommand or "")
        ctx.exit(code if allowed is None or code in allowed else 2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="PROVISIONER_HOME",
              default=Path("./var"), show_default=True, help="State: database, master key, TLS material, logs.")
@click.option("--inventory", "inventory", type=click.Path(dir_okay=False, path_type=Path),
              envvar="PROVISIONER_INVENTORY", default=Path("./inventory.yaml"), show_default=True)
@click.option("--state", "state_url", envvar="PROVISIONER_STATE", default=None,
              help="Database URL (default sqlite:///<home>/state.db; postgresql+psycopg://… for replicas).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx, home: Path, inventory: Path, state_url: str | None, verbose: bool):
    """Provision IP phones and routers with unique credentials, over authenticated HTTPS and TFTP."""
    ctx.obj = Runtime(home=home, inventory_path=inventory, state_url=state_url)
    ctx.obj.verbose = verbose


@cli.command()
@click.option("--offline", is_flag=True, help="Validate the files only; do not contact the registrars.")
@click.pass_obj
def check(rt: Runtime, offline: bool):
    """Validate the inventory, vendor profiles and templates (FILE:LINE: field: message per problem, exit 2),
    then check that each site's registrar can be reached and written, changing nothing (exit 1 if not)."""
    problems = []
    try:
        catalog = rt.catalog
    except ProblemsError as e:
        raise ProblemsError(e.problems) from None
    problems += rt.renderer.compile_all()
    try:
        inv = load_inventory(rt.inventory_path, catalog)
    except ProblemsError:
        for line in problems:
            err.print(line, markup=False, highlight=False)
        raise
    # render every device with throwaway secrets: a template error or unsafe value shows up now
    from provisioner.desired import credential_names, device_context
    from provisioner.secret import Secret
    for mac, dev in inv.resolved.items():
        vendor = catalog.get(dev.vendor)
        fake = {n: Secret("Check0nly-" + str(i)) for i, n in enumerate(credential_names(dev, vendor))}
        try:
            rt.renderer.device_files(device_context(dev, vendor, fake))
        except RenderError as e:
            line = inv.source.line_of(("devices", inv.device_index[mac]))
            problems.append(f"{inv.path}:{line}: devices[{inv.device_index[mac]}]: {e}")
    if inv.routers:  # router options the drivers refuse (account names, paths), before a command needs them
        from provisioner.routers import driver_problems
        rt._inventory = inv
        problems += [str(p) for p in driver_problems(rt)]
    if problems:
        for line in problems:
            err.print(line, markup=False, highlight=False)
        sys.exit(2)
    out.print(f"ok: {len(inv.resolved)} devices in {len(inv.sites)} sites, "
              f"{len(catalog.vendors)} vendor profiles ({vendors_dir()}), templates in {templates_dir()}",
              markup=False, highlight=False)
    if offline:
        return
    from provisioner.registrar import verify
    rt._inventory = inv
    failed = False
    for p in verify.probe(rt):
        where = f"registrar {p.registrar} (site{'s' if len(p.sites) > 1 else ''} {', '.join(p.sites)})"
        if p.ok:
            out.print(f"ok: {where}: {p.detail}", markup=False, highlight=False)
        else:
            failed = True
            err.print(f"error: {where}: {p.detail}", markup=False, highlight=False)
    if failed:
        err.print("error: a registrar cannot be written: phones would get SIP passwords it does not hold (they "
                  "are not handed out until it can; see docs/registrars.md). Fix it, then run: provisioner "
                  "registrar sync", markup=False, highlight=False)
        sys.exit(1)


@cli.command()
@click.option("--https", "https", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT")
@click.option("--tftp", "tftp", default="127.0.0.1:6969", show_default=True, metavar="HOST:PORT",
              help="'' to disable TFTP.")
@click.option("--api", "api", default=None, metavar="HOST:PORT",
              help="Helpdesk REST API and web page (HTTPS) on their own port.")
@click.option("--sip-pnp", "sip_pnp", is_flag=True,
              help="Answer SIP PnP SUBSCRIBEs (224.0.1.75:5060) of adopted phones with their provisioning URL.")
@click.option("--sip-pnp-interface", "sip_pnp_ifaces", multiple=True, metavar="IP",
              help="Address of this machine to listen on for SIP PnP (repeat; default: all).")
@click.pass_obj
def serve(rt: Runtime, https: str, tftp: str, api: str | None, sip_pnp: bool, sip_pnp_ifaces: tuple[str, ...]):
    """Serve configs to phones over HTTPS (digest auth, enrolment window) and TFTP (secret-free bootstrap)."""
    from provisioner import serve as serving
    if sip_pnp_ifaces and not sip_pnp:
        raise InputError("--sip-pnp-interface goes with --sip-pnp")
    rt.setup_logging(getattr(rt, "verbose", False))
    serving.run(rt, https, tftp or None, echo=lambda s: out.print(s, markup=False, highlight=False),
                sip_pnp=list(sip_pnp_ifaces) if sip_pnp else None, api=api or None)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON array for scripts.")
@click.pass_obj
def devices(rt: Runtime, as_json: bool):
    """One row per device: mac, vendor, model, site, state, last_seen, served_hash, desired_hash, and whether
    its registrar really takes its current SIP password (a device whose registrar does not is not in sync)."""
    rows = ops.list_devices(rt)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _devices_table(rows)
    bad = [r for r in rows if r.get("registrar") in ("not held", "unreachable")]
    why: dict[str, list[str]] = {}
    for r in bad:
        why.setdefault(r["registrar_detail"], []).append(r["mac"])
    for detail, macs in why.items():
        err.print(f"{', '.join(macs[:3])}{f' and {len(macs) - 3} more' if len(macs) > 3 else ''}: the registrar "
                  f"does not accept the current SIP password: {detail}", markup=False, highlight=False)
    if bad:
        err.print(f"{len(bad)} device(s) cannot register: fix the registrar (provisioner check), then run: "
                  f"provisioner registrar sync", markup=False, highlight=False)


def _devices_table(rows: list[dict]) -> None:
    t = Table(title=f"{len(rows)} devices", title_justify="left")
    for col in ("mac", "vendor", "model", "site", "state", "last seen", "served", "desired", "registrar", "in sync"):
        t.add_column(col)
    for r in rows:
        reg = r.get("registrar")
        t.add_row(r["mac"], r["vendor"], r["model"], r["site"], r["state"], r["last_seen"] or "never",
                  (r["served_hash"] or "-")[:12], (r["desired_hash"] or "-")[:12] + (" (rotating)" if r["pending_hash"] else ""),
                  {None: "-", "none": "-", "held": "holds SIP password", "not held": "DOES NOT HOLD",
                   "unreachable": "UNREACHABLE", "decommissioned": "-"}.get(reg, reg),
                  "yes" if r["in_sync"] else "no")
    out.print(t)


@cli.command()
@click.argument("mac")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the files here instead of printing them.")
@click.pass_obj
def render(rt: Runtime, mac: str, out_dir: Path | None):
    """The files this device would fetch, with every secret shown as ********."""
    if out_dir:
        writable_dir(out_dir, "--out")
    files = ops.render_device(rt, mac, masked=True)
    if out_dir:
        try:
            out_dir.mkdir(exist_ok=True)
            for name, data in files.items():
                (out_dir / name).write_bytes(data)
                out.print(f"wrote {out_dir / name}", markup=False, highlight=False)
        except OSError as e:
            raise OutputError(f"--out {out_dir}: {e.strerror or type(e).__name__}") from None
        return
    for name, data in files.items():
        click.echo(f"==> {name} <==")
        click.echo(data.decode())


def _parse_line(text: str) -> dict:
    ext, _, name = text.partition(":")
    return {"extension": ext.strip(), "display_name": (name or ext).strip()}


@cli.command()
@click.argument("mac", required=False)
@click.option("--vendor", default=None, help="Vendor profile; may be left out when discovery identified the device.")
@click.option("--model", default=None, help="Model of that profile; may be left out when discovery identified it.")
@click.option("--site", required=True)
@click.option("--line", "lines", multiple=True, metavar="EXT[:DISPLAY NAME]",
              help="A SIP line (repeat for several); required when adopting one MAC.")
@click.option("--name", default=None, help="A label for the device (e.g. 'reception').")
@click.option("--all-discovered", is_flag=True,
              help="Adopt every phone discovery identified on the site's networks (asks first).")
@click.option("--first-extension", type=click.IntRange(1, 99_999_999), default=None, metavar="N",
              help="With --all-discovered: extensions from N on (default: after the site's highest).")
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="With --all-discovered: do not ask (scripts).")
@click.option("--transport", type=click.Choice(["tls", "tcp", "udp"]), default=None,
              help="SIP transport of this device, when it is not the site's (writes registrar: {transport: …}).")
@click.option("--srtp", type=click.Choice(["required", "optional", "off"]), default=None,
              help="SRTP policy of this device, when it is not the site's (writes policy: {srtp: …}).")
@click.pass_obj
def adopt(rt: Runtime, mac: str | None, vendor: str | None, model: str | None, site: str, lines: tuple[str, ...],
          name: str | None, all_discovered: bool, first_extension: int | None, assume_yes: bool,
          transport: str | None, srtp: str | None):
    """Add a device to inventory.yaml (comments kept), generate its credentials, open its enrolment window.
    Everything is checked first (the inventory, its config on the site, its registrar): a refusal changes
    nothing."""
    from provisioner.commands import discovery as found
    if all_discovered:
        if mac or lines or vendor or model or name or transport or srtp:
            raise InputError("--all-discovered takes no MAC, --vendor, --model, --line, --name, --transport or --srtp")
        found.adopt_all_discovered(rt, site, first_extension, assume_yes, adopt_one)
        return
    if first_extension is not None or assume_yes:
        raise InputError("--first-extension and --yes go with --all-discovered")
    if not mac:
        raise InputError("give the MAC of the device to adopt (or --all-discovered)")
    if not lines:
        raise InputError("--line is required (repeat it for several lines)")
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    if mac in rt.inventory.resolved:
        raise InputError(f"{mac} is already adopted (devices[{rt.inventory.device_index[mac]}] in {rt.inventory_path})")
    why = "adopt command"
    if vendor is None or model is None:  # discovery saw it: take what it identified
        vendor, model, seen = found.identified(rt, mac, vendor, model)
        out.print(f"{mac}: {seen}", markup=False, highlight=False)
        why = "adopt command (vendor/model from discovery)"
    overrides = {k: v for k, v in (("registrar", {"transport": transport} if transport else None),
                                   ("policy", {"srtp": srtp} if srtp else None)) if v}
    adopt_one(rt, mac, vendor, model, site, [_parse_line(x) for x in lines], name, why=why, overrides=overrides)


def adoption_entry(mac: str, vendor: str, model: str, site: str, lines: list[dict], name: str | None = None,
                   overrides: dict | None = None) -> dict:
    entry = {"mac": ":".join(mac[i:i + 2] for i in range(0, 12, 2)), "vendor": vendor, "model": model, "site": site}
    if name:
        entry["name"] = name
    entry.update(overrides or {})
    entry["lines"] = lines
    return entry


def adopt_one(rt: Runtime, mac: str, vendor: str, model: str, site: str, lines: list[dict], name: str | None,
              why: str = "adopt command", next_steps: bool = True, overrides: dict | None = None,
              checked: bool = False):
    """Write one device into inventory.yaml, sync it to the store, open its window; (device, state).
    `checked`: the caller already ran ops.check_adoption for it (bulk adoption checks them all first, and
    says at the end which registrars were not written); else a registrar not written exits 1."""
    entry = adoption_entry(mac, vendor, model, site, lines, name, overrides)
    if not checked:
        ops.check_adoption(rt, [entry])  # refuses before anything is written
    rt._inventory = add_device(rt.inventory_path, rt.catalog, entry)
    ops.sync_inventory(rt, actor())
    st = rt.store.device(mac)
    if st.state != "enrolling":  # known to the store from before: give it a fresh window
        ops.reopen_enrolment(rt, mac, actor(), "adopted again")
        st = rt.store.device(mac)
    rt.store.audit(actor(), "device.adopted", mac, why, {"vendor": vendor, "model": model, "site": site})
    dev = rt.inventory.device(mac)
    prof = rt.catalog.get(vendor)
    fname = prof.trigger.filename_for(mac=mac)
    out.print(f"adopted {mac} ({prof.display_name} {model}) in site {site}; credentials generated.",
              markup=False, highlight=False)
    if not checked:
        registrar_not_written(rt, [mac])
    if not next_steps:
        return dev, st
    out.print("Next, on site:", markup=False)
    out.print(f"  1. Plug the phone into a network of site {site} "
              f"({', '.join(str(n) for n in dev.settings.networks)}) and power it on (or reboot it).",
              markup=False, highlight=False)
    out.print(f"  2. Point it at {dev.settings.provisioning_url} (DHCP option 66, or its web UI); it asks for {fname}.",
              markup=False, highlight=False)
    out.print(f"  3. Its first fetch before {st.enrol_expires_at:%Y-%m-%d %H:%M} UTC enrols it; "
              f"check with: provisioner devices", markup=False, highlight=False)
    return dev, st


@cli.command()
@click.argument("mac", required=False)
@click.option("--site", default=None, help="Every device of this site (bulk).")
@click.option("--all", "all_devices", is_flag=True, help="Every device of the inventory (bulk).")
@click.option("--wait", "wait", type=Seconds(0, 86400), default=None, metavar="S",
              help="Wait up to S seconds (per device) for the device to fetch its new config (exit 4 if not).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Bulk: at most N devices rotating (and, with --wait, fetching) at once.")
@click.option("--stagger", type=Seconds(0, 3600), default=1.0, show_default=True, metavar="S",
              help="Bulk: seconds between the starts of two devices (no boot storm).")
@click.option("--why", default=None, help="Reason, for the audit log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reprovision(rt: Runtime, mac: str | None, site: str | None, all_devices: bool, wait: float | None,
                concurrency: int, stagger: float, why: str | None, as_json: bool):
    """Rotate every secret of a device (two-phase: the old ones work until the new config is fetched), sync
    the registrar, and tell the phone to fetch (SIP NOTIFY); or of a whole site / every device, staggered."""
    if sum(x is not None and x is not False for x in (mac, site, all_devices)) != 1:
        raise InputError("give exactly one of MAC, --site SITE or --all")
    if mac is None:
        return _reprovision_bulk(rt, ops.devices_for(rt, site, all_devices), wait, concurrency, stagger,
                                 why or f"bulk reprovision ({'site ' + site if site else 'all devices'})", as_json)
    from provisioner.routers import router_mac
    router = router_mac(rt, mac)
    if router:  # a router's reprovision is a push with new passwords, read back before they count
        from provisioner.commands.routers import push_cmd
        return click.get_current_context().invoke(push_cmd, mac=router, as_json=as_json, rotate=True, force=False,
                                                  confirm_timeout=min(wait, 3600) if wait else None)
    res = ops.reprovision(rt, mac, actor(), why or "reprovision requested")
    if wait:
        res.confirmed = ops.wait_for_fetch(rt, res.mac, res.pending_hash, wait)
        res.state = rt.store.device(res.mac).state
    payload = {"mac": res.mac, "generation": res.generation, "state": res.state,
               "new_config_fetched": res.confirmed, "pending_hash": res.pending_hash, "resumed": res.resumed,
               "notify": res.notify}
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    elif res.confirmed:
        out.print(f"{res.mac}: new credentials (generation {res.generation}) fetched and active; "
                  f"the old ones no longer work.", markup=False)
    else:
        out.print(f"{res.mac}: new credentials (generation {res.generation}) pending; the device gets them at its "
                  f"next fetch, and its old credentials work until then.", markup=False)
    if res.notify and not as_json:
        out.print(f"SIP NOTIFY: {res.notify}", markup=False, highlight=False)
    if wait and not res.confirmed:
        from provisioner.registrar.sync import status
        rec = status(rt, res.mac) or {}
        why = (f" (its registrar refused the new passwords: {rec['error']}; it keeps its current config, which "
               f"works: fix the registrar, then provisioner registrar sync)") if rec.get("error") else ""
        err.print(f"error: {res.mac} did not fetch its new config within {wait:g} s{why}", markup=False,
                  highlight=False)
        sys.exit(4)


def registrar_not_written(rt: Runtime, macs: list[str]) -> None:
    """Devices just added whose registrar write failed: say so and exit 1 (their configs are not handed out
    until the registrar holds their SIP passwords)."""
    from provisioner.registrar.sync import status
    failed = []
    for mac in macs:
        dev = rt.inventory.device(mac)
        if dev is None or dev.settings.registrar.kind in (None, "none"):
            continue
        rec = status(rt, mac)
        if rec is None or rec["error"] or rec["write_in_flight"] or rec["held_generation"] is None:
            failed.append((mac, (rec or {}).get("error") or "not written"))
    for mac, why in failed:
        err.print(f"error: {mac} is adopted, but its registrar does not hold its SIP passwords ({why})",
                  markup=False, highlight=False)
    if failed:
        err.print("error: their configs are not handed out until it does. Fix the registrar (provisioner check), "
                  "then run: provisioner registrar sync", markup=False, highlight=False)
        sys.exit(1)


def _reprovision_bulk(rt: Runtime, macs: list[str], wait: float | None, concurrency: int, stagger: float, why: str,
                      as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    if not macs:
        raise InputError("no device to reprovision")
    progress = Progress(TextColumn("reprovision"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=err, disable=as_json, transient=False)
    with progress:
        task = progress.add_task("reprovision", total=len(macs), last="")
        results = ops.reprovision_many(
            rt, macs, actor(), why, wait=wait, concurrency=concurrency, stagger=stagger,
            on_result=lambda r: progress.update(task, advance=1, last=r.mac))

    def outcome(r) -> str:
        if r.error:
            return r.error
        if r.confirmed:
            return "fetched, switched"
        return "not fetched in time" if wait else "pending (old credentials work until the fetch)"

    failed = [r for r in results if (r.error and not r.error.startswith("skipped")) or (wait and not r.confirmed
                                                                                          and not r.error)]
    if as_json:
        click.echo(json.dumps([{"mac": r.mac, "site": r.site, "generation": r.generation, "state": r.state,
                                "new_config_fetched": r.confirmed, "resumed": r.resumed, "notified": r.notified,
                                "notify": r.notify, "error": r.error} for r in results], indent=2))
    else:
        t = Table(title=f"{len(results)} devices, {len(failed)} not done", title_justify="left")
        for col in ("mac", "site", "generation", "state", "resync NOTIFY", "result"):
            t.add_column(col)
        for r in results:
            t.add_row(r.mac, r.site or "", str(r.generation), r.state,
                      ("sent" if r.notified else "no") if not r.error else "-", outcome(r))
        out.print(t)
    if failed:
        sys.exit(4)


def main() -> None:
    os.umask(0o077)  # everything under --home (database, logs, keys, reports) is private to its owner
    cli(prog_name="provisioner")


def _load_command_modules() -> None:
    import importlib
    import pkgutil

    import provisioner.commands as pkg
    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        importlib.import_module(f"provisioner.commands.{mod}")


_load_command_modules()
