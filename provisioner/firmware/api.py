"""Helpdesk API routes for firmware (issue 18): rollout status and the image library for every role, pausing and
resuming a site's rollouts for the helpdesk role. Mounted by provisioner/api/app.py; explicit response
models, nothing secret (an image's URL token is never returned)."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, some defined locally
import datetime as dt
from typing import Annotated, Literal

from fastapi import Body, Depends, HTTPException, Path as PathParam, Query
from pydantic import BaseModel, Field

from provisioner.api.auth import TokenInfo
from provisioner.errors import InputError
from provisioner.firmware import library, rollout
from provisioner.firmware.status import status as rollout_status

V1 = "/api/v1/firmware"


class ImageOut(BaseModel):
    id: str
    vendor: str
    models: list[str]
    version: str
    file: str
    size: int
    sha256: str
    approved: bool
    added_at: dt.datetime
    added_by: str


class DeviceFirmware(BaseModel):
    mac: str
    model: str
    version: str | None = Field(description="what the device last reported running")
    target: str | None
    status: Literal["upgraded", "pending", "failed", "not selected", "other"]
    why: str


class ModelRollout(BaseModel):
    site: str
    vendor: str
    model: str
    target: str | None
    rollout: Literal["active", "paused", "halted"]
    percent: float
    window: str | None
    devices: int
    upgraded: int
    pending: int
    failed: int
    not_selected: int
    other: int
    note: str
    by_device: list[DeviceFirmware]


class PauseIn(BaseModel):
    vendor: str | None = Field(default=None, max_length=32, description="only this vendor's rollouts on the site")
    reason: str = Field(default="paused by the helpdesk", max_length=500)


class ResumeIn(BaseModel):
    vendor: str | None = Field(default=None, max_length=32)


class RolloutChange(BaseModel):
    site: str
    vendor: str | None
    action: Literal["paused", "resumed"]
    lifted: int = Field(default=0, description="pauses and halts lifted (resume)")
    actor: str


def add_routes(app, rt, role, errors: dict, problem: type[BaseModel]) -> None:
    viewer = Annotated[TokenInfo, Depends(role("viewer"))]
    helpdesk = Annotated[TokenInfo, Depends(role("helpdesk"))]
    not_found = {**errors, 404: {"model": problem}}

    def _site(site: str) -> str:
        if site not in rt.inventory.site_settings:
            raise HTTPException(404, f"no site {site}")
        return site

    @app.get(f"{V1}/images", response_model=list[ImageOut], responses=errors, tags=["firmware"])
    def firmware_images(tok: viewer) -> list[ImageOut]:
        return [ImageOut(id=i.id, vendor=i.vendor, models=list(i.models), version=i.version, file=i.filename,
                         size=i.size, sha256=i.sha256, approved=i.approved, added_at=i.added_at, added_by=i.added_by)
                for i in library.images(rt.store)]

    @app.get(f"{V1}/status", response_model=list[ModelRollout], responses=not_found, tags=["firmware"])
    def firmware_status(tok: viewer, site: Annotated[str | None, Query(max_length=64)] = None) -> list[ModelRollout]:
        if site is not None:
            _site(site)
        out = []
        for m in rollout_status(rt, site=site):
            out.append(ModelRollout(
                site=m.site, vendor=m.vendor, model=m.model, target=m.target, rollout=m.rollout, percent=m.percent,
                window=m.window, devices=m.devices, upgraded=m.upgraded, pending=m.pending, failed=m.failed,
                not_selected=m.not_selected, other=m.other, note=m.note,
                by_device=[DeviceFirmware(mac=d.mac, model=d.model, version=d.version, target=d.target,
                                          status=d.category, why=d.why) for d in m.by_device]))
        return out

    @app.post(f"{V1}/sites/{{site}}/pause", response_model=RolloutChange, responses=not_found, tags=["firmware"])
    def firmware_pause(tok: helpdesk, site: Annotated[str, PathParam(max_length=64)],
                       body: Annotated[PauseIn, Body()] = PauseIn()) -> RolloutChange:
        _site(site)
        try:
            rollout.pause(rt, site, body.vendor, body.reason, tok.actor)
        except InputError as e:
            raise HTTPException(400, str(e)) from None
        return RolloutChange(site=site, vendor=body.vendor, action="paused", actor=tok.actor)

    @app.post(f"{V1}/sites/{{site}}/resume", response_model=RolloutChange, responses=not_found, tags=["firmware"])
    def firmware_resume(tok: helpdesk, site: Annotated[str, PathParam(max_length=64)],
                        body: Annotated[ResumeIn, Body()] = ResumeIn()) -> RolloutChange:
        _site(site)
        try:
            n = rollout.resume(rt, site, body.vendor, tok.actor)
        except InputError as e:
            raise HTTPException(400, str(e)) from None
        return RolloutChange(site=site, vendor=body.vendor, action="resumed", lifted=n, actor=tok.actor)
