"""Edits of inventory.yaml that keep the operator's comments, order and quoting (ruamel round-trip).

An edit is written to a temporary file next to the inventory, validated in full, and only then renamed
over it: a bad edit never leaves a broken inventory behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from provisioner.inventory import Inventory, load_inventory
from provisioner.vendors import Catalog
from provisioner.yamlsrc import Problem, ProblemsError, round_trip


def add_device(path: Path, catalog: Catalog, entry: dict, write: bool = True) -> Inventory:
    return add_devices(path, catalog, [entry], write)


def add_devices(path: Path, catalog: Catalog, entries: list[dict], write: bool = True) -> Inventory:
    """The inventory with these devices appended, validated in full; written over `path` only if `write`
    (else nothing on disk changes: the caller checks what it would mean first). ProblemsError names
    `path` and the line each problem would be on."""
    y = round_trip()
    text = path.read_text(encoding="utf-8")
    _, indent, block_seq_indent = load_yaml_guess_indent(text)
    bsi = block_seq_indent or 0
    y.indent(mapping=max(2, bsi), sequence=indent or 2, offset=bsi)  # ruamel's recipe for keeping the style
    data = y.load(text) or CommentedMap()
    devs = data.get("devices")
    if devs is None:
        devs = data["devices"] = CommentedSeq()
    for entry in entries:
        node = CommentedMap()
        for k, v in entry.items():
            if k == "lines":
                seq = CommentedSeq()
                for ln in v:  # one line per SIP line, in flow style, like the bundled inventory
                    m = CommentedMap({k2: DoubleQuotedScalarString(v2) if k2 in ("extension", "auth_user", "number")
                                      else v2 for k2, v2 in ln.items()})
                    m.fa.set_flow_style()
                    seq.append(m)
                node[k] = seq
            elif isinstance(v, dict):  # registrar/policy overrides: one flow-style line
                m = CommentedMap(v)
                m.fa.set_flow_style()
                node[k] = m
            else:
                node[k] = v
        devs.append(node)
    fd, tmp = tempfile.mkstemp(prefix=".inventory-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            y.dump(data, f)
        try:
            inv = load_inventory(Path(tmp), catalog)  # raises ProblemsError: nothing replaced
        except ProblemsError as e:
            raise ProblemsError([Problem(str(path), p.line, p.field, p.message) for p in e.problems]) from None
        if write:
            mode = path.stat().st_mode & 0o777
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        else:
            Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    inv.path = path
    inv.source.path = path
    return inv
