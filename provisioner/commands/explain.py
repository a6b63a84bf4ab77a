"""`provisioner explain MAC`: why a phone got what it got (the technician's "it gets a 404" question).

Read-only: the inventory entry, the store's state, how the device was identified (fingerprint of its
last request, discovery observations) and its recent requests, each with the server's reason and a hint
for what to do about it. Never a secret: the store's rows hold none that this reads.
"""

from __future__ import annotations

import json

import click
import sqlalchemy as sa
from rich.table import Table

from provisioner.cli import cli, out
from provisioner.errors import InputError
from provisioner.fingerprint import Evidence, identify
from provisioner.macaddr import normalize_mac
from provisioner.store.observations import for_mac as observations_for
from provisioner.store.schema import fetch_events

# (status, pattern in the server's reason) -> what a technician should do; first match wins
HINTS: list[tuple[int, str, str]] = [
    (404, "no vendor profile asks", "no vendor profile knows this file name: check the phone's provisioning "
                                    "URL, or add the file to vendors/<vendor>.yaml"),
    (404, "not a plain file name", "the phone asked for a path, not a file name: fix its provisioning URL"),
    (404, "TFTP is off", "the site's policy has tftp: off; point the phone at HTTPS (DHCP option 66 / SIP PnP)"),
    (404, "no TFTP bootstrap", "this vendor gets no TFTP bootstrap for this file; use HTTPS"),
    (401, "unknown device", "this MAC is not in inventory.yaml: `provisioner adopt MAC --site S --line EXT`"),
    (401, "not yet synced", "in inventory.yaml but not in the store: restart or reload `serve` to enrol it"),
    (401, "enrolment conflict", "locked by an enrolment conflict: another device holds this one's credentials, "
                                "or this one is not the real phone; see the conclusion"),
    (401, "locked", "locked after a security event: `provisioner unlock MAC` once checked"),
    (401, "decommissioned", "decommissioned: refused on purpose; adopt it again to reuse it"),
    (401, "client certificate", "the site requires a client certificate naming this MAC"),
    (401, "window is closed", "no credentials and no open enrolment window: `provisioner reset MAC` reopens "
                              "it (after a factory reset the phone has lost its provisioning password)"),
    (401, "window expired", "the enrolment window expired before the phone fetched: `provisioner reset MAC`"),
    (401, "outside site", "the request came from outside the site's networks: check sites.<site>.networks"),
    (401, "already used", "the enrolment was used by another request: if that was not this phone, "
                          "`provisioner credentials revoke MAC` and `provisioner reset MAC`"),
    (401, "user-agent", "the User-Agent does not fit the vendor, model family or MAC of the file: wrong "
                        "vendor/model in inventory.yaml, old firmware that leaves its MAC out, or someone else "
                        "asking for this phone's file"),
    (401, "banned", "the source address is banned after repeated failures: inside a site it still gets the "
                    "challenge and authenticated fetches work, enrolment waits for the ban to end"),
    (401, "stale nonce", "a normal digest round-trip (the phone retries with a fresh nonce); many in a row from "
                         "another address than the phone's: a captured request replayed"),
    (401, "window is open for", "the window reopened by a remote reset accepts the device's last known address "
                                "only: `provisioner reset MAC --enrol-from ADDRESS|site` if the phone moved"),
    (401, "digest credentials refused", "wrong provisioning credentials: the phone holds old ones; "
                                        "`provisioner reset MAC` reopens enrolment"),
    (401, "", "refused without credentials; the phone normally retries with digest auth"),
    (403, "", "the source address is banned after repeated failures; the ban lifts by itself"),
    (429, "", "too many failed requests from this source; it may retry later (Retry-After)"),
    (500, "", "the config could not be rendered: run `provisioner check` and `provisioner render MAC`"),
    (503, "registrar", "its registrar does not hold the SIP passwords of that config, so it was not handed out "
                       "(the phone retries): fix the registrar (`provisioner check`), then `provisioner registrar "
                       "sync`"),
]


def hint_for(status: int, reason: str) -> str | None:
    low = (reason or "").lower()
    for st, pat, text in HINTS:
        if st == status and pat.lower() in low:
            return text
    return None


def _mac_forms(mac: str) -> list[str]:
    """How a MAC appears in requested file names: 805ec0123456, 805EC0123456, 80-5e-c0-12-34-56 …"""
    pairs = [mac[i:i + 2] for i in range(0, 12, 2)]
    forms = {mac, mac.upper()}
    for sep in (":", "-"):
        forms |= {sep.join(pairs), sep.join(pairs).upper()}
    return sorted(forms)


