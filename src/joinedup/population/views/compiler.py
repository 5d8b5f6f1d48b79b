"""Compile a SQL on FHIR v2 ViewDefinition to one SQL query, for DuckDB or for Spark SQL.

The query reads a relation with one JSON column, `resource`, and returns the view's rows. FHIRPath becomes JSON
expressions: a path of elements becomes one JSON path (`name.given` -> `$.name[*].given[*]` on DuckDB, using the
FHIR R4 cardinalities from `model.py`), `where()` a list filter, `first()` an index, `ofType(Quantity)` of a choice
element the key `valueQuantity` (`dialect.py` spells each for DuckDB and for Spark).

On DuckDB `forEach`/`forEachOrNull` become lateral UNNESTs (with their index for `%rowIndex`), `unionAll` a
lateral UNION ALL, nested `select`s a cross product, and `repeat` a lateral chain of levels (depth-first order).
On Spark each select element becomes an array of row structs (`transform` over the forEach items, `concat` for
unionAll, nested `transform` for the cross product, a depth-first unrolled recursion for `repeat`) expanded by
`LATERAL VIEW inline`. `repeat` is bounded (MAX_REPEAT_DEPTH): deeper data raises an error rather than losing rows.

Anything the compiler cannot translate exactly — a malformed ViewDefinition, an unknown column type, a FHIRPath
function or operator outside the supported subset — raises ViewError naming where in the view it is. A value
that can only be checked against the data (several values in a column that is not a collection, a `where` that
is not boolean) raises an error when the query runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from . import dialect as dialects
from . import fhirpath as fp
from . import model, shapes

MAX_REPEAT_DEPTH = 10  # the same on both engines; Spark plans grow with the unrolled depth

VIEW_KEYS = {"resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "extension",
             "modifierExtension", "url", "identifier", "version", "name", "title", "status", "experimental", "date",
             "publisher", "contact", "description", "useContext", "copyright", "resource", "resourceVersion",
             "fhirVersion", "profile", "constant", "select", "where", "jurisdiction", "purpose"}
SELECT_KEYS = {"id", "extension", "modifierExtension", "column", "select", "forEach", "forEachOrNull", "repeat",
               "unionAll"}
COLUMN_KEYS = {"id", "extension", "modifierExtension", "name", "path", "description", "collection", "type", "tag"}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# SQL type of each FHIR primitive type a column may declare.
COLUMN_TYPES = {"boolean": "BOOLEAN", "integer": "INTEGER", "positiveInt": "INTEGER", "unsignedInt": "INTEGER",
                "integer64": "BIGINT", "decimal": "DOUBLE"}
COLUMN_TYPES.update({t: "VARCHAR" for t in model.STRING_LIKE})

SUPPORTED_FUNCTIONS = ("exists", "empty", "first", "last", "count", "where", "ofType", "extension", "join",
                       "not", "getResourceKey", "getReferenceKey", "lowBoundary", "highBoundary")


class ViewError(ValueError):
    """A ViewDefinition that cannot be run, with where in the view the problem is."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # FHIR type name ("string", "boolean", ...) or "json"
    sql_type: str
    collection: bool


@dataclass(frozen=True)
class CompiledView:
    resource: str
    sql: str  # with {source}: a relation with one JSON column `resource`
    columns: tuple[Column, ...]
    warnings: tuple[str, ...] = ()
    # DuckDB, when the view uses no resource whole: the same view over NDJSON files read with typed columns (only
    # the fields the view uses), with {files} for the list of file names
    file_sql: str | None = None

    def query(self, source: str) -> str:
        return self.sql.replace("{source}", source)

    def files_query(self, files: str) -> str | None:
        """The typed read of NDJSON files (`files`: a SQL list of their names), or None when the view has none."""
        return self.file_sql.replace("{files}", files) if self.file_sql else None


# -- values of compiled FHIRPath -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Val:
    """A compiled FHIRPath value.

    kind "path": JSON navigated lazily from `base` (a JSON value, or a list of JSON values when base_list) by
    `steps` (key, is_list: True/False/None for unknown) so that a chain of members becomes one JSON path.
    kind "native": a typed SQL scalar (NULL = empty). kind "nlist": a SQL list of typed values.
    kind "empty": the empty collection.
    """

    kind: str
    base: str = ""
    base_list: bool = False
    steps: tuple = ()
    sql: str = ""
    ftype: str | None = None
    klass: type | None = None
    choice: model.Choice | None = None
    is_resource: bool = False
    elem: int | None = None  # base holds elements (one, or a list when base_list) of typed list `elem` (shapes.py)

    @property
    def many(self) -> bool:
        if self.kind == "nlist":
            return True
        if self.kind != "path":
            return False
        return self.base_list or any(s[1] is not False for s in self.steps)


def _ident(name: str, dialect: str = "duckdb") -> str:
    if dialect == "spark":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


@dataclass
class _Scope:
    this: Val
    row_index: str
    where: str  # location in the view, for messages
    expr: str = ""


@dataclass
class _Frag:
    joins: list[str] = field(default_factory=list)
    cols: list[tuple[Column, str]] = field(default_factory=list)


@dataclass
class _Rows:
    """Spark: an array of row structs and the columns each struct holds."""

    sql: str
    cols: list[Column]


