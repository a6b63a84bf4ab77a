"""Bearer tokens for the helpdesk API: random, shown once, stored as SHA-256, with a role.

Roles are ordered: viewer (read) < helpdesk (also trigger jobs) < admin (also manage tokens).
No role can read a device secret: the API has no endpoint that returns one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from provisioner.errors import InputError
from provisioner.store import Store, as_utc, utcnow
from provisioner.store.api_schema import api_jobs, api_tokens

ROLES = {"viewer": 1, "helpdesk": 2, "admin": 3}
PREFIX = "pvk_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,59}\Z")
TOUCH_EVERY = dt.timedelta(minutes=1)  # last_used_at is refreshed at most this often (no write per request)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"api:{self.name}"

    def allows(self, role: str) -> bool:
        return ROLES[self.role] >= ROLES[role]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)  # 256 bits: a plain SHA-256 at rest is enough


def _row(r) -> dict:
    return {"id": r.id, "name": r.name, "role": r.role, "created_at": as_utc(r.created_at),
            "created_by": r.created_by, "last_used_at": as_utc(r.last_used_at), "revoked_at": as_utc(r.revoked_at)}


def create_token(store: Store, role: str, name: str | None, actor: str) -> tuple[dict, str]:
    """A new token; returns (its row, the token). The token itself is never stored nor logged."""
    if role not in ROLES:
        raise InputError(f"--role: one of {', '.join(ROLES)}")
    if name is None:
        name = f"{role}-{secrets.token_hex(3)}"
    if not NAME.match(name):
        raise InputError("--name: 1-60 characters of letters, digits and . _ @ -, starting with a letter or digit")
    token = new_token()
    now = utcnow()
    with store.write() as c:
        taken = c.execute(sa.select(api_tokens.c.id).where(api_tokens.c.name == name,
                                                          api_tokens.c.revoked_at.is_(None))).first()
        if taken:
            raise InputError(f"--name: an active token is already called {name!r} (token {taken.id})")
        res = c.execute(api_tokens.insert().values(name=name, role=role, token_hash=token_hash(token),
                                                   created_at=now, created_by=actor[:64]))
        tid = res.inserted_primary_key[0]
        store.append_audit(c, actor, "api.token.created", None, "API token created",
                           {"token_id": tid, "name": name, "role": role}, now)
        row = c.execute(sa.select(api_tokens).where(api_tokens.c.id == tid)).one()
    return _row(row), token


def list_tokens(store: Store) -> list[dict]:
    with store.engine.connect() as c:
        return [_row(r) for r in c.execute(sa.select(api_tokens).order_by(api_tokens.c.id))]


def revoke_token(store: Store, token_id: int, actor: str) -> tuple[dict, bool]:
    """(row, True) when this call revoked it; (row, False) when it already was. Unknown id: InputError.

    Its jobs that have not started yet are cancelled; a running one finishes."""
    now = utcnow()
    with store.write() as c:
        r = c.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        if r is None:
            raise InputError(f"no API token {token_id}")
        if r.revoked_at is not None:
            return _row(r), False
        c.execute(api_tokens.update().where(api_tokens.c.id == token_id).values(revoked_at=now))
        cancelled = c.execute(api_jobs.update().where(api_jobs.c.token_id == token_id, api_jobs.c.status == "queued")
                              .values(status="failed", finished_at=now,
                                      error="cancelled: its token was revoked before it started")).rowcount
        store.append_audit(c, actor, "api.token.revoked", None, "API token revoked",
                           {"token_id": token_id, "name": r.name, "role": r.role, "queued_jobs_cancelled": cancelled},
                           now)
        r = c.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).one()
    return _row(r), True


def authenticate(store: Store, presented: str | None) -> TokenInfo | None:
    """The active token matching `presented`, or None. Looked up by hash, compared in constant time."""
    if not presented or len(presented) > 512:
        return None
    h = token_hash(presented)
    with store.engine.connect() as c:
        r = c.execute(sa.select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.token_hash,
                                api_tokens.c.last_used_at)
                      .where(api_tokens.c.token_hash == h, api_tokens.c.revoked_at.is_(None))).first()
    if r is None or not hmac.compare_digest(r.token_hash, h) or r.role not in ROLES:
        return None
    now = utcnow()
    last = as_utc(r.last_used_at)
    if last is None or now - last > TOUCH_EVERY:
        with store.write() as c:
            c.execute(api_tokens.update().where(api_tokens.c.id == r.id).values(last_used_at=now))
    return TokenInfo(r.id, r.name, r.role)
