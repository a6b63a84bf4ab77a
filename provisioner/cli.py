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
from provisioner.errors import InputError, ProvisionerError, RenderError
from provisioner.inventory import load_inventory
from provisioner.inventory_edit import add_device
from provisioner.macaddr import normalize_mac
from provisioner.runtime import Runtime, templates_dir, vendors_dir
from provisioner.yamlsrc import ProblemsError

# wide enough for the tables when piped (tests, logs); a terminal keeps its own width
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}"


class Group(click.Group):
    """Turns our exceptions into the contract's exit codes with a plain message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProblemsError as e:
            for p in e.problems:
                err.print(str(p), markup=False, highlight=False)
            ctx.exit(2)
        except ProvisionerError as e:
            err.print(f"error: {e}", markup=False, highlight=False)
            ctx.exit(e.exit_code)


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
@click.pass_obj
def check(rt: Runtime):
    """Validate the inventory, vendor profiles and templates; print FILE:LINE: field: message per problem."""
    problems = []
    try:
        catalog = rt.catalog
    except ProblemsError as e:
        raise ProblemsError(e.problems) from None
    problems += rt.renderer.compile_all()
    try:
        inv = load_inventory(rt.inventory_path, catalog)
    except ProblemsError as e:
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
    if problems:
        for line in problems:
            err.print(line, markup=False, highlight=False)
        sys.exit(2)
    out.print(f"ok: {len(inv.resolved)} devices in {len(inv.sites)} sites, "
              f"{len(catalog.vendors)} vendor profiles ({vendors_dir()}), templates in {templates_dir()}",
              markup=False, highlight=False)


@cli.command()
@click.option("--https", "https", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT")
@click.option("--tftp", "tftp", default="127.0.0.1:6969", show_default=True, metavar="HOST:PORT",
              help="'' to disable TFTP.")
@click.option("--api", "api", default=None, metavar="HOST:PORT", help="Helpdesk API (not in this release).")
@click.pass_obj
def serve(rt: Runtime, https: str, tftp: str, api: str | None):
    """Serve configs to phones over HTTPS (digest auth, enrolment window) and TFTP (secret-free bootstrap)."""
    from provisioner import serve as serving
    if api:
        raise InputError("--api: the helpdesk API is not part of this release yet")
    rt.setup_logging(getattr(rt, "verbose", False))
    serving.run(rt, https, tftp or None, echo=lambda s: out.print(s, markup=False, highlight=False))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON array for scripts.")
@click.pass_obj
def devices(rt: Runtime, as_json: bool):
    """One row per device: mac, vendor, model, site, state, last_seen, served_hash, desired_hash."""
    rows = ops.list_devices(rt)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"{len(rows)} devices", title_justify="left")
    for col in ("mac", "vendor", "model", "site", "state", "last seen", "served", "desired", "in sync"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["mac"], r["vendor"], r["model"], r["site"], r["state"], r["last_seen"] or "never",
                  (r["served_hash"] or "-")[:12], (r["desired_hash"] or "-")[:12] + (" (rotating)" if r["pending_hash"] else ""),
                  "yes" if r["in_sync"] else "no")
    out.print(t)


@cli.command()
@click.argument("mac")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the files here instead of printing them.")
@click.pass_obj
def render(rt: Runtime, mac: str, out_dir: Path | None):
    """The files this device would fetch, with every secret shown as ********."""
    files = ops.render_device(rt, mac, masked=True)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out_dir / name).write_bytes(data)
            out.print(f"wrote {out_dir / name}", markup=False, highlight=False)
        return
    for name, data in files.items():
        click.echo(f"==> {name} <==")
        click.echo(data.decode())


def _parse_line(text: str) -> dict:
    ext, _, name = text.partition(":")
    return {"extension": ext.strip(), "display_name": (name or ext).strip()}


@cli.command()
@click.argument("mac")
@click.option("--vendor", required=True)
@click.option("--model", required=True)
@click.option("--site", required=True)
@click.option("--line", "lines", multiple=True, required=True, metavar="EXT[:DISPLAY NAME]",
              help="A SIP line (repeat for several).")
@click.option("--name", default=None, help="A label for the device (e.g. 'reception').")
@click.pass_obj
def adopt(rt: Runtime, mac: str, vendor: str, model: str, site: str, lines: tuple[str, ...], name: str | None):
    """Add a device to inventory.yaml (comments kept), generate its credentials, open its enrolment window."""
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise InputError(str(e)) from None
    if mac in rt.inventory.resolved:
        raise InputError(f"{mac} is already adopted (devices[{rt.inventory.device_index[mac]}] in {rt.inventory_path})")
    entry = {"mac": ":".join(mac[i:i + 2] for i in range(0, 12, 2)), "vendor": vendor, "model": model, "site": site}
    if name:
        entry["name"] = name
    entry["lines"] = [_parse_line(x) for x in lines]
    rt._inventory = add_device(rt.inventory_path, rt.catalog, entry)
    ops.sync_inventory(rt, actor())
    st = rt.store.device(mac)
    if st.state != "enrolling":  # known to the store from before: give it a fresh window
        ops.reopen_enrolment(rt, mac, actor(), "adopted again")
        st = rt.store.device(mac)
    rt.store.audit(actor(), "device.adopted", mac, "adopt command", {"vendor": vendor, "model": model, "site": site})
    dev = rt.inventory.device(mac)
    prof = rt.catalog.get(vendor)
    fname = prof.trigger.filename_for(mac=mac)
    out.print(f"adopted {mac} ({prof.display_name} {model}) in site {site}; credentials generated.",
              markup=False, highlight=False)
    out.print("Next, on site:", markup=False)
    out.print(f"  1. Plug the phone into a network of site {site} "
              f"({', '.join(str(n) for n in dev.settings.networks)}) and power it on (or reboot it).",
              markup=False, highlight=False)
    out.print(f"  2. Point it at {dev.settings.provisioning_url} (DHCP option 66, or its web UI); it asks for {fname}.",
              markup=False, highlight=False)
    out.print(f"  3. Its first fetch before {st.enrol_expires_at:%Y-%m-%d %H:%M} UTC enrols it; "
              f"check with: provisioner devices", markup=False, highlight=False)


@cli.command()
@click.argument("mac")
@click.option("--wait", "wait", type=float, default=None, metavar="S",
              help="Wait up to S seconds for the device to fetch its new config (exit 4 if it does not).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reprovision(rt: Runtime, mac: str, wait: float | None, as_json: bool):
    """Rotate every secret of a device (two-phase: the old ones work until the new config is fetched)."""
    res = ops.reprovision(rt, mac, actor())
    if wait:
        res.confirmed = ops.wait_for_fetch(rt, res.mac, res.pending_hash, wait)
        res.state = rt.store.device(res.mac).state
    payload = {"mac": res.mac, "generation": res.generation, "state": res.state,
               "new_config_fetched": res.confirmed, "pending_hash": res.pending_hash}
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    elif res.confirmed:
        out.print(f"{res.mac}: new credentials (generation {res.generation}) fetched and active; "
                  f"the old ones no longer work.", markup=False)
    else:
        out.print(f"{res.mac}: new credentials (generation {res.generation}) pending; the device gets them at its "
                  f"next fetch, and its old credentials work until then.", markup=False)
    if wait and not res.confirmed:
        err.print(f"error: {res.mac} did not fetch its new config within {wait:g} s", markup=False)
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
