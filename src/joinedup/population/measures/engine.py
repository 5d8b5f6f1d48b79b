"""Compute the outcome measures: the ViewDefinitions in `views/` flatten the FHIR resources into tables (the SQL on
FHIR engine, DuckDB), then one SQL query per measure turns them into units (a discharge, a request, a person) with
their numerator and denominator contributions, aggregated in total and by one breakdown. No Python loop over the
population: Python only writes the resources to NDJSON and reads back the aggregates.

`compute` returns figures only (nested mappings of numbers), so it can run inside `Gate.published_figures`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from joinedup.population.views import runner
from joinedup.population.views.compiler import compile_view

from . import definitions as defs

ACSC_TABLE = "acsc_prefix"
RESOURCE_TYPES = ("Patient", "Encounter", "Communication", "CarePlan", "Condition")
DIRECTORY_TYPES = ("Organization", "PractitionerRole")


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _d(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


class Flattened:
    """The measures' views, flattened into DuckDB tables from NDJSON files (one per resource type)."""

    def __init__(self, folder: Path) -> None:
        self.con = runner.connect()
        self.con.sql("SET enable_progress_bar = false")
        for name, view in defs.views().items():
            compiled = compile_view(view)
            files = runner.ndjson_files(folder, compiled.resource)
            try:
                self.con.sql(f"CREATE TABLE v_{name} AS {compiled.query(runner.ndjson_relation(files))}")
            except Exception as exc:  # a runtime check of the view failed on this data
                raise runner._run_error(exc) from None
        prefixes = sorted({c.replace(".", "") for g in defs.codelist("acsc-chronic-icd10.yaml")["groups"].values()
                           for c in g["codes"]})
        self.con.sql(f"CREATE TABLE {ACSC_TABLE} AS SELECT unnest([{', '.join(_q(p) for p in prefixes)}]) AS prefix")
        ltc = defs.ltc_codes()
        self.con.sql("CREATE TABLE ltc (code VARCHAR, condition VARCHAR)")
        self.con.executemany("INSERT INTO ltc VALUES (?, ?)", ltc)
        # people: registration, attributes for breakdowns
        self.con.sql("""
            CREATE TABLE person AS
            SELECT p.id, TRY_CAST(p.birth_date AS DATE) AS birth, TRY_CAST(substr(p.deceased, 1, 10) AS DATE) AS died,
                   p.practice, p.named_gp, p.imd, p.ethnicity,
                   coalesce(o.ods, p.practice) AS practice_ods, coalesce(n.ods, o.part_of) AS pcn_ods
            FROM v_patient p LEFT JOIN v_organization o ON o.id = p.practice
                             LEFT JOIN v_organization n ON n.id = o.part_of
            WHERE p.practice IS NOT NULL""")
        self.con.sql("""
            CREATE TABLE admission AS
            SELECT e.id, e.patient, CAST(substr(e.start, 1, 10) AS DATE) AS start_day,
                   CAST(substr(e."end", 1, 10) AS DATE) AS end_day, e.provider,
                   coalesce(e.disposition, '') = 'exp' AS died, upper(replace(coalesce(e.diagnosis, ''), '.', '')) AS dx,
                   TRY_CAST(e.discharge_ready AS DATE) AS ready
            FROM v_encounter e
            WHERE e.class = 'IMP' AND e.emergency_admission AND coalesce(e.status, '') NOT IN ('cancelled', 'entered-in-error')""")

    def close(self) -> None:
        self.con.close()

    # -- units: one row per thing counted, with its contributions ---------------------------------------------
    def units(self, defn: dict[str, Any], first: date, last: date, today: date) -> str:
        """SQL for the measure's units: patient, day (for the month), provider, num, den, value."""
        method = defn["method"]
        inside = f"BETWEEN {_d(first)} AND {_d(last)}"
        if method == "acsc_rate":
            mid = date.fromordinal((first.toordinal() + last.toordinal()) // 2)
            return f"""
                SELECT id AS patient, NULL::DATE AS day, NULL AS provider, 0 AS num, 1 AS den, NULL::DOUBLE AS value
                FROM person WHERE birth <= {_d(mid)} AND (died IS NULL OR died >= {_d(mid)})
                UNION ALL
                SELECT a.patient, a.start_day, a.provider, 1, 0, NULL
                FROM admission a JOIN person p ON p.id = a.patient
                WHERE a.start_day {inside} AND EXISTS (SELECT 1 FROM {ACSC_TABLE} x WHERE starts_with(a.dx, x.prefix))"""
        if method in ("readmission", "follow_up", "delayed_discharge"):
            base = f"FROM admission a JOIN person p ON p.id = a.patient WHERE NOT a.died AND a.end_day {inside}"
            if method == "readmission":
                w = int(defn["window_days"]) - 1
                return f"""
                    SELECT a.patient, a.end_day, a.provider,
                           CASE WHEN EXISTS (SELECT 1 FROM admission b WHERE b.patient = a.patient AND b.id <> a.id
                                AND date_diff('day', a.end_day, b.start_day) BETWEEN 0 AND {w}) THEN 1 ELSE 0 END,
                           1, NULL::DOUBLE {base}"""
            if method == "follow_up":
                w = int(defn["window_days"])
                return f"""
                    SELECT a.patient, a.end_day, a.provider,
                           CASE WHEN EXISTS (SELECT 1 FROM v_encounter c WHERE c.patient = a.patient
                                AND c.class IN ('AMB', 'VR', 'HH') AND (c.provider = p.practice OR c.class = 'HH')
                                AND date_diff('day', a.end_day, CAST(substr(c.start, 1, 10) AS DATE)) BETWEEN 1 AND {w})
                           THEN 1 ELSE 0 END, 1, NULL::DOUBLE {base}"""
            return f"""
                SELECT a.patient, a.end_day, a.provider, CASE WHEN a.end_day > a.ready THEN 1 ELSE 0 END, 1,
                       CAST(date_diff('day', a.ready, a.end_day) AS DOUBLE) {base} AND a.ready IS NOT NULL"""
        if method == "advice_response":
            return f"""
                SELECT q.patient, CAST(substr(q.sent, 1, 10) AS DATE) AS day, NULL AS provider,
                       CASE WHEN r.sent IS NULL THEN 0 ELSE 1 END AS num, 1 AS den,
                       (epoch(CAST(r.sent AS TIMESTAMPTZ)) - epoch(CAST(q.sent AS TIMESTAMPTZ))) / 86400.0 AS value
                FROM v_communication q JOIN person p ON p.id = q.patient
                LEFT JOIN (SELECT in_response_to, min(CAST(sent AS TIMESTAMPTZ)) AS sent FROM v_communication
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
                return f"""SELECT patient, day, NULL AS provider,
                                  CASE WHEN practitioner = named_gp THEN 1 ELSE 0 END, 1, NULL::DOUBLE FROM ({visits})"""
            n_min = int(defn.get("min_visits", 2))
            per = f"""SELECT patient, practitioner, count(*) AS n FROM ({visits}) GROUP BY 1, 2"""
            totals = f"""SELECT patient, sum(n) AS total, max(n) AS top, sum(n * n) AS squares FROM ({per}) GROUP BY 1"""
            if formula == "upc":
                value = "CAST(top AS DOUBLE) / total"
            elif formula == "coc":
                value = "CAST(squares - total AS DOUBLE) / (total * (total - 1))"
            else:  # secon: consecutive consultations with the same GP, in time order (ties by encounter id)
                seq = f"""SELECT patient, CASE WHEN practitioner = lag(practitioner) OVER
                                 (PARTITION BY patient ORDER BY start, id) THEN 1 ELSE 0 END AS same FROM ({visits})"""
                return f"""SELECT t.patient, NULL::DATE, NULL, 0, 1, CAST(s.same AS DOUBLE) / (t.total - 1)
                           FROM ({totals}) t JOIN (SELECT patient, sum(same) AS same FROM ({seq}) GROUP BY 1) s
                             ON s.patient = t.patient WHERE t.total >= {max(n_min, 2)}"""
            return f"SELECT patient, NULL::DATE, NULL, 0, 1, {value} FROM ({totals}) WHERE total >= {n_min}"
        if method == "care_plan":
            return f"""
                SELECT p.id, NULL::DATE, NULL,
                       CASE WHEN EXISTS (SELECT 1 FROM v_careplan c WHERE c.patient = p.id AND c.pcsp
                            AND c.what_matters AND c.status IN ('active', 'draft', 'on-hold')) THEN 1 ELSE 0 END, 1,
                       NULL::DOUBLE
                FROM person p
                WHERE (p.died IS NULL OR p.died > {_d(today)})
                  AND (SELECT count(DISTINCT l.condition) FROM v_condition c JOIN ltc l ON l.code = c.snomed
                       WHERE c.patient = p.id
                         AND coalesce(c.clinical_status, '') NOT IN ('resolved', 'inactive', 'remission')
                         AND coalesce(c.verification, '') NOT IN ('refuted', 'entered-in-error')) >= 2"""
        raise ValueError(f"unknown method {method}")

    # -- aggregation -----------------------------------------------------------------------------------------------
    def figures(self, defn: dict[str, Any], *, today: date, by: str | None) -> dict[str, Any]:
        first, last = defs.period(defn, today)
        units = self.units(defn, first, last, today)
        key = _key_sql(defn, by, last)
        source = f"""(SELECT u.*, {key} AS grp FROM ({units}) AS u(patient, day, provider, num, den, value)
                      JOIN person p ON p.id = u.patient
                      LEFT JOIN v_organization po ON po.id = u.provider)"""
        select = _aggregates(defn)
        total = self.con.sql(f"SELECT {select} FROM {source}").fetchall()
        if by == "month":  # units without a date of their own (a population) count in every month
            months = (f"SELECT strftime(m, '%Y-%m') AS month FROM range({_d(first.replace(day=1))}, "
                      f"{_d(last)} + INTERVAL 1 DAY, INTERVAL 1 MONTH) t(m)")
            source = f"""(SELECT s.patient, s.day, s.provider, s.num, s.den, s.value, coalesce(s.grp, m.month) AS grp
                          FROM {source} s JOIN ({months}) m ON s.grp IS NULL OR s.grp = m.month)"""
        out: dict[str, Any] = {"total": {"all": _row(defn, total[0])},
                               "period": {"all": {"first": first.toordinal(), "last": last.toordinal()}}}
        if by:
            rows = self.con.sql(f"SELECT grp, {select} FROM {source} GROUP BY grp ORDER BY grp").fetchall()
            out["groups"] = {str(r[0]) if r[0] is not None else "unknown": _row(defn, r[1:]) for r in rows}
            if by == "month":  # every month of the trend, with nothing counted where nothing happened
                empty = _row(defn, (0, 0, 0, None, None) if defn["method"] == "advice_response" else (0, None, 0))
                y, m = first.year, first.month
                while (y, m) <= (last.year, last.month):
                    out["groups"].setdefault(f"{y}-{m:02d}", dict(empty))
                    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
                out["groups"] = dict(sorted(out["groups"].items()))
        return out


def _key_sql(defn: dict[str, Any], by: str | None, last: date) -> str:
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
        return "CASE WHEN p.imd IS NULL THEN 'unknown' ELSE 'Q' || CAST(p.imd AS VARCHAR) END"
    if by == "ethnicity":
        return "coalesce(p.ethnicity, 'unknown')"
    if by == "age":
        age = f"date_sub('year', p.birth, {_d(last)})"
        cases = " ".join(f"WHEN {age} >= {lo} THEN {_q(label)}" for lo, label in reversed(defs.AGE_BANDS))
        return f"CASE WHEN p.birth IS NULL THEN 'unknown' {cases} ELSE 'unknown' END"
    if by == "month":
        return "strftime(u.day, '%Y-%m')"
    raise defs.MeasureInputError(f"unknown breakdown '{by}'")


def _aggregates(defn: dict[str, Any]) -> str:
    if defn["method"] == "advice_response":
        return ("sum(den), sum(num), sum(den) - sum(num), quantile_cont(value, 0.5) FILTER (WHERE num = 1), "
                "quantile_cont(value, 0.9) FILTER (WHERE num = 1)")
    if defn["kind"] == "mean_index":
        return "sum(den), avg(value)"
    if defn["method"] == "delayed_discharge":
        return "sum(num), sum(den), sum(value)"
    return "sum(num), sum(den)"


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


def compute(folder: Path, chosen: list[dict[str, Any]], *, today: date, by: str | None) -> dict[str, Any]:
    """Figures (numbers only) for each chosen measure over the NDJSON files in `folder`."""
    flat = Flattened(folder)
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


def compute_on_files(source: Path, chosen: list[dict[str, Any]], *, today: date, by: str | None) -> dict[str, Any]:
    """The same over a directory of NDJSON (a generated ICS or a Bulk Data export; files named by type)."""
    return compute(source, chosen, today=today, by=by)
