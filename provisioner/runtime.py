"""Where things live (--home, --inventory, --state) and the loaded pieces every entry point shares."""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import make_url

from provisioner.crypto import Keyring, load_or_create_key
from provisioner.errors import InputError, StateError, first_line, os_message
from provisioner.inventory import Inventory, load_inventory
from provisioner.render import Renderer
from provisioner.store import Store
from provisioner.vendors import Catalog, load_catalog

ROOT = Path(__file__).resolve().parent.parent


def vendors_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_VENDORS", ROOT / "vendors"))


def templates_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_TEMPLATES", ROOT / "templates"))


def secure_home(home: Path) -> Path:
    """--home holds the master key, the CA key and the database: 0700, created if missing."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    return home


def state_label(url: str) -> str:
    """The state database's URL as an operator may see it (no password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unreadable URL)"


def open_store(url: str, keyring: Keyring, from_option: bool = True) -> Store:
    """Store.open with the failures an operator can fix said in one line: a URL that is not one (exit 2),
    a database that cannot be reached or is not a database (exit 1)."""
    import sqlalchemy as sa
    where = "--state" if from_option else "state database"
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise InputError(f"{where}: {url!r} is not a database URL (sqlite:///PATH or "
                         f"postgresql+psycopg://USER@HOST/DATABASE)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InputError(f"{where}: {parsed.get_backend_name()!r} databases are not supported (SQLite or PostgreSQL)")
    label = state_label(url)
    try:
        return Store.open(url, keyring)
    except (sa.exc.NoSuchModuleError, ImportError):
        raise InputError(f"{where}: no driver for {parsed.drivername!r} (use postgresql+psycopg://…)") from None
    except sa.exc.DatabaseError as e:
        msg = first_line(e)
        if "file is not a database" in msg or "database disk image is malformed" in msg:
            raise StateError(f"state database {label} is damaged or not a database ({msg}): restore it from a "
                             f"backup, or move it away to start with an empty one") from None
        raise StateError(f"state database {label}: {msg}") from None
    except sa.exc.SQLAlchemyError as e:
        raise StateError(f"state database {label}: {first_line(e)}") from None
    except OSError as e:
        raise StateError(f"state database {label}: {os_message(e)}") from None


@dataclass
class Runtime:
    home: Path
    inventory_path: Path
    state_url: str | None = None
    _inventory: Inventory | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.state_url or f"sqlite:///{(self.home / 'state.db').resolve()}"

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(vendors_dir(), templates_dir())

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(templates_dir())

    def vendor_fingerprint(self, vendor: str) -> str:
        """Hash of a vendor's profile and templates: a change to either changes every desired config."""
        fps = self.__dict__.setdefault("_vendor_fps", {})
        if vendor not in fps:
            h = hashlib.sha256(self.catalog.sources[vendor].text.encode())
            tdir = templates_dir()
            for path in sorted(tdir.rglob("*.j2")):  # includes may cross vendors: hash them all
                h.update(path.relative_to(tdir).as_posix().encode() + b"\0" + path.read_bytes())
            fps[vendor] = h.hexdigest()
        return fps[vendor]

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = load_inventory(self.inventory_path, self.catalog)
        return self._inventory

    def reload_inventory(self) -> Inventory:
        self._inventory = None
        return self.inventory

    @cached_property
    def keyring(self) -> Keyring:
        secure_home(self.home)
        return Keyring(load_or_create_key(self.home))

    @cached_property
    def store(self) -> Store:
        secure_home(self.home)
        return open_store(self.url, self.keyring, from_option=self.state_url is not None)

    def setup_logging(self, verbose: bool = False) -> None:
        """Log to <home>/logs/provisioner.log (0600) and stderr. Nothing logged ever holds a secret."""
        logs = secure_home(self.home) / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        path = logs / "provisioner.log"
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=20 * 2**20, backupCount=5)
        fh.setFormatter(fmt)
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        root = logging.getLogger()
        root.handlers[:] = [fh, sh]
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
