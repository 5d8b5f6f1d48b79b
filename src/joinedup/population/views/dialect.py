"""The SQL spelling of each operation the compiler needs, for DuckDB and for Spark SQL.

DuckDB holds a resource as its JSON type and navigates it with JSON paths, wildcards included (`$.name[*].given[*]`
gives a list). Spark holds JSON as text: `get_json_object` navigates to single values (it unwraps a wildcard that
matches once, so wildcards are never used) and `from_json(..., 'array<string>')` turns a JSON array into an array of
the items' JSON text (strings unquoted), so each list element of a path becomes one `from_json` and the rest of the
path a `transform` over its items. Lists are 1-based in DuckDB (`list[1]`), `try_element_at` 1-based in Spark.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod


def _key(key: str) -> str:
    return f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else '."' + key.replace('"', '\\"') + '"'


def _path(segs: list[tuple]) -> str:
    return "$" + "".join(_key(s[0]) + (f"[{s[2]}]" if len(s) > 2 else "[*]" if s[1] else "") for s in segs)


class Dialect(ABC):
    name = ""
    string = "VARCHAR"
    json_type = "JSON"

    def __init__(self) -> None:
        self._n = 0

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"_{prefix}{self._n}"

    def q(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    # lists
    @abstractmethod
    def lam(self, params: str, body: str) -> str:
        ...

    @abstractmethod
    def transform(self, lst: str, params: str, body: str) -> str:
        ...

    @abstractmethod
    def filter(self, lst: str, param: str, cond: str) -> str:
        ...

    @abstractmethod
    def size(self, lst: str) -> str:
        ...

    @abstractmethod
    def at(self, lst: str, one_based: str) -> str:
        ...

    @abstractmethod
    def array(self, *items: str) -> str:
        ...

    @abstractmethod
    def empty_list(self) -> str:
        ...

    def null_json(self) -> str:
        return f"CAST(NULL AS {self.json_type})"

    def coalesce_list(self, lst: str) -> str:
        return f"coalesce({lst}, {self.empty_list()})"

    def singleton_list(self, value: str) -> str:
        return f"(CASE WHEN ({value}) IS NULL THEN {self.empty_list()} ELSE {self.array(f'({value})')} END)"

    def flatten(self, lst_of_lists: str) -> str:
        return f"flatten({lst_of_lists})"

    @abstractmethod
    def join(self, lst: str, sep: str) -> str:
        ...

    @abstractmethod
    def all_equal(self, a: str, b: str) -> str:
        """Both lists hold equal items pairwise (same length checked by the caller)."""
        ...

    def bind(self, sql: str, name: str, value: str) -> str:
        """`sql` with `name` bound to `value`, which is evaluated once."""
        return self.at(self.transform(self.array(value), name, sql), "1")

    def root_source(self, source: str) -> str:
        """The relation a view reads, from the relation of resources `source`."""
        return source

    # JSON
    @abstractmethod
    def navigate(self, cur: str, cur_list: bool, segs: list[tuple], text: bool) -> tuple[str, bool]:
        ...

    @abstractmethod
    def navigate_unknown(self, cur_list_sql: str, key: str, text: bool) -> str:
        ...

    @abstractmethod
    def text_of(self, json_value: str) -> str:
        ...

    @abstractmethod
    def text_list(self, json_list: str) -> str:
        ...

    @abstractmethod
    def get_text(self, json_value: str, path: str) -> str:
        ...

    @abstractmethod
    def is_json_boolean(self, json_value: str) -> str:
        ...

    @abstractmethod
    def number_text(self, json_value: str) -> str:
        ...

    # scalars
    @abstractmethod
    def error(self, message: str) -> str:
        ...

    def starts_with(self, a: str, b: str) -> str:
        return f"starts_with({a}, {b})"

    def instr(self, s: str, sub: str) -> str:
        return f"strpos({s}, {sub})"

    # -- the population engines' SQL (measures, registers) over the flattened views: what DuckDB and Spark spell
    # differently; each DuckDB spelling is the one the engines used before they ran on Spark too
    def ident(self, name: str) -> str:
        """A column name that is also a keyword (`end`)."""
        return '"' + name + '"'

    def try_date(self, text: str) -> str:
        """A date from `YYYY-MM-DD` (a time after it ignored), else NULL."""
        return f"TRY_CAST({text} AS DATE)"

    def day_of(self, text: str) -> str:
        """facts.day_of: YYYY -> 1 January, YYYY-MM -> the 1st, else the first 10 characters as a date (the
        `day_of` macro the DuckDB engines create, see `macros`)."""
        return f"day_of({text})"

    def period_day(self, period_json: str) -> str:
        """A Period (its JSON) gives its start, else its end (facts._period_start; the `period_day` macro)."""
        return f"period_day({period_json})"

    def macros(self) -> list[str]:
        """Statements that define the functions above where the engine has SQL macros (DuckDB)."""
        return ["""CREATE OR REPLACE MACRO day_of(v) AS CASE WHEN v IS NULL OR length(v) < 4 THEN NULL
    WHEN length(v) = 4 THEN TRY_CAST(v || '-01-01' AS DATE) WHEN length(v) = 7 THEN TRY_CAST(v || '-01' AS DATE)
    ELSE TRY_CAST(substr(v, 1, 10) AS DATE) END""",
                """CREATE OR REPLACE MACRO period_day(p) AS
    day_of(coalesce(nullif(json_extract_string(p, '$.start'), ''), nullif(json_extract_string(p, '$.end'), '')))"""]

    def days_between(self, a: str, b: str) -> str:
        """Days from date a to date b."""
        return f"date_diff('day', {a}, {b})"

    def add_months(self, day: str, months: str) -> str:
        """The date `months` calendar months after `day` (the month's last day when it has no such day)."""
        return f"CAST({day} + to_months({months}) AS DATE)"

    def full_years(self, a: str, b: str) -> str:
        """Complete years from date a to date b."""
        return f"date_sub('year', {a}, {b})"

    def timestamp(self, text: str) -> str:
        return f"CAST({text} AS TIMESTAMPTZ)"

    def epoch(self, text: str) -> str:
        """Seconds since 1970 of an ISO 8601 dateTime (its offset applied)."""
        return f"epoch(CAST({text} AS TIMESTAMPTZ))"

    def year_month(self, day: str) -> str:
        """'YYYY-MM' of a date."""
        return f"strftime({day}, '%Y-%m')"

    def months(self, first: str, last: str, alias: str, column: str) -> str:
        """A relation `alias(column)` of the first day of each month from the month of `first` (a first of the month)
        to the month of `last`."""
        return f"range({first}, {last} + INTERVAL 1 DAY, INTERVAL 1 MONTH) {alias}({column})"

    def quantile(self, value: str, q: float) -> str:
        """The q-quantile, interpolated between the two nearest values (quantile_cont)."""
        return f"quantile_cont({value}, {q})"

    def sorted_join(self, text: str, sep: str) -> str:
        """The group's values sorted and joined by `sep` (an aggregate)."""
        return f"string_agg({text}, {self.q(sep)} ORDER BY {text})"

    def first_with_prefix(self, lst: str, prefix: str) -> str:
        """The first item of a list of texts that starts with `prefix`, else NULL."""
        return f"list_filter({lst}, lambda _x: starts_with(_x, {self.q(prefix)}))[1]"

    def json_field_text(self, json_value: str, key: str) -> str:
        return f"json_extract_string({json_value}, {self.q('$' + _key(key))})"

    def json_of_text(self, text: str) -> str:
        """A text as JSON text (a JSON string, or NULL)."""
        return f"CAST(to_json({text}) AS VARCHAR)"

    def json_of_list(self, lst: str) -> str:
        """A list as JSON text (an array of its items)."""
        return f"CAST(to_json({lst}) AS VARCHAR)"

    def json_array(self, *items: str) -> str:
        """JSON text of an array of the items (each a JSON value, or a text column)."""
        return f"to_json([{', '.join(items)}])"

    def line_number(self, table: str) -> str:
        """The row's position in a table made from a file (its order in the file)."""
        return f"{table}.rowid"

    def values(self, items: list[str], column: str) -> str:
        """A relation of one column holding the quoted texts."""
        return f"(SELECT unnest([{', '.join(self.q(i) for i in items)}]) AS {column})"


class DuckDB(Dialect):
    """DuckDB's JSON functions parse their JSON text on every call. Paths from the resource itself are therefore
    gathered (`root_paths`) and taken in one `json_extract(resource, [path, ...])` per resource (one parse, see
    `root_source`); each use reads its item of that list, and a path with a wildcard (which a list of paths may not
    hold) takes the element before its first wildcard from the list and the rest of the path from that element."""

    name = "duckdb"
    ROOT = "_r.resource"

    def __init__(self) -> None:
        super().__init__()
        self.root_paths: dict[str, int] = {}

    def _root_slot(self, path: str) -> str:
        """The JSON at `path` (no wildcard) of the resource: an item of the list extracted once per resource."""
        n = self.root_paths.setdefault(path, len(self.root_paths) + 1)
        return f"_r._j[{n}]"

    def root_source(self, source: str) -> str:
        """The relation the view reads from: `source` with the list of the resource's paths beside each resource."""
        if not self.root_paths:
            return source
        paths = ", ".join(self.q(p) for p in self.root_paths)
        return f"(SELECT _s.resource, json_extract(_s.resource, [{paths}]) AS _j FROM {source} AS _s)"

    def lam(self, params: str, body: str) -> str:
        return f"lambda {params}: {body}"

    def transform(self, lst: str, params: str, body: str) -> str:
        return f"list_transform({lst}, {self.lam(params, body)})"

    def filter(self, lst: str, param: str, cond: str) -> str:
        return f"list_filter({lst}, {self.lam(param, cond)})"

    def size(self, lst: str) -> str:
        return f"len({lst})"

    def at(self, lst: str, one_based: str) -> str:
        return f"({lst})[{one_based}]"

    def array(self, *items: str) -> str:
        return "[" + ", ".join(items) + "]"

    def empty_list(self) -> str:
        return "[]::JSON[]"

    def coalesce_list(self, lst: str) -> str:
        return f"coalesce({lst}, [])"  # an untyped [] takes the list's type (JSON[] or VARCHAR[])

    def singleton_list(self, value: str) -> str:
        return f"(CASE WHEN ({value}) IS NULL THEN [] ELSE [({value})] END)"

    def join(self, lst: str, sep: str) -> str:
        return f"coalesce(list_aggregate({lst}, 'string_agg', {sep}), '')"

    def all_equal(self, a: str, b: str) -> str:
        x = self.fresh("x")
        return f"(len(list_filter(list_zip({a}, {b}), lambda {x}: NOT coalesce({x}[1] = {x}[2], false))) = 0)"

    def navigate(self, cur: str, cur_list: bool, segs: list[tuple], text: bool) -> tuple[str, bool]:
        if not segs:
            if text:
                if cur_list:
                    return self.text_list(cur), True
                return self.text_of(cur), False
            return cur, cur_list
        path = _path(segs)
        wildcard = any(s[1] for s in segs)
        fn = "json_extract_string" if text else "json_extract"
        if cur == self.ROOT and not cur_list:
            first = next((i for i, s in enumerate(segs) if s[1] and len(s) == 2), None)
            if first is None:
                slot = self._root_slot(path)
                return (f"{fn}({slot}, '$')" if text else slot), False
            slot = self._root_slot(_path(segs[:first] + [(segs[first][0], False)]))
            rest = self.q("$[*]" + _path(segs[first + 1:])[1:])
            return f"coalesce({fn}({slot}, {rest}), [])", True  # an absent element: [] as from the whole path
        if not cur_list:
            return f"{fn}({cur}, {self.q(path)})", wildcard
        x = self.fresh("x")
        if wildcard:
            return f"flatten(list_transform({cur}, lambda {x}: {fn}({x}, {self.q(path)})))", True
        y = self.fresh("y")
        return (f"list_filter(list_transform({cur}, lambda {x}: {fn}({x}, {self.q(path)})), "
                f"lambda {y}: {y} IS NOT NULL)"), True

    def navigate_unknown(self, cur_list_sql: str, key: str, text: bool) -> str:
        x, y = self.fresh("x"), self.fresh("y")
        arr, one = self.q("$" + _key(key) + "[*]"), self.q("$" + _key(key))
        fn = "json_extract_string" if text else "json_extract"
        return (f"flatten(list_transform({cur_list_sql}, lambda {x}: CASE WHEN json_type({x}, {one}) = 'ARRAY' "
                f"THEN {fn}({x}, {arr}) ELSE list_filter([{fn}({x}, {one})], lambda {y}: {y} IS NOT NULL) END))")

    def text_of(self, json_value: str) -> str:
        return f"json_extract_string({json_value}, '$')"

    def text_list(self, json_list: str) -> str:
        x = self.fresh("x")
        return f"list_transform({json_list}, lambda {x}: json_extract_string({x}, '$'))"

    def get_text(self, json_value: str, path: str) -> str:
        if json_value == self.ROOT and "[*]" not in path:
            return f"json_extract_string({self._root_slot(path)}, '$')"
        return f"json_extract_string({json_value}, {self.q(path)})"

    def is_json_boolean(self, json_value: str) -> str:
        return f"json_type({json_value}) = 'BOOLEAN'"

    def number_text(self, json_value: str) -> str:
        return f"CAST({json_value} AS VARCHAR)"

    def error(self, message: str) -> str:
        return f"error({self.q(message)})"


class Spark(Dialect):
    name = "spark"
    string = "STRING"
    json_type = "STRING"

    def q(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def lam(self, params: str, body: str) -> str:
        return f"{params} -> {body}" if "," not in params else f"({params}) -> {body}"

    def transform(self, lst: str, params: str, body: str) -> str:
        return f"transform({lst}, {self.lam(params, body)})"

    def filter(self, lst: str, param: str, cond: str) -> str:
        return f"filter({lst}, {self.lam(param, cond)})"

    def size(self, lst: str) -> str:
        return f"size({lst})"

    def at(self, lst: str, one_based: str) -> str:
        return f"try_element_at({lst}, {one_based})"

    def array(self, *items: str) -> str:
        return "array(" + ", ".join(items) + ")"

    def empty_list(self) -> str:
        return "CAST(array() AS ARRAY<STRING>)"

    def join(self, lst: str, sep: str) -> str:
        return f"coalesce(array_join({lst}, {sep}), '')"

    def all_equal(self, a: str, b: str) -> str:
        x, y, z = self.fresh("x"), self.fresh("y"), self.fresh("z")
        return f"forall(zip_with({a}, {b}, ({x}, {y}) -> coalesce({x} = {y}, false)), {z} -> {z})"

    def _array_of(self, json_value: str, path: str) -> str:
        return f"coalesce(from_json(get_json_object({json_value}, {self.q(path)}), 'array<string>'), {self.empty_list()})"

    def navigate(self, cur: str, cur_list: bool, segs: list[tuple], text: bool) -> tuple[str, bool]:
        if not segs:
            return cur, cur_list
        # split at every list element: `a.b[*].c` -> from_json(get_json_object(x, '$.a.b')) then `$.c` per item
        groups: list[list[tuple]] = [[]]
        for s in segs:
            groups[-1].append(s)
            if s[1] and len(s) == 2:
                groups.append([])
        for group in groups:
            if not group:
                continue
            is_list = group[-1][1] and len(group[-1]) == 2
            path = _path(group[:-1] + [(group[-1][0], False)] if is_list else group)
            if not cur_list:
                cur = self._array_of(cur, path) if is_list else f"get_json_object({cur}, {self.q(path)})"
                cur_list = is_list
            else:
                x, y = self.fresh("x"), self.fresh("y")
                if is_list:
                    cur = f"flatten(transform({cur}, {x} -> {self._array_of(x, path)}))"
                else:
                    cur = (f"filter(transform({cur}, {x} -> get_json_object({x}, {self.q(path)})), "
                           f"{y} -> {y} IS NOT NULL)")
        return cur, cur_list

    def navigate_unknown(self, cur_list_sql: str, key: str, text: bool) -> str:
        x, y = self.fresh("x"), self.fresh("y")
        one = self.q("$" + _key(key))
        return (f"flatten(transform({cur_list_sql}, {x} -> CASE WHEN substr(ltrim(get_json_object({x}, {one})), 1, 1)"
                f" = '[' THEN {self._array_of(x, '$' + _key(key))} ELSE filter(array(get_json_object({x}, {one})), "
                f"{y} -> {y} IS NOT NULL) END))")

    def text_of(self, json_value: str) -> str:
        return json_value  # get_json_object and from_json give strings unquoted already

    def text_list(self, json_list: str) -> str:
        return json_list

    def get_text(self, json_value: str, path: str) -> str:
        return f"get_json_object({json_value}, {self.q(path)})"

    def is_json_boolean(self, json_value: str) -> str:
        return f"({json_value}) IN ('true', 'false')"

    def number_text(self, json_value: str) -> str:
        return json_value

    def error(self, message: str) -> str:
        return f"raise_error({self.q(message)})"

    def starts_with(self, a: str, b: str) -> str:
        return f"startswith({a}, {b})"

    def instr(self, s: str, sub: str) -> str:
        return f"instr({s}, {sub})"

    # -- the population engines' SQL (see Dialect) ---------------------------------------------------------------
    def ident(self, name: str) -> str:
        return f"`{name}`"

    def try_date(self, text: str) -> str:
        # Spark's cast also reads 'YYYY' and 'YYYY-MM' (DuckDB's gives NULL): only a full date casts
        return (f"(CASE WHEN {text} RLIKE '^[0-9]{{4}}-[0-9]{{1,2}}-[0-9]{{1,2}}([ T].*)?$' "
                f"THEN CAST({text} AS DATE) END)")

    def day_of(self, text: str) -> str:
        year, month = self.try_date(f"({text} || '-01-01')"), self.try_date(f"({text} || '-01')")
        return (f"(CASE WHEN {text} IS NULL OR length({text}) < 4 THEN NULL WHEN length({text}) = 4 THEN {year} "
                f"WHEN length({text}) = 7 THEN {month} ELSE {self.try_date(f'substr({text}, 1, 10)')} END)")

    def period_day(self, period_json: str) -> str:
        start, end = self.json_field_text(period_json, "start"), self.json_field_text(period_json, "end")
        return self.day_of(f"coalesce(nullif({start}, ''), nullif({end}, ''))")

    def macros(self) -> list[str]:
        return []

    def days_between(self, a: str, b: str) -> str:
        return f"datediff({b}, {a})"

    def add_months(self, day: str, months: str) -> str:
        return f"add_months({day}, {months})"

    def full_years(self, a: str, b: str) -> str:
        # both the last day of their month count as a whole month, as DuckDB's date_sub
        return f"CAST(floor(months_between({b}, {a}) / 12) AS INT)"

    def timestamp(self, text: str) -> str:
        return f"CAST({text} AS TIMESTAMP)"

    def epoch(self, text: str) -> str:
        return f"(unix_micros(CAST({text} AS TIMESTAMP)) / 1e6)"  # 1e6: a double (1000000.0 is a decimal)

    def year_month(self, day: str) -> str:
        return f"date_format({day}, 'yyyy-MM')"

    def months(self, first: str, last: str, alias: str, column: str) -> str:
        return f"(SELECT explode(sequence({first}, {last}, INTERVAL 1 MONTH)) AS {column}) {alias}"

    def quantile(self, value: str, q: float) -> str:
        return f"percentile({value}, {q})"

    def sorted_join(self, text: str, sep: str) -> str:
        return f"array_join(array_sort(collect_list({text})), {self.q(sep)})"

    def first_with_prefix(self, lst: str, prefix: str) -> str:
        return f"try_element_at(filter({lst}, _x -> startswith(_x, {self.q(prefix)})), 1)"

    def json_field_text(self, json_value: str, key: str) -> str:
        return f"get_json_object({json_value}, {self.q('$' + _key(key))})"

    def json_of_text(self, text: str) -> str:
        return f"(CASE WHEN {text} IS NOT NULL THEN regexp_extract(to_json(array({text})), '^\\\\[(.*)\\\\]$', 1) END)"

    def json_of_list(self, lst: str) -> str:
        return f"to_json({lst})"

    def json_array(self, *items: str) -> str:
        # Spark holds a complex value as its JSON text: an array of texts, each parsed again by the reader
        return f"to_json(array({', '.join(items)}))"

    def line_number(self, table: str) -> str:
        return f"{table}._line"

    def values(self, items: list[str], column: str) -> str:
        return f"(SELECT explode(array({', '.join(self.q(i) for i in items)})) AS {column})"


def get(name: str) -> Dialect:
    if name == "duckdb":
        return DuckDB()
    if name == "spark":
        return Spark()
    raise ValueError(f"unknown SQL dialect {name!r} (duckdb or spark)")