def recent_requests(engine: sa.Engine, mac: str, limit: int) -> list[dict]:
    """Requests naming this MAC: those matched to the device and those that named it in the file name or
    User-Agent while it was unknown (the store records no MAC for those)."""
    fe = fetch_events.c
    conds = [fe.mac == mac]
    for f in _mac_forms(mac):
        conds += [fe.filename.contains(f, autoescape=True), fe.user_agent.contains(f, autoescape=True)]
    q = sa.select(fetch_events).where(sa.or_(*conds)).order_by(fe.id.desc()).limit(limit)
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(q)]


def explain_device(rt, mac: str, limit: int = 10) -> dict:
    inv_dev = rt.inventory.device(mac)
    catalog = rt.catalog
    st = rt.store.device(mac)
    fetches = recent_requests(rt.store.engine, mac, limit)
    obs = observations_for(rt.store.engine, mac, limit=5)
    result: dict = {"mac": mac, "inventory": None, "state": None, "identified": [], "requests": [],
                    "observations": obs, "conclusion": []}
    if inv_dev is not None:
        vendor = catalog.get(inv_dev.vendor)
        result["inventory"] = {"vendor": inv_dev.vendor, "model": inv_dev.model, "site": inv_dev.site,
                               "lines": [ln.extension for ln in inv_dev.lines],
                               "files": [f.name for f in vendor.files if "{mac}" in f.name.lower()]}
    if st is not None:
        result["state"] = {"state": st.state, "generation": st.generation,
                           "enrolment_window_until": st.enrol_expires_at.isoformat() if st.enrol_expires_at else None,
                           "enrolled_at": st.enrolled_at.isoformat() if st.enrolled_at else None,
                           "last_seen": st.last_seen.isoformat() if st.last_seen else None,
                           "last_ip": st.last_ip, "last_user_agent": st.last_ua,
                           "config_current": bool(st.served_hash and st.served_hash == st.desired_hash),
                           "rotation_pending": bool(st.pending_hash), "lock_reason": st.lock_reason}
        if inv_dev is not None:  # what the registrar really holds, not what was written to it
            from provisioner.registrar.verify import holdings
            h = holdings(rt, [mac]).get(mac)
            result["state"]["registrar"] = {"status": h.status, "registrar": h.registrar, "detail": h.detail} \
                if h else None
    idents = [identify(catalog, Evidence(user_agent=r["user_agent"], filename=r["filename"])) for r in fetches]
    for r, ident in zip(fetches, idents):
        row = {"at": r["at"].isoformat() if r["at"] else None, "source_ip": r["source_ip"],
               "transport": r["transport"], "file": r["filename"], "status": r["status"],
               "reason": r["reason"], "user_agent": r["user_agent"], "counted": bool(r.get("counted")),
               "identified": {"vendor": ident.vendor, "model": ident.model, "firmware": ident.firmware,
                              "mac": ident.mac, "score": ident.score},
               "conflicts": ident.conflicts, "hint": hint_for(r["status"], r["reason"])}
        if inv_dev is not None and ident.vendor and ident.vendor != inv_dev.vendor:
            row["conflicts"] = row["conflicts"] + [
                f"the request looks like {ident.vendor}, the inventory says {inv_dev.vendor}"]
        result["requests"].append(row)
    # identification: inventory first, then what the device itself says, then discovery
    if inv_dev is not None:
        result["identified"].append(f"inventory.yaml says {inv_dev.vendor} {inv_dev.model} at site {inv_dev.site}")
    ident = next((i for r, i in zip(fetches, idents) if r["user_agent"] or r["filename"]), None)
    if ident is not None:
        result["identified"].append(
            f"its last request: {ident.vendor or 'unknown vendor'} {ident.model or ''} "
            f"{('firmware ' + ident.firmware) if ident.firmware else ''} (score {ident.score})".replace("  ", " "))
        result["identified"] += [f"  {why}" for why in ident.reasons]
        result["identified"] += [f"  conflict: {c}" for c in ident.conflicts]
    else:
        ident = identify(catalog, Evidence(mac=mac))
        if ident.vendor:
            result["identified"].append(f"by its OUI only: {ident.vendor} (score {ident.score})")
    for o in obs[:3]:
        result["identified"].append(f"discovery ({o.get('found_by')}) saw {o.get('vendor') or '?'} "
                                    f"{o.get('model') or ''} at {o.get('ip') or '?'}")
    if mac in rt.inventory.routers:  # routers are driven by push, not fetched from us
        r = rt.inventory.routers[mac]
        result["inventory"] = {"vendor": r.profile, "model": r.model, "site": r.site, "lines": [], "files": []}
        result["conclusion"] = [f"a router ({r.profile} at {r.address}): `provisioner routers show {mac}` reads it "
                                f"back, `provisioner push {mac}` provisions it"]
        return result
    result["conclusion"] = _conclude(result, inv_dev, st)
    return result


