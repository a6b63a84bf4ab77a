"""YAML read with positions, so every validation problem can be reported as FILE:LINE: field: message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ProblemsError(Exception):
    """Raised with every problem found; str() lists them one per line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def round_trip() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    return y


def _fast() -> YAML:
    return YAML(typ="safe")  # the C loader (ruamel.yaml.clib) when installed


@dataclass
class Source:
    """A parsed YAML document and where it came from.

    Parsed with the fast safe loader; the slower round-trip parse, which knows line numbers, only runs
    when a problem has to be located.
    """

    path: Path
    data: Any
    text: str
    _rt: Any = None

    @classmethod
    def load(cls, path: Path) -> "Source":
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProblemsError([Problem(str(path), 0, "-", "file not found")]) from None
        except UnicodeDecodeError as e:
            raise ProblemsError([Problem(str(path), 1, "-", f"not UTF-8 text ({e.reason})")]) from None
        try:
            data = _fast().load(text)
        except MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            what = (e.problem or e.context or "invalid YAML").strip().split(" with value ")[0]
            raise ProblemsError([Problem(str(path), line, "-", what)]) from None
        except Exception as e:  # ruamel raises a few non-marked errors (e.g. bad tags)
            raise ProblemsError([Problem(str(path), 1, "-", f"invalid YAML: {type(e).__name__}")]) from None
        return cls(path, data, text)

    @property
    def positioned(self) -> Any:
        if self._rt is None:
            try:
                self._rt = round_trip().load(self.text)
            except Exception:  # the C and round-trip loaders disagree on a few oddities: no positions then
                self._rt = False
        return self._rt

    def line_of(self, loc: tuple) -> int:
        """1-based line of the deepest node of `loc` that exists in the document."""
        node = self.positioned
        line = 1
        for key in loc:
            if isinstance(node, CommentedMap):
                if key in node:
                    try:
                        line = node.lc.key(key)[0] + 1
                    except (KeyError, TypeError):
                        pass
                    node = node[key]
                    continue
                line = node.lc.line + 1 if node.lc.line is not None else line
                break
            if isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
                try:
                    line = node.lc.item(key)[0] + 1
                except (KeyError, TypeError, IndexError):
                    pass
                node = node[key]
                continue
            break
        return line

    def problem(self, loc: tuple, message: str) -> Problem:
        return Problem(str(self.path), self.line_of(loc), dotted(loc), message)

    def problems_from(self, err: ValidationError, prefix: tuple = ()) -> list[Problem]:
        out = []
        for e in err.errors(include_url=False, include_input=False):
            loc = prefix + tuple(x for x in e["loc"] if not _is_union_tag(x))
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
                last = str(loc[-1]).lower() if loc else ""
                if any(w in last for w in ("pass", "secret", "token", "key")):
                    msg = "unknown field; secrets are generated and kept encrypted, never written in YAML"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            out.append(self.problem(loc, msg))
        return out


def _is_union_tag(x) -> bool:
    return isinstance(x, str) and (x.startswith("function-") or x in {"str", "int", "list[str]"})


def dotted(loc: tuple) -> str:
    out = ""
    for k in loc:
        if isinstance(k, int):
            out += f"[{k}]"
        else:
            out += ("." if out else "") + str(k)
    return out or "-"


def plain(data: Any) -> Any:
    """ruamel containers to plain dicts/lists (pydantic wants plain types)."""
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return data
