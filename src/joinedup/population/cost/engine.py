"""Activity and cost of care per person, per setting and per population segment, in SQL.

The ViewDefinitions in `views/` flatten Encounters, EpisodeOfCare (care packages), Appointments, Patients and the
directory into DuckDB tables (the SQL on FHIR engine); the rules of `schedule.yaml` recognise each contact or
package as one priced activity in one setting; one query per figure aggregates. No Python loop over the population:
Python writes the resources to NDJSON (done by the caller, inside the gate), the people's segments (worked out by
the risk and register engines, which are per person) as one CSV file, and reads back the aggregates.

Figures are numbers only (nested mappings), so `compute` can run inside `Gate.published_figures`."""

from __future__ import annotations

import csv
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

from joinedup.population.views import runner
from joinedup.population.views.compiler import compile_view

RESOURCE_TYPES = ("Patient", "Encounter", "EpisodeOfCare", "Appointment")
DIRECTORY_TYPES = ("Organization", "PractitionerRole")
SEGMENT_KINDS = ("multimorbidity", "frailty", "cms")


class CostInputError(ValueError):
    """Bad input to a cost report (one line, safe to show)."""


@lru_cache(maxsize=1)
def schedule() -> dict[str, Any]:
    """The unit-cost schedule, checked: every rule names a known setting and unit cost, every cost has a table."""
    data = yaml.safe_load(resources.files("joinedup.population.cost").joinpath("schedule.yaml").read_text("utf-8"))
    costs, settings = data["unit_costs"], data["settings"]
    for cid, c in costs.items():
        if not (isinstance(c.get("cost"), (int, float)) and c.get("table") and c.get("per")
                and isinstance(c.get("verified"), bool)):
            raise ValueError(f"unit cost {cid} needs cost, per, table and verified")
    for r in data["encounter_rules"] + data["episode_rules"]:
        if r["setting"] not in settings or r["price"] not in costs or r.get("short_price", r["price"]) not in costs:
            raise ValueError(f"cost rule {r['activity']} names an unknown setting or unit cost")
    return data


@lru_cache(maxsize=1)
def views() -> dict[str, dict[str, Any]]:
    folder = resources.files("joinedup.population.cost").joinpath("views")
    return {f.name.removesuffix(".json"): orjson.loads(f.read_bytes()) for f in folder.iterdir()
            if f.name.endswith(".json")}


def activities() -> dict[str, dict[str, Any]]:
    """Every activity the rules recognise, with its setting and the unit cost that prices it."""
    s = schedule()
    return {r["activity"]: r for r in s["encounter_rules"] + s["episode_rules"]}


