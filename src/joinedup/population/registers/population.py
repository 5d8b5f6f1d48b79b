"""Registers, care processes and risk bands for a whole population in SQL (DuckDB), over the same FHIR NDJSON the
outcome measures read: the person view's rules (`registers.engine`, `risk.scores`, `risk.facts`) applied to every
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
their lines in file order (MedicationRequest, then MedicationStatement).
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

from . import engine as registers

OWNERS_FILE = "register-owners.csv"
# a signature: a JSON array of JSON texts (a CodeableConcept, a list of them, a title) or nulls


def _js(col: str) -> str:
    return f"CAST(to_json(v.{col}) AS VARCHAR)"


# evidence of care: the date (facts._period_start over facts.EVIDENCE_DATES) and the signature of each type
EVIDENCE = {
    "observation": ("coalesce(day_of(v.d1), period_day(v.d1_period), day_of(v.d2))",
                    f"to_json([v.code, {_js('component_code')}, v.value_concept])"),
    "procedure": ("coalesce(day_of(v.d1), period_day(v.d1_period))", "to_json([v.code])"),
    "careplan": ("coalesce(period_day(v.d1_period), day_of(v.d2))",
                 f"to_json([{_js('category')}, {_js('title')}])"),
    "encounter": ("period_day(v.d1_period)", f"to_json([{_js('type')}, {_js('reason')}])"),
}


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


# day_of (facts.day_of): YYYY -> 1 January, YYYY-MM -> the 1st, else the first 10 characters as a date
DAY_OF = """CREATE OR REPLACE MACRO day_of(v) AS CASE WHEN v IS NULL OR length(v) < 4 THEN NULL
    WHEN length(v) = 4 THEN TRY_CAST(v || '-01-01' AS DATE) WHEN length(v) = 7 THEN TRY_CAST(v || '-01' AS DATE)
    ELSE TRY_CAST(substr(v, 1, 10) AS DATE) END"""
# a Period (its JSON text) gives its start, else its end (facts._period_start)
PERIOD = """CREATE OR REPLACE MACRO period_day(p) AS
    day_of(coalesce(nullif(json_extract_string(p, '$.start'), ''), nullif(json_extract_string(p, '$.end'), '')))"""


class Population:
    """The registers, care processes and risk bands of everyone in a folder of NDJSON files, as at `today`.

    `owners` (a CSV of resource type, id, person) names the person a resource belongs to when that is not the
    Patient its subject references (the gate groups records by compartment, linked records included)."""

    def __init__(self, folder: Path, today: date, *, owners: Path | None = None,
                 timings: dict[str, dict[str, float]] | None = None) -> None:
        self.today = today
        self.timings = timings if timings is not None else {}  # part -> wall and CPU seconds
        self.con = runner.connect()
        self.con.sql("SET enable_progress_bar = false")
        self.con.sql("SET preserve_insertion_order = true")
        self.con.sql(DAY_OF)
        self.con.sql(PERIOD)
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
            self.con.close()
            raise

    def close(self) -> None:
        self.con.close()

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
        self.con.sql("CREATE TABLE owner (rtype VARCHAR, id VARCHAR, person VARCHAR)")
        if owners is not None and owners.exists() and owners.stat().st_size:
            self.con.sql(f"INSERT INTO owner SELECT * FROM read_csv({_q(owners)}, header = false, "
                         "columns = {'rtype': 'VARCHAR', 'id': 'VARCHAR', 'person': 'VARCHAR'})")
        owned = self.con.sql("SELECT DISTINCT rtype FROM owner").fetchall()
        owned_types = {r[0] for r in owned}
        evidence = []
        for name, view in views().items():
            if name in EVIDENCE and view["resource"] not in owned_types:
                # no entry of this type belongs to anyone but its subject: its id is not needed (one JSON path less
                # per resource, the flattening's cost)
                view = {**view, "select": [{**sel, "column": [c for c in sel["column"] if c["name"] != "id"]}
                                           for sel in view["select"]]}
            compiled = compile_view(view)
            query = compiled.query(runner.ndjson_relation(runner.ndjson_files(folder, compiled.resource)))
            if name in EVIDENCE:
                # evidence of care: who, when (facts._period_start) and what it is (its signature, see _vocabulary)
                status = "true" if name == "encounter" else \
                    f"coalesce(v.status, '') NOT IN ({_list(F.NOT_EVIDENCE_STATUS)})"
                owner = (f"LEFT JOIN owner o ON o.rtype = {_q(compiled.resource)} AND o.id = v.id"
                         if compiled.resource in owned_types else "LEFT JOIN (SELECT NULL AS person) o ON false")
                evidence.append(f"""SELECT {_q(name)} AS kind, {self._whose('v', compiled.resource)} AS person,
                                           CAST({EVIDENCE[name][1]} AS VARCHAR) AS sig, {EVIDENCE[name][0]} AS day
                                    FROM ({query}) v {owner}
                                    WHERE {status}""")
                continue
            try:
                self.con.sql(f"CREATE TABLE v_{name} AS {query}")
            except Exception as exc:  # a runtime check of the view failed on this data
                raise runner._run_error(exc) from None
        try:
            # one row per person and kind of evidence: when it was last dated on or before the date (care
            # processes, engine.last_done); that it exists at all (clinical texts, whatever their date)
            self.con.sql(f"""CREATE TABLE evidence_all AS
                             SELECT kind, person, sig, max(day) FILTER (WHERE day <= {_d(self.today)}) AS day
                             FROM ({' UNION ALL '.join(evidence)}) GROUP BY ALL""")
        except Exception as exc:
            raise runner._run_error(exc) from None
        # people: the Patient resources (the first of an id), their practice, birth and death
        self.con.sql("""
            CREATE TABLE person AS
            SELECT id, any_value(birth) AS birth, any_value(deceased) AS deceased, any_value(practice) AS practice,
                   min(n) AS n
            FROM (SELECT id, day_of(birth_date) AS birth, row_number() OVER () AS n,
                         coalesce(deceased_boolean, false) OR coalesce(deceased_datetime, '') <> '' AS deceased,
                         substr(list_filter(gp, lambda x: starts_with(x, 'Organization/'))[1], 14) AS practice
                  FROM v_patient WHERE id IS NOT NULL)
            GROUP BY id""")
        self.con.sql(f"""
            ALTER TABLE person ADD COLUMN age INTEGER;
            UPDATE person SET age = year({_d(self.today)}) - year(birth)
                - CASE WHEN month({_d(self.today)}) < month(birth)
                         OR (month({_d(self.today)}) = month(birth) AND day({_d(self.today)}) < day(birth))
                       THEN 1 ELSE 0 END""")

    @staticmethod
    def _whose(table: str, rtype: str) -> str:
        """The person a row belongs to: its owner when named (`o`, the owner table joined), else the Patient its
        subject references ("Patient/<id>")."""
        return f"""coalesce(o.person, CASE WHEN starts_with({table}.subject, 'Patient/') THEN substr({table}.subject, 9)
                                        END)"""

    # -- the data files as tables ------------------------------------------------------------------------------------
    def _knowledge(self) -> None:
        kb = registers.knowledge()
        risk = scores.knowledge()
        lists = registers.codelists()
        con = self.con
        con.sql("CREATE TABLE reg (register VARCHAR, min_age INTEGER, efi_at_least DOUBLE, ord INTEGER)")
        con.sql("CREATE TABLE reg_key (register VARCHAR, key VARCHAR)")
        con.sql("CREATE TABLE reg_code (register VARCHAR, code VARCHAR)")
        con.sql("CREATE TABLE proc (register VARCHAR, process VARCHAR, every_months INTEGER, ord INTEGER)")
        for i, (rid, r) in enumerate(kb["registers"].items()):
            con.executemany("INSERT INTO reg VALUES (?, ?, ?, ?)", [(rid, r.get("min_age"), r.get("efi_at_least"), i)])
            if r["keys"]:
                con.executemany("INSERT INTO reg_key VALUES (?, ?)", [(rid, k) for k in r["keys"]])
            listed = sorted(lists.get(r.get("codelist") or "", frozenset()))
            if listed:
                con.executemany("INSERT INTO reg_code VALUES (?, ?)", [(rid, c) for c in listed])
            for j, p in enumerate(kb["care_processes"].get(rid) or []):
                con.executemany("INSERT INTO proc VALUES (?, ?, ?, ?)", [(rid, p["id"], p["every_months"], j)])
        # eFI deficits by condition key, and the polypharmacy deficit; Cambridge conditions by key (with a window)
        efi = risk["electronic_frailty_index"]
        con.sql("CREATE TABLE efi_key (deficit VARCHAR, key VARCHAR)")
        con.sql("CREATE TABLE efi_poly (deficit VARCHAR, min_medicines INTEGER)")
        for did, d in efi["deficits"].items():
            if d.get("min_regular_medicines"):
                con.executemany("INSERT INTO efi_poly VALUES (?, ?)", [(did, d["min_regular_medicines"])])
            elif d.get("keys"):
                con.executemany("INSERT INTO efi_key VALUES (?, ?)", [(did, k) for k in d["keys"]])
        n_deficits = len(efi["deficits"])
        # eFI value and category for each possible count of deficits (scores.efi / efi_category, exactly)
        con.sql("CREATE TABLE efi_band (n INTEGER, value DOUBLE, category VARCHAR)")
        con.executemany("INSERT INTO efi_band VALUES (?, ?, ?)",
                        [(n, round(n / n_deficits, 4), scores.efi_category(n / n_deficits))
                         for n in range(n_deficits + 1)])
        self.efi_min_age = efi["min_age"]
        cms = risk["cambridge_multimorbidity_score"]
        con.sql("CREATE TABLE cms_key (condition VARCHAR, key VARCHAR, since DATE)")
        for cid, c in cms["conditions"].items():
            since = None
            if c.get("within_years"):
                since = self.today - timedelta(days=round(365.25 * c["within_years"]))
            if c.get("keys"):
                con.executemany("INSERT INTO cms_key VALUES (?, ?, ?)", [(cid, k, since) for k in c["keys"]])
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
        con = self.con
        # conditions: keys, SNOMED CT codes and the text items of the Condition.code text
        con.sql("CREATE TABLE cond_vocab AS SELECT DISTINCT code FROM v_condition")
        keys_rows, code_rows, text_rows = [], [], []
        for (code,) in con.sql("SELECT code FROM cond_vocab").fetchall():
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
        for name, s in con.sql("SELECT DISTINCT kind, sig FROM evidence_all").fetchall():
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
            for concept, display, ref in con.sql(
                    f"SELECT DISTINCT medication, reference_display, reference FROM v_{name}").fetchall():
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
        self.con.sql(f"CREATE TABLE {name} ({', '.join(f'{c} VARCHAR' for c in columns)})")
        if rows:
            self.con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' for _ in columns)})", rows)

    # -- per person ---------------------------------------------------------------------------------------------------
    def _person_facts(self) -> None:
        con = self.con
        # conditions not refuted, with their status and onset, belonging to a person
        con.sql(f"""
            CREATE TABLE cond AS
            SELECT c.person, coalesce(c.code, '') AS sig, c.onset,
                   coalesce(nullif(c.clinical, ''), 'active') NOT IN ({_list(F.INACTIVE_CLINICAL)}) AS active
            FROM (SELECT {self._whose('v', 'Condition')} AS person, code, clinical, verification,
                         coalesce(day_of(onset_datetime), period_day(onset_period), day_of(recorded)) AS onset
                  FROM v_condition v LEFT JOIN owner o ON o.rtype = 'Condition' AND o.id = v.id) c
            JOIN person p ON p.id = c.person
            WHERE coalesce(c.verification, '') NOT IN ({_list(F.NOT_TRUE)})""")
        con.sql("""CREATE TABLE person_key AS SELECT DISTINCT c.person, k.key, c.onset
                   FROM cond c JOIN cond_key k ON k.sig = c.sig WHERE c.active""")
        con.sql("""CREATE TABLE person_snomed AS SELECT DISTINCT c.person, s.code
                   FROM cond c JOIN cond_snomed s ON s.sig = c.sig WHERE c.active""")
        con.sql("CREATE TABLE evidence AS SELECT e.* FROM evidence_all e JOIN person p ON p.id = e.person")
        con.sql("""
            CREATE TABLE person_text AS
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
                                    {0 if name == 'medication_request' else 1} AS file, v.rowid AS line,
                                    coalesce(medication, '') AS medication, coalesce(reference_display, '') AS rd,
                                    coalesce(reference, '') AS rf,
                                    coalesce(doses, 0) > 0 AND coalesce(as_needed_doses, 0) = coalesce(doses, 0)
                                        AS as_needed
                             FROM v_{name} v LEFT JOIN owner o ON o.rtype = {_q(rtype)} AND o.id = v.id
                             WHERE {current}""")
        con.sql(f"""
            CREATE TABLE med_line AS
            SELECT m.person, m.file, m.line, v.key, v.name
            FROM ({' UNION ALL '.join(parts)}) m
            JOIN person p ON p.id = m.person
            JOIN med_vocab v ON v.medication = m.medication AND v.reference_display = m.rd AND v.reference = m.rf
            WHERE NOT m.as_needed""")
        # a name claimed by two keys: the order of the lines decides (facts.build), in Python for those people
        con.sql("""CREATE TABLE med_conflict AS SELECT DISTINCT person FROM med_line
                   GROUP BY person, name HAVING count(DISTINCT key) > 1""")
        con.sql("""CREATE TABLE med_count AS
                   SELECT person, count(DISTINCT key) AS n FROM med_line
                   WHERE person NOT IN (SELECT person FROM med_conflict) GROUP BY person""")
        ordered = con.sql("""SELECT person, list(key ORDER BY file, line), list(name ORDER BY file, line)
                             FROM med_line WHERE person IN (SELECT person FROM med_conflict) GROUP BY person""")
        rows = []
        for person, keys, names in ordered.fetchall():
            by_name: dict[str, str] = {}
            kept: set[str] = set()
            for key, name in zip(keys, names):
                existing = by_name.get(name)
                if existing is not None and existing != key:
                    continue
                by_name.setdefault(name, key)
                kept.add(key)
            rows.append((person, len(kept)))
        if rows:
            con.executemany("INSERT INTO med_count VALUES (?, ?)", rows)

    def _scores(self) -> None:
        con = self.con
        con.sql("""
            CREATE TABLE efi_present AS
            SELECT DISTINCT k.person, e.deficit FROM person_key k JOIN efi_key e ON e.key = k.key
            UNION
            SELECT DISTINCT person, substr(item, 5) FROM person_text WHERE starts_with(item, 'efi:')
            UNION
            SELECT m.person, e.deficit FROM med_count m JOIN efi_poly e ON m.n >= e.min_medicines""")
        con.sql("""
            CREATE TABLE cms_present AS
            SELECT DISTINCT k.person, c.condition FROM person_key k JOIN cms_key c ON c.key = k.key
            WHERE c.since IS NULL OR (k.onset IS NOT NULL AND k.onset >= c.since)
            UNION
            SELECT DISTINCT person, substr(item, 5) FROM person_text WHERE starts_with(item, 'cms:')""")
        con.sql("""CREATE TABLE cms_combo AS SELECT person, string_agg(condition, ',' ORDER BY condition) AS combo
                   FROM cms_present GROUP BY person""")
        # each distinct combination of conditions scored as scores.cambridge adds them (order of the data file)
        spec = scores.knowledge()["cambridge_multimorbidity_score"]["conditions"]
        band = _band
        rows = []
        for (combo,) in con.sql("SELECT DISTINCT combo FROM cms_combo").fetchall():
            present = set(combo.split(","))
            score = 0.0
            for cid, c in spec.items():
                if cid in present:
                    score += c["weight"]
            score = round(score, 2)
            rows.append((combo, score, band("cambridge_multimorbidity_score", score)))
        con.sql("CREATE TABLE cms_score (combo VARCHAR, score DOUBLE, band VARCHAR)")
        if rows:
            con.executemany("INSERT INTO cms_score VALUES (?, ?, ?)", rows)
        zero_band = band("cambridge_multimorbidity_score", 0.0)
        con.sql(f"""
            CREATE TABLE risk AS
            SELECT p.id AS person, coalesce(e.n, 0) AS efi_n, b.value AS efi_value, b.category AS efi_category,
                   p.age IS NOT NULL AND p.age >= {int(self.efi_min_age)} AS efi_applies,
                   coalesce(s.score, 0.0) AS cms, coalesce(s.band, {_q(zero_band)}) AS cms_band,
                   coalesce(m.n, 0) AS medicines
            FROM person p
            LEFT JOIN (SELECT person, count(*) AS n FROM efi_present GROUP BY person) e ON e.person = p.id
            JOIN efi_band b ON b.n = coalesce(e.n, 0)
            LEFT JOIN cms_combo c ON c.person = p.id LEFT JOIN cms_score s ON s.combo = c.combo
            LEFT JOIN med_count m ON m.person = p.id""")

    def _registers(self) -> None:
        self.con.sql("""
            CREATE TABLE member AS
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
        self.con.sql("""CREATE TABLE done AS SELECT e.person, x.register, x.process, max(e.day) AS last_done
                         FROM evidence e JOIN ev_process x ON x.kind = e.kind AND x.sig = e.sig
                         WHERE e.day IS NOT NULL GROUP BY 1, 2, 3""")
        self.con.sql("""CREATE TABLE process_status (person VARCHAR, register VARCHAR, process VARCHAR,
                        status VARCHAR, last_done DATE, due_by DATE)""")
        for rid in kb["registers"]:
            if not kb["care_processes"].get(rid):
                continue
            with self._timed(f"care_processes:{rid}"):
                self.con.sql(f"""
                    INSERT INTO process_status
                    SELECT person, register, process,
                           CASE WHEN due_by IS NULL OR due_by <= {today} THEN 'overdue'
                                WHEN due_by - {today} <= {soon} THEN 'due' ELSE 'done' END, last_done, due_by
                    FROM (SELECT m.person, m.register, c.process, d.last_done,
                                 CAST(d.last_done + to_months(c.every_months) AS DATE) AS due_by, m.ord, c.ord AS pord
                          FROM member m JOIN proc c ON c.register = m.register
                          LEFT JOIN done d ON d.person = m.person AND d.register = m.register
                                          AND d.process = c.process
                          WHERE m.register = {_q(rid)})
                    ORDER BY person, ord, pord""")

    # -- results ------------------------------------------------------------------------------------------------------
    def people(self) -> dict[str, dict[str, Any]]:
        """Everyone's registers, care processes and scores, for comparison with the person view."""
        out: dict[str, dict[str, Any]] = {}
        for pid, practice, deceased, age, efi_n, efi_value, efi_cat, applies, cms, cms_band, meds in self.con.sql("""
                SELECT p.id, p.practice, p.deceased, p.age, r.efi_n, r.efi_value, r.efi_category, r.efi_applies,
                       r.cms, r.cms_band, r.medicines
                FROM person p JOIN risk r ON r.person = p.id ORDER BY p.n""").fetchall():
            out[pid] = {"practice": practice, "deceased": deceased, "age": age, "efi": efi_value, "efi_count": efi_n,
                        "efi_category": efi_cat, "efi_applies": applies, "cms": cms, "cms_band": cms_band,
                        "regular_medicines": meds, "registers": {}}
        for pid, rid in self.con.sql("SELECT person, register FROM member ORDER BY person, ord").fetchall():
            out[pid]["registers"][rid] = {}
        for pid, rid, proc, status, last_done, due_by in self.con.sql(
                "SELECT person, register, process, status, last_done, due_by FROM process_status").fetchall():
            out[pid]["registers"][rid][proc] = {"status": status, "last_done": last_done, "due_by": due_by}
        return out

    def tallies(self) -> dict[str, Any]:
        """Counts by practice id (registered, living people) and every registered person's segments (the living
        and the dead), as `cost.people.summarise` tallies them."""
        con = self.con
        band = _band
        living = "p.practice IS NOT NULL AND NOT p.deceased"

        n = "coalesce(m.c, 0)"
        mm = "CASE " + " ".join(f"WHEN {n} = {k} THEN {_q(multimorbidity_band(k))}"
                                for k in range(len(registers.register_ids()) + 1)) + " END"
        con.sql(f"""CREATE OR REPLACE TABLE mm AS
                    SELECT p.id AS person, {mm} AS band FROM person p
                    LEFT JOIN (SELECT person, count(*) FILTER (WHERE register <> 'frailty') AS c FROM member
                               GROUP BY person) m ON m.person = p.id""")
        people = {pr: n for pr, n in con.sql(
            f"SELECT p.practice, count(*) FROM person p WHERE {living} GROUP BY 1").fetchall()}
        regs: dict[str, dict[str, int]] = {}
        for pr, rid, n in con.sql(f"""SELECT p.practice, m.register, count(*) FROM member m
                                      JOIN person p ON p.id = m.person WHERE {living} GROUP BY 1, 2""").fetchall():
            regs.setdefault(pr, {})[rid] = n
        procs: dict[str, dict[str, int]] = {}
        for pr, key, n in con.sql(f"""SELECT p.practice, s.register || '|' || s.process || '|' || s.status, count(*)
                                      FROM process_status s JOIN person p ON p.id = s.person WHERE {living}
                                      GROUP BY 1, 2""").fetchall():
            procs.setdefault(pr, {})[key] = n
        risk: dict[str, dict[str, int]] = {}
        for pr, cms_band, mm_band, applies, efi_cat, meds, n in con.sql(f"""
                SELECT p.practice, r.cms_band, m.band, r.efi_applies, r.efi_category, r.medicines, count(*)
                FROM person p JOIN risk r ON r.person = p.id JOIN mm m ON m.person = p.id WHERE {living}
                GROUP BY ALL""").fetchall():
            row = risk.setdefault(pr, {})
            keys = [f"cms|{cms_band}", f"multimorbidity|{mm_band}",
                    f"regular_medicines|{band('regular_medicines', meds)}"]
            if applies:
                keys.append(f"efi|{efi_cat}")
            for k in keys:
                row[k] = row.get(k, 0) + n
        segments = [tuple(r) for r in con.sql("""
            SELECT p.id, m.band, CASE WHEN r.efi_applies THEN r.efi_category ELSE 'under 65' END, r.cms_band
            FROM person p JOIN risk r ON r.person = p.id JOIN mm m ON m.person = p.id
            WHERE p.practice IS NOT NULL ORDER BY p.n""").fetchall()]
        return {"people": people, "registers": regs, "processes": procs, "risk": risk, "segments": segments}


def write_owners(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """The resources whose person is not the Patient their subject references (resource type, id, person)."""
    with path.open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


__all__ = ["OWNERS_FILE", "Population", "views", "write_owners"]
