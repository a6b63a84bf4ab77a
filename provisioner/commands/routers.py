"""Router commands: `push MAC` (render, push, read back) and `routers` (facts and drift of every router).

    provisioner push MAC [--json] [--rotate] [--force] [--confirm-timeout S]
        exit 0: pushed and read back without drift; 2: bad input (unknown MAC, a phone, a missing trunk
        password source); 4: the router did not do or confirm it (unreachable, login refused, changed host
        key or certificate, nobody confirmed at the box in time, or the read-back still differs).
    provisioner routers [--json]              a table of every router: facts and drift (exit 3 if any drifts
                                              or cannot be reached, else 0)
    provisioner routers show MAC [--json]     one router's facts and drift
    provisioner routers render MAC            the files an SSH router would get (they hold no secret)
    provisioner routers reboot MAC | reset MAC | forget-key MAC

Secrets the operator owns are never in inventory.yaml: a router's trunk password and its first-contact
management password come from the environment variable (`password_env: NAME`) or the one-line file
(`password_file: PATH`, mode 0600) that the router's inventory entry names; see provisioner/routers.py.
"""

from __future__ import annotations

import json
import sys

import click
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from provisioner.cli import Seconds, actor, cli, err, out


def _progress():
    """Progress lines on stderr (stdout stays clean for --json); a spinner on a terminal."""
    status = err.status("connecting", spinner="dots") if err.is_terminal else None

    def step(text: str) -> None:
        if status is not None:
            status.update(text)
        err.print(Text(f"  → {text}", style="dim"))
    return status, step


def _on_confirm(text: str) -> None:
    """The technician must act at the router now: impossible to miss on a terminal, whole in a log."""
    if err.is_terminal:
        err.print(Panel(Text(text), title="ACTION NEEDED AT THE ROUTER", border_style="bold yellow"), soft_wrap=False)
    else:
        err.print(f"ACTION NEEDED AT THE ROUTER: {text}", markup=False, highlight=False)


