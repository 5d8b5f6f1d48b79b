"""Registers, care processes and risk bands for a whole population in SQL (DuckDB, or Spark for populations beyond
one machine: the same views and SQL, spelled by `views/dialect.py`), over the same FHIR NDJSON the outcome measures
read: the person view's rules (`registers.engine`, `risk.scores`, `risk.facts`) applied to every
person at once, giving the same answers person by person (tested on the synthetic ICS and the Synthea export).

How: the ViewDefinitions in `views/` flatten Patient, Condition, Observation, Procedure, CarePlan, Encounter,
MedicationRequest and MedicationStatement (the SQL on FHIR engine); the clinical content stays in its data files
and is loaded as tables: the registers, their code lists and care processes (knowledge/population/registers.yaml, the
OpenCodelists register lists), the eFI deficits and Cambridge conditions (knowledge/population/risk.yaml). What a
code or a text stands for is worked out once per *distinct* concept (a Condition.code, an Observation's code and
coded value, a medicine) by the same functions the person view uses (`facts.condition_concept`,
`facts.evidence_concepts`, `facts.medicine_line`): a few thousand concepts, not millions of resources. Everything
per person (which conditions are active, ages, the registers, when each care process was last done, the eFI
deficits and the Cambridge conditions, regular medicines) is SQL. Python reads back only the results.

Medicines: one medicine recorded by several organisations under different codes with the same name counts once
(`facts.build`). When a name is claimed by two codes the person view's rule depends on the order of the entries;
those few people (none in the synthetic ICS or the Synthea export) are resolved by the same rule in Python over
their lines in file order (MedicationRequest, then MedicationStatement; on Spark, the order Spark read the lines in).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from joinedup.population.risk import facts as F
from joinedup.population.risk import scores
from joinedup.population.service import _band, multimorbidity_band
from joinedup.population.views import runner
from joinedup.population.views.compiler import compile_view
from joinedup.population.views.dialect import Dialect
from joinedup.population.views.tables import open_tables

from . import engine as registers

OWNERS_FILE = "register-owners.csv"
# a signature: a JSON array of JSON texts (a CodeableConcept, a list of them, a title) or nulls


# evidence of care: the date (facts._period_start over facts.EVIDENCE_DATES) and the signature of each type
EVIDENCE = ("observation", "procedure", "careplan", "encounter")


def _evidence(name: str, d: Dialect) -> tuple[str, str]:
    """The date and the signature of a row of evidence of type `name` (a view's row `v`)."""
    if name == "observation":
        return (f"coalesce({d.day_of('v.d1')}, {d.period_day('v.d1_period')}, {d.day_of('v.d2')})",
                d.json_array("v.code", d.json_of_list("v.component_code"), "v.value_concept"))
    if name == "procedure":
        return f"coalesce({d.day_of('v.d1')}, {d.period_day('v.d1_period')})", d.json_array("v.code")
    if name == "careplan":
        return (f"coalesce({d.period_day('v.d1_period')}, {d.day_of('v.d2')})",
                d.json_array(d.json_of_list("v.category"), d.json_of_text("v.title")))
    return d.period_day("v.d1_period"), d.json_array(d.json_of_list("v.type"), d.json_of_list("v.reason"))


@lru_cache(maxsize=1)
def views() -> dict[str, dict[str, Any]]:
    folder = resources.files("joinedup.population.registers").joinpath("views")
    return {f.name.removesuffix(".json"): orjson.loads(f.read_bytes()) for f in folder.iterdir()
            if f.name.endswith(".json")}


def _q(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _list(values: Any) -> str:
    return ", ".join(_q(v) for v in sorted(values))


def _d(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


class Population:
    """The registers, care processes and risk bands of everyone in a folder of NDJSON files, as at `today`.

    `owners` (a CSV of resource type, id, person) names the person a resource belongs to when that is not the
    Patient its subject references (the gate groups records by compartment, linked records included). `engine`:
    "duckdb" (the default) or "spark"."""

    def __init__(self, folder: Path, today: date, *, owners: Path | None = None,
                 timings: dict[str, dict[str, float]] | None = None, engine: str = "duckdb") -> None:
        self.today = today
        self.timings = timings if timings is not None else {}  # part -> wall and CPU seconds
        self.db = open_tables(engine)
        self.d = self.db.dialect
        try:
            if engine == "duckdb":
                self.db.declare("SET preserve_insertion_order = true")
            for statement in self.d.macros():  # day_of, period_day (DuckDB macros; Spark spells them inline)
                self.db.declare(statement)
        except Exception:
            self.db.close()
            raise
        try:
            with self._timed("flatten_views"):
                self._flatten(folder, owners)
            with self._timed("vocabulary"):
                self._knowledge()
                self._vocabulary()
            with self._timed("conditions_and_medicines"):
                self._person_facts()
            with self._timed("efi_and_cambridge"):
                self._scores()
            with self._timed("registers"):
                self._registers()
            self._care_processes()
        except Exception:
            self.db.close()
            raise

    @property
    def con(self) -> Any:
        """The DuckDB connection (DuckDB only)."""
        return self.db.con  # type: ignore[attr-defined]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Population:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t, c = time.perf_counter(), time.process_time()
        yield
        got = self.timings.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0})
        got["seconds"] += time.perf_counter() - t
        got["cpu_seconds"] += time.process_time() - c

    # -- flattening --------------------------------------------------------------------------------------------------
    def _flatten(self, folder: Path, owners: Path | None) -> None:
        db, d = self.db, self.d
        if owners is not None and owners.exists() and owners.stat().st_size:
            db.load_csv("owner", owners, ["rtype", "id", "person"], header=False)
        else:
            db.load("owner", [("rtype", "VARCHAR"), ("id", "VARCHAR"), ("person", "VARCHAR")], [])
        owned = db.fetch("SELECT DISTINCT rtype FROM owner")
        owned_types = {r[0] for r in owned}
        evidence = []
        for name, view in views().items():
            if name in EVIDENCE and view["resource"] not in owned_types:
                # no entry of this type belongs to anyone but its subject: its id is not needed (one JSON path less
                # per resource, the flattening's cost)
                view = {**view, "select": [{**sel, "column": [c for c in sel["column"] if c["name"] != "id"]}
                                           for sel in view["select"]]}
            compiled = compile_view(view, d.name)
            files = runner.ndjson_files(folder, compiled.resource)
            if name in EVIDENCE:
                # evidence of care: who, when (facts._period_start) and what it is (its signature, see _vocabulary)
                query = compiled.query(db.relation(files))
                status = "true" if name == "encounter" else \
                    f"coalesce(v.status, '') NOT IN ({_list(F.NOT_EVIDENCE_STATUS)})"
                owner = (f"LEFT JOIN owner o ON o.rtype = {_q(compiled.resource)} AND o.id = v.id"
                         if compiled.resource in owned_types else
                         f"LEFT JOIN (SELECT CAST(NULL AS {d.string}) AS person) o ON false")
                day, sig = _evidence(name, d)
                evidence.append(f"""SELECT {_q(name)} AS kind, {self._whose('v', compiled.resource)} AS person,
                                           CAST({sig} AS {d.string}) AS sig, {day} AS day
                                    FROM ({query}) v {owner}
                                    WHERE {status}""")
                continue
            db.flatten(f"v_{name}", compiled, files,
                       numbered=name in ("patient", "medication_request", "medication_statement"))
        # one row per person and kind of evidence: when it was last dated on or before the date (care
        # processes, engine.last_done); that it exists at all (clinical texts, whatever their date)
        db.create("evidence_all", f"""
            SELECT kind, person, sig, max(day) FILTER (WHERE day <= {_d(self.today)}) AS day
            FROM ({' UNION ALL '.join(evidence)}) _e GROUP BY kind, person, sig""")
        # people: the Patient resources (the first of an id, in file order), their practice, birth, death and age
        today = _d(self.today)
        db.create("person", f"""
            SELECT id, birth, deceased, practice, n,
                   CAST(year({today}) - year(birth) - CASE WHEN month({today}) < month(birth)
                         OR (month({today}) = month(birth) AND day({today}) < day(birth)) THEN 1 ELSE 0 END
                        AS INTEGER) AS age
            FROM (SELECT id, any_value(birth) AS birth, any_value(deceased) AS deceased,
                         any_value(practice) AS practice, min(n) AS n
                  FROM (SELECT id, {d.day_of('birth_date')} AS birth, {d.line_number('v')} AS n,
                               coalesce(deceased_boolean, false) OR coalesce(deceased_datetime, '') <> '' AS deceased,
                               substr({d.first_with_prefix('gp', 'Organization/')}, 14) AS practice
                        FROM v_patient v WHERE id IS NOT NULL) _p
                  GROUP BY id) _q""")

    def _whose(self, table: str, rtype: str) -> str:
        """The person a row belongs to: its owner when named (`o`, the owner table joined), else the Patient its
        subject references ("Patient/<id>")."""
        return f"""coalesce(o.person, CASE WHEN {self.d.starts_with(f'{table}.subject', "'Patient/'")}
                                        THEN substr({table}.subject, 9) END)"""

    # -- the data files as tables ------------------------------------------------------------------------------------
    def _knowledge(self) -> None:
        kb = registers.knowledge()
        risk = scores.knowledge()
        lists = registers.codelists()
        db = self.db
        reg, reg_key, reg_code, proc = [], [], [], []
        for i, (rid, r) in enumerate(kb["registers"].items()):
            reg.append((rid, r.get("min_age"), r.get("efi_at_least"), i))
            reg_key += [(rid, k) for k in r["keys"] or []]
            reg_code += [(rid, c) for c in sorted(lists.get(r.get("codelist") or "", frozenset()))]
            proc += [(rid, p["id"], p["every_months"], j) for j, p in enumerate(kb["care_processes"].get(rid) or [])]
        db.load("reg", [("register", "VARCHAR"), ("min_age", "INTEGER"), ("efi_at_least", "DOUBLE"),
                        ("ord", "INTEGER")], reg)
        db.load("reg_key", [("register", "VARCHAR"), ("key", "VARCHAR")], reg_key)
        db.load("reg_code", [("register", "VARCHAR"), ("code", "VARCHAR")], reg_code)
        db.load("proc", [("register", "VARCHAR"), ("process", "VARCHAR"), ("every_months", "INTEGER"),
                         ("ord", "INTEGER")], proc)
        # eFI deficits by condition key, and the polypharmacy deficit; Cambridge conditions by key (with a window)
        efi = risk["electronic_frailty_index"]
        efi_key, efi_poly = [], []
        for did, d in efi["deficits"].items():
            if d.get("min_regular_medicines"):
                efi_poly.append((did, d["min_regular_medicines"]))
            elif d.get("keys"):
                efi_key += [(did, k) for k in d["keys"]]
        db.load("efi_key", [("deficit", "VARCHAR"), ("key", "VARCHAR")], efi_key)
        db.load("efi_poly", [("deficit", "VARCHAR"), ("min_medicines", "INTEGER")], efi_poly)
        n_deficits = len(efi["deficits"])
        # eFI value and category for each possible count of deficits (scores.efi / efi_category, exactly)
        db.load("efi_band", [("n", "INTEGER"), ("value", "DOUBLE"), ("category", "VARCHAR")],
                [(n, round(n / n_deficits, 4), scores.efi_category(n / n_deficits)) for n in range(n_deficits + 1)])
        self.efi_min_age = efi["min_age"]
        cms = risk["cambridge_multimorbidity_score"]
        cms_key = []
        for cid, c in cms["conditions"].items():
            since = None
            if c.get("within_years"):
                since = self.today - timedelta(days=round(365.25 * c["within_years"]))
            cms_key += [(cid, k, since) for k in c.get("keys") or []]
        db.load("cms_key", [("condition", "VARCHAR"), ("key", "VARCHAR"), ("since", "DATE")], cms_key)
        # phrases: eFI deficits with text; Cambridge conditions with text and no time window (scores.cambridge)
        self.phrases: list[tuple[str, list[str]]] = [(f"efi:{did}", d["text"]) for did, d in efi["deficits"].items()
                                                     if d.get("text") and not d.get("min_regular_medicines")]
        self.phrases += [(f"cms:{cid}", c["text"]) for cid, c in cms["conditions"].items()
                         if c.get("text") and not c.get("within_years")]
        # the care processes' codes and phrases
        self.process_specs = [(rid, p["id"], registers._codes_of(rid, p["id"]), p.get("text") or [])
                              for rid in kb["registers"] for p in kb["care_processes"].get(rid) or []]

    def _text_items(self, norm: str) -> list[str]:
        return [item for item, phrases in self.phrases if any(F.phrase_in(p, norm) for p in phrases)]

    # -- what each distinct concept stands for (the person view's own functions) -------------------------------------
    def _vocabulary(self) -> None:
        db = self.db
        # conditions: keys, SNOMED CT codes and the text items of the Condition.code text
        keys_rows, code_rows, text_rows = [], [], []
        for (code,) in db.fetch("SELECT DISTINCT code FROM v_condition"):
            concept = orjson.loads(code) if code is not None else None
            text, keys, snomed = F.condition_concept(concept)
            sig = code if code is not None else ""
            keys_rows += [(sig, k) for k in dict.fromkeys(keys)]
            code_rows += [(sig, c) for c in snomed]
            text_rows += [(sig, item) for item in self._text_items(F.normalise(text))]
        self._table("cond_key", ("sig", "key"), keys_rows)
        self._table("cond_snomed", ("sig", "code"), code_rows)
        self._table("cond_text", ("sig", "item"), text_rows)
        # evidence of care: each distinct signature's codes and normalised text -> care processes and text items
        proc_rows, item_rows = [], []
        for name, s in db.fetch("SELECT DISTINCT kind, sig FROM evidence_all"):
            res = self._resource_of(name, orjson.loads(s))
            codes, norm = F.evidence_concepts(res)
            for rid, pid, pcodes, phrases in self.process_specs:
                if (pcodes & codes) or any(F.phrase_in(p, norm) for p in phrases):
                    proc_rows.append((name, s, rid, pid))
            if name in ("observation", "procedure"):
                item_rows += [(name, s, item) for item in self._text_items(norm)]
        self._table("ev_process", ("kind", "sig", "register", "process"), proc_rows)
        self._table("ev_text", ("kind", "sig", "item"), item_rows)
        # medicines: each distinct medicine's key and normalised name
        med_rows = []
        for name in ("medication_request", "medication_statement"):
            for concept, display, ref in db.fetch(
                    f"SELECT DISTINCT medication, reference_display, reference FROM v_{name}"):
                res: dict[str, Any] = {}
                if concept is not None:
                    res["medicationCodeableConcept"] = orjson.loads(concept)
                if display is not None or ref is not None:
                    res["medicationReference"] = {k: v for k, v in (("display", display), ("reference", ref))
                                                  if v is not None}
                line = F.medicine_line(res)
                if line is not None:
                    med_rows.append((concept or "", display or "", ref or "", line[0], line[2]))
        self._table("med_vocab", ("medication", "reference_display", "reference", "key", "name"), med_rows)

    @staticmethod
    def _resource_of(name: str, parts: list[Any]) -> dict[str, Any]:
        def load(x: Any) -> Any:
            return orjson.loads(x) if isinstance(x, str) else x

        if name == "observation":
            code, components, value = (load(p) for p in parts)
            res = {"resourceType": "Observation", "code": code,
                   "component": [{"code": load(c)} for c in components or []]}
            if value is not None:
                res["valueCodeableConcept"] = value
            return res
        if name == "procedure":
            return {"resourceType": "Procedure", "code": load(parts[0])}
        if name == "careplan":
            category, title = (load(p) for p in parts)
            return {"resourceType": "CarePlan", "category": [load(c) for c in category or []], "title": title}
        types, reasons = (load(p) for p in parts)
        return {"resourceType": "Encounter", "type": [load(c) for c in types or []],
                "reasonCode": [load(c) for c in reasons or []]}

    def _table(self, name: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self.db.load(name, [(c, "VARCHAR") for c in columns], rows)

    # -- per person ---------------------------------------------------------------------------------------------------
    def _person_facts(self) -> None:
        db, d = self.db, self.d
        # conditions not refuted, with their status and onset, belonging to a person
        db.create("cond", f"""
            SELECT c.person, coalesce(c.code, '') AS sig, c.onset,
                   coalesce(nullif(c.clinical, ''), 'active') NOT IN ({_list(F.INACTIVE_CLINICAL)}) AS active
            FROM (SELECT {self._whose('v', 'Condition')} AS person, code, clinical, verification,
                         coalesce({d.day_of('onset_datetime')}, {d.period_day('onset_period')},
                                  {d.day_of('recorded')}) AS onset
                  FROM v_condition v LEFT JOIN owner o ON o.rtype = 'Condition' AND o.id = v.id) c
            JOIN person p ON p.id = c.person
            WHERE coalesce(c.verification, '') NOT IN ({_list(F.NOT_TRUE)})""")
        db.create("person_key", """SELECT DISTINCT c.person, k.key, c.onset
                                   FROM cond c JOIN cond_key k ON k.sig = c.sig WHERE c.active""")
        db.create("person_snomed", """SELECT DISTINCT c.person, s.code
                                      FROM cond c JOIN cond_snomed s ON s.sig = c.sig WHERE c.active""")
        db.create("evidence", "SELECT e.* FROM evidence_all e JOIN person p ON p.id = e.person")
        db.create("person_text", """
            SELECT DISTINCT c.person, t.item FROM cond c JOIN cond_text t ON t.sig = c.sig WHERE c.active
            UNION
            SELECT DISTINCT e.person, t.item FROM evidence e JOIN ev_text t ON t.kind = e.kind AND t.sig = e.sig""")
        # current regular medicines
        parts = []
        for name, rtype, current in (
                ("medication_request", "MedicationRequest",
                 f"status IN ({_list(F.CURRENT_REQUEST)}) AND coalesce(intent, 'order') IN ({_list(F.CURRENT_INTENT)})"),
                ("medication_statement", "MedicationStatement", f"status IN ({_list(F.CURRENT_STATEMENT)})")):
            parts.append(f"""SELECT {self._whose('v', rtype)} AS person,
                                    {0 if name == 'medication_request' else 1} AS file,
                                    {d.line_number('v')} AS line,
                                    coalesce(medication, '') AS medication, coalesce(reference_display, '') AS rd,
                                    coalesce(reference, '') AS rf,
                                    coalesce(doses, 0) > 0 AND coalesce(as_needed_doses, 0) = coalesce(doses, 0)
                                        AS as_needed
                             FROM v_{name} v LEFT JOIN owner o ON o.rtype = {_q(rtype)} AND o.id = v.id
                             WHERE {current}""")
        db.create("med_line", f"""
            SELECT m.person, m.file, m.line, v.key, v.name
            FROM ({' UNION ALL '.join(parts)}) m
            JOIN person p ON p.id = m.person
            JOIN med_vocab v ON v.medication = m.medication AND v.reference_display = m.rd AND v.reference = m.rf
            WHERE NOT m.as_needed""")
        # a name claimed by two keys: the order of the lines decides (facts.build), in Python for those people
        db.create("med_conflict", """SELECT DISTINCT person FROM med_line
                                     GROUP BY person, name HAVING count(DISTINCT key) > 1""")
        lines: dict[str, list[tuple[str, str]]] = {}
        for person, key, name in db.fetch("""SELECT person, key, name FROM med_line
                                             WHERE person IN (SELECT person FROM med_conflict)
                                             ORDER BY person, file, line"""):
            lines.setdefault(person, []).append((key, name))
        rows = []
        for person, pairs in lines.items():
            by_name: dict[str, str] = {}
            kept: set[str] = set()
            for key, name in pairs:
                existing = by_name.get(name)
                if existing is not None and existing != key:
                    continue
                by_name.setdefault(name, key)
                kept.add(key)
            rows.append((person, len(kept)))
        db.load("med_count_ordered", [("person", "VARCHAR"), ("n", "INTEGER")], rows)
        db.create("med_count", """
            SELECT person, count(DISTINCT key) AS n FROM med_line
            WHERE person NOT IN (SELECT person FROM med_conflict) GROUP BY person
            UNION ALL SELECT person, n FROM med_count_ordered""")

    def _scores(self) -> None:
        db, d = self.db, self.d
        db.create("efi_present", f"""
            SELECT DISTINCT k.person, e.deficit FROM person_key k JOIN efi_key e ON e.key = k.key
            UNION
            SELECT DISTINCT person, substr(item, 5) FROM person_text WHERE {d.starts_with('item', "'efi:'")}
            UNION
            SELECT m.person, e.deficit FROM med_count m JOIN efi_poly e ON m.n >= e.min_medicines""")
        db.create("cms_present", f"""
            SELECT DISTINCT k.person, c.condition FROM person_key k JOIN cms_key c ON c.key = k.key
            WHERE c.since IS NULL OR (k.onset IS NOT NULL AND k.onset >= c.since)
            UNION
            SELECT DISTINCT person, substr(item, 5) FROM person_text WHERE {d.starts_with('item', "'cms:'")}""")
        db.create("cms_combo", f"""SELECT person, {d.sorted_join('condition', ',')} AS combo
                                   FROM cms_present GROUP BY person""")
        # each distinct combination of conditions scored as scores.cambridge adds them (order of the data file)
        spec = scores.knowledge()["cambridge_multimorbidity_score"]["conditions"]
        band = _band
        rows = []
        for (combo,) in db.fetch("SELECT DISTINCT combo FROM cms_combo"):
            present = set(combo.split(","))
            score = 0.0
            for cid, c in spec.items():
                if cid in present:
                    score += c["weight"]
            score = round(score, 2)
            rows.append((combo, score, band("cambridge_multimorbidity_score", score)))
        db.load("cms_score", [("combo", "VARCHAR"), ("score", "DOUBLE"), ("band", "VARCHAR")], rows)
        zero_band = band("cambridge_multimorbidity_score", 0.0)
        db.create("risk", f"""
            SELECT p.id AS person, coalesce(e.n, 0) AS efi_n, b.value AS efi_value, b.category AS efi_category,
                   p.age IS NOT NULL AND p.age >= {int(self.efi_min_age)} AS efi_applies,
                   coalesce(s.score, CAST(0 AS DOUBLE)) AS cms, coalesce(s.band, {_q(zero_band)}) AS cms_band,
                   coalesce(m.n, 0) AS medicines
            FROM person p
            LEFT JOIN (SELECT person, count(*) AS n FROM efi_present GROUP BY person) e ON e.person = p.id
            JOIN efi_band b ON b.n = coalesce(e.n, 0)
            LEFT JOIN cms_combo c ON c.person = p.id LEFT JOIN cms_score s ON s.combo = c.combo
            LEFT JOIN med_count m ON m.person = p.id""")

    def _registers(self) -> None:
        self.db.create("member", """
            SELECT p.id AS person, r.register, r.ord
            FROM person p CROSS JOIN reg r JOIN risk k ON k.person = p.id
            WHERE (r.min_age IS NULL OR (p.age IS NOT NULL AND p.age >= r.min_age))
              AND (EXISTS (SELECT 1 FROM person_key x JOIN reg_key y ON y.key = x.key
                           WHERE x.person = p.id AND y.register = r.register)
                   OR EXISTS (SELECT 1 FROM person_snomed x JOIN reg_code y ON y.code = x.code
                              WHERE x.person = p.id AND y.register = r.register)
                   OR (r.efi_at_least IS NOT NULL AND k.efi_value >= r.efi_at_least))""")

    def _care_processes(self) -> None:
        """Each register's care processes (engine.care_processes), one statement per register (timed apart)."""
        kb = registers.knowledge()
        soon = int(kb["due_soon_days"])
        today = _d(self.today)
        db, d = self.db, self.d
        db.create("done", """SELECT e.person, x.register, x.process, max(e.day) AS last_done
                             FROM evidence e JOIN ev_process x ON x.kind = e.kind AND x.sig = e.sig
                             WHERE e.day IS NOT NULL GROUP BY 1, 2, 3""")

        def statuses(registers: list[str]) -> str:
            return f"""
                SELECT person, register, process,
                       CASE WHEN due_by IS NULL OR due_by <= {today} THEN 'overdue'
                            WHEN {d.days_between(today, 'due_by')} <= {soon} THEN 'due' ELSE 'done' END AS status,
                       last_done, due_by
                FROM (SELECT m.person, m.register, c.process, x.last_done,
                             {d.add_months('x.last_done', 'c.every_months')} AS due_by, m.ord, c.ord AS pord
                      FROM member m JOIN proc c ON c.register = m.register
                      LEFT JOIN done x ON x.person = m.person AND x.register = m.register
                                      AND x.process = c.process
                      WHERE m.register IN ({_list(registers)})) _c
                ORDER BY person, ord, pord"""

        with_processes = [rid for rid in kb["registers"] if kb["care_processes"].get(rid)]
        if self.db.engine == "spark":  # one statement (Spark's cost is per statement, not per row)
            with self._timed("care_processes"):
                db.create("process_status", statuses(with_processes))
            return
        db.load("process_status", [("person", "VARCHAR"), ("register", "VARCHAR"), ("process", "VARCHAR"),
                                   ("status", "VARCHAR"), ("last_done", "DATE"), ("due_by", "DATE")], [])
        for rid in with_processes:
            with self._timed(f"care_processes:{rid}"):
                db.append("process_status", statuses([rid]))

    # -- results ------------------------------------------------------------------------------------------------------
    def people(self) -> dict[str, dict[str, Any]]:
        """Everyone's registers, care processes and scores, for comparison with the person view."""
        out: dict[str, dict[str, Any]] = {}
        for pid, practice, deceased, age, efi_n, efi_value, efi_cat, applies, cms, cms_band, meds in self.db.fetch("""
                SELECT p.id, p.practice, p.deceased, p.age, r.efi_n, r.efi_value, r.efi_category, r.efi_applies,
                       r.cms, r.cms_band, r.medicines
                FROM person p JOIN risk r ON r.person = p.id ORDER BY p.n"""):
            out[pid] = {"practice": practice, "deceased": deceased, "age": age, "efi": efi_value, "efi_count": efi_n,
                        "efi_category": efi_cat, "efi_applies": applies, "cms": cms, "cms_band": cms_band,
                        "regular_medicines": meds, "registers": {}}
        for pid, rid in self.db.fetch("SELECT person, register FROM member ORDER BY person, ord"):
            out[pid]["registers"][rid] = {}
        for pid, rid, proc, status, last_done, due_by in self.db.fetch(
                "SELECT person, register, process, status, last_done, due_by FROM process_status"):
            out[pid]["registers"][rid][proc] = {"status": status, "last_done": last_done, "due_by": due_by}
        return out

    def tallies(self) -> dict[str, Any]:
        """Counts by practice id (registered, living people) and every registered person's segments (the living
        and the dead), as `cost.people.summarise` tallies them."""
        db = self.db
        band = _band
        living = "p.practice IS NOT NULL AND NOT p.deceased"

        n = "coalesce(m.c, 0)"
        mm = "CASE " + " ".join(f"WHEN {n} = {k} THEN {_q(multimorbidity_band(k))}"
                                for k in range(len(registers.register_ids()) + 1)) + " END"
        db.create("mm", f"""SELECT p.id AS person, {mm} AS band FROM person p
                            LEFT JOIN (SELECT person, count(*) FILTER (WHERE register <> 'frailty') AS c FROM member
                                       GROUP BY person) m ON m.person = p.id""", replace=True)
        people = {pr: n for pr, n in db.fetch(
            f"SELECT p.practice, count(*) FROM person p WHERE {living} GROUP BY 1")}
        regs: dict[str, dict[str, int]] = {}
        for pr, rid, n in db.fetch(f"""SELECT p.practice, m.register, count(*) FROM member m
                                      JOIN person p ON p.id = m.person WHERE {living} GROUP BY 1, 2"""):
            regs.setdefault(pr, {})[rid] = n
        procs: dict[str, dict[str, int]] = {}
        for pr, key, n in db.fetch(f"""SELECT p.practice, s.register || '|' || s.process || '|' || s.status, count(*)
                                      FROM process_status s JOIN person p ON p.id = s.person WHERE {living}
                                      GROUP BY 1, 2"""):
            procs.setdefault(pr, {})[key] = n
        risk: dict[str, dict[str, int]] = {}
        for pr, cms_band, mm_band, applies, efi_cat, meds, n in db.fetch(f"""
                SELECT p.practice, r.cms_band, m.band, r.efi_applies, r.efi_category, r.medicines, count(*)
                FROM person p JOIN risk r ON r.person = p.id JOIN mm m ON m.person = p.id WHERE {living}
                GROUP BY 1, 2, 3, 4, 5, 6"""):
            row = risk.setdefault(pr, {})
            keys = [f"cms|{cms_band}", f"multimorbidity|{mm_band}",
                    f"regular_medicines|{band('regular_medicines', meds)}"]
            if applies:
                keys.append(f"efi|{efi_cat}")
            for k in keys:
                row[k] = row.get(k, 0) + n
        segments = [tuple(r) for r in db.fetch("""
            SELECT p.id, m.band, CASE WHEN r.efi_applies THEN r.efi_category ELSE 'under 65' END, r.cms_band
            FROM person p JOIN risk r ON r.person = p.id JOIN mm m ON m.person = p.id
            WHERE p.practice IS NOT NULL ORDER BY p.n""")]
        return {"people": people, "registers": regs, "processes": procs, "risk": risk, "segments": segments}


def write_owners(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """The resources whose person is not the Patient their subject references (resource type, id, person)."""
    with path.open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


__all__ = ["OWNERS_FILE", "Population", "views", "write_owners"]
