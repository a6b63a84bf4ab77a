"""`provisioner api tokens create|list|revoke`: bearer tokens of the helpdesk API (design.md §2, issue 6)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from provisioner.cli import actor, cli, err, out


@cli.group("api")
def api_group():
    """Helpdesk API (served by `serve --api HOST:PORT`): bearer tokens."""


@api_group.group("tokens")
def tokens():
    """Create, list and revoke API tokens (viewer < helpdesk < admin)."""


def _iso(v) -> str | None:
    return v.isoformat(timespec="seconds") if v else None


@tokens.command("create")
@click.option("--role", type=click.Choice(["viewer", "helpdesk", "admin"]), required=True,
              help="viewer: read; helpdesk: also reprovision/reset/unlock; admin: also manage tokens.")
@click.option("--name", default=None, help="Who uses it; the audit log names them api:NAME (default: ROLE-xxxxxx).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (id, name, role, token) for scripts.")
@click.pass_obj
def create(rt, role: str, name: str | None, as_json: bool):
    """Create a token; it is printed this once and stored only as a hash."""
    from provisioner.api import auth
    row, token = auth.create_token(rt.store, role, name, actor())
    if as_json:
        click.echo(json.dumps({"id": row["id"], "name": row["name"], "role": row["role"], "token": token}))
        return
    err.print(f"created API token {row['id']} ({row['name']}, {row['role']}). It is shown only this once: "
              f"store it now (revoke with: provisioner api tokens revoke {row['id']}).", markup=False,
              highlight=False)
    click.echo(token)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(rt, as_json: bool):
    """Every token with its role and use; never the token itself."""
    from provisioner.api import auth
    rows = auth.list_tokens(rt.store)
    if as_json:
        click.echo(json.dumps([{k: _iso(v) if k.endswith("_at") else v for k, v in r.items()} for r in rows],
                              indent=2))
        return
    t = Table(title=f"{len(rows)} API tokens", title_justify="left")
    for col in ("id", "name", "role", "created", "by", "last used", "revoked"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["id"]), r["name"], r["role"], _iso(r["created_at"]), r["created_by"],
                  _iso(r["last_used_at"]) or "never", _iso(r["revoked_at"]) or "-")
    out.print(t)


@tokens.command("revoke")
@click.argument("token_id", type=click.IntRange(1, 2**63 - 1))
@click.pass_obj
def revoke(rt, token_id: int):
    """Revoke a token at once; its jobs that have not started are cancelled."""
    from provisioner.api import auth
    row, changed = auth.revoke_token(rt.store, token_id, actor())
    out.print(f"{'revoked' if changed else 'already revoked:'} API token {row['id']} ({row['name']}, {row['role']})",
              markup=False, highlight=False)
