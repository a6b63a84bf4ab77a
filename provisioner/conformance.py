"""Parameter dictionaries: every configuration key a phone family's templates may write, what it means, which
values it takes and which independent source says so (vendors/params/<vendor>.yaml) — and the check that a
rendered file holds nothing else.

A golden file only proves that a template did not change; a dictionary is written from the vendor's manuals
and other provisioning systems' templates, so a misspelled or invented key (Yealink's
`account.1.sip_server.1.transport`, which no firmware reads) or a value outside the documented set fails the
check instead of silently doing nothing on a phone. Keys may carry placeholders: `{n}` is a decimal number,
`*` any run of characters without `/`. Entries marked `uncertain` are allowed but listed by
`uncertain_keys()`, for the documentation to say so.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from provisioner.yamlsrc import Problem, ProblemsError, Source, plain


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Values(_Strict):
    """Exactly one way of saying which values a key takes."""

    enum: list[str] | None = None  # the literal values allowed ("" included when empty is allowed)
    range: tuple[int, int] | None = None  # decimal integers, inclusive
    pattern: str | None = None  # a regex the whole value must match
    text: str | None = None  # free text (a name, a host, a password): what it holds
    max_length: int | None = None  # with text or pattern

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("enum", "range", "pattern", "text") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of enum, range, pattern, text (got {', '.join(given) or 'none'})")
        if self.pattern is not None:
            re.compile(self.pattern)
        return self

    def problem(self, value: str) -> str | None:
        if self.max_length is not None and len(value) > self.max_length:
            return f"longer than {self.max_length} characters"
        if self.enum is not None and value not in self.enum:
            return f"not one of {', '.join(repr(v) for v in self.enum)}"
        if self.range is not None:
            if not re.fullmatch(r"-?[0-9]+", value) or not self.range[0] <= int(value) <= self.range[1]:
                return f"not an integer within {self.range[0]}..{self.range[1]}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"does not match {self.pattern}"
        return None


class Param(_Strict):
    meaning: str
    values: Values
    source: list[str] = Field(min_length=1)  # keys of the dictionary's `sources`
    uncertain: bool = False  # no source confirms it fully: allowed, and documented as an assumption
    secret: bool = False  # never shown in a problem


class Extract(_Strict):
    """How to read keys out of a rendered file of this family."""

    kind: Literal["keyvalue", "xml"]
    # xml: elements whose key is one of their attributes (Gigaset's <SYMB_ITEM ID=... value=...>)
    named: list[dict[str, str]] = Field(default_factory=list)  # {element, key, value}
    # xml: every attribute is a key of its own, whatever element holds it (Polycom)
    attributes_are_keys: bool = False
    # xml: attributes that only index an element (Fanvil <line index="1">) and are no setting
    index_attributes: list[str] = Field(default_factory=list)


class Dictionary(_Strict):
    vendor: str
    extract: Extract
    sources: dict[str, str]  # short name -> the document, with where in it
    params: dict[str, Param]

    @model_validator(mode="after")
    def _sources(self):
        for key, p in self.params.items():
            for s in p.source:
                if s not in self.sources:
                    raise ValueError(f"params.{key}: source {s!r} is not in `sources`")
        return self

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern, str]]:
        out = []
        for key in self.params:
            if "{n}" in key or "*" in key:
                rx = re.escape(key).replace(r"\{n\}", "[0-9]+").replace(r"\*", "[^/]*")
                out.append((re.compile(rx + r"\Z"), key))
        return out

    def entry(self, key: str) -> tuple[str, Param] | None:
        if key in self.params:
            return key, self.params[key]
        for rx, name in self._patterns:
            if rx.match(key):
                return name, self.params[name]
        return None

    def uncertain_keys(self) -> list[str]:
        return sorted(k for k, p in self.params.items() if p.uncertain)


@dataclass(frozen=True)
class Finding:
    file: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}"


def _keyvalue(body: bytes) -> Iterator[tuple[str, str]]:
    for line in body.decode("utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("include:"):
            continue
        key, sep, value = s.partition("=")
        yield (key.strip(), value.strip()) if sep else (s, "")


def _xml(body: bytes, ex: Extract) -> Iterator[tuple[str, str]]:
    root = ET.fromstring(body)
    named = {n["element"]: n for n in ex.named}

    def walk(el: ET.Element, path: str) -> Iterator[tuple[str, str]]:
        if el.tag in named:
            spec = named[el.tag]
            yield el.get(spec["key"], ""), el.get(spec["value"], "")
            for attr, value in el.attrib.items():
                if attr not in (spec["key"], spec["value"]):
                    yield f"{el.tag}@{attr}", value
            return
        for attr, value in el.attrib.items():
            if attr in ex.index_attributes:
                continue
            yield (attr if ex.attributes_are_keys else f"{path}@{attr}" if path else f"@{attr}"), value
        children = list(el)
        if not children and path and not ex.attributes_are_keys and ((el.text or "").strip() or not el.attrib):
            yield path, el.text or ""  # an element that holds its setting as text (or an empty one)
        for child in children:
            yield from walk(child, f"{path}/{child.tag}" if path else child.tag)

    yield from walk(root, "")


def keys_of(dictionary: Dictionary, body: bytes) -> list[tuple[str, str]]:
    """(key, value) of every setting a rendered file holds, in file order."""
    if dictionary.extract.kind == "keyvalue":
        return list(_keyvalue(body))
    return list(_xml(body, dictionary.extract))


def check(dictionary: Dictionary, filename: str, body: bytes) -> list[Finding]:
    """Every key of the file must be in the dictionary, with a value it allows. Secret values never appear
    in a finding."""
    out = []
    for key, value in keys_of(dictionary, body):
        hit = dictionary.entry(key)
        if hit is None:
            out.append(Finding(filename, key, "not in the parameter dictionary (misspelled or invented?)"))
            continue
        name, param = hit
        problem = param.values.problem(value)
        if problem:
            shown = "(secret)" if param.secret else repr(value[:60])
            out.append(Finding(filename, key, f"value {shown} {problem}"))
    return out


def load_dictionaries(params_dir: Path) -> dict[str, Dictionary]:
    problems: list[Problem] = []
    out: dict[str, Dictionary] = {}
    for path in sorted(params_dir.glob("*.yaml")):
        try:
            src = Source.load(path)
        except ProblemsError as e:
            problems.extend(e.problems)
            continue
        try:
            d = Dictionary.model_validate(plain(src.data))
        except ValidationError as e:
            problems.extend(src.problems_from(e))
            continue
        if d.vendor != path.stem:
            problems.append(src.problem(("vendor",), f"must equal the file name {path.stem!r}"))
            continue
        out[d.vendor] = d
    if problems:
        raise ProblemsError(problems)
    return out