def _q(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in(column: str, values: list[Any]) -> str:
    return f"{column} IN ({', '.join(_q(v) for v in values)})"


def _d(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


def _rule_sql(rule: dict[str, Any]) -> str:
    conds = [_in("e.class", rule["class"])]
    if rule.get("type_code"):
        conds.append(_in("e.type_code", rule["type_code"]))
    if rule.get("service_type"):
        conds.append(_in("lower(coalesce(e.service_type, ''))", [t.lower() for t in rule["service_type"]]))
    if rule.get("provider") == "registered-practice":
        conds.append("e.provider = p.practice")
    elif rule.get("provider") == "other":
        conds.append("e.provider IS DISTINCT FROM p.practice")
    if rule.get("practitioner_role"):
        conds.append(f"{_role_alias(rule['practitioner_role'])}.practitioner IS NOT NULL")
    return " AND ".join(conds)


def _role_alias(role: str) -> str:
    return "role_" + "".join(ch if ch.isalnum() else "_" for ch in role.lower())


class Dialect:
    """The few spellings that differ between DuckDB and Spark SQL; the rest of the SQL is common to both."""

    def __init__(self, name: str) -> None:
        self.name = name

    def day(self, text: str) -> str:
        return f"TRY_CAST(substr({text}, 1, 10) AS DATE)" if self.name == "duckdb" else f"to_date(substr({text}, 1, 10))"

    def days_between(self, a: str, b: str) -> str:
        if self.name == "duckdb":
            return f"date_diff('day', {a}, {b})"
        return f"datediff({b}, {a})"

    def minutes_between(self, a: str, b: str) -> str:
        if self.name == "duckdb":
            return f"date_diff('minute', TRY_CAST({a} AS TIMESTAMPTZ), TRY_CAST({b} AS TIMESTAMPTZ))"
        return f"(unix_timestamp(to_timestamp({b})) - unix_timestamp(to_timestamp({a}))) / 60"

    def explode(self, column: str) -> str:
        return f"unnest({column})" if self.name == "duckdb" else f"explode({column})"


def tables(first: date, last: date, dialect: str) -> list[tuple[str, str]]:
    """The cost tables in order, each (name, SELECT) over the flattened views v_patient, v_organization,
    v_practitioner_role, v_encounter, v_episode and the people's `segment` table: the same statements on DuckDB
    (the engine) and on Spark (the population-scale benchmark), so both give the same figures."""
    d = Dialect(dialect)
    s = schedule()
    costs, a = s["unit_costs"], s["assumptions"]
    minutes = float(a["default_contact_minutes"]["value"])
    short = int(a["short_stay_max_days"]["value"])
    lo, hi = _d(first), _d(last)
    out = []
    # the population: people registered with a practice and alive at some time in the period (those who died in it
    # included: the cost of care in the last months of life is part of the cost of care)
    out.append(("person", f"""
        SELECT p.id, p.practice, coalesce(o.ods, p.practice) AS practice_ods,
               coalesce(n.ods, o.part_of, 'unknown') AS pcn_ods
        FROM v_patient p LEFT JOIN v_organization o ON o.id = p.practice
                         LEFT JOIN v_organization n ON n.id = o.part_of
        WHERE p.practice IS NOT NULL AND {d.day('p.birth_date')} <= {hi}
          AND (p.deceased IS NULL OR {d.day('p.deceased')} >= {lo})"""))
    # every record that is one of these people: their own, and records linked to them (Patient.link, either way)
    links = f"(SELECT id, {d.explode('links')} AS other FROM v_patient)"
    out.append(("alias", f"""
        SELECT record, min(person) AS person FROM (
            SELECT id AS record, id AS person FROM person
            UNION ALL
            SELECT l.other AS record, l.id AS person FROM {links} l JOIN person ON person.id = l.id
            UNION ALL
            SELECT l.id AS record, l.other AS person FROM {links} l JOIN person ON person.id = l.other
        ) u GROUP BY record"""))
    end = "e.`end`" if dialect == "spark" else 'e."end"'
    branches = []
    for rule in s["encounter_rules"]:
        price = float(costs[rule["price"]]["cost"])
        if rule["units"] == "hours":
            units = f"coalesce({d.minutes_between('e.start', end)}, {minutes}) / 60.0"
            cost = f"{units} * {price}"
        elif rule["units"] == "stay":
            units = "1.0"
            short_price = float(costs[rule.get("short_price", rule["price"])]["cost"])
            cost = (f"CASE WHEN {d.days_between(d.day('e.start'), d.day(f'coalesce({end}, e.start)'))} <= {short} "
                    f"THEN {short_price} ELSE {price} END")
        else:
            units, cost = "1.0", f"{price}"
        branches.append((_rule_sql(rule), rule["activity"], rule["setting"], units, cost))

    def case(values: list[str]) -> str:
        return "CASE " + " ".join(f"WHEN {b[0]} THEN {v}" for b, v in zip(branches, values)) + " END"

    roles = sorted({r["practitioner_role"] for r in s["encounter_rules"] if r.get("practitioner_role")})
    joins = " ".join(f"""LEFT JOIN (SELECT DISTINCT practitioner, organization FROM v_practitioner_role
                                    WHERE role = {_q(role)}) {_role_alias(role)}
                         ON {_role_alias(role)}.practitioner = e.practitioner
                        AND {_role_alias(role)}.organization = e.provider""" for role in roles)
    out.append(("contact", f"""
        SELECT e.id, al.person, {case([_q(b[1]) for b in branches])} AS activity,
               {case([_q(b[2]) for b in branches])} AS setting,
               CAST({case([b[3] for b in branches])} AS DOUBLE) AS units,
               CAST({case([b[4] for b in branches])} AS DOUBLE) AS cost
        FROM v_encounter e JOIN alias al ON al.record = e.patient JOIN v_patient p ON p.id = al.person {joins}
        WHERE coalesce(e.status, '') NOT IN ('cancelled', 'entered-in-error', 'planned')
          AND {d.day('e.start')} BETWEEN {lo} AND {hi}"""))
    pieces = []
    for rule in s["episode_rules"]:
        price = float(costs[rule["price"]]["cost"])
        per_week = price * float(a[rule["hours_per_week"]]["value"]) if rule.get("hours_per_week") else price
        pieces.append((_in("lower(coalesce(x.type_text, ''))", [t.lower() for t in rule["type_text"]]),
                       rule["activity"], rule["setting"], per_week))
    xend = "x.`end`" if dialect == "spark" else 'x."end"'
    start_day, end_day = d.day("x.start"), d.day(xend)
    from_day, to_day = f"greatest({start_day}, {lo})", f"least(coalesce({end_day}, {hi}), {hi})"
    overlap = f"greatest(0, {d.days_between(from_day, to_day)} + 1) / 7.0"
    out.append(("package", f"""
        SELECT x.id, al.person,
               CASE {' '.join(f'WHEN {c} THEN {_q(act)}' for c, act, _s, _p in pieces)} END AS activity,
               CASE {' '.join(f'WHEN {c} THEN {_q(st)}' for c, _a, st, _p in pieces)} END AS setting,
               CAST({overlap} AS DOUBLE) AS units,
               CAST({overlap} * CASE {' '.join(f'WHEN {c} THEN {p}' for c, _a, _s, p in pieces)} END AS DOUBLE) AS cost
        FROM v_episode x JOIN alias al ON al.record = x.patient
        WHERE coalesce(x.status, '') NOT IN ('cancelled', 'entered-in-error', 'planned', 'waitlist')
          AND {overlap} > 0"""))
    out.append(("activity", """
        SELECT person, activity, setting, units, cost, 1 AS n FROM contact WHERE activity IS NOT NULL
        UNION ALL
        SELECT person, activity, setting, units, cost, 0 AS n FROM package WHERE activity IS NOT NULL"""))
    out.append(("per_person", """
        SELECT p.id AS person, p.practice_ods, p.pcn_ods,
               coalesce(s.multimorbidity, 'unknown') AS multimorbidity,
               coalesce(s.frailty, 'unknown') AS frailty, coalesce(s.cms, 'unknown') AS cms
        FROM person p LEFT JOIN segment s ON s.person = p.id"""))
    return out


def grouped_sql(key: str | None) -> tuple[str, str]:
    """The two aggregate queries of one breakdown (people and cost per group; contacts, units, cost and people per
    group and setting), common to DuckDB and Spark."""
    k = key or "'all'"
    people = f"""
        SELECT {k} AS grp, count(*) AS people, count(t.person) AS active, coalesce(sum(t.cost), 0) AS cost
        FROM per_person q LEFT JOIN (SELECT person, sum(cost) AS cost FROM activity GROUP BY person) t
          ON t.person = q.person GROUP BY {k}"""
    settings = f"""
        SELECT {k} AS grp, a.setting, sum(a.n) AS contacts, sum(a.units) AS units, sum(a.cost) AS cost,
               count(DISTINCT a.person) AS people
        FROM per_person q JOIN activity a ON a.person = q.person GROUP BY {k}, a.setting"""
    return people, settings


class Flattened:
    """The cost views flattened into DuckDB tables from NDJSON files, plus people's segments from a CSV file."""

    def __init__(self, folder: Path, segments_csv: Path | None, *, first: date, last: date) -> None:
        self.first, self.last = first, last
        self.con = runner.connect()
        self.con.sql("SET enable_progress_bar = false")
        for name, view in views().items():
            compiled = compile_view(view)
            files = runner.ndjson_files(folder, compiled.resource)
            try:
                runner.materialise(self.con, runner.file_queries(compiled, files), f"v_{name}", temp=False)
            except Exception as exc:  # a runtime check of the view failed on this data
                raise runner._run_error(exc) from None
        if segments_csv is not None:
            self.con.sql(f"""CREATE TABLE segment AS SELECT * FROM read_csv({_q(str(segments_csv))}, header = true,
                             columns = {{'person': 'VARCHAR', 'multimorbidity': 'VARCHAR', 'frailty': 'VARCHAR',
                                         'cms': 'VARCHAR'}})""")
        else:
            self.con.sql("CREATE TABLE segment (person VARCHAR, multimorbidity VARCHAR, frailty VARCHAR, cms VARCHAR)")
        for name, sql in tables(first, last, "duckdb"):
            self.con.sql(f"CREATE TABLE {name} AS {sql}")

    def close(self) -> None:
        self.con.close()

    def _grouped(self, key: str | None) -> dict[str, dict[str, dict[str, float]]]:
        """{group: {"all": {people, cost, people_with_activity}, setting: {activity, units, cost, people}}}."""
        people_sql, settings_sql = grouped_sql(key)
        out: dict[str, dict[str, dict[str, float]]] = {}
        people = self.con.sql(people_sql).fetchall()
        for grp, n, active, cost in people:
            out[str(grp)] = {"all": {"people": int(n), "people_with_activity": int(active), "cost": float(cost)}}
        rows = self.con.sql(settings_sql).fetchall()
        for grp, setting, contacts, units, cost, n in rows:
            out.setdefault(str(grp), {"all": {"people": 0, "people_with_activity": 0, "cost": 0.0}})[setting] = {
                "contacts": int(contacts), "units": float(units), "cost": float(cost), "people": int(n)}
        return out

    def figures(self) -> dict[str, Any]:
        total = self._grouped(None).get("all") or {"all": {"people": 0, "people_with_activity": 0, "cost": 0.0}}
        acts = {r[0]: {"count": int(r[1]), "units": float(r[2]), "cost": float(r[3]), "people": int(r[4])}
                for r in self.con.sql("""SELECT activity, sum(n), sum(units), sum(cost), count(DISTINCT person)
                                         FROM activity GROUP BY 1""").fetchall()}
        unpriced = self.con.sql("SELECT count(*) FROM contact WHERE activity IS NULL").fetchall()[0][0]
        unattributed = self.con.sql(f"""
            SELECT count(*) FROM v_encounter e WHERE NOT EXISTS (SELECT 1 FROM alias a WHERE a.record = e.patient)
              AND CAST(substr(e.start, 1, 10) AS DATE) BETWEEN {_d(self.first)} AND {_d(self.last)}""").fetchall()[0][0]
        unattributed_packages = self.con.sql("""
            SELECT count(*) FROM v_episode x WHERE NOT EXISTS (SELECT 1 FROM alias a WHERE a.record = x.patient)
              AND lower(coalesce(x.type_text, '')) <> 'gp registration'""").fetchall()[0][0]
        no_encounter = self.con.sql(f"""
            SELECT count(DISTINCT ap.id) FROM v_appointment ap JOIN alias al ON al.record = ap.patient
            WHERE ap.status IN ('fulfilled', 'arrived', 'checked-in')
              AND TRY_CAST(substr(ap.start, 1, 10) AS DATE) BETWEEN {_d(self.first)} AND {_d(self.last)}
              AND NOT EXISTS (SELECT 1 FROM v_encounter e WHERE e.appointment = ap.id)""").fetchall()[0][0]
        return {"period": {"first": self.first.toordinal(), "last": self.last.toordinal()},
                "total": total, "activities": acts,
                **{f"segment:{kind}": self._grouped(kind) for kind in SEGMENT_KINDS},  # flat: figures nest <= 4
                "practice": self._grouped("q.practice_ods"), "pcn": self._grouped("q.pcn_ods"),
                "not_counted": {"unpriced_contacts": int(unpriced), "contacts_outside_the_population": int(unattributed),
                                "care_packages_outside_the_population": int(unattributed_packages),
                                "appointments_without_encounter": int(no_encounter)}}


def write_segments(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["person", *SEGMENT_KINDS])
        w.writerows(rows)


def compute(folder: Path, segments_csv: Path | None, *, first: date, last: date) -> dict[str, Any]:
    """Cost figures (numbers only) over the NDJSON files in `folder` for the period first..last."""
    flat = Flattened(folder, segments_csv, first=first, last=last)
    try:
        return flat.figures()
    finally:
        flat.close()
