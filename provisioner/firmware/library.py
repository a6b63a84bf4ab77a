"""The firmware library in --home: images the operator added, each with its checksum, vendor, models and version.

Files live in <home>/firmware/<id>/<file> (directory 0700, file 0400); their rows in the store. An image is
served only while its bytes still hash to the checksum recorded at `add`: the check runs again whenever the
file's stat (size, inode, mtime, ctime) changes, so a replaced or edited file is refused before one byte goes
out; `firmware verify` and the nightly audit hash every image in full.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from provisioner.errors import InputError
from provisioner.firmware import versions
from provisioner.store import as_utc, utcnow
from provisioner.store.firmware_schema import firmware_attempts, firmware_images

MAX_SIZE = 2 * 2**30  # bytes: the largest phone image we know is a Polycom combined sip.ld of a few hundred MB
CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Image:
    id: str
    sha256: str
    vendor: str
    models: tuple[str, ...]
    version: str
    filename: str
    size: int
    token: str
    approved: bool
    added_at: dt.datetime
    added_by: str

    @classmethod
    def from_row(cls, r) -> "Image":
        return cls(r.id, r.sha256, r.vendor, tuple(json.loads(r.models)), r.version, r.filename, r.size, r.token,
                   bool(r.approved), as_utc(r.added_at), r.added_by)

    def path(self, home: Path) -> Path:
        return library_dir(home) / self.id / self.filename

    def to_json(self) -> dict:
        return {"id": self.id, "vendor": self.vendor, "models": list(self.models), "version": self.version,
                "file": self.filename, "size": self.size, "sha256": self.sha256, "approved": self.approved,
                "added_at": self.added_at.isoformat(timespec="seconds"), "added_by": self.added_by}


def library_dir(home: Path) -> Path:
    return home / "firmware"


def safe_file_name(name: str) -> str:
    """The name the image is served under: letters, digits and . _ + - (Yealink's "T46S(T48S,T42S,T41S)-
    66.86.0.15.rom" becomes "T46S_T48S_T42S_T41S_-66.86.0.15.rom"); phones take the file from its URL."""
    out = _UNSAFE.sub("_", name).lstrip("._-")[:128]
    if not out:
        raise InputError(f"{name!r}: no usable file name")
    return out


def expand_models(vendor, names: list[str]) -> list[str]:
    """Model names of the profile; a family name (T4xS) stands for all its models."""
    out: list[str] = []
    for n in names:
        if n in vendor.models:
            found = [n]
        else:
            found = [m for m, spec in vendor.models.items() if spec.family == n]
        if not found:
            families = sorted({m.family for m in vendor.models.values() if m.family})
            raise InputError(f"no {vendor.name} model or family {n!r} (models: {', '.join(vendor.models)}; "
                             f"families: {', '.join(families)})")
        for m in found:
            if not vendor.firmware.applies_to(m):
                raise InputError(f"{vendor.display_name} {m}: firmware is not managed for this model "
                                 f"({vendor.firmware.why or 'no confirmed upgrade mechanism'})")
            if m not in out:
                out.append(m)
    return out


def images(store) -> list[Image]:
    with store.engine.connect() as c:
        rows = c.execute(sa.select(firmware_images).order_by(firmware_images.c.vendor, firmware_images.c.added_at)).all()
    return [Image.from_row(r) for r in rows]


def find(store, ref: str) -> Image:
    """An image by its id (or a unique prefix of at least 6 digits)."""
    ref = ref.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{6,64}", ref):
        raise InputError(f"{ref!r}: an image id is hexadecimal (see `provisioner firmware list`)")
    hits = [i for i in images(store) if i.id.startswith(ref[:16]) and i.sha256.startswith(ref)]
    if not hits:
        raise InputError(f"no firmware image {ref} in the library")
    if len(hits) > 1:
        raise InputError(f"{ref} names {len(hits)} images; give more digits")
    return hits[0]


def add(rt, source: Path, vendor_name: str, models: list[str], version: str | None, approved: bool,
        actor: str) -> tuple[Image, str]:
    """Copy the image into the library; (image, how the version was found). A refusal leaves nothing behind."""
    vendor = rt.catalog.get(vendor_name)
    if vendor is None:
        raise InputError(f"unknown vendor {vendor_name!r} (known: {', '.join(sorted(rt.catalog.vendors))})")
    facts = vendor.firmware
    if not facts.supported:
        raise InputError(f"{vendor.display_name} firmware is not managed here: {facts.why or 'no confirmed mechanism'}")
    if not models:
        raise InputError("give the models this image is for: --models MODEL[,MODEL...] (a family name takes all)")
    models = expand_models(vendor, models)
    try:
        st = source.stat()
    except OSError as e:
        raise InputError(f"{source}: {e.strerror}") from None
    if not source.is_file():
        raise InputError(f"{source}: not a regular file")
    if st.st_size == 0 or st.st_size > MAX_SIZE:
        raise InputError(f"{source}: {st.st_size} bytes; an image is between 1 byte and {MAX_SIZE // 2**30} GiB")
    parsed = versions.from_file_name(facts, source.name)
    if version is not None and not versions.VERSION_TEXT.match(version):
        raise InputError(f"--version {version!r}: letters, digits and . _ + - only")
    if version is None and parsed is None:
        raise InputError(f"{source.name}: {vendor.display_name} file names do not carry a version "
                         f"(or this one does not): give it with --version")
    if version is not None and parsed is not None and not versions.same(version, parsed):
        raise InputError(f"--version {version} but the file name says {parsed}: check the image")
    how = "from the file name" if version is None else ("given, matches the file name" if parsed else "given")
    version = version or parsed
    filename = safe_file_name(source.name)

    lib = library_dir(rt.home)
    lib.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = lib / f".add-{secrets.token_hex(8)}"
    h = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            os.fchmod(dst.fileno(), 0o600)
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.hexdigest()
        image_id = digest[:16]
        with rt.store.engine.connect() as c:
            dup = c.execute(sa.select(firmware_images.c.id, firmware_images.c.version)
                            .where(firmware_images.c.sha256 == digest)).first()
        if dup:
            raise InputError(f"this image is already in the library as {dup.id} (version {dup.version})")
        final_dir = lib / image_id
        final_dir.mkdir(mode=0o700)
        final = final_dir / filename
        os.chmod(tmp, 0o400)
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    now = utcnow()
    row = {"id": image_id, "sha256": digest, "vendor": vendor.name, "models": json.dumps(models),
           "version": version, "filename": filename, "size": st.st_size, "token": secrets.token_urlsafe(16),
           "approved": approved, "added_at": now, "added_by": actor[:128]}
    try:
        with rt.store.write() as c:
            c.execute(firmware_images.insert().values(**row))
            rt.store.append_audit(c, actor, "firmware.added", None,
                                  f"{vendor.display_name} {version} for {', '.join(models)}",
                                  {"image": image_id, "sha256": digest, "file": filename, "size": st.st_size,
                                   "approved": approved}, now)
    except BaseException:
        shutil.rmtree(final_dir, ignore_errors=True)
        raise
    VERIFIED.forget(image_id)
    return Image.from_row(_Row(row)), how


class _Row:
    """A dict read like a result row."""

    def __init__(self, d: dict):
        self.__dict__.update(d)


def in_use(rt, image: Image) -> list[str]:
    """Why removing this image would break something: attempts under way, or a policy pinning its version."""
    from provisioner.firmware.policy import target_for
    why = []
    with rt.store.engine.connect() as c:
        n = c.execute(sa.select(sa.func.count()).select_from(firmware_attempts).where(
            firmware_attempts.c.image_id == image.id, firmware_attempts.c.result.in_(("offered", "fetched")))).scalar()
    if n:
        why.append(f"{n} device(s) were offered it and have not come back upgraded yet")
    vendor = rt.catalog.get(image.vendor)
    pinned = set()
    for dev in rt.inventory.resolved.values():
        if dev.vendor != image.vendor or dev.model not in image.models:
            continue
        t = target_for(dev.settings.firmware, dev.vendor, dev.model, vendor.models[dev.model].family if vendor else None)
        if t and versions.same(t[0], image.version):
            pinned.add(dev.site)
    if pinned:
        why.append(f"the policy of site(s) {', '.join(sorted(pinned))} pins version {image.version}")
    return why


def remove(rt, ref: str, force: bool, actor: str) -> Image:
    image = find(rt.store, ref)
    why = in_use(rt, image)
    if why and not force:
        raise InputError(f"image {image.id} ({image.vendor} {image.version}) is in use: {'; '.join(why)}. "
                         f"Change the policy first, or --force")
    with rt.store.write() as c:
        c.execute(firmware_images.delete().where(firmware_images.c.id == image.id))
        c.execute(firmware_attempts.update().where(firmware_attempts.c.image_id == image.id,
                                                   firmware_attempts.c.result.in_(("offered", "fetched")))
                  .values(result="failed", reason="image removed from the library", updated_at=utcnow()))
        rt.store.append_audit(c, actor, "firmware.removed", None, f"{image.vendor} {image.version}",
                              {"image": image.id, "sha256": image.sha256, "forced": bool(why)})
    shutil.rmtree(library_dir(rt.home) / image.id, ignore_errors=True)
    VERIFIED.forget(image.id)
    return image


def set_approved(rt, ref: str, approved: bool, actor: str) -> Image:
    image = find(rt.store, ref)
    with rt.store.write() as c:
        c.execute(firmware_images.update().where(firmware_images.c.id == image.id).values(approved=approved))
        rt.store.append_audit(c, actor, "firmware.approved" if approved else "firmware.held", None,
                              f"{image.vendor} {image.version}", {"image": image.id})
    return find(rt.store, image.id)


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


class Verified:
    """Checksum checks, redone only when the file's stat changes (ctime moves with any write, rename or chmod,
    and cannot be set back by a user): serving stays cheap, an altered file is caught before it is served."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple, str | None]] = {}

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._seen.pop(image_id, None)

    def problem(self, home: Path, image: Image, full: bool = False) -> str | None:
        """None when the file is there and hashes to the recorded checksum; else what is wrong."""
        path = image.path(home)
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{path.name} is missing from the library ({e.strerror})"
        stamp = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            hit = self._seen.get(image.id)
        if hit is not None and hit[0] == stamp and not full:
            return hit[1]
        if st.st_size != image.size:
            bad = f"{path.name} is {st.st_size} bytes, {image.size} when it was added: the file changed"
        else:
            bad = None if hash_file(path) == image.sha256 else \
                f"{path.name} no longer hashes to the checksum recorded at `firmware add`: the file changed"
        with self._lock:
            self._seen[image.id] = (stamp, bad)
        return bad


VERIFIED = Verified()
