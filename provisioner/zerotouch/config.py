"""The optional `zero_touch:` section of inventory.yaml: where the vendor redirection services are and how to
reach them. No secret lives here: the service keys come from the environment or a credentials file.

    zero_touch:
      redirect:
        yealink-rps:
          server_name: acme-provisioner          # the RPS "server" entry the devices are attached to
          credentials_file: /etc/provisioner/yealink-rps.env   # or the environment (below)
        snom-sraps:
          company: 708eb208e44d412dacf5fcf5230ccf1c            # your SRAPS company id
          profiles: {lab: 3c1f…}                 # per site: a SRAPS provisioning profile whose setting_server
                                                 # is that site's provisioning URL
          credentials_file: /etc/provisioner/snom-sraps.env

A credentials file holds KEY=VALUE lines (mode 0600, refused otherwise); the same names are read from the
environment when no file is named:

    yealink-rps:  YEALINK_RPS_ACCESS_KEY_ID, YEALINK_RPS_ACCESS_KEY_SECRET
    snom-sraps:   SNOM_SRAPS_HAWK_ID, SNOM_SRAPS_HAWK_KEY
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from provisioner.errors import InputError
from provisioner.secret import Secret

_HTTPS = r"^https://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/\-]*)?$"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _ident(v: str) -> str:
    if not _ID.match(v):
        raise ValueError("letters, digits, _ and - (1-64)")
    return v


Ident = Annotated[str, AfterValidator(_ident)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServiceConfig(_Strict):
    credentials_file: str | None = None  # relative to the inventory
    ca_file: str | None = None  # a CA bundle to trust instead of the system's (a test stand-in, a proxy)
    timeout: float = Field(default=15.0, gt=0, le=120)


class YealinkRpsConfig(ServiceConfig):
    # "Yealink Json API for RPS Management Platform" §1.1: https://api-dm.yealink.com:8443
    api: Annotated[str, Field(pattern=_HTTPS)] = "https://api-dm.yealink.com:8443"
    # §4.4: server names are unique across all enterprises of RPS; 20 characters at most [U]
    server_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,20}$")] = "provisioner"


class SnomSrapsConfig(ServiceConfig):
    # service.snom.com "REST API": the reference lives on the SRAPS portal; base as Snom's clients use it
    api: Annotated[str, Field(pattern=_HTTPS)] = "https://secure-provisioning.snom.com/api/v1"
    company: Ident
    profiles: dict[str, Ident] = Field(default_factory=dict)  # site -> provisioning profile id


class RedirectSection(_Strict):
    yealink_rps: YealinkRpsConfig | None = Field(default=None, alias="yealink-rps")
    snom_sraps: SnomSrapsConfig | None = Field(default=None, alias="snom-sraps")

    def for_service(self, service: str) -> ServiceConfig | None:
        return {"yealink-rps": self.yealink_rps, "snom-sraps": self.snom_sraps}.get(service)


class ZeroTouchConfig(_Strict):
    redirect: RedirectSection = RedirectSection()


CREDENTIAL_NAMES = {
    "yealink-rps": ("YEALINK_RPS_ACCESS_KEY_ID", "YEALINK_RPS_ACCESS_KEY_SECRET"),
    "snom-sraps": ("SNOM_SRAPS_HAWK_ID", "SNOM_SRAPS_HAWK_KEY"),
}


def load_credentials(service: str, cfg: ServiceConfig | None, base: Path) -> tuple[Secret, Secret]:
    """(id, secret) of a service: from its credentials file, else from the environment. Never printed."""
    id_name, secret_name = CREDENTIAL_NAMES[service]
    values: dict[str, str] = {}
    where = "the environment"
    if cfg is not None and cfg.credentials_file:
        path = (base / cfg.credentials_file).resolve()
        where = str(path)
        try:
            st = path.stat()
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise InputError(f"{service}: credentials file {path} is readable by others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
            text = path.read_text()
        except OSError as e:
            raise InputError(f"{service}: credentials file {path}: {e.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            k, eq, v = line.partition("=")
            if not eq:
                raise InputError(f"{path}:{n}: expected NAME=VALUE")  # the line itself may be a secret
            values[k.strip()] = v.strip().strip('"').strip("'")
    else:
        values = {k: os.environ[k] for k in (id_name, secret_name) if os.environ.get(k)}
    missing = [k for k in (id_name, secret_name) if not values.get(k)]
    if missing:
        raise InputError(f"{service}: no credentials: set {' and '.join(missing)} in {where}")
    return Secret(values[id_name]), Secret(values[secret_name])
