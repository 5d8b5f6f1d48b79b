"""Typed lists for DuckDB: a list of FHIR elements that a view filters with `where()` or `extension()` is read once
into a list of DuckDB structs holding only the fields the view uses (`json_transform`), instead of being split into
JSON texts that every lambda parses again.

The compiler runs twice. The first run compiles the view as JSON paths and records, for every list it filters, how
the view uses the list's elements: each path below an element, and whether it wants the value's text (a string-like
primitive: the struct field is a VARCHAR) or its JSON (any other value: the field keeps the JSON text, exactly what
`json_extract` gives). A list is typed only when every use names fields the FHIR model knows and no use needs a
whole element (its JSON as written). The second run compiles the same view with the plan: typed lists become
`json_transform(list, shape)`, their elements structs, paths into them struct fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import model

TEXT, JSON_, STRUCT = "text", "json", "struct"


@dataclass
class Field:
    kind: str  # TEXT (VARCHAR), JSON_ (the JSON text) or STRUCT (fields below)
    is_list: bool
    fields: dict[str, Field] = field(default_factory=dict)

    def spec(self):
        inner = {TEXT: "VARCHAR", JSON_: "JSON"}.get(self.kind) or {k: self.fields[k].spec() for k in sorted(self.fields)}
        return [inner] if self.is_list else inner


@dataclass
class Usage:
    """What the first run saw of one filtered list."""

    parent: tuple[int, tuple] | None = None  # (list, steps from its element) when the list is inside another's
    container: tuple | None = None  # else where the list is (base, steps): lists at one place share one shape
    uses: list[tuple[tuple, str, str | None]] = field(default_factory=list)  # (steps, "text"/"json", FHIR type)
    whole: bool = False  # an element used as it is (no field of it): the list stays JSON


def _merge(fields: dict[str, Field], steps: tuple, leaf: str) -> None:
    """Add the fields along `steps` (STRUCT on the way), the last one of kind `leaf`."""
    for i, step in enumerate(steps):
        key, is_list = step[0], bool(step[1]) or len(step) > 2  # (key, False, n): element n of a list
        want = leaf if i == len(steps) - 1 else STRUCT
        have = fields.get(key)
        if have is None:
            fields[key] = have = Field(want, is_list)
        elif have.kind != want:
            have.kind, have.fields = JSON_, {}  # wanted as text and as JSON, or as JSON and as fields: JSON
        if have.kind != STRUCT:
            return
        fields = have.fields


def _at(fields: dict[str, Field], steps: tuple) -> Field | None:
    f = None
    for step in steps:
        f = fields.get(step[0])
        if f is None:
            return None
        fields = f.fields
    return f


def plan(usages: dict[int, Usage], *, root: bool = False) -> dict[int, Field]:
    """The struct shape of each list that can be typed (a list Field); with `root`, also the resource's own (list
    0, one struct: the columns of a typed read of NDJSON files), when the view uses no resource whole."""
    shapes: dict[int, Field] = {}
    for k in sorted(usages, reverse=True):  # a list inside another is seen after it: children first, the root last
        u = usages[k]
        if u.whole or (k == 0 and not root):
            continue
        top = Field(STRUCT, k != 0)
        for steps, kind, ftype in u.uses:
            _merge(top.fields, steps, TEXT if kind == TEXT and ftype in model.STRING_LIKE else JSON_)
        for child, cu in usages.items():
            if cu.parent is None or cu.parent[0] != k:
                continue
            steps = cu.parent[1]
            if child in shapes:
                _merge(top.fields, steps, STRUCT)
                f = _at(top.fields, steps)
                if f is not None and f.kind == STRUCT:
                    for key, sub in shapes[child].fields.items():
                        _graft(f.fields, key, sub)
            else:
                _merge(top.fields, steps, JSON_)
        if k == 0:
            _merge(top.fields, (("resourceType", False),), TEXT)
        if top.fields:
            shapes[k] = top

    def under_typed(k: int) -> bool:
        parent = usages[k].parent
        return parent is not None and parent[0] in shapes

    # lists each read from JSON (json_transform): those read from the same place get one shape (the union), so
    # that DuckDB reads each place once
    groups: dict[tuple, list[int]] = {}
    for k in shapes:
        if k and usages[k].container is not None and not under_typed(k):
            groups.setdefault(usages[k].container, []).append(k)
    for ks in groups.values():
        union = Field(STRUCT, True)
        for k in ks:
            for key, sub in shapes[k].fields.items():
                _graft(union.fields, key, sub)
        for k in ks:
            shapes[k] = union
    # a list inside a typed element is a field of it: typed when that field is a list of structs, with its shape
    for k in sorted(shapes):
        if k == 0 or not under_typed(k):
            if k and usages[k].container is None:
                del shapes[k]
            continue
        parent = usages[k].parent
        f = _at(shapes[parent[0]].fields, parent[1])
        if f is None or f.kind != STRUCT:
            del shapes[k]
        else:
            shapes[k] = Field(STRUCT, True, f.fields)
    return shapes


def _graft(fields: dict[str, Field], key: str, sub: Field) -> None:
    have = fields.get(key)
    if have is None:
        fields[key] = Field(sub.kind, sub.is_list, {k: v for k, v in sub.fields.items()})
        return
    if have.kind != sub.kind:
        have.kind, have.fields = JSON_, {}
        return
    for k, v in sub.fields.items():
        _graft(have.fields, k, v)


def spec_text(shape: Field) -> str:
    return json.dumps(shape.spec(), separators=(",", ":"))


def leaf_kind(shape: Field, steps: tuple) -> str | None:
    f = _at(shape.fields, steps)
    return f.kind if f is not None else None


def sql_type(f: Field) -> str:
    """The DuckDB type of a field: VARCHAR, JSON or STRUCT(...), with [] for a list."""
    if f.kind == STRUCT:
        inner = "STRUCT(" + ", ".join(f'"{k}" {sql_type(f.fields[k])}' for k in sorted(f.fields)) + ")"
    else:
        inner = "VARCHAR" if f.kind == TEXT else "JSON"
    return inner + ("[]" if f.is_list else "")


def columns_sql(root: Field) -> str:
    """read_json's `columns` for the resource's fields the view uses."""
    return "{" + ", ".join(f"'{k}': '{sql_type(root.fields[k])}'" for k in sorted(root.fields)) + "}"
