"""Lifecycle commands: unlock, reset, decommission, credentials revoke/reveal, otp enroll, registrar list/sync.

Exit codes (design.md §2): 0 done, 2 bad input, 4 the device did not confirm in time, 5 one-time code
refused; 1 when the registrar could not be written (the store is changed; `registrar sync` retries).
"""

from __future__ import annotations

import getpass
import json
import sys
from dataclasses import asdict

import click
from rich.table import Table

from provisioner import operations as ops
from provisioner.cli import Seconds, actor, cli, err, out
from provisioner.errors import InputError


def _show(res, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(asdict(res), indent=2))
    else:
        out.print(f"{res.mac}: {res.previous_state} -> {res.state}. {res.message}", markup=False, highlight=False)
        if res.notify:
            out.print(f"SIP NOTIFY: {res.notify}", markup=False, highlight=False)
        if res.instructions:
            out.print(f"On site: {res.instructions}", markup=False, highlight=False)
    _registrar_failed(res)


def _registrar_failed(res) -> None:
    """The store changed but the registrar was not written: say so, exit 1 (`registrar sync` retries)."""
    if getattr(res, "registrar_error", None):
        err.print(f"error: {res.registrar_error}", markup=False, highlight=False)
        sys.exit(1)


@cli.command()
@click.argument("mac")
@click.option("--why", default="unlocked by the helpdesk", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def unlock(rt, mac, why, as_json):
    """Let a locked device fetch its config again (after checking why it was locked)."""
    _show(ops.unlock(rt, mac, actor(), why), as_json)


@cli.command()
@click.argument("mac")
@click.option("--why", default="factory reset requested", show_default=True)
@click.option("--wait", "wait", type=Seconds(0, 86400), default=None, metavar="S",
              help="Wait up to S seconds for the device to come back and enrol (exit 4 if it does not).")
@click.option("--enrol-from", "enrol_from", default="last", show_default=True, metavar="last|site|ADDRESS",
              help="Where the reopened window accepts the device from: its last known address, any address "
                   "of its site, or this address.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reset(rt, mac, why, wait, enrol_from, as_json):
    """Factory-reset workflow: rotate every secret, reopen the enrolment window, reset the device remotely
    where its vendor allows it, otherwise print how to reset it by hand. A router is reset over its
    management interface (TR-064, SSH) and re-enrolled by the next `push`."""
    from provisioner.routers import router_mac
    router = router_mac(rt, mac)
    if router:
        from provisioner.commands.routers import reset_cmd
        return click.get_current_context().invoke(reset_cmd, mac=router, confirm_timeout=None, assume_yes=True,
                                                  as_json=as_json)
    res = ops.reset(rt, mac, actor(), why, enrol_from=enrol_from)
    if not as_json:
        _show(res, False)
    elif res.registrar_error:
        _show(res, True)
    if wait:
        if not as_json:
            err.print(f"waiting up to {wait:g} s for {res.mac} to come back and enrol …", markup=False)
        res.confirmed = ops.wait_for_enrolment(rt, res.mac, wait)
        res.state = rt.store.device(res.mac).state
        if res.confirmed and not as_json:
            out.print(f"{res.mac}: came back and enrolled ({res.state}).", markup=False, highlight=False)
    if as_json:
        _show(res, True)
    if wait and not res.confirmed:
        err.print(f"error: {res.mac} did not come back and enrol within {wait:g} s", markup=False)
        sys.exit(4)


@cli.command()
@click.argument("mac")
@click.option("--why", default="decommissioned", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def decommission(rt, mac, why, as_json):
    """Revoke everything (server and registrar) and refuse the device from now on."""
    _show(ops.decommission(rt, mac, actor(), why), as_json)


@cli.group()
def credentials():
    """Revoke a device's credentials at once, or reveal them with a second factor."""


@credentials.command("revoke")
@click.argument("mac")
@click.option("--why", default="credentials revoked", show_default=True)
@click.option("--enrol-from", "enrol_from", default="last", show_default=True, metavar="last|site|ADDRESS",
              help="Where the reopened window accepts the device from: its last known address, any address "
                   "of its site, or this address.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def revoke(rt, mac, why, enrol_from, as_json):
    """New credentials now; the old ones are refused at once by the server and the registrar, and the
    phone is told to fetch (it enrols again from its last known address, unless --enrol-from says otherwise)."""
    _show(ops.revoke(rt, mac, actor(), why, enrol_from=enrol_from), as_json)


@credentials.command("reveal")
@click.argument("mac")
@click.option("--otp", "code", required=True, metavar="CODE", help="The current code of your authenticator.")
@click.option("--operator", default=None, help="Whose second factor (default: your user name).")
@click.option("--why", default="revealed with a second factor", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reveal(rt, mac, code, operator, why, as_json):
    """Show a device's current secrets on stdout (audited; needs a valid one-time code, exit 5 if not)."""
    operator = operator or getpass.getuser()
    res = ops.reveal_credentials(rt, mac, operator, code, actor=f"cli:{operator}", why=why)
    if as_json:
        payload = {"mac": res.mac, "generation": res.generation,
                   "credentials": {n: s.reveal() for n, s in sorted(res.credentials.items())}}
        if res.pending:
            payload["pending_generation"] = res.pending_generation
            payload["pending"] = {n: s.reveal() for n, s in sorted(res.pending.items())}
        click.echo(json.dumps(payload, indent=2))
        return
    for name, secret in sorted(res.credentials.items()):
        click.echo(f"{name}\t{secret.reveal()}")
    for name, secret in sorted(res.pending.items()):
        click.echo(f"pending:{name}\t{secret.reveal()}")


@cli.group()
def otp():
    """The second factor that `credentials reveal` asks for."""


def _terminal_qr(text: str) -> str | None:
    """A QR code drawn with block characters, when a QR library happens to be installed."""
    try:
        import segno  # type: ignore
        import io
        buf = io.StringIO()
        segno.make(text, error="m").terminal(out=buf, compact=True)
        return buf.getvalue()
    except ImportError:
        pass
    try:
        import io

        import qrcode  # type: ignore
        q = qrcode.QRCode(border=1)
        q.add_data(text)
        buf = io.StringIO()
        q.print_ascii(out=buf, invert=True)
        return buf.getvalue()
    except ImportError:
        return None


@otp.command("enroll")
@click.option("--operator", default=None, help="Default: your user name.")
@click.pass_obj
def otp_enroll(rt, operator):
    """Create your TOTP seed (sealed in the store) and show the otpauth:// URI for an authenticator app."""
    operator = operator or getpass.getuser()
    res = ops.otp_enroll(rt, operator, actor=actor())
    click.echo(res.uri)
    if sys.stdout.isatty():
        qr = _terminal_qr(res.uri)
        if qr:
            click.echo(qr)
    err.print("Add it to your authenticator (scan the QR or paste the URI); the seed is kept sealed in the store "
              "and shown only now.", markup=False)


@cli.group()
def registrar():
    """The registrars of the inventory's sites (Kamailio, Asterisk, FRITZ!Box): what they hold."""


@registrar.command("sync")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def registrar_sync(rt, as_json):
    """Bring every registrar in line with the credentials the devices hold (repairs writes and switches
    that were cut short; removes the accounts provisioner wrote that no device owns any more); exit 1 if a
    registrar could not be written."""
    from provisioner.registrar import acl
    ops.sync_inventory(rt, actor())
    rep = ops.reconcile(rt, actor=actor(), sweep=True)
    acls = acl.export(rt, actor())
    for a in acls:  # on stderr: --json's stdout stays the list of device repairs
        err.print(f"access list of {a.registrar}: {a.outcome} ({', '.join(a.networks) or 'no network'}; "
                  f"sites {', '.join(a.sites)})", markup=False, highlight=False)
    rows = [asdict(r) for r in rep.repairs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        out.print("every registrar holds what its devices hold", markup=False)
    else:
        t = Table(title=f"{len(rows)} devices", title_justify="left")
        for col in ("mac", "action", "detail"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["mac"], r["action"], r["detail"])
        out.print(t)
    if rep.failed or any(a.outcome.startswith("failed") for a in acls):
        sys.exit(1)


@registrar.command("list")
@click.option("--site", default=None, help="Only this site's registrar.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def registrar_list(rt, site, as_json):
    """Accounts on each registrar, the device (and generation) they belong to, and whether the registrar
    takes that device's current SIP password; accounts the inventory expects but the registrar lacks, and
    accounts provisioner wrote that no device owns any more. No passwords. Exit 1 if a registrar could
    not be read."""
    from provisioner.registrar.verify import account_rows
    if site is not None and site not in rt.inventory.sites:
        raise InputError(f"unknown site {site!r} (known: {', '.join(sorted(rt.inventory.sites)) or 'none'})")
    ops.sync_inventory(rt, actor())
    rows, errors = account_rows(rt, site)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        t = Table(title=f"{len(rows)} registrar accounts", title_justify="left")
        for col in ("registrar", "user", "domain", "device", "generation", "status"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["registrar"], r["username"], r["domain"] or "",
                      r["device"] or (f"(was {r['written_for']})" if r["written_for"] else "(no inventory line)"),
                      str(r["held_generation"] or "-"), r["status"])
        out.print(t)
    for where, problem in errors:
        err.print(f"error: {where}: {problem}", markup=False, highlight=False)
    if errors:
        err.print("error: the accounts above are not the whole picture; fix the registrar (provisioner check)",
                  markup=False, highlight=False)
        sys.exit(1)
    if any(r["status"] != "held" for r in rows):
        err.print("some accounts are not what the devices hold: provisioner registrar sync", markup=False)
