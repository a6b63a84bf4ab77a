"""The `firmware:` block of a vendor profile (vendors/<vendor>.yaml): how a family takes a new image from
provisioning. Facts only, each with its source in the YAML; a family whose mechanism no source confirms
says `supported: false` and why, and gets no firmware key at all (the safe behaviour)."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FirmwareFile(_Strict):
    """A file the firmware mechanism needs besides the image, rendered with the offer in its context."""

    name: str  # {mac} / {MAC} placeholders for a per-device file (offer_file); a plain name (status_file)
    template: str
    xml_root: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        rest = v.replace("{mac}", "0").replace("{MAC}", "0")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", rest):
            raise ValueError("a plain file name (letters, digits, . _ + -), with {mac} or {MAC} as placeholders")
        return v


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            rx = re.compile(v)
        except re.error as e:
            raise ValueError(f"bad regex {v!r}: {e}") from None
        if "version" not in rx.groupindex:
            raise ValueError(f"{v!r} needs a named group (?P<version>...)")
    return v


class FirmwareFacts(_Strict):
    supported: bool = False
    why: str | None = None  # what the mechanism is, or why it is not supported
    source: str | None = None
    # models the mechanism is known for (default: every model of the profile)
    models: list[str] | None = None
    transports: list[Literal["https", "tftp"]] = Field(default_factory=lambda: ["https"])
    # the version in an image's file name ("T46S(T48S,T42S,T41S)-66.86.0.15.rom"), when the vendor's naming has it
    file_version: str | None = None
    # the comparable version inside the User-Agent's firmware field ("83.V2.11.0" -> "2.11.0"); default: all of it
    ua_version: str | None = None
    # User-Agents whose version is not the application's (Polycom's updater phase)
    ua_ignore: str | None = None
    downgrade: bool = True  # the device installs an older image when it is offered one
    max_url_length: int | None = Field(default=None, ge=16, le=4096)
    # a per-device file that carries the offer instead of the trigger file (Polycom's per-phone master <mac>.cfg)
    offer_file: FirmwareFile | None = None
    # a file served next to the image, rendered with the offer (Snom's firmware settings file)
    status_file: FirmwareFile | None = None

    @field_validator("file_version", "ua_version")
    @classmethod
    def _versions(cls, v: str | None) -> str | None:
        return _regex(v)

    @field_validator("ua_ignore")
    @classmethod
    def _ignore(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v

    @cached_property
    def file_version_rx(self) -> re.Pattern | None:
        return re.compile(self.file_version) if self.file_version else None

    @cached_property
    def ua_version_rx(self) -> re.Pattern | None:
        return re.compile(self.ua_version) if self.ua_version else None

    @cached_property
    def ua_ignore_rx(self) -> re.Pattern | None:
        return re.compile(self.ua_ignore) if self.ua_ignore else None

    def applies_to(self, model: str) -> bool:
        return self.supported and (self.models is None or model in self.models)
