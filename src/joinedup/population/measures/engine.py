"""Compute the outcome measures: the ViewDefinitions in `views/` flatten the FHIR resources into tables (the SQL on
FHIR engine), then one SQL query per measure turns them into units (a discharge, a request, a person) with their
numerator and denominator contributions, aggregated in total and by breakdown (a measure's breakdowns in one query,
`Flattened.figures_all`). No Python loop over the population: Python only writes the resources to NDJSON and reads
back the aggregates.

The same views and the same SQL run on DuckDB (the default) or on Spark (`engine="spark"`, for populations beyond
one machine): what the two spell differently comes from the dialect (`views/dialect.py`), where the tables live from
`views/tables.py`.

`compute` returns figures only (nested mappings of numbers), so it can run inside `Gate.published_figures`."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from joinedup.population.views import runner
from joinedup.population.views.compiler import compile_view
from joinedup.population.views.tables import open_tables

from . import definitions as defs

ACSC_TABLE = "acsc_prefix"
RESOURCE_TYPES = ("Patient", "Encounter", "Communication", "CarePlan", "Condition")
DIRECTORY_TYPES = ("Organization", "PractitionerRole")


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _d(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


class Flattened:
    """The measures' views, flattened into tables from NDJSON files (one per resource type), on DuckDB or Spark."""

    def __init__(self, folder: Path, engine: str = "duckdb") -> None:
        self.db = open_tables(engine)
        self.d = d = self.db.dialect
        self._units_made: dict[tuple[str, date, date, date], str] = {}
        self._figures_made: dict[tuple[str, date], dict[str | None, Any]] = {}
        try:
            self._make(folder, d)
        except Exception:
            self.db.close()
            raise

    def _make(self, folder: Path, d: Any) -> None:
        for name, view in defs.views().items():
            compiled = compile_view(view, d.name)
            self.db.flatten(f"v_{name}", compiled, runner.ndjson_files(folder, compiled.resource))
        prefixes = sorted({c.replace(".", "") for g in defs.codelist("acsc-chronic-icd10.yaml")["groups"].values()
                           for c in g["codes"]})
        self.db.create(ACSC_TABLE, f"SELECT prefix FROM {d.values(prefixes, 'prefix')} AS _p")
        self.db.load("ltc", [("code", "VARCHAR"), ("condition", "VARCHAR")], defs.ltc_codes())
        # people: registration, attributes for breakdowns
        self.db.create("person", f"""
            SELECT p.id, {d.try_date('p.birth_date')} AS birth, {d.try_date('substr(p.deceased, 1, 10)')} AS died,
                   p.practice, p.named_gp, p.imd, p.ethnicity,
                   coalesce(o.ods, p.practice) AS practice_ods, coalesce(n.ods, o.part_of) AS pcn_ods
            FROM v_patient p LEFT JOIN v_organization o ON o.id = p.practice
                             LEFT JOIN v_organization n ON n.id = o.part_of
            WHERE p.practice IS NOT NULL""")
        self.db.create("admission", f"""
            SELECT e.id, e.patient, CAST(substr(e.start, 1, 10) AS DATE) AS start_day,
                   CAST(substr(e.{d.ident('end')}, 1, 10) AS DATE) AS end_day, e.provider,
                   coalesce(e.disposition, '') = 'exp' AS died, upper(replace(coalesce(e.diagnosis, ''), '.', '')) AS dx,
                   {d.try_date('e.discharge_ready')} AS ready
            FROM v_encounter e
            WHERE e.class = 'IMP' AND e.emergency_admission AND coalesce(e.status, '') NOT IN ('cancelled', 'entered-in-error')""")

    @property
    def con(self) -> Any:
        """The DuckDB connection (DuckDB only)."""
        return self.db.con  # type: ignore[attr-defined]

    def close(self) -> None:
        self.db.close()

    # -- units: one row per thing counted, with its contributions ---------------------------------------------
    def units(self, defn: dict[str, Any], first: date, last: date, today: date) -> str:
        """SQL for the measure's units: patient, day (for the month), provider, num, den, value."""
        method = defn["method"]
        d = self.d
        inside = f"BETWEEN {_d(first)} AND {_d(last)}"
        null_day, null_value = "CAST(NULL AS DATE)", "CAST(NULL AS DOUBLE)"
        if method == "acsc_rate":
            mid = date.fromordinal((first.toordinal() + last.toordinal()) // 2)
            return f"""
                SELECT id AS patient, {null_day} AS day, CAST(NULL AS {d.string}) AS provider, 0 AS num, 1 AS den,
                       {null_value} AS value
                FROM person WHERE birth <= {_d(mid)} AND (died IS NULL OR died >= {_d(mid)})
                UNION ALL
                SELECT a.patient, a.start_day, a.provider, 1, 0, NULL
                FROM admission a JOIN person p ON p.id = a.patient
                WHERE a.start_day {inside} AND EXISTS (SELECT 1 FROM {ACSC_TABLE} x WHERE {d.starts_with('a.dx', 'x.prefix')})"""
        if method in ("readmission", "follow_up", "delayed_discharge"):
            base = f"FROM admission a JOIN person p ON p.id = a.patient WHERE NOT a.died AND a.end_day {inside}"
            if method == "readmission":
                w = int(defn["window_days"]) - 1
                return f"""
                    SELECT a.patient, a.end_day, a.provider,
                           CASE WHEN EXISTS (SELECT 1 FROM admission b WHERE b.patient = a.patient AND b.id <> a.id
                                AND {d.days_between('a.end_day', 'b.start_day')} BETWEEN 0 AND {w}) THEN 1 ELSE 0 END,
                           1, {null_value} {base}"""
            if method == "follow_up":
                w = int(defn["window_days"])
                return f"""
                    SELECT a.patient, a.end_day, a.provider,
                           CASE WHEN EXISTS (SELECT 1 FROM v_encounter c WHERE c.patient = a.patient
                                AND c.class IN ('AMB', 'VR', 'HH') AND (c.provider = p.practice OR c.class = 'HH')
                                AND {d.days_between('a.end_day', 'CAST(substr(c.start, 1, 10) AS DATE)')} BETWEEN 1 AND {w})
                           THEN 1 ELSE 0 END, 1, {null_value} {base}"""
            return f"""
                SELECT a.patient, a.end_day, a.provider, CASE WHEN a.end_day > a.ready THEN 1 ELSE 0 END, 1,
                       CAST({d.days_between('a.ready', 'a.end_day')} AS DOUBLE) {base} AND a.ready IS NOT NULL"""
        if method == "advice_response":
            return f"""
                SELECT q.patient, CAST(substr(q.sent, 1, 10) AS DATE) AS day, CAST(NULL AS {d.string}) AS provider,
                       CASE WHEN r.sent IS NULL THEN 0 ELSE 1 END AS num, 1 AS den,
                       ({d.epoch('r.sent')} - {d.epoch('q.sent')}) / 86400.0 AS value
                FROM v_communication q JOIN person p ON p.id = q.patient
                LEFT JOIN (SELECT in_response_to, min({d.timestamp('sent')}) AS sent FROM v_communication
                           WHERE in_response_to IS NOT NULL GROUP BY 1) r ON r.in_response_to = q.id
                WHERE q.category = {_q(defn['request_category'])} AND q.in_response_to IS NULL
                  AND CAST(substr(q.sent, 1, 10) AS DATE) {inside}"""
        if method == "continuity":
            visits = f"""
                SELECT e.id, e.patient, e.practitioner, e.start, CAST(substr(e.start, 1, 10) AS DATE) AS day,
                       p.named_gp
                FROM v_encounter e JOIN person p ON p.id = e.patient AND e.provider = p.practice
                WHERE CAST(substr(e.start, 1, 10) AS DATE) {inside}
                  AND coalesce(e.status, '') NOT IN ('cancelled', 'entered-in-error', 'planned')
                  AND EXISTS (SELECT 1 FROM v_practitioner_role r WHERE r.practitioner = e.practitioner
                              AND r.organization = e.provider AND r.role = 'GP')"""
            formula = defn["formula"]
            if formula == "named_gp":
                return f"""SELECT patient, day, CAST(NULL AS {d.string}) AS provider,
                                  CASE WHEN practitioner = named_gp THEN 1 ELSE 0 END, 1, {null_value} FROM ({visits}) _v"""
            n_min = int(defn.get("min_visits", 2))
            per = f"""SELECT patient, practitioner, count(*) AS n FROM ({visits}) _v GROUP BY 1, 2"""
            totals = f"""SELECT patient, sum(n) AS total, max(n) AS top, sum(n * n) AS squares FROM ({per}) _n GROUP BY 1"""
            if formula == "upc":
                value = "CAST(top AS DOUBLE) / total"
            elif formula == "coc":
                value = "CAST(squares - total AS DOUBLE) / (total * (total - 1))"
            else:  # secon: consecutive consultations with the same GP, in time order (ties by encounter id)
                seq = f"""SELECT patient, CASE WHEN practitioner = lag(practitioner) OVER
                                 (PARTITION BY patient ORDER BY start, id) THEN 1 ELSE 0 END AS same FROM ({visits}) _v"""
                return f"""SELECT t.patient, {null_day}, CAST(NULL AS {d.string}), 0, 1, CAST(s.same AS DOUBLE) / (t.total - 1)
                           FROM ({totals}) t JOIN (SELECT patient, sum(same) AS same FROM ({seq}) _s GROUP BY 1) s
                             ON s.patient = t.patient WHERE t.total >= {max(n_min, 2)}"""
            return (f"SELECT patient, {null_day}, CAST(NULL AS {d.string}), 0, 1, {value} FROM ({totals}) _t "
                    f"WHERE total >= {n_min}")
        if method == "care_plan":
            return f"""
                SELECT p.id, {null_day}, CAST(NULL AS {d.string}),
                       CASE WHEN EXISTS (SELECT 1 FROM v_careplan c WHERE c.patient = p.id AND c.pcsp
                            AND c.what_matters AND c.status IN ('active', 'draft', 'on-hold')) THEN 1 ELSE 0 END, 1,
                       {null_value}
                FROM person p
                WHERE (p.died IS NULL OR p.died > {_d(today)})
                  AND (SELECT count(DISTINCT l.condition) FROM v_condition c JOIN ltc l ON l.code = c.snomed
                       WHERE c.patient = p.id
                         AND coalesce(c.clinical_status, '') NOT IN ('resolved', 'inactive', 'remission')
                         AND coalesce(c.verification, '') NOT IN ('refuted', 'entered-in-error')) >= 2"""
        raise ValueError(f"unknown method {method}")

    def _units_table(self, defn: dict[str, Any], first: date, last: date, today: date) -> str:
        """The measure's units as a table, made once for all its breakdowns (and periods asked again)."""
        key = (defn["id"], first, last, today)
        name = self._units_made.get(key)
        if name is None:
            name = self._units_made[key] = f"units_{len(self._units_made) + 1}"
            self.db.create(name, f"""SELECT * FROM ({self.units(defn, first, last, today)})
                                     AS u(patient, day, provider, num, den, value)""")
        return name

    # -- aggregation -----------------------------------------------------------------------------------------------
    def figures(self, defn: dict[str, Any], *, today: date, by: str | None) -> dict[str, Any]:
        """The measure's total and, with `by`, its figures by that breakdown. On Spark, whose cost is per query
        rather than per row, the first call computes every breakdown of the measure in the same query and later
        calls read them back (`figures_all`); on DuckDB only the breakdown asked for."""
        if self.db.engine == "spark" and (by is None or by in defn["breakdowns"]):
            key = (defn["id"], today)
            done = self._figures_made.get(key)
            if done is None:
                done = self._figures_made[key] = self.figures_all(defn, today=today,
                                                                  bys=[None, *defn["breakdowns"]])
            return copy.deepcopy(done[by])  # the caller's own copy (publishing may change it)
        return self.figures_all(defn, today=today, bys=[by])[by]

    def figures_all(self, defn: dict[str, Any], *, today: date, bys: list[str | None]) -> dict[str | None, Any]:
        """The measure's figures for each breakdown in `bys` (None: the total alone), in one query: the units with
        each breakdown's group beside them (one copy of a unit per breakdown, a unit without a date of its own in
        every month of a trend), aggregated by breakdown and group."""
        first, last = defs.period(defn, today)
        units = self._units_table(defn, first, last, today)
        d = self.d
        select = _aggregates(defn, d)
        joined = f"""{units} AS u JOIN person p ON p.id = u.patient LEFT JOIN v_organization po ON po.id = u.provider"""
        plain = ["", *dict.fromkeys(b for b in bys if b is not None and b != "month")]  # "": the total
        keys = " ".join(f"WHEN {_q(b)} THEN {_key_sql(defn, b or None, last, d)}" for b in plain)
        parts = [f"""SELECT _b.b AS _by, CASE _b.b {keys} END AS grp, u.num, u.den, u.value
                     FROM {joined} CROSS JOIN {d.values(plain, 'b')} AS _b"""]
        if "month" in bys:  # units without a date of their own (a population) count in every month
            months = (f"SELECT {d.year_month('m')} AS month FROM "
                      f"{d.months(_d(first.replace(day=1)), _d(last), 't', 'm')}")
            parts.append(f"""SELECT 'month' AS _by, coalesce(s.grp, m.month) AS grp, s.num, s.den, s.value
                             FROM (SELECT u.num, u.den, u.value, {_key_sql(defn, 'month', last, d)} AS grp
                                   FROM {joined}) s
                             JOIN ({months}) m ON s.grp IS NULL OR s.grp = m.month""")
        rows = self.db.fetch(f"SELECT _by, grp, {select} FROM ({' UNION ALL '.join(parts)}) AS _all GROUP BY _by, grp")
        # groups in order, absent ones last (DuckDB's ORDER BY; the same whichever engine computed them)
        rows.sort(key=lambda r: (r[0], r[1] is None, "" if r[1] is None else str(r[1])))
        grouped: dict[str, list[tuple]] = {}
        for r in rows:
            grouped.setdefault(r[0], []).append(r)
        total = grouped.get("", [("", "all", *([None] * _n_aggregates(defn)))])[0]  # no units: no row
        out: dict[str | None, Any] = {}
        for by in bys:
            fig: dict[str, Any] = {"total": {"all": _row(defn, total[2:])},
                                   "period": {"all": {"first": first.toordinal(), "last": last.toordinal()}}}
            if by:
                fig["groups"] = {str(r[1]) if r[1] is not None else "unknown": _row(defn, r[2:])
                                 for r in grouped.get(by, [])}
                if by == "month":  # every month of the trend, with nothing counted where nothing happened
                    empty = _row(defn, (0, 0, 0, None, None) if defn["method"] == "advice_response" else (0, None, 0))
                    y, m = first.year, first.month
                    while (y, m) <= (last.year, last.month):
                        fig["groups"].setdefault(f"{y}-{m:02d}", dict(empty))
                        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
                    fig["groups"] = dict(sorted(fig["groups"].items()))
            out[by] = fig
        return out


def _key_sql(defn: dict[str, Any], by: str | None, last: date, d: Any) -> str:
    if by is None:
        return "'all'"
    if by == "practice":
        return "p.practice_ods"
    if by == "pcn":
        return "p.pcn_ods"
    if by == "organisation":
        if defn.get("organisation") == "provider":
            return "coalesce(po.ods, u.provider, p.practice_ods)"
        return "p.practice_ods"
    if by == "imd":
        return f"CASE WHEN p.imd IS NULL THEN 'unknown' ELSE 'Q' || CAST(p.imd AS {d.string}) END"
    if by == "ethnicity":
        return "coalesce(p.ethnicity, 'unknown')"
    if by == "age":
        age = d.full_years("p.birth", _d(last))
        cases = " ".join(f"WHEN {age} >= {lo} THEN {_q(label)}" for lo, label in reversed(defs.AGE_BANDS))
        return f"CASE WHEN p.birth IS NULL THEN 'unknown' {cases} ELSE 'unknown' END"
    if by == "month":
        return d.year_month("u.day")
    raise defs.MeasureInputError(f"unknown breakdown '{by}'")


def _aggregates(defn: dict[str, Any], d: Any) -> str:
    if defn["method"] == "advice_response":
        return (f"sum(den), sum(num), sum(den) - sum(num), {d.quantile('value', 0.5)} FILTER (WHERE num = 1), "
                f"{d.quantile('value', 0.9)} FILTER (WHERE num = 1)")
    if defn["kind"] == "mean_index":
        return "sum(den), avg(value)"
    if defn["method"] == "delayed_discharge":
        return "sum(num), sum(den), sum(value)"
    return "sum(num), sum(den)"


def _n_aggregates(defn: dict[str, Any]) -> int:
    """How many figures `_aggregates` gives."""
    if defn["method"] == "advice_response":
        return 5
    return 3 if defn["method"] == "delayed_discharge" and defn["kind"] != "mean_index" else 2


def _row(defn: dict[str, Any], r: tuple) -> dict[str, Any]:
    def n(x: Any) -> int:
        return int(x or 0)

    if defn["method"] == "advice_response":
        return {"requests": n(r[0]), "answered": n(r[1]), "unanswered": n(r[2]),
                "median_days": None if r[3] is None else float(r[3]), "p90_days": None if r[4] is None else float(r[4])}
    if defn["kind"] == "mean_index":
        return {"denominator": n(r[0]), "value": None if r[1] is None or not n(r[0]) else float(r[1])}
    num, den = n(r[0]), n(r[1])
    out = {"numerator": num, "denominator": den, "value": num / den * defn.get("per", 1) if den else None}
    if defn["method"] == "delayed_discharge":
        out["mean_delay_days"] = float(r[2] or 0) / den if den else None
    return out


def compute(folder: Path, chosen: list[dict[str, Any]], *, today: date, by: str | None,
            engine: str = "duckdb") -> dict[str, Any]:
    """Figures (numbers only) for each chosen measure over the NDJSON files in `folder` (on DuckDB or Spark)."""
    flat = Flattened(folder, engine)
    try:
        return {d["id"]: flat.figures(d, today=today, by=by) for d in chosen}
    finally:
        flat.close()


def write_resources(folder: Path, resources: Iterable[dict[str, Any]]) -> None:
    """Resources to NDJSON files by type (only the types the views read)."""
    wanted = set(RESOURCE_TYPES) | set(DIRECTORY_TYPES)
    handles: dict[str, Any] = {}
    try:
        for res in resources:
            t = res.get("resourceType")
            if t not in wanted:
                continue
            fh = handles.get(t)
            if fh is None:
                fh = handles[t] = (folder / f"{t}.ndjson").open("wb")
            fh.write(orjson.dumps(res) + b"\n")
    finally:
        for fh in handles.values():
            fh.close()


def compute_on_files(source: Path, chosen: list[dict[str, Any]], *, today: date, by: str | None,
                     engine: str = "duckdb") -> dict[str, Any]:
    """The same over a directory of NDJSON (a generated ICS or a Bulk Data export; files named by type)."""
    return compute(source, chosen, today=today, by=by, engine=engine)