def _drift_table(drift, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("key", "kind", "expected", "actual", "detail"):
        t.add_column(col, overflow="fold")
    for d in drift:
        t.add_row(Text(d.key), Text(d.kind), Text(d.expected), Text(d.actual), Text(d.detail))
    return t


@cli.command("push")
@click.argument("mac")
@click.option("--json", "as_json", is_flag=True, help="The outcome as JSON on stdout.")
@click.option("--rotate", is_flag=True, help="New passwords for all the agent generates (handsets, config "
                                             "password, router accounts).")
@click.option("--force", is_flag=True, help="Write everything, even what the store says the router holds.")
@click.option("--confirm-timeout", type=Seconds(0.1, 3600), default=None, metavar="S",
              help="How long a technician has to confirm at a FRITZ!Box (error 866); default from the profile.")
@click.pass_obj
def push_cmd(rt, mac: str, as_json: bool, rotate: bool, force: bool, confirm_timeout: float | None):
    """Render, push and read back a router's configuration and unique credentials.

    Exit 0 when the read-back shows no drift, 2 on bad input, 4 when the router did not do or confirm it.
    A trunk's SIP password comes from the environment variable or file named in the router's inventory
    entry (password_env / password_file), never from inventory.yaml.
    """
    from provisioner import routers
    status, step = _progress()
    try:
        if status is not None:
            status.start()
        outcome = routers.push(rt, mac, actor(), progress=step, on_confirm=_on_confirm,
                               confirm_timeout=confirm_timeout, rotate=rotate, force=force)
    finally:
        if status is not None:
            status.stop()
    if as_json:
        click.echo(json.dumps(outcome.as_dict(), indent=2))
    else:
        res = outcome.result
        out.print(f"{outcome.mac} ({outcome.profile} at {outcome.address}): {len(res.changed)} written, "
                  f"{len(res.unchanged)} unchanged, {len(res.removed)} removed; state {outcome.state}"
                  + (f", credentials generation {outcome.generation}" if outcome.generation else ""),
                  markup=False, highlight=False)
        for key in res.changed:
            out.print(f"  written  {key}", markup=False, highlight=False)
        for key in res.removed:
            out.print(f"  removed  {key}", markup=False, highlight=False)
        for note in res.notes:
            out.print(f"  note     {note}", markup=False, highlight=False)
        unverifiable = [d for d in outcome.drift if not d.counts]
        if unverifiable:
            out.print(f"  {len(unverifiable)} value(s) the router cannot give back (set, not read back): "
                      + ", ".join(d.key for d in unverifiable), markup=False, highlight=False)
        if outcome.ok:
            out.print("read back: no drift", markup=False)
        else:
            out.print(_drift_table([d for d in outcome.drift if d.counts], "read back: drift"))
    if not outcome.ok:
        err.print(f"error: {outcome.mac}: the read-back differs from what was pushed; the new credentials stay "
                  f"pending (the next push resumes them)", markup=False, highlight=False)
        sys.exit(4)


def _fmt_bool(v) -> str:
    return "-" if v is None else ("on" if v else "off")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON array for scripts.")
@click.pass_context
def routers(ctx, as_json: bool):
    """Every router of the inventory: facts (model, firmware, exposure) and drift. Exit 3 if any drifts."""
    if ctx.invoked_subcommand is not None:
        return
    from provisioner import routers as ops
    rt = ctx.obj
    rows = ops.survey(rt, progress=lambda s: err.print(Text(f"  → {s}", style="dim")) if not as_json else None)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        t = Table(title=f"{len(rows)} routers", title_justify="left")
        for col in ("mac", "name", "profile", "model", "firmware", "address", "state", "TR-069", "remote", "UPnP",
                    "drift", "problem"):
            t.add_column(col, overflow="fold")
        for r in rows:
            f = r.facts
            tr069 = f.get("tr069")
            t.add_row(*(Text(str(x)) for x in (
                r.mac, r.name or "-", r.profile, f.get("model") or r.model, f.get("firmware") or "-", r.address,
                r.state, "-" if not tr069 else ("on" if tr069.get("acs_url") else "off"),
                _fmt_bool((f.get("remote_access") or {}).get("enabled")) if f.get("remote_access") else "-",
                _fmt_bool((f.get("upnp") or {}).get("enabled")) if f.get("upnp") else "-",
                r.drift_count, r.error or "")))
        out.print(t)
    if any(r.drift_count or r.error for r in rows):
        ctx.exit(3)


@routers.command("show")
@click.argument("mac")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(rt, mac: str, as_json: bool):
    """One router's facts and drift (read only)."""
    from provisioner import routers as ops
    st = ops.status(rt, mac, progress=(lambda s: err.print(Text(f"  → {s}", style="dim"))) if not as_json else None)
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
    else:
        out.print(f"{st.mac} {st.name or ''} ({st.profile} {st.model}) at {st.address}: state {st.state}",
                  markup=False, highlight=False)
        for k, v in st.facts.items():
            out.print(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}", markup=False, highlight=False)
        if st.error:
            err.print(f"error: {st.error}", markup=False, highlight=False)
        elif st.drift_count:
            out.print(_drift_table([d for d in st.drift if d.counts], "drift"))
        else:
            out.print("no drift", markup=False)
    if st.error or st.drift_count:
        sys.exit(3)


@routers.command("render")
@click.argument("mac")
@click.pass_obj
def render_cmd(rt, mac: str):
    """The files an SSH-managed router gets on `push` (no secret is in them)."""
    from provisioner import routers as ops
    r = ops.resolve_router(rt, mac)
    prof = ops.profile_of(rt, r)
    if not prof.templates:
        err.print(f"{prof.display_name} routers get no files: their settings go over {prof.driver}", markup=False)
        return
    for name, data in ops.render_files(rt, r, prof).items():
        click.echo(f"==> {name} <==")
        click.echo(data.decode())


@routers.command("reboot")
@click.argument("mac")
@click.option("--confirm-timeout", type=Seconds(0.1, 3600), default=None, metavar="S")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reboot_cmd(rt, mac: str, confirm_timeout: float | None, as_json: bool):
    """Restart a router."""
    from provisioner import routers as ops
    _, step = _progress()
    res = ops.reboot(rt, mac, actor(), progress=step, on_confirm=_on_confirm, confirm_timeout=confirm_timeout)
    _action(res, as_json)


@routers.command("reset")
@click.argument("mac")
@click.option("--confirm-timeout", type=Seconds(0.1, 3600), default=None, metavar="S")
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="Do not ask.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reset_cmd(rt, mac: str, confirm_timeout: float | None, assume_yes: bool, as_json: bool):
    """Factory-reset a router, then re-enrol it with `push` (new unique credentials)."""
    from provisioner import routers as ops
    r = ops.resolve_router(rt, mac)
    if not assume_yes and not click.confirm(f"Reset {r.mac} ({r.address}) to factory settings? Its users, "
                                            f"SIP accounts and phones are wiped", err=True):
        err.print("nothing done", markup=False)
        sys.exit(2)
    _, step = _progress()
    res = ops.reset(rt, mac, actor(), progress=step, on_confirm=_on_confirm, confirm_timeout=confirm_timeout)
    _action(res, as_json)


@routers.command("forget-key")
@click.argument("mac")
@click.pass_obj
def forget_key_cmd(rt, mac: str):
    """Forget a router's pinned SSH host key / TLS certificate: the next contact pins what it shows.
    Only after checking the new fingerprint on site."""
    from provisioner import routers as ops
    done = ops.forget_key(rt, mac, actor())
    out.print(f"{mac}: " + (f"forgot its pinned {', '.join(done)}; the next contact pins again" if done
                            else "nothing pinned"), markup=False, highlight=False)


def _action(res, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res.as_dict(), indent=2))
        return
    out.print(f"{res.mac}: {res.action}: {res.message} (state {res.state})", markup=False, highlight=False)
    if res.instructions:
        out.print(f"Next: {res.instructions}", markup=False, highlight=False)
