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
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from provisioner.desired import DeviceContext, SettingsPart
from provisioner.errors import RenderError
from provisioner.secret import Secret
from provisioner.vendors import FileSpec, VendorProfile

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KV_SUSPICIOUS = re.compile(r"[\x00-\x1f\x7f=]")
_MAPPINGS = (dict, MappingProxyType)  # a context's shared parts are read-only mappings
_MAPPING_NAMES = frozenset(dir(dict)) | frozenset(dir(MappingProxyType))
_NOTHING = object()


def _finalize(value: Any) -> Any:
    t = type(value)
    if t is str:  # most printed values: one or two tests, not four
        if _CONTROL.search(value):
            raise RenderError("a value with a control character reached a template")
        return value
    if t is int:
        return value
    if isinstance(value, Secret):
        value = value.reveal()
    if value is None:
        raise RenderError("a template printed an empty (None) value; guard optional settings with {% if %}")
    if isinstance(value, str) and _CONTROL.search(value):
        raise RenderError("a value with a control character reached a template")
    return value


class _Environment(ImmutableSandboxedEnvironment):
    """Templates are data: sandboxed, and unable to modify what they are given (the site part of every
    device's context is one shared, read-only object)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `line.password` on a mapping: the sandbox raises and catches an AttributeError first on every
        # access (half the render time); a mapping has no attribute of that name, so the result is the same
        if type(obj) in _MAPPINGS and attribute not in _MAPPING_NAMES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def make_globals(self, d):
        # a plain dict instead of a ChainMap over the environment's globals, which are never modified once
        # templates load: every render copies the globals, and a ChainMap copies at Python speed
        return {**self.globals, **(d or {})}


def make_env(templates_dir: Path, autoescape: bool, finalize=_finalize) -> ImmutableSandboxedEnvironment:
    """Sandboxed, StrictUndefined, compiled once: `finalize` checks (and for UCI quotes) every printed value."""
    return _Environment(
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


def run_template(env: ImmutableSandboxedEnvironment, template: str, ctx: dict, who: str) -> str:
    """Render; every failure is a RenderError naming the device (`who`) and the template, never a value."""
    try:
        return env.get_template(template).render(ctx)
    except jinja2.UndefinedError as e:
        raise RenderError(f"{who}: template {template}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise RenderError(f"{who}: template {template}: {type(e).__name__}: {e.message}") from None
    except RenderError as e:
        raise RenderError(f"{who}: template {template}: {e}") from None


def _strings(node: Any) -> list[str]:
    """Every string of a context (secrets revealed), in no particular order."""
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        t = type(n)
        if t is str:
            out.append(n)
        elif t is int or t is range or n is None:
            continue
        elif t is dict or t is MappingProxyType:
            stack.extend(n.values())
        elif t is list or t is tuple:
            stack.extend(n)
        elif t is Secret or isinstance(n, Secret):
            out.append(n.reveal())
        elif isinstance(n, str):
            out.append(n)
        elif isinstance(n, Mapping):
            stack.extend(n.values())
        elif isinstance(n, (list, tuple)):
            stack.extend(n)
    return out


def _suspicious_fields(node: Any, path: str, suspicious: re.Pattern) -> Iterator[tuple[str, str]]:
    """(path, text) of every string under `node` that `suspicious` finds something in. One regex search
    over all of a node's strings decides; only a node with a hit is descended into (to name the field)."""
    if not suspicious.search("".join(_strings(node))):
        return
    if isinstance(node, Mapping):
        children = ((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
    elif isinstance(node, (list, tuple)):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    else:
        yield path, node.reveal() if isinstance(node, Secret) else node
        return
    for child_path, child in children:
        yield from _suspicious_fields(child, child_path, suspicious)


class Renderer:
    def __init__(self, templates_dir: Path):
        self.templates_dir = templates_dir
        self._envs = {"keyvalue": make_env(templates_dir, False), "xml": make_env(templates_dir, True)}

    def check_context(self, ctx: Any, fmt: str, who: str) -> None:
        """Refuse values that would break or smuggle settings into the format; name the field."""
        suspicious = _KV_SUSPICIOUS if fmt == "keyvalue" else _CONTROL
        for path, text in _suspicious_fields(ctx, "", suspicious):
            if _CONTROL.search(text):
                raise RenderError(f"{who}: field {path}: contains a control character (new line, tab, ...); refused")
            if not path.endswith("url"):
                raise RenderError(f"{who}: field {path}: contains '=', which would read as a setting "
                                  f"in a key=value file; refused")

    def render(self, vendor: VendorProfile, template: str, ctx: dict, who: str, xml_root: str | None = None,
               shared: SettingsPart | None = None) -> bytes:
        """`shared`: the settings part `ctx` was built from; checked once per format, not per device."""
        if shared is not None:
            if vendor.format not in shared.checked:
                self.check_context(shared.values, vendor.format, who)
                shared.checked.add(vendor.format)
            common = shared.values
            own = {k: v for k, v in ctx.items() if common.get(k, _NOTHING) is not v}
            self.check_context(own, vendor.format, who)
        else:
            self.check_context(ctx, vendor.format, who)
        data = run_template(self._envs[vendor.format], template, ctx, who).encode("utf-8")
        self._check_output(vendor, template, data, who, xml_root)
        return data

    @staticmethod
    def _check_output(vendor: VendorProfile, template: str, data: bytes, who: str,
                      xml_root: str | None = None) -> None:
        if vendor.format == "keyvalue":
            text = data.decode()
            first = text.split("\n", 1)[0]
            if vendor.keyvalue_header and first != vendor.keyvalue_header:
                raise RenderError(f"{who}: template {template}: first line must be {vendor.keyvalue_header!r}")
            for n, line in enumerate(text.splitlines(), 1):
                if "=" in line:  # most lines: one test
                    continue
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
        model = dctx.vendor.models[dctx.device.model].file_model or dctx.device.model
        return spec.filename_for(mac=dctx.device.mac, model=model), \
            self.render(dctx.vendor, spec.template, dctx.values, who, spec.xml_root, dctx.shared)

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
