"""Lifecycle commands: unlock, reset, decommission, credentials revoke/reveal, otp enroll."""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict

import click

from provisioner import operations as ops
from provisioner.cli import actor, cli, out


def _show(res, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(asdict(res), indent=2))
        return
    out.print(f"{res.mac}: {res.previous_state} -> {res.state}. {res.message}", markup=False, highlight=False)
    if res.instructions:
        out.print(f"On site: {res.instructions}", markup=False, highlight=False)


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
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reset(rt, mac, why, as_json):
    """Factory-reset workflow: rotate every secret, reopen the enrolment window, guide the reset."""
    _show(ops.reset(rt, mac, actor(), why), as_json)


@cli.command()
@click.argument("mac")
@click.option("--why", default="decommissioned", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def decommission(rt, mac, why, as_json):
    """Revoke everything and refuse the device from now on."""
    _show(ops.decommission(rt, mac, actor(), why), as_json)


@cli.group()
def credentials():
    """Revoke a device's credentials at once, or reveal them with a second factor."""


@credentials.command("revoke")
@click.argument("mac")
@click.option("--why", default="credentials revoked", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def revoke(rt, mac, why, as_json):
    """New credentials now; the old ones are refused at once (the device enrols again)."""
    _show(ops.revoke(rt, mac, actor(), why), as_json)


@credentials.command("reveal")
@click.argument("mac")
@click.option("--otp", "code", required=True, metavar="CODE", help="The current code of your authenticator.")
@click.option("--operator", default=None, help="Whose second factor (default: your user name).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reveal(rt, mac, code, operator, as_json):
    """Show a device's current secrets (audited; needs a valid one-time code)."""
    from provisioner import otp
    operator = operator or getpass.getuser()
    dev = ops.resolve_mac(rt, mac)
    otp.verify(rt, operator, code)  # raises OtpRefused: exit 5
    st = rt.store.device(dev.mac)
    status = "pending" if st is not None and st.pending_hash else "active"
    secrets = rt.store.credentials(dev.mac, status)
    rt.store.audit(f"cli:{operator}", "credentials.revealed", dev.mac, "revealed with a second factor",
                   {"names": sorted(secrets), "generation_status": status})
    if as_json:
        click.echo(json.dumps({"mac": dev.mac, "status": status,
                               "credentials": {n: s.reveal() for n, s in sorted(secrets.items())}}, indent=2))
        return
    for name, secret in sorted(secrets.items()):
        click.echo(f"{name}\t{secret.reveal()}")


@cli.group()
def otp():
    """The second factor that `credentials reveal` asks for."""


@otp.command("enroll")
@click.option("--operator", default=None, help="Default: your user name.")
@click.pass_obj
def otp_enroll(rt, operator):
    """Create your TOTP seed and show the otpauth:// URI to add to an authenticator app."""
    from provisioner import otp as otp_mod
    operator = operator or getpass.getuser()
    uri = otp_mod.enroll(rt, operator)
    click.echo(uri)
    out.print("Add it to your authenticator (or paste the URI into one that accepts it); the seed is "
              "kept sealed under --home and shown only now.", markup=False)
