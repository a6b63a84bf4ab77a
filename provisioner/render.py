"""Jinja2 rendering that refuses to write an unsafe config.

Sandboxed, StrictUndefined, templates compiled once per process. Before a template runs, every value
of the context is checked against the vendor's format (control characters anywhere; '=' outside URLs in
key=value files; XML gets autoescaping); the error names the device and the field, never the value.
After rendering, the output must parse as its format (the key=value header, or well-formed XML with the
expected root) before anyone can be served it.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from provisioner.desired import DeviceContext
from provisioner.errors import RenderError
from provisioner.secret import Secret
from provisioner.vendors import FileSpec, VendorProfile

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KV_SUSPICIOUS = re.compile(r"[\x00-\x1f\x7f=]")


def _finalize(value: Any) -> Any:
    if isinstance(value, Secret):
        value = value.reveal()
    if value is None:
        raise RenderError("a template printed an empty (None) value; guard optional settings with {% if %}")
    if isinstance(value, str) and _CONTROL.search(value):
        raise RenderError("a value with a control character reached a template")
    return value


def make_env(templates_dir: Path, autoescape: bool, finalize=_finalize) -> SandboxedEnvironment:
    """Sandboxed, StrictUndefined, compiled once: `finalize` checks (and for UCI quotes) every printed value."""
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        finalize=finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_template(env: SandboxedEnvironment, template: str, ctx: dict, who: str) -> str:
    """Render; every failure is a RenderError naming the device (`who`) and the template, never a value."""
    try:
        return env.get_template(template).render(ctx)
    except jinja2.UndefinedError as e:
        raise RenderError(f"{who}: template {template}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise RenderError(f"{who}: template {template}: {type(e).__name__}: {e.message}") from None
    except RenderError as e:
        raise RenderError(f"{who}: template {template}: {e}") from None


class Renderer:
    def __init__(self, templates_dir: Path):
        self.templates_dir = templates_dir
        self._envs = {"keyvalue": make_env(templates_dir, False), "xml": make_env(templates_dir, True)}

    def check_context(self, ctx: Any, fmt: str, who: str) -> None:
        """Refuse values that would break or smuggle settings into the format; name the field."""
        suspicious = _KV_SUSPICIOUS if fmt == "keyvalue" else _CONTROL
        stack: list[tuple[str, Any]] = [("", ctx)]
        while stack:
            path, node = stack.pop()
            if isinstance(node, dict):
                stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
                continue
            if isinstance(node, (list, tuple)):
                stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
                continue
            text = node.reveal() if isinstance(node, Secret) else node
            if not isinstance(text, str) or not suspicious.search(text):
                continue
            if _CONTROL.search(text):
                raise RenderError(f"{who}: field {path}: contains a control character (new line, tab, ...); refused")
            if not path.endswith("url"):
                raise RenderError(f"{who}: field {path}: contains '=', which would read as a setting "
                                  f"in a key=value file; refused")

    def render(self, vendor: VendorProfile, template: str, ctx: dict, who: str, xml_root: str | None = None) -> bytes:
        self.check_context(ctx, vendor.format, who)
        data = run_template(self._envs[vendor.format], template, ctx, who).encode("utf-8")
        self._check_output(vendor, template, data, who, xml_root)
        return data

    @staticmethod
    def _check_output(vendor: VendorProfile, template: str, data: bytes, who: str,
                      xml_root: str | None = None) -> None:
        if vendor.format == "keyvalue":
            first = data.split(b"\n", 1)[0].decode()
            if vendor.keyvalue_header and first != vendor.keyvalue_header:
                raise RenderError(f"{who}: template {template}: first line must be {vendor.keyvalue_header!r}")
            for n, line in enumerate(data.decode().splitlines(), 1):
                s = line.strip()
                if s and not s.startswith("#") and "=" not in s and not s.startswith("include:"):
                    raise RenderError(f"{who}: template {template}: line {n} is not key = value")
        else:
            try:
                root = ET.fromstring(data)
            except ET.ParseError as e:
                raise RenderError(f"{who}: template {template}: output is not well-formed XML ({e})") from None
            expected = xml_root or vendor.xml_root
            if root.tag != expected:
                raise RenderError(f"{who}: template {template}: root element <{root.tag}>, expected <{expected}>")

    def device_file(self, dctx: DeviceContext, spec: FileSpec) -> tuple[str, bytes]:
        who = f"device {dctx.device.mac}"
        return spec.filename_for(mac=dctx.device.mac, model=dctx.device.model), \
            self.render(dctx.vendor, spec.template, dctx.values, who, spec.xml_root)

    def device_files(self, dctx: DeviceContext) -> dict[str, bytes]:
        """Every file this device would fetch over HTTPS, by file name."""
        return dict(self.device_file(dctx, spec) for spec in dctx.vendor.files)

    def compile_all(self) -> list[str]:
        """Compile every template once; returns the problems found (for `provisioner check`)."""
        problems = []
        for path in sorted(self.templates_dir.rglob("*.j2")):
            name = path.relative_to(self.templates_dir).as_posix()
            for env in self._envs.values():
                try:
                    env.get_template(name)
                except jinja2.TemplateSyntaxError as e:
                    problems.append(f"{path}:{e.lineno}: template: {e.message}")
                    break
        return problems