def _conclude(res: dict, inv_dev, st) -> list[str]:
    says: list[str] = []
    if inv_dev is None:
        says.append("not in inventory.yaml: every request for its own file gets the same 401 as a stranger's; "
                    "`provisioner adopt MAC` adds it (vendor/model from discovery if it was seen)")
    elif st is None:
        says.append("in inventory.yaml but not in the store yet: the next `serve` start (or reload) enrols it")
    else:
        if st.state == "locked" and (st.lock_reason or "").startswith("enrolment conflict"):
            says.append(f"{st.lock_reason}. An enrolment conflict: the device that enrolled from "
                        f"{st.enrolled_from or '?'} holds the credentials, and another one asks for its config "
                        f"without them. Find the real phone: if it is the enrolled one, `provisioner unlock MAC`; "
                        f"otherwise `provisioner reset MAC --enrol-from <its address>` (new credentials, the "
                        f"window open for that address only)")
        elif st.state == "locked":
            says.append(f"locked ({st.lock_reason or 'security event'}): `provisioner unlock MAC` when checked")
        elif st.state == "decommissioned":
            says.append("decommissioned: refused on purpose")
        elif st.state == "enrolling":
            reg = (res["state"] or {}).get("registrar") or {}
            says.append("enrolment window open: its first fetch from the site's networks gets its credentials"
                        + (" once its registrar holds them" if reg.get("status") in ("not held", "unreachable")
                           else ""))
        if st.pending_hash:
            says.append("a credential rotation waits for the device to fetch its new config (old one still works)")
        if st.last_seen is None:
            says.append("it never fetched its config from us")
        reg = (res["state"] or {}).get("registrar")
        if reg and reg["status"] in ("not held", "unreachable"):
            says.append(f"its registrar{' ' + reg['registrar'] if reg['registrar'] else ''} does not accept its "
                        f"current SIP password ({reg['detail']}): it cannot register, and a config it does not "
                        f"hold yet is not handed out (503); fix the registrar (`provisioner check`), then "
                        f"`provisioner registrar sync`")
    if not res["requests"]:
        says.append("no request from it is on record: check DHCP option 66 / SIP PnP / its provisioning URL")
    else:
        last = res["requests"][0]
        if last["status"] >= 400 and last["hint"]:
            says.append(f"its last request got {last['status']}: {last['hint']}")
    return says


@cli.command()
@click.argument("mac")
@click.option("--limit", type=click.IntRange(1, 500), default=10, show_default=True, help="Recent requests to show.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def explain(rt, mac: str, limit: int, as_json: bool):
    """How a device was identified, its recent requests, and why each got what it got."""
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise InputError(f"{mac!r}: {e}") from None
    res = explain_device(rt, mac, limit)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
        return
    inv = res["inventory"]
    head = f"{mac}: " + (f"{inv['vendor']} {inv['model']}, site {inv['site']}, lines {', '.join(inv['lines'])}"
                         if inv else "not in inventory.yaml")
    if res["state"]:
        s = res["state"]
        head += f"; state {s['state']} (credential generation {s['generation']})"
        head += "; config current" if s["config_current"] else "; config not fetched since it last changed"
        reg = s.get("registrar")
        if reg and reg["status"] not in ("none", "decommissioned"):
            head += ("; registrar holds its SIP password" if reg["status"] == "held"
                     else f"; registrar does NOT hold its SIP password ({reg['status']})")
    out.print(head, markup=False, highlight=False)
    out.print("identified:", markup=False)
    for line in res["identified"] or ["nothing identifies it yet"]:
        out.print(f"  {line}", markup=False, highlight=False)
    if res["requests"]:
        t = Table(title=f"last {len(res['requests'])} requests (newest first)", title_justify="left")
        for col in ("at", "from", "via", "file", "answer", "why", "what to do"):
            t.add_column(col, overflow="fold")
        for r in res["requests"]:
            why = r["reason"] + "".join(f"; {c}" for c in r["conflicts"])
            if r["counted"]:
                why += " (counted against the source)"
            t.add_row((r["at"] or "")[:19], r["source_ip"], r["transport"], r["file"], str(r["status"]), why,
                      r["hint"] or "")
        out.print(t)
    out.print("conclusion:", markup=False)
    for line in res["conclusion"] or ["nothing wrong on record"]:
        out.print(f"  {line}", markup=False, highlight=False)