class _Compiler:
    def __init__(self, view: Any, dialect: str = "duckdb", plan: dict[int, shapes.Field] | None = None, *,
                 files: bool = False) -> None:
        self.view = view
        self.files = files  # compile for a typed read of NDJSON files (plan[0]: the resource's fields)
        self.d = dialects.get(dialect)
        self.constants: dict[str, fp.Literal] = {}
        self.warnings: list[str] = []
        # typed lists (shapes.py): the first run records (plan None), the second compiles with the plan
        self.plan = plan
        self.usages: dict[int, shapes.Usage] = {}
        self._lists = 0
        self._quiet = 0

    # -- typed lists --
    def typed_list(self, v: Val) -> tuple[str, int | None]:
        """The list a where()/extension() filters, and the typed list it is (None: not a candidate).

        A list can be typed when its elements are of a known complex type and it is either a list field of a typed
        element (the resource's own in a typed read of files, or an element of another typed list), or the last
        step of a path with no other list in it (read with json_transform)."""
        d = self.d
        k = None
        alone = not v.base_list and all(s[1] is False for s in v.steps[:-1])
        if (d.name == "duckdb" and v.kind == "path" and v.choice is None and v.steps and v.klass is not None
                and not v.is_resource and len(v.steps[-1]) == 2 and v.steps[-1][1] is True
                and all(s[1] is not None for s in v.steps) and (v.elem is not None or alone)):
            self._lists += 1
            k = self._lists
            if self.plan is None:
                self.usages[k] = shapes.Usage(parent=(v.elem, v.steps) if v.elem is not None else None,
                                              container=(v.base, v.steps) if alone and v.elem in (None, 0)
                                              else None)
        if k is None:
            return self.as_list(v), None
        if self.plan is None or k not in self.plan:
            self._quiet += 1  # the list's own container: its use is the list's (Usage.parent), not a field's
            try:
                return self.as_list(v), k  # elements of list k even when it stays JSON: both runs number alike
            finally:
                self._quiet -= 1
        # NULL when absent, as the lists filtered from it: whatever takes the list's size or items takes it through
        # as_list, which makes NULL the empty list
        if v.elem is not None and v.elem in self.plan:
            return self._typed_walk(v, self.plan[v.elem], False, container=True)[0], k
        key = v.steps[-1][0]
        container, _ = self._walk(replace(v, steps=v.steps[:-1] + ((key, False),)), text=False)
        return f"json_transform({container}, {self.q(shapes.spec_text(self.plan[k]))})", k

    def record(self, v: Val, mode: str) -> None:
        """First run: a use of the elements of typed list v.elem along v.steps (mode "text" or "json"); no steps, or
        a step the model does not know, is a use of the element whole."""
        u = self.usages.get(v.elem) if self.plan is None and not self._quiet else None
        if u is None:
            return
        if not v.steps or any(s[1] is None for s in v.steps):
            u.whole = True
        else:
            u.uses.append((v.steps, mode, v.ftype))

    def typed(self, v: Val) -> shapes.Field | None:
        return self.plan.get(v.elem) if self.plan is not None and v.elem is not None else None

    def _typed_walk(self, v: Val, shape: shapes.Field, text: bool, *, container: bool = False) -> tuple[str, bool]:
        """Second run: the path from typed elements, through struct fields while they are fields, then as JSON."""
        d = self.d
        cur, cur_list, fields = v.base, v.base_list, shape.fields
        steps, i = v.steps, 0
        while i < len(steps):
            # from a list: one lambda takes the fields down to the next list, text or JSON field (`y.a.b.c`)
            y = self.fresh("y") if cur_list else ""
            got = y if cur_list else cur
            while True:
                step = steps[i]
                f = fields.get(step[0])
                if f is None:  # pragma: no cover - the plan holds every field the first run saw
                    raise ViewError(f"internal: no field {step[0]} in the typed list")
                whole_list = f.is_list and len(step) == 2
                got = f'{got}."{step[0]}"' if len(step) == 2 else f'({got}."{step[0]}")[{step[2] + 1}]'
                i += 1
                if f.kind != shapes.STRUCT or whole_list or not cur_list or i == len(steps):
                    break
                fields = f.fields
            if cur_list:
                z = self.fresh("z")
                vals = d.transform(cur, y, got)
                cur = d.flatten(vals) if whole_list else d.filter(vals, z, f"{z} IS NOT NULL")
            else:
                cur, cur_list = got, whole_list
            rest = steps[i:]
            if f.kind == shapes.JSON_:
                return self._walk(Val("path", base=cur, base_list=cur_list, steps=rest), text=text)
            if f.kind == shapes.TEXT:
                if rest:  # pragma: no cover - a text field is the end of its paths
                    raise ViewError(f"internal: the text field {step[0]} has no elements")
                if text:
                    return cur, cur_list
                if cur_list:
                    x = self.fresh("x")
                    return d.transform(cur, x, f"to_json({x})"), True
                return f"to_json({cur})", False
            fields = f.fields
        if container:  # the structs of a typed list inside a typed element
            return cur, cur_list
        raise ViewError("internal: a typed element used whole")  # pragma: no cover - such a list is not typed

    # -- helpers --
    def fresh(self, prefix: str) -> str:
        return self.d.fresh(prefix)

    def q(self, text: str) -> str:
        return self.d.q(text)

    def fail(self, scope: _Scope | None, message: str) -> ViewError:
        if scope is None:
            return ViewError(message)
        expr = f" (path '{scope.expr}')" if scope.expr else ""
        return ViewError(f"{scope.where}{expr}: {message}")

    def sql_error(self, scope: _Scope, message: str) -> str:
        expr = f" (path '{scope.expr}')" if scope.expr else ""
        return self.d.error(f"{scope.where}{expr}: {message}")

    def sql_type(self, t: str) -> str:
        return self.d.string if t == "VARCHAR" else t

    # -- materialising values --
    def as_list(self, v: Val, *, text: bool = False) -> str:
        """SQL for a list of JSON values (or of their text, for primitives) holding the collection."""
        d = self.d
        if v.kind == "empty":
            return "[]::VARCHAR[]" if text and d.name == "duckdb" else d.empty_list()
        if v.kind == "nlist":
            return v.sql
        if v.kind == "native":
            return d.singleton_list(v.sql)
        sql, is_list = self._walk(v, text=text)
        if is_list:
            return d.coalesce_list(sql)
        return d.singleton_list(sql)

    def single_of_list(self, lst: str, scope: _Scope, message: str) -> str:
        d = self.d
        return (f"(CASE WHEN {d.size(lst)} > 1 THEN {self.sql_error(scope, message)} ELSE {d.at(lst, '1')} END)")

    def as_single(self, v: Val, scope: _Scope, *, text: bool = False,
                  message: str = "more than one value where one is expected") -> str:
        """SQL for the one JSON value (or its text) of a collection; NULL when empty, an error when several."""
        if v.kind == "empty":
            return "NULL"
        if v.kind == "native":
            return v.sql
        if v.kind == "nlist":
            return self.single_of_list(v.sql, scope, message)
        sql, is_list = self._walk(v, text=text)
        if not is_list:
            return sql
        return self.single_of_list(self.d.coalesce_list(sql), scope, message)

    def _walk(self, v: Val, *, text: bool) -> tuple[str, bool]:
        d = self.d
        if v.elem is not None and v.choice is None:
            self.record(v, "text" if text else "json")
            shape = self.typed(v)
            if shape is not None:
                return self._typed_walk(v, shape, text)
        if v.choice is not None:  # a choice element used without ofType(): whichever variant is present
            parts = [replace(v, steps=v.steps + ((e.name, e.is_list),), choice=None) for e in v.choice.variants]
            if v.many:
                return d.flatten(d.array(*(self.as_list(p, text=text) for p in parts))), True
            walked = [self._walk(p, text=text)[0] for p in parts]
            return "coalesce(" + ", ".join(walked) + ")", False
        cur, cur_list = v.base, v.base_list
        segs: list[tuple] = []
        steps = list(v.steps)
        for i, step in enumerate(steps):
            if step[1] is None:  # unknown element: a list or a single value, decided per value
                cur, cur_list = d.navigate(cur, cur_list, segs, False)
                segs = []
                if not cur_list:
                    cur, cur_list = d.singleton_list(cur), True
                is_last = i == len(steps) - 1
                cur = d.navigate_unknown(cur, step[0], text and is_last)
                if is_last:
                    return cur, True
                continue
            segs.append(step)
        return d.navigate(cur, cur_list, segs, text)

    def native(self, v: Val, scope: _Scope, hint: str | None = None) -> tuple[str, str | None]:
        """A typed SQL scalar for a value used as an operand (NULL when empty)."""
        if v.kind == "native":
            return v.sql, v.ftype
        if v.kind == "empty":
            return "NULL", hint
        if v.kind == "path" and v.ftype is not None and v.ftype not in model.PRIMITIVES:
            return self.as_single(v, scope), "json"
        text = self.as_single(v, scope, text=True)
        ftype = v.ftype or hint
        return _cast_text(text, ftype), ftype

    def native_list(self, v: Val, scope: _Scope, hint: str | None = None) -> tuple[str, str | None]:
        if v.kind == "nlist":
            return v.sql, v.ftype
        if v.kind in ("native", "empty"):
            sql, t = self.native(v, scope, hint)
            return self.d.singleton_list(sql), t
        ftype = v.ftype or hint
        lst = self.as_list(v, text=True)
        cast = _SQL_CAST.get(ftype or "")
        if cast:
            x = self.fresh("x")
            lst = self.d.transform(lst, x, f"CAST({x} AS {cast})")
        return lst, ftype

    def boolean(self, v: Val, scope: _Scope) -> str:
        """SQL BOOLEAN for a value in a boolean context; a value known not to be boolean is an error."""
        if v.kind == "empty":
            return "CAST(NULL AS BOOLEAN)"
        if v.ftype not in (None, "boolean"):
            raise self.fail(scope, f"the expression gives {v.ftype}, not boolean")
        if v.kind == "native":
            return v.sql
        if v.ftype == "boolean":
            return f"CAST({self.as_single(v, scope, text=True)} AS BOOLEAN)"
        one = self.as_single(v, scope)
        return (f"(CASE WHEN ({one}) IS NULL THEN NULL WHEN {self.d.is_json_boolean(one)} THEN "
                f"CAST({self.d.text_of(one)} AS BOOLEAN) ELSE "
                f"{self.sql_error(scope, 'the expression does not give a boolean')} END)")

    # -- FHIRPath --
    def expr(self, text: Any, scope: _Scope) -> Val:
        if not isinstance(text, str):
            raise self.fail(scope, f"a path must be a FHIRPath string, not {type(text).__name__} {text!r}")
        scope.expr = text
        try:
            tree = fp.parse(text)
        except fp.FhirPathSyntaxError as exc:
            raise self.fail(scope, f"not valid FHIRPath: {exc}") from None
        return self.node(tree, scope.this, scope)

    def node(self, n: Any, this: Val, scope: _Scope) -> Val:
        if isinstance(n, fp.Literal):
            return self.literal(n)
        if isinstance(n, fp.EmptySet):
            return Val("empty")
        if isinstance(n, fp.Identifier):
            return self.member(this, n.name, scope, at_root=True)
        if isinstance(n, fp.Member):
            return self.member(self.node(n.target, this, scope), n.name, scope)
        if isinstance(n, fp.Variable):
            return self.variable(n, this, scope)
        if isinstance(n, fp.Index):
            return self.index(self.node(n.target, this, scope), n.index, this, scope)
        if isinstance(n, fp.Call):
            target = this if n.target is None else self.node(n.target, this, scope)
            return self.call(target, n, this, scope)
        if isinstance(n, fp.Unary):
            operand = self.node(n.operand, this, scope)
            sql, t = self.native(operand, scope)
            if t not in ("integer", "decimal", None) and t not in model.INTEGER_LIKE:
                raise self.fail(scope, f"unary {n.op} needs a number, not {t}")
            return Val("native", sql=f"({n.op}{sql})", ftype=t)
        if isinstance(n, fp.Binary):
            return self.binary(n, this, scope)
        if isinstance(n, fp.TypeName):
            raise self.fail(scope, f"a type name ({n.name}) is only allowed as the argument of ofType()")
        raise self.fail(scope, f"unsupported expression {n!r}")  # pragma: no cover - the parser makes no other

    def literal(self, lit: fp.Literal) -> Val:
        v, t = lit.value, lit.type
        if t == "boolean":
            return Val("native", sql="true" if v else "false", ftype="boolean")
        if t in model.INTEGER_LIKE:
            return Val("native", sql=str(int(v)), ftype="integer")
        if t == "decimal":
            return Val("native", sql=f"CAST({self.q(str(v))} AS DOUBLE)", ftype="decimal")
        return Val("native", sql=self.q(str(v)), ftype=t)

    def variable(self, n: fp.Variable, this: Val, scope: _Scope) -> Val:
        if not n.external:
            if n.name == "$this":
                return this
            raise self.fail(scope, f"{n.name} is not supported")
        if n.name == "rowIndex":
            return Val("native", sql=scope.row_index, ftype="integer")
        if n.name in ("resource", "rootResource"):
            return self.root
        if n.name not in self.constants:
            raise self.fail(scope, f"%{n.name} is not defined (add it to the view's constant list)")
        return self.literal(self.constants[n.name])

    def member(self, v: Val, name: str, scope: _Scope, *, at_root: bool = False) -> Val:
        if v.kind == "empty":
            return v
        if v.kind != "path":
            raise self.fail(scope, f"cannot take '{name}' of a {v.ftype or 'computed'} value")
        if at_root and v.is_resource and name == v.ftype:  # Patient.name written with the type
            return v
        if v.choice is not None:
            raise self.fail(scope, f"'{v.choice.name}' is a choice element: use ofType() before '.{name}'")
        if v.klass is not None:
            el = model.children(v.klass).get(name)
            if el is None:  # FHIRPath: an element the type does not have gives an empty collection
                self.warnings.append(f"{scope.where}: {v.ftype} has no element '{name}' (always empty)")
                return Val("empty")
            if isinstance(el, model.Choice):
                return replace(v, choice=el, ftype=None, klass=None, is_resource=False)
            return replace(v, steps=v.steps + ((el.name, el.is_list),), ftype=el.type, klass=el.klass,
                           is_resource=False)
        if v.ftype is not None and v.ftype in model.PRIMITIVES:
            raise self.fail(scope, f"{v.ftype} values have no element '{name}'")
        return replace(v, steps=v.steps + ((name, None),), ftype=None, klass=None, is_resource=False)

    def index(self, v: Val, index: Any, this: Val, scope: _Scope) -> Val:
        idx_val = self.node(index, this, scope)
        idx, t = self.native(idx_val, scope)
        if t not in model.INTEGER_LIKE:
            raise self.fail(scope, f"an index must be an integer, not {t}")
        if idx_val.kind == "native" and idx.lstrip("-").isdigit():
            return self.nth(v, int(idx), scope)
        return self.pick(v, f"(({idx}) + 1)", scope)

    def nth(self, v: Val, n: int, scope: _Scope) -> Val:
        if v.kind == "empty" or n < 0:
            return Val("empty")
        if v.kind == "native":
            return v if n == 0 else Val("empty")
        if v.kind == "path" and v.choice is None and not v.base_list and v.steps:
            lists = [i for i, s in enumerate(v.steps) if s[1] is not False]
            if lists == [len(v.steps) - 1] and v.steps[-1][1] is True:  # name[1] -> $.name[1]
                key = v.steps[-1][0]
                return replace(v, steps=v.steps[:-1] + ((key, False, n),))
            if not lists:
                return v if n == 0 else Val("empty")
        return self.pick(v, str(n + 1), scope)

    def pick(self, v: Val, one_based: str, scope: _Scope) -> Val:
        if v.kind == "nlist":
            return Val("native", sql=self.d.at(v.sql, one_based), ftype=v.ftype)
        if v.kind == "path" and v.elem is not None and v.choice is None:
            if not v.steps and v.base_list:  # one of the typed elements
                return replace(v, base=self.d.at(v.base, one_based), base_list=False)
            if v.steps and v.ftype in model.STRING_LIKE:  # one of their texts (a string-like field)
                self.record(v, "text")
                shape = self.typed(v)
                if shape is not None and shapes.leaf_kind(shape, v.steps) == shapes.TEXT:
                    texts, is_list = self._walk(v, text=True)  # NULL or a list ([n] of NULL is NULL)
                    if is_list:
                        return Val("native", sql=self.d.at(texts, one_based), ftype=v.ftype)
                self._quiet += 1
                try:
                    lst = self.as_list(v)
                finally:
                    self._quiet -= 1
                return Val("path", base=self.d.at(lst, one_based), ftype=v.ftype, klass=v.klass)
        lst = self.as_list(v)
        return Val("path", base=self.d.at(lst, one_based), ftype=v.ftype, klass=v.klass)

    def binary(self, n: fp.Binary, this: Val, scope: _Scope) -> Val:
        op = n.op
        left = self.node(n.left, this, scope)
        right = self.node(n.right, this, scope)
        if op in ("and", "or", "xor", "implies"):
            a, b = self.boolean(left, scope), self.boolean(right, scope)
            sql = {"and": f"(({a}) AND ({b}))", "or": f"(({a}) OR ({b}))",
                   "xor": f"(({a}) <> ({b}))", "implies": f"((NOT ({a})) OR ({b}))"}[op]
            return Val("native", sql=sql, ftype="boolean")
        if op in ("=", "!=", "<", ">", "<=", ">="):
            return self.compare(op, left, right, scope)
        if op in ("+", "-", "*", "/", "div", "mod", "&"):
            return self.arithmetic(op, left, right, scope)
        raise self.fail(scope, f"the operator '{op}' is not supported (supported: and, or, xor, implies, =, !=, <, "
                               ">, <=, >=, +, -, *, /, div, mod, &)")

    def compare(self, op: str, left: Val, right: Val, scope: _Scope) -> Val:
        d = self.d
        hint_l = right.ftype if left.ftype is None else None
        hint_r = left.ftype if right.ftype is None else None
        sql_op = "<>" if op == "!=" else op
        if (left.many or right.many) and op in ("=", "!="):
            lst_l, tl = self.native_list(left, scope, hint_l)
            lst_r, tr = self.native_list(right, scope, hint_r)
            _check_comparable(self, scope, tl, tr)
            same = f"({d.size(lst_l)} = {d.size(lst_r)} AND {d.all_equal(lst_l, lst_r)})"
            sql = (f"(CASE WHEN {d.size(lst_l)} = 0 OR {d.size(lst_r)} = 0 THEN NULL ELSE "
                   f"{'NOT ' if op == '!=' else ''}{same} END)")
            return Val("native", sql=sql, ftype="boolean")
        a, ta = self.native(left, scope, hint_l)
        b, tb = self.native(right, scope, hint_r)
        _check_comparable(self, scope, ta, tb)
        if "json" in (ta, tb):
            a, b = f"CAST({a} AS {d.string})", f"CAST({b} AS {d.string})"
        temporal = {ta, tb} & {"date", "dateTime", "instant", "time"}
        if temporal and op not in ("=", "!="):
            # different precisions cannot be ordered (FHIRPath: empty) - e.g. 2016 and 2016-05
            return Val("native", sql=(f"(CASE WHEN length({a}) <> length({b}) AND ({d.starts_with(a, b)} OR "
                                      f"{d.starts_with(b, a)}) THEN NULL ELSE ({a}) {sql_op} ({b}) END)"),
                       ftype="boolean")
        return Val("native", sql=f"(({a}) {sql_op} ({b}))", ftype="boolean")

    def arithmetic(self, op: str, left: Val, right: Val, scope: _Scope) -> Val:
        a, ta = self.native(left, scope, right.ftype if left.ftype is None else None)
        b, tb = self.native(right, scope, left.ftype if right.ftype is None else None)
        s = self.d.string
        if op == "&":
            return Val("native", sql=f"(coalesce(CAST({a} AS {s}), '') || coalesce(CAST({b} AS {s}), ''))",
                       ftype="string")
        numeric = model.INTEGER_LIKE | {"decimal"}
        if op == "+" and ta in model.STRING_LIKE and tb in model.STRING_LIKE:
            return Val("native", sql=f"(({a}) || ({b}))", ftype="string")
        if ta not in numeric or tb not in numeric:
            raise self.fail(scope, f"'{op}' needs numbers, not {ta or 'an unknown type'} and "
                                   f"{tb or 'an unknown type'}")
        both_int = ta in model.INTEGER_LIKE and tb in model.INTEGER_LIKE
        if op == "/":
            return Val("native", sql=f"(CAST({a} AS DOUBLE) / NULLIF(CAST({b} AS DOUBLE), 0))", ftype="decimal")
        if op == "div":
            return Val("native", sql=f"CAST(CAST({a} AS DOUBLE) / NULLIF(CAST({b} AS DOUBLE), 0) AS BIGINT)",
                       ftype="integer")
        if op == "mod":
            return Val("native", sql=f"(({a}) % NULLIF({b}, 0))", ftype="integer" if both_int else "decimal")
        return Val("native", sql=f"(({a}) {op} ({b}))", ftype="integer" if both_int else "decimal")

    def call(self, v: Val, n: fp.Call, this: Val, scope: _Scope) -> Val:
        d = self.d
        name, args = n.name, n.args
        arity = {"exists": (0, 1), "empty": (0, 0), "first": (0, 0), "last": (0, 0), "count": (0, 0),
                 "where": (1, 1), "ofType": (1, 1), "extension": (1, 1), "join": (0, 1), "not": (0, 0),
                 "getResourceKey": (0, 0), "getReferenceKey": (0, 1), "lowBoundary": (0, 0),
                 "highBoundary": (0, 0)}
        if name not in arity:
            raise self.fail(scope, f"the FHIRPath function {name}() is not supported by this engine (supported: "
                                   f"{', '.join(f + '()' for f in SUPPORTED_FUNCTIONS)})")
        lo, hi = arity[name]
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.fail(scope, f"{name}() takes {want} argument(s), not {len(args)}")
        if name == "where":
            return self.where(v, args[0], scope)
        if name == "exists":
            if args:
                v = self.where(v, args[0], scope)
            return Val("native", sql=self.exists(v), ftype="boolean")
        if name == "empty":
            return Val("native", sql=f"(NOT {self.exists(v)})", ftype="boolean")
        if name == "count":
            if v.kind == "empty":
                return Val("native", sql="0", ftype="integer")
            if not v.many:
                return Val("native", sql=f"(CASE WHEN ({self.as_single(v, scope)}) IS NULL THEN 0 ELSE 1 END)",
                           ftype="integer")
            return Val("native", sql=d.size(self._elements(v) or self.as_list(v)), ftype="integer")
        if name == "first":
            return self.nth(v, 0, scope)
        if name == "last":
            if not v.many:
                return v
            return self.pick(v, "-1", scope)
        if name == "not":
            return Val("native", sql=f"(NOT {self.boolean(v, scope)})", ftype="boolean")
        if name == "ofType":
            return self.of_type(v, args[0], scope)
        if name == "extension":
            url = self.node(args[0], this, scope)
            if url.kind != "native" or url.ftype not in model.STRING_LIKE:
                raise self.fail(scope, "extension() takes a url string")
            ext = self.member(v, "extension", scope) if v.kind == "path" else Val("empty")
            if ext.kind == "empty":
                return ext
            lst, k = self.typed_list(ext)
            x = self.fresh("x")
            item = Val("path", base=x, ftype="Extension", klass=ext.klass, elem=k)
            url_text = self.as_single(self.member(item, "url", scope), scope, text=True)
            return Val("path", base=d.filter(lst, x, f"{url_text} = {url.sql}"), base_list=True,
                       ftype="Extension", klass=ext.klass, elem=k)
        if name == "join":
            sep = "''"
            if args:
                s = self.node(args[0], this, scope)
                if s.kind != "native" or s.ftype not in model.STRING_LIKE:
                    raise self.fail(scope, "join() takes a separator string")
                sep = s.sql
            if v.kind == "empty":
                return Val("native", sql="''", ftype="string")
            if v.ftype is not None and v.ftype not in model.STRING_LIKE:
                raise self.fail(scope, f"join() needs strings, not {v.ftype}")
            return Val("native", sql=d.join(self.as_list(v, text=True), sep), ftype="string")
        if name == "getResourceKey":
            if not (v.kind == "path" and (v.is_resource or v.ftype == "Resource")):
                raise self.fail(scope, "getResourceKey() must be called on a resource")
            return Val("native", sql=self.as_single(replace(v, steps=v.steps + (("id", False),), ftype="id"),
                                                    scope, text=True), ftype="string")
        if name == "getReferenceKey":
            return self.reference_key(v, args[0].name if args else None, scope)
        if name in ("lowBoundary", "highBoundary"):
            return self.boundary(v, name == "lowBoundary", scope)
        raise self.fail(scope, f"{name}() is not supported")  # pragma: no cover

    def exists(self, v: Val) -> str:
        if v.kind == "empty":
            return "false"
        if v.kind == "native":
            return f"(({v.sql}) IS NOT NULL)"
        if not v.many:
            sql, _ = self._walk(v, text=False)
            return f"(({sql}) IS NOT NULL)"
        return f"({self.d.size(self._elements(v) or self.as_list(v))} > 0)"

    def _elements(self, v: Val) -> str | None:
        """The list of a filtered list's elements as it is (structs or JSON), for its size: no use of a field."""
        if v.kind == "path" and v.elem is not None and v.base_list and not v.steps and v.choice is None:
            return self.d.coalesce_list(v.base)
        return None

    def where(self, v: Val, criteria: Any, scope: _Scope) -> Val:
        if v.kind == "empty":
            return v
        if v.kind in ("native", "nlist"):
            raise self.fail(scope, "where() on a computed value is not supported")
        x = self.fresh("x")
        lst, k = self.typed_list(v) if v.many else ("", None)
        item = Val("path", base=x, ftype=v.ftype, klass=v.klass, is_resource=v.is_resource, elem=k)
        cond = self.boolean(self.node(criteria, item, scope), scope)
        if not v.many:
            one = self.as_single(v, scope)
            return Val("path", base=f"(CASE WHEN {self.d.bind(cond, x, one)} THEN {one} END)", ftype=v.ftype,
                       klass=v.klass, is_resource=v.is_resource)
        return Val("path", base=self.d.filter(lst, x, f"coalesce({cond}, false)"), base_list=True,
                   ftype=v.ftype, klass=v.klass, elem=k)

    def of_type(self, v: Val, arg: Any, scope: _Scope) -> Val:
        if not isinstance(arg, fp.TypeName):
            raise self.fail(scope, "ofType() takes a type name")
        t = arg.name
        known = t in model.PRIMITIVES or model.is_resource_type(t) or _is_complex_type(t)
        if not known:
            raise self.fail(scope, f"ofType({t}): {t} is not a FHIR type")
        if v.kind == "empty":
            return v
        if v.kind == "path" and v.choice is not None:
            key = model.choice_key(v.choice.name, t)
            for e in v.choice.variants:
                if e.name == key:
                    return replace(v, choice=None, steps=v.steps + ((e.name, e.is_list),), ftype=e.type,
                                   klass=e.klass)
            return Val("empty")
        if v.kind == "path" and v.ftype is None and v.steps and v.steps[-1][1] is None:
            # an element the model does not know: value -> valueQuantity by the JSON naming rule
            key = model.choice_key(v.steps[-1][0], t)
            return replace(v, steps=v.steps[:-1] + ((key, None),), ftype=t if t in model.PRIMITIVES else None)
        if v.ftype is None:
            raise self.fail(scope, f"ofType({t}) on a value of unknown type is not supported")
        if v.ftype == t or (v.is_resource and t in ("Resource", "DomainResource")):
            return v
        return Val("empty")

    def reference_key(self, v: Val, rtype: str | None, scope: _Scope) -> Val:
        d = self.d
        if v.kind == "empty":
            return v
        if v.kind != "path" or v.ftype not in (None, "Reference"):
            raise self.fail(scope, "getReferenceKey() must be called on a Reference")
        if rtype is not None and not model.is_resource_type(rtype):
            raise self.fail(scope, f"getReferenceKey({rtype}): {rtype} is not a FHIR resource type")
        ref = self.member(v, "reference", scope)
        # the id after Type/ (absolute or relative, _history dropped), or after urn:uuid: when no type is asked for
        head = f"(?:^|/){rtype}/" if rtype else "(?:^urn:uuid:|(?:^|/)[A-Za-z]+/)"
        pattern = self.q(head + r"([A-Za-z0-9.-]{1,64})(?:/_history/[^/]+)?$")

        def key(x: str) -> str:
            return f"nullif(regexp_extract({x}, {pattern}, 1), '')"

        if ref.many:
            x, y = self.fresh("x"), self.fresh("y")
            lst = self.as_list(ref, text=True)
            return Val("nlist", sql=d.filter(d.transform(lst, x, key(x)), y, f"{y} IS NOT NULL"), ftype="string")
        return Val("native", sql=key(self.as_single(ref, scope, text=True)), ftype="string")

    def boundary(self, v: Val, low: bool, scope: _Scope) -> Val:
        d = self.d
        t = v.ftype
        if v.kind == "empty":
            return v
        if t not in ("decimal", "integer", "date", "dateTime", "instant", "time"):
            raise self.fail(scope, f"{'low' if low else 'high'}Boundary() needs a decimal, date, dateTime or time, "
                                   f"not {t or 'a value of unknown type'}")
        s = self.fresh("s")
        if t in ("decimal", "integer"):
            raw = d.number_text(self.as_single(v, scope)) if v.kind == "path" else f"CAST({v.sql} AS {d.string})"
            digits = f"(CASE WHEN {d.instr(s, chr(39) + '.' + chr(39))} > 0 THEN length({s}) - " \
                     f"{d.instr(s, chr(39) + '.' + chr(39))} ELSE 0 END)"
            half = f"CAST('0.' || repeat('0', {digits}) || '5' AS DECIMAL(38, 18))"
            sign = "-" if low else "+"
            sql = (f"(CASE WHEN {s} IS NULL THEN NULL ELSE CAST(CAST({s} AS DECIMAL(38, 18)) {sign} {half} AS DOUBLE) "
                   "END)")
            return Val("native", sql=d.bind(sql, s, raw), ftype="decimal")
        text = self.native(v, scope)[0]
        if t == "time":
            return Val("native", sql=d.bind(_time_bound(s, low), s, text), ftype="time")
        dd = self.fresh("d")
        date_part = _date_bound(dd, low, d.string)
        if t == "date":
            return Val("native", sql=d.bind(date_part, dd, text), ftype="date")
        tz_default = "+14:00" if low else "-12:00"
        tt = self.fresh("t")
        sql = (f"(CASE WHEN {s} IS NULL THEN NULL ELSE {d.bind(date_part, dd, f'split_part({s}, {self.q(chr(84))}, 1)')}"
               f" || 'T' || {d.bind(_time_bound(tt, low), tt, _time_of(s))} || "
               f"coalesce(nullif(regexp_extract({s}, 'T.*(Z|[+-][0-9]{{2}}:[0-9]{{2}})$', 1), ''), {self.q(tz_default)})"
               " END)")
        return Val("native", sql=d.bind(sql, s, text), ftype="dateTime")

    # -- the view --
    def compile(self) -> CompiledView:
        view = self.view
        if not isinstance(view, dict):
            raise ViewError(f"a ViewDefinition must be a JSON object, not {type(view).__name__}")
        if not view:
            raise ViewError("the ViewDefinition is empty: it needs 'resource' and 'select'")
        if view.get("resourceType", "ViewDefinition") != "ViewDefinition":
            raise ViewError(f"resourceType: expected ViewDefinition, got {view.get('resourceType')!r}")
        unknown = sorted(set(view) - VIEW_KEYS)
        if unknown:
            raise ViewError(f"unknown ViewDefinition element(s): {', '.join(unknown)}")
        resource = view.get("resource")
        if not isinstance(resource, str) or not resource:
            raise ViewError("resource: required (the FHIR resource type the view reads, e.g. Patient)")
        klass = model.resource_class(resource)
        if klass is None:
            raise ViewError(f"resource: {resource!r} is not a FHIR R4 resource type")
        self.constants = self.read_constants(view.get("constant", []))
        select = view.get("select")
        if not isinstance(select, list) or not select:
            raise ViewError("select: required, a list of one or more select elements")
        # the resource is "element 0" of the typed lists (shapes.py): its fields are typed columns in a read of files
        root_elem = 0 if self.d.name == "duckdb" else None
        if root_elem is not None and self.plan is None:
            self.usages[0] = shapes.Usage()
        self.root = Val("path", base="_r" if self.files else "_r.resource", ftype=resource, klass=klass,
                        is_resource=True, elem=root_elem)
        root_scope = _Scope(self.root, "0", "view")
        rtype = '_r."resourceType"' if self.files else self.d.get_text('_r.resource', '$.resourceType')
        conds = [f"{rtype} = {self.q(resource)}"]
        where = view.get("where", [])
        if not isinstance(where, list):
            raise ViewError("where: must be a list of {path} elements")
        for i, w in enumerate(where):
            loc = f"where[{i}]"
            if not isinstance(w, dict) or "path" not in w:
                raise ViewError(f"{loc}: needs a path")
            extra = sorted(set(w) - {"path", "description", "id", "extension"})
            if extra:
                raise ViewError(f"{loc}: unknown element(s): {', '.join(extra)}")
            scope = _Scope(self.root, "0", f"{loc}.path")
            v = self.expr(w["path"], scope)
            conds.append(f"coalesce({self.boolean(v, scope)}, false)")
        if self.d.name == "spark":
            rows = self.rows_node({"select": select}, root_scope, "view", top=True)
            columns = rows.cols
            cols = ", ".join(f"_v.{_ident(c.name, 'spark')}" for c in columns)
            sql = (f"SELECT {cols} FROM (SELECT _r.resource FROM {{source}} AS _r WHERE {' AND '.join(conds)}) AS _r "
                   f"LATERAL VIEW inline({rows.sql}) _v")
        else:
            frag = self.select_node({"select": select}, root_scope, "view", top=True)
            columns = [c for c, _ in frag.cols]
            cols = ", ".join(f"{sql} AS {_ident(c.name)}" for c, sql in frag.cols)
            source = (f"read_json({{files}}, format = 'newline_delimited', columns = "
                      f"{shapes.columns_sql(self.plan[0])})" if self.files else self.d.root_source("{source}"))
            sql = f"SELECT {cols} FROM {source} AS _r {' '.join(frag.joins)} WHERE " + " AND ".join(conds)
        names = [c.name for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ViewError(f"select: column name(s) used more than once: {', '.join(dupes)}")
        return CompiledView(resource, sql, tuple(columns), tuple(dict.fromkeys(self.warnings)))

    def read_constants(self, constants: Any) -> dict[str, fp.Literal]:
        if not isinstance(constants, list):
            raise ViewError("constant: must be a list of {name, value[x]} elements")
        out: dict[str, fp.Literal] = {}
        for i, c in enumerate(constants):
            loc = f"constant[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not NAME.match(c["name"]):
                raise ViewError(f"{loc}: needs a name (letters, digits and _, starting with a letter)")
            values = [k for k in c if k.startswith("value")]
            if len(values) != 1:
                raise ViewError(f"{loc} '{c['name']}': needs exactly one value[x] (e.g. valueString), found "
                                f"{len(values)}")
            key = values[0]
            t = key[5:6].lower() + key[6:]
            value = c[key]
            if t not in model.PRIMITIVES or t == "xhtml":
                raise ViewError(f"{loc} '{c['name']}': {key} is not a primitive value[x] a constant may have")
            if t == "boolean" and not isinstance(value, bool):
                raise ViewError(f"{loc} '{c['name']}': valueBoolean must be true or false")
            if t in model.INTEGER_LIKE and (not isinstance(value, int) or isinstance(value, bool)):
                raise ViewError(f"{loc} '{c['name']}': {key} must be an integer")
            if t == "decimal" and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ViewError(f"{loc} '{c['name']}': valueDecimal must be a number")
            if t in model.STRING_LIKE and not isinstance(value, str):
                raise ViewError(f"{loc} '{c['name']}': {key} must be a string")
            if t == "decimal":
                value = Decimal(str(value))
            out[c["name"]] = fp.Literal(value, t)
        return out

    def check_node(self, node: Any, loc: str, top: bool) -> list[str]:
        if not isinstance(node, dict):
            raise ViewError(f"{loc}: a select element must be a JSON object")
        if not top:
            unknown = sorted(set(node) - SELECT_KEYS)
            if unknown:
                raise ViewError(f"{loc}: unknown element(s): {', '.join(unknown)}")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
        if len(iterators) > 1:
            raise ViewError(f"{loc}: use only one of forEach, forEachOrNull and repeat")
        if not top and not any(k in node for k in ("column", "select", "unionAll")):
            raise ViewError(f"{loc}: needs column, select or unionAll")
        for key in ("column", "select"):
            if not isinstance(node.get(key, []), list):
                raise ViewError(f"{loc}.{key}: must be a list")
        if "unionAll" in node and (not isinstance(node["unionAll"], list) or not node["unionAll"]):
            raise ViewError(f"{loc}.unionAll: must be a list of one or more select elements")
        return iterators

    def items(self, node: dict, kind: str, scope: _Scope, loc: str) -> tuple[str, Val]:
        """The forEach/forEachOrNull items (a list of JSON) and a value describing their type."""
        it_scope = _Scope(scope.this, scope.row_index, f"{loc}.{kind}")
        v = self.expr(node[kind], it_scope)
        if v.kind not in ("path", "empty"):
            raise self.fail(it_scope, "forEach needs elements of the resource, not a computed value")
        items = self.as_list(v)
        if kind == "forEachOrNull":
            items = (f"(CASE WHEN {self.d.size(items)} = 0 THEN {self.d.array(self.d.null_json())} "
                     f"ELSE {items} END)")
        return items, v

    def repeat_children(self, paths: list, parent: Val, scope: _Scope) -> tuple[str, Val]:
        lists, first = [], None
        for p in paths:
            v = self.expr(p, _Scope(parent, scope.row_index, scope.where))
            if v.kind not in ("path", "empty"):
                raise self.fail(scope, "repeat needs elements, not a computed value")
            lists.append(self.as_list(v))
            first = first or (v if v.kind == "path" else None)
        return (self.d.flatten(self.d.array(*lists)) if len(lists) > 1 else lists[0]), first or Val("empty")

    def check_repeat(self, paths: Any, loc: str) -> None:
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ViewError(f"{loc}.repeat: must be a list of one or more FHIRPath strings")

    # DuckDB: lateral joins
    def select_node(self, node: Any, scope: _Scope, loc: str, *, top: bool = False) -> _Frag:
        iterators = self.check_node(node, loc, top)
        frag = _Frag()
        if iterators:
            kind = iterators[0]
            if kind == "repeat":
                self.check_repeat(node["repeat"], loc)
                items, typed = self.repeat(node["repeat"], _Scope(scope.this, scope.row_index, f"{loc}.repeat"),
                                           frag)
            else:
                items, typed = self.items(node, kind, scope, loc)
            a = self.fresh("f")
            frag.joins.append(f"CROSS JOIN LATERAL (SELECT unnest({a}_l) AS v, generate_subscripts({a}_l, 1) - 1 AS i "
                              f"FROM (SELECT {items} AS {a}_l)) AS {a}")
            this = Val("path", base=f"{a}.v", ftype=typed.ftype if typed.kind == "path" else None,
                       klass=typed.klass if typed.kind == "path" else None)
            scope = _Scope(this, f"{a}.i", loc)
        for i, col in enumerate(node.get("column", [])):
            frag.cols.append(self.column(col, scope, f"{loc}.column[{i}]"))
        for i, sub in enumerate(node.get("select", [])):
            sub_frag = self.select_node(sub, scope, f"select[{i}]" if top else f"{loc}.select[{i}]")
            frag.joins += sub_frag.joins
            frag.cols += sub_frag.cols
        if "unionAll" in node:
            self.union_all(node["unionAll"], scope, f"{loc}.unionAll", frag)
        return frag

    def repeat(self, paths: list, scope: _Scope, frag: _Frag) -> tuple[str, Val]:
        levels = []
        a = self.fresh("rp")
        kids, typed = self.repeat_children(paths, scope.this, scope)
        x, j = self.fresh("x"), self.fresh("j")
        frag.joins.append(f"CROSS JOIN LATERAL (SELECT list_transform({kids}, lambda {x}, {j}: {{'k': [{j}], "
                          f"'v': {x}}}) AS l) AS {a}0")
        levels.append(f"{a}0.l")
        for depth in range(1, MAX_REPEAT_DEPTH + 1):
            p = self.fresh("p")
            parent = Val("path", base=f"{p}.v", ftype=typed.ftype if typed.kind == "path" else None,
                         klass=typed.klass if typed.kind == "path" else None)
            kids, _ = self.repeat_children(paths, parent, scope)
            x, j = self.fresh("x"), self.fresh("j")
            frag.joins.append(f"CROSS JOIN LATERAL (SELECT flatten(list_transform({levels[-1]}, lambda {p}: "
                              f"list_transform({kids}, lambda {x}, {j}: {{'k': list_append({p}.k, {j}), 'v': {x}}})))"
                              f" AS l) AS {a}{depth}")
            levels.append(f"{a}{depth}.l")
        too_deep = self.sql_error(scope, f"the data nest deeper than {MAX_REPEAT_DEPTH} levels")
        s = self.fresh("s")
        items = (f"(CASE WHEN len({levels[-1]}) > 0 THEN {too_deep} ELSE list_transform(list_sort(flatten(["
                 + ", ".join(levels[:-1]) + f"])), lambda {s}: {s}.v) END)")
        return items, typed

    def union_all(self, branches: list, scope: _Scope, loc: str, frag: _Frag) -> None:
        compiled = [self.select_node(b, scope, f"{loc}[{i}]") for i, b in enumerate(branches)]
        self.check_union([[c for c, _ in b.cols] for b in compiled], loc)
        a = self.fresh("u")
        parts = []
        for b in compiled:
            cols = ", ".join(f"{sql} AS {_ident(c.name)}" for c, sql in b.cols)
            parts.append(f"SELECT {cols} FROM (SELECT 1) AS {self.fresh('one')} {' '.join(b.joins)}")
        frag.joins.append(f"CROSS JOIN LATERAL ({' UNION ALL '.join(parts)}) AS {a}")
        for c in self.union_columns([[c for c, _ in b.cols] for b in compiled]):
            frag.cols.append((c, f"{a}.{_ident(c.name)}"))

    def check_union(self, branch_cols: list[list[Column]], loc: str) -> None:
        names = [c.name for c in branch_cols[0]]
        for i, cols in enumerate(branch_cols[1:], start=1):
            other = [c.name for c in cols]
            if other != names:
                raise ViewError(f"{loc}[{i}]: the branches of unionAll must have the same columns in the same order "
                                f"({', '.join(names)} vs {', '.join(other)})")

    def union_columns(self, branch_cols: list[list[Column]]) -> list[Column]:
        out = []
        for i, c in enumerate(branch_cols[0]):
            types = {b[i].sql_type for b in branch_cols}
            out.append(c if len(types) == 1 else replace(c, sql_type=self.d.string, type="string"))
        return out

    # Spark: arrays of row structs
    def rows_node(self, node: Any, scope: _Scope, loc: str, *, top: bool = False) -> _Rows:
        d = self.d
        iterators = self.check_node(node, loc, top)
        if not iterators:
            return self.rows_parts(node, scope, loc, top)
        kind = iterators[0]
        if kind == "repeat":
            self.check_repeat(node["repeat"], loc)
            items, typed = self.repeat_items(node["repeat"], _Scope(scope.this, scope.row_index, f"{loc}.repeat"))
        else:
            items, typed = self.items(node, kind, scope, loc)
        x, i = self.fresh("x"), self.fresh("i")
        this = Val("path", base=x, ftype=typed.ftype if typed.kind == "path" else None,
                   klass=typed.klass if typed.kind == "path" else None)
        inner = self.rows_parts(node, _Scope(this, i, loc), loc, top)
        return _Rows(d.flatten(d.transform(items, f"{x}, {i}", inner.sql)), inner.cols)

    def rows_parts(self, node: dict, scope: _Scope, loc: str, top: bool) -> _Rows:
        d = self.d
        parts: list[_Rows] = []
        own = [self.column(col, scope, f"{loc}.column[{i}]") for i, col in enumerate(node.get("column", []))]
        if own:
            fields = ", ".join(f"{self.q(c.name)}, CAST({sql} AS {_spark_type(c)})" for c, sql in own)
            parts.append(_Rows(d.array(f"named_struct({fields})"), [c for c, _ in own]))
        for i, sub in enumerate(node.get("select", [])):
            parts.append(self.rows_node(sub, scope, f"select[{i}]" if top else f"{loc}.select[{i}]"))
        if "unionAll" in node:
            branches = [self.rows_node(b, scope, f"{loc}.unionAll[{i}]") for i, b in enumerate(node["unionAll"])]
            self.check_union([b.cols for b in branches], f"{loc}.unionAll")
            cols = self.union_columns([b.cols for b in branches])
            recast = []
            for b in branches:  # the same struct type in every branch
                s = self.fresh("s")
                fields = ", ".join(f"{self.q(c.name)}, CAST({s}.{_ident(c.name, 'spark')} AS {_spark_type(c)})"
                                   for c in cols)
                recast.append(d.transform(b.sql, s, f"named_struct({fields})"))
            parts.append(_Rows(f"concat({', '.join(recast)})", cols))
        acc = parts[0]
        for part in parts[1:]:  # the cross product of the parts, row by row
            a, b = self.fresh("a"), self.fresh("b")
            fields = ", ".join([f"{self.q(c.name)}, {a}.{_ident(c.name, 'spark')}" for c in acc.cols]
                               + [f"{self.q(c.name)}, {b}.{_ident(c.name, 'spark')}" for c in part.cols])
            acc = _Rows(d.flatten(d.transform(acc.sql, a, d.transform(part.sql, b, f"named_struct({fields})"))),
                        acc.cols + part.cols)
        return acc

    def repeat_items(self, paths: list, scope: _Scope) -> tuple[str, Val]:
        """All descendants in depth-first order: each level's items each followed by their own descendants."""
        d = self.d
        _, typed = self.repeat_children(paths, scope.this, scope)

        def below(parent: Val, depth: int) -> str:
            kids, _ = self.repeat_children(paths, parent, scope)
            if depth == MAX_REPEAT_DEPTH:
                too_deep = self.sql_error(scope, f"the data nest deeper than {MAX_REPEAT_DEPTH} levels")
                return f"(CASE WHEN {d.size(kids)} > 0 THEN {too_deep} ELSE {d.empty_list()} END)"
            c = self.fresh("c")
            child = Val("path", base=c, ftype=typed.ftype if typed.kind == "path" else None,
                        klass=typed.klass if typed.kind == "path" else None)
            return d.flatten(d.transform(kids, c, f"concat({d.array(c)}, {below(child, depth + 1)})"))

        return below(scope.this, 0), typed

    def column(self, col: Any, scope: _Scope, loc: str) -> tuple[Column, str]:
        d = self.d
        if not isinstance(col, dict):
            raise ViewError(f"{loc}: a column must be a JSON object")
        unknown = sorted(set(col) - COLUMN_KEYS)
        if unknown:
            raise ViewError(f"{loc}: unknown element(s): {', '.join(unknown)}")
        name = col.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ViewError(f"{loc}: needs a name of letters, digits and _ starting with a letter, got {name!r}")
        if "path" not in col:
            raise ViewError(f"{loc} '{name}': needs a path")
        collection = col.get("collection", False)
        if not isinstance(collection, bool):
            raise ViewError(f"{loc} '{name}': collection must be true or false")
        declared = col.get("type")
        if declared is not None:
            if not isinstance(declared, str) or declared not in COLUMN_TYPES and not _is_complex_type(declared):
                raise ViewError(f"{loc} '{name}': unknown column type {declared!r} (use a FHIR type such as string, "
                                "code, boolean, integer, decimal, date, dateTime)")
        cscope = _Scope(scope.this, scope.row_index, f"{loc} '{name}'")
        v = self.expr(col["path"], cscope)
        ftype = declared or v.ftype
        if ftype is None or ftype not in COLUMN_TYPES:
            ftype_out, sql_type = ("json", "VARCHAR") if ftype is not None else ("string", "VARCHAR")
        else:
            ftype_out, sql_type = ftype, COLUMN_TYPES[ftype]
        sql_type = self.sql_type(sql_type)
        complex_value = v.kind == "path" and v.ftype is not None and v.ftype not in model.PRIMITIVES
        if collection:
            if v.kind == "native":
                lst = d.singleton_list(f"CAST({v.sql} AS {sql_type})")
            else:
                lst = self.as_list(v, text=not complex_value)
                if complex_value or sql_type != d.string:
                    x = self.fresh("x")
                    lst = d.transform(lst, x, f"CAST({x} AS {sql_type})")
            return Column(name, ftype_out, f"{sql_type}[]", True), lst
        if v.kind == "native":
            return Column(name, ftype_out, sql_type, False), f"CAST({v.sql} AS {sql_type})"
        one = self.as_single(v, cscope, text=not complex_value,
                             message="more than one value in a column that is not a collection (set collection: "
                                     "true)")
        if complex_value:
            one = f"CAST({one} AS {d.string})"
        return Column(name, ftype_out, sql_type, False), (one if sql_type == d.string else
                                                          f"CAST({one} AS {sql_type})")


# -- small SQL builders ---------------------------------------------------------------------------------------
_SQL_CAST = {"boolean": "BOOLEAN", "integer": "BIGINT", "positiveInt": "BIGINT", "unsignedInt": "BIGINT",
             "integer64": "BIGINT", "decimal": "DOUBLE"}


def _cast_text(text: str, ftype: str | None) -> str:
    cast = _SQL_CAST.get(ftype or "")
    return f"CAST({text} AS {cast})" if cast else text


def _is_complex_type(name: str) -> bool:
    if not name or not name[0].isupper():
        return False
    try:
        from fhir.resources.R4B import get_fhir_model_class

        get_fhir_model_class(name)
        return True
    except (KeyError, ValueError, AttributeError, ImportError):
        return False


_COMPARABLE = [{"boolean"}, model.INTEGER_LIKE | {"decimal"}, model.STRING_LIKE]


def _check_comparable(c: _Compiler, scope: _Scope, a: str | None, b: str | None) -> None:
    if a is None or b is None or a == b or "json" in (a, b):
        return
    for group in _COMPARABLE:
        if a in group and b in group:
            return
    raise c.fail(scope, f"cannot compare {a} with {b}")


def _date_bound(d: str, low: bool, string: str) -> str:
    if low:
        return (f"(CASE length({d}) WHEN 4 THEN {d} || '-01-01' WHEN 7 THEN {d} || '-01' ELSE {d} END)")
    return (f"(CASE length({d}) WHEN 4 THEN {d} || '-12-31' WHEN 7 THEN CAST(last_day(CAST({d} || '-01' AS DATE)) "
            f"AS {string}) ELSE {d} END)")


def _time_of(s: str) -> str:
    return f"coalesce(nullif(regexp_extract({s}, 'T([0-9:.]+)', 1), ''), '')"


def _time_bound(t: str, low: bool) -> str:
    fill_s, fill_ms = ("00", "000") if low else ("59", "999")
    hh = "00" if low else "23"
    return (f"(CASE length({t}) WHEN 0 THEN '{hh}:{fill_s}:{fill_s}.{fill_ms}' WHEN 2 THEN {t} || ':{fill_s}:{fill_s}"
            f".{fill_ms}' WHEN 5 THEN {t} || ':{fill_s}.{fill_ms}' WHEN 8 THEN {t} || '.{fill_ms}' ELSE "
            f"rpad({t}, 12, '{fill_ms[0]}') END)")


def _spark_type(c: Column) -> str:
    base = "STRING" if c.sql_type.startswith(("VARCHAR", "STRING")) else c.sql_type.removesuffix("[]")
    return f"ARRAY<{base}>" if c.collection else base


def compile_view(view: Any, dialect: str = "duckdb", *, typed_lists: bool = True) -> CompiledView:
    """Compile a ViewDefinition (a parsed JSON object) to SQL for DuckDB or Spark; ViewError names what is wrong
    and where. On DuckDB the lists a view filters are read as typed structs where they can be (shapes.py) unless
    `typed_lists` is false (the same rows either way)."""
    first = _Compiler(view, dialect)
    compiled = first.compile()
    if dialect != "duckdb" or not typed_lists:
        return compiled
    plan = shapes.plan(first.usages)
    if plan:
        compiled = _Compiler(view, dialect, plan).compile()
    plan = shapes.plan(first.usages, root=True)
    if 0 in plan:
        compiled = replace(compiled, file_sql=_Compiler(view, dialect, plan, files=True).compile().sql)
    return compiled
