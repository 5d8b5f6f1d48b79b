"""Least-harm resolution with OR-Tools CP-SAT.

Each active medicine is a slot with options (keep, stop, switch to a guideline alternative, adjust dose); protective
medicines named by rules can be added; timing clashes can be separated; lifestyle and review clashes can be
reconciled. Findings are encoded as booleans that must be 1 whenever their causes survive the chosen options. The
objective minimises severity-weighted harm plus a small cost per change, subject to every treated condition staying
treated by a class its guideline allows. A hard constraint forbids residual critical findings; it is dropped only if
no combination of guideline options can satisfy it. Residual findings are recomputed by running detection on the
proposed regimen, so the report never disagrees with the detector.

Map of this module:
- `Option`, `Slot`, `_alternatives`, `_build_slots`: the choices for each medicine line (and candidate additions).
- `Encoding`: the model under construction, with the helpers each rule kind's `encode` uses (`terms`,
  `finding_var`, `protection`, `choice`); the kinds themselves live in `conflicts.rules`.
- `resolve()` = `build_model()` (slots, variables, every kind's constraints, treated conditions, objective)
  -> `solve()` (CP-SAT with the time limit, relaxing the no-critical constraint only if it cannot hold; gives a
  `Solution`) -> `explain()` (applies the solution to a copy of the record, re-detects, and words the changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .detect import detect
from .knowledge import Knowledge
from .models import Finding, MedItem, PatientRecord
from .rules import applies, compare

if TYPE_CHECKING:
    from ortools.sat.python import cp_model

SCALE = 100
COST = {"keep": 0, "stop": 10, "stop-unlinked": 5, "stop-draft": 3, "stop-first": 2, "switch": 6, "adjust-dose": 4,
        "add": 5, "separate-timing": 1, "merge-reviews": 1, "agree-advice": 2}


@dataclass
class Option:
    """One choice for a medicine slot."""

    action: str
    ingredients: frozenset[str]
    classes: frozenset[str]
    cost: int
    to: str | None = None
    dose_reduced: bool = False
    guideline: str | None = None


@dataclass
class Slot:
    """A medicine line (existing or candidate addition) and its options."""

    ref: str
    med: MedItem | None
    regular: bool
    options: list[Option] = field(default_factory=list)
    added: bool = False


def _alternatives(kb: Knowledge, rec: PatientRecord, med: MedItem) -> list[tuple[str, str]]:
    """Guideline alternatives (ingredient, guideline) for a medicine, given the person's conditions."""
    out: list[tuple[str, str]] = []
    taken = {i for m in rec.meds for i in m.ingredients}
    for cond in sorted(rec.conditions):
        g = kb.guidance.get(cond)
        if not g:
            continue
        if not (med.classes & set(g.get("treats_classes", []))):
            continue
        for cls in sorted(med.classes):
            for alt in (g.get("alternatives") or {}).get(cls, []) or []:
                if alt in med.ingredients or alt in taken or alt not in kb.ingredient_classes:
                    continue
                if all(a != alt for a, _ in out):
                    out.append((alt, g.get("guideline", cond)))
    return out


def _build_slots(kb: Knowledge, rec: PatientRecord, findings: list[Finding]) -> list[Slot]:
    dose_rules = {r["id"] for r in [*kb.rules, *kb.dose_rules] if r.get("dose_adjustable")}
    dose_refs = {ref for f in findings if f.rule in dose_rules for ref in f.involves}
    slots: list[Slot] = []
    treated = [set(g.get("treats_classes", [])) for c, g in kb.guidance.items() if c in rec.conditions]
    fired_rules = {f.rule for f in findings}
    for m in rec.meds:
        opts = [Option("keep", m.ingredients, m.classes, 0)]
        # a medicine with no recorded indication among the person's conditions is cheaper to review/stop
        linked = any(m.classes & t for t in treated)
        stop_cost = COST["stop-draft"] if m.draft else COST["stop" if linked else "stop-unlinked"]
        if any(not m.ingredients.isdisjoint(g["_ingredients"]) for g in kb.stop_first):
            stop_cost = min(stop_cost, COST["stop-first"])  # clinically sequenced: this one goes first
        if not _stop_allowed(kb, rec, m, fired_rules, findings):
            stop_cost = -1
        if stop_cost >= 0:
            opts.append(Option("stop", frozenset(), frozenset(), stop_cost))
        if m.ref in dose_refs:
            opts.append(Option("adjust-dose", m.ingredients, m.classes, COST["adjust-dose"], dose_reduced=True))
        if len(m.ingredients) == 1:
            for rank, (alt, guideline) in enumerate(_alternatives(kb, rec, m)):
                ings = frozenset({alt})
                # rank breaks ties deterministically in favour of the guideline's earlier alternatives
                opts.append(Option("switch", ings, kb.classes_of(ings), COST["switch"] * SCALE + rank,
                                   to=kb.display_of(alt), guideline=guideline))
        for o in opts:
            if o.action != "switch":
                o.cost = o.cost * SCALE
        slots.append(Slot(ref=m.ref, med=m, regular=m.regular, options=opts))
    fired = {f.rule for f in findings}
    protections = sorted({r["add_protection"] for r in kb.rules if r.get("add_protection") and r["id"] in fired})
    for ing in protections:
        ings = frozenset({ing})
        slots.append(Slot(ref=f"proposed/{ing}", med=None, regular=True, added=True, options=[
            Option("none", frozenset(), frozenset(), 0),
            Option("add", ings, kb.classes_of(ings), COST["add"] * SCALE, to=kb.display_of(ing)),
        ]))
    return slots


def _stop_allowed(kb: Knowledge, rec: PatientRecord, m: MedItem, fired: set[str], findings: list[Finding]) -> bool:
    """A `keep_while` guard forbids proposing to stop a medicine while its result is on the safe side of the
    licensed threshold (e.g. metformin while eGFR >= 30), unless a rule the guard names fired on that very line."""
    for g in kb.keep_guards:
        if m.ingredients.isdisjoint(g["_ingredients"]) or m.draft:
            continue
        res = rec.results.get(g["result"])
        if res is None:
            continue
        if compare(res.value, g["op"], g["value"]) and not any(
                f.rule in set(g.get("except_rules") or ()) and m.ref in f.involves for f in findings):
            return False
    return True


def _terms(x: list[Any], slot: Slot, ings: frozenset[str] | None = None, *, classes: frozenset[str] = frozenset(),
           not_dose: bool = False, pred: Any = None) -> list[Any]:
    out = []
    for o, opt in enumerate(slot.options):
        if not opt.ingredients:
            continue
        if not_dose and opt.dose_reduced:
            continue
        ok = False
        if ings is not None and not opt.ingredients.isdisjoint(ings):
            ok = True
        if classes and not opt.classes.isdisjoint(classes):
            ok = True
        if pred is not None and pred(opt):
            ok = True
        if ok:
            out.append(x[o])
    return out


@dataclass
class Encoding:
    """The CP-SAT model under construction for one record: slots with one boolean per option (`x[slot][option]`,
    exactly one true), the weighted finding booleans (`harm`, with the critical ones also in `critical`), costed
    extra decisions (`extra_costs`), and the decisions `explain` reads back: timing separations (`seps`) and
    reconciling actions (`actions`)."""

    kb: Knowledge
    rec: PatientRecord
    present: set[str]  # ids of the rules with a finding now
    slots: list[Slot]
    model: cp_model.CpModel
    x: list[list[Any]]
    harm: list[tuple[int, Any]] = field(default_factory=list)
    critical: list[Any] = field(default_factory=list)
    extra_costs: list[tuple[int, Any]] = field(default_factory=list)
    seps: list[tuple[str, str, Any, dict[str, Any]]] = field(default_factory=list)
    actions: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    nfind: int = 0

    def terms(self, s_i: int, ings: frozenset[str] | None = None, *, classes: frozenset[str] = frozenset(),
              not_dose: bool = False, pred: Any = None) -> list[Any]:
        """Option booleans of slot `s_i` whose option contains any of `ings`, any of `classes` or meets `pred`
        (`not_dose`: leaving out reduced-dose options)."""
        return _terms(self.x[s_i], self.slots[s_i], ings, classes=classes, not_dose=not_dose, pred=pred)

    def finding_var(self, sev: str) -> Any:
        """A new finding boolean weighted by its severity in the objective."""
        v = self.model.NewBoolVar(f"f{self.nfind}")
        self.nfind += 1
        self.harm.append((self.kb.severity_weights[sev] * SCALE, v))
        if sev == "critical":
            self.critical.append(v)
        return v

    def protection(self, rule: dict[str, Any]) -> Any:
        """A boolean that may be 1 only while a protective medicine the rule names under `unless` is chosen (0
        when the rule names none or no option holds one)."""
        if not rule["_unless"]:
            return 0
        terms = [t for sel in rule["_unless"] for s_i in range(len(self.slots))
                 for t in self.terms(s_i, sel.ingredients)]
        if not terms:
            return 0
        p = self.model.NewBoolVar("prot")
        self.model.Add(p <= sum(terms))
        return p

    def choice(self, name: str, action: str) -> Any:
        """A yes/no change the optimiser may make at the cost of `action` (separate doses, agree advice...)."""
        v = self.model.NewBoolVar(name)
        self.extra_costs.append((COST[action] * SCALE, v))
        return v


@dataclass
class Solution:
    """What the solver chose: the option of every slot, the timing separations and the reconciling actions."""

    chosen: list[tuple[Slot, Option]]
    seps: list[tuple[str, str, dict[str, Any]]]
    actions: list[tuple[str, dict[str, Any]]]
    critical_relaxed: bool


def resolve(kb: Knowledge, rec: PatientRecord, findings: list[Finding], *, time_limit: float = 2.0) -> dict[str, Any]:
    """Choose the least-harm combination of changes; return changes and residual findings."""
    if not findings:
        return {"changes": [], "residual": []}
    solution = solve(build_model(kb, rec, findings), time_limit=time_limit)
    if solution is None:
        return {"changes": [], "residual": [f.as_dict() for f in findings], "status": "no-solution"}
    return explain(kb, rec, findings, solution)


def new_encoding(kb: Knowledge, rec: PatientRecord, findings: list[Finding]) -> Encoding:
    """An empty model for the record: its slots, one boolean per option and exactly one option per slot."""
    from ortools.sat.python import cp_model  # imported on first use: it loads pandas (~1 s per process start)

    slots = _build_slots(kb, rec, findings)
    model = cp_model.CpModel()
    X: list[list[Any]] = []
    for s_i, s in enumerate(slots):
        xs = [model.NewBoolVar(f"x{s_i}_{o}") for o in range(len(s.options))]
        model.AddExactlyOne(xs)
        X.append(xs)
    return Encoding(kb=kb, rec=rec, present={f.rule for f in findings}, slots=slots, model=model, x=X)


def build_model(kb: Knowledge, rec: PatientRecord, findings: list[Finding]) -> Encoding:
    """The whole model: every rule encoded by its kind, every treated condition kept treated, the objective
    (option costs + severity-weighted findings + extra decisions) and the no-critical assumption."""
    enc = new_encoding(kb, rec, findings)
    # every ingredient any option could bring (kept, switched to or added): a rule needing a medicine none of them
    # holds cannot fire on any combination, so it adds nothing to the model
    available = frozenset().union(*(o.ingredients for sl in enc.slots for o in sl.options))
    for kind, rule in kb.kinds:
        need = rule.get("_need")
        if need and any(n.isdisjoint(available) for n in need):
            continue
        if rule.get("_filters") and not applies(rule, rec):
            continue
        kind.encode(enc, rule)
    model, slots, X = enc.model, enc.slots, enc.x
    # every treated condition stays treated as its guideline allows
    for cond in sorted(rec.conditions):
        g = kb.guidance.get(cond)
        if not g:
            continue
        treats = frozenset(g.get("treats_classes", []))
        if not any(m.classes & treats for m in rec.meds):
            continue
        t = [tt for s_i in range(len(slots)) for tt in enc.terms(s_i, classes=treats)]
        model.Add(sum(t) >= 1)
    objective = [c * X[s_i][o] for s_i, s in enumerate(slots) for o, opt in enumerate(s.options)
                 for c in [opt.cost] if c]
    objective += [c * v for c, v in enc.harm] + [c * v for c, v in enc.extra_costs]
    model.Minimize(sum(objective))
    enforce = model.NewBoolVar("no_critical")
    if enc.critical:
        model.Add(sum(enc.critical) == 0).OnlyEnforceIf(enforce)
        model.AddAssumptions([enforce])
    return enc


def solve(enc: Encoding, *, time_limit: float = 2.0) -> Solution | None:
    """Run CP-SAT (one worker, fixed seed: deterministic); if no critical-free solution exists, solve again
    without that constraint. None when the model has no solution at all."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.num_search_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_time_in_seconds = time_limit
    status = solver.Solve(enc.model)
    critical_relaxed = False
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        enc.model.ClearAssumptions()
        critical_relaxed = True
        status = solver.Solve(enc.model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
    chosen = []
    for s_i, s in enumerate(enc.slots):
        o = next(o for o in range(len(s.options)) if solver.Value(enc.x[s_i][o]))
        chosen.append((s, s.options[o]))
    return Solution(chosen=chosen,
                    seps=[(a_ref, b_ref, t) for a_ref, b_ref, sep, t in enc.seps if solver.Value(sep)],
                    actions=[(kind, item) for kind, act, item in enc.actions if solver.Value(act)],
                    critical_relaxed=critical_relaxed)


def explain(kb: Knowledge, rec: PatientRecord, findings: list[Finding], solution: Solution) -> dict[str, Any]:
    """The proposal callers get: the changes (each with its reason and sources), the findings that remain on the
    changed regimen (by re-running detection) and a note when a critical finding could not be removed."""
    residual = detect(kb, _apply(kb, rec, solution))
    residual_keys = {(f.rule, tuple(f.involves)) for f in residual}
    gone = [f for f in findings if (f.rule, tuple(f.involves)) not in residual_keys]
    patient = rec.patient or "Patient/unknown"
    changes = [_slot_change(kb, s, opt, gone, patient) for s, opt in solution.chosen
               if opt.action not in ("keep", "none")]
    for a_ref, b_ref, t in solution.seps:
        changes.append({"action": "separate-timing", "target": a_ref, "to": b_ref,
                        "reason": f"{t['resolution']}: {t['summary']}.", "sources": list(t["sources"])})
    for kind, item in solution.actions:
        changes.append({"action": kind, "target": patient, "to": item["resolution"],
                        "reason": f"{item['summary']}: {item['resolution']}.", "sources": list(item["sources"])})
    if any(f.rule.startswith("burden-") for f in residual):
        ng56 = [s for f in residual if f.rule.startswith("burden-") for s in f.sources]
        changes.append({"action": "add-monitoring", "target": patient, "to": "structured medication review",
                        "reason": "Medicine burden remains high after the changes above: offer a structured "
                                  "medication review with the person.", "sources": list(dict.fromkeys(ng56))})
    changes = _sequence(kb, changes, {m.ref: m for m in rec.meds})
    out: dict[str, Any] = {"changes": changes, "residual": [f.as_dict() for f in residual]}
    if solution.critical_relaxed:
        out["note"] = ("No combination of guideline options removes every critical finding; "
                       "specialist review is needed.")
    return out


def _apply(kb: Knowledge, rec: PatientRecord, solution: Solution) -> PatientRecord:
    """A copy of the record with the chosen options, separations and reconciliations applied."""
    new = PatientRecord(patient=rec.patient, age=rec.age, conditions=rec.conditions, results=rec.results,
                        allergies=rec.allergies, separated=set(rec.separated), resolved_ids=set(rec.resolved_ids),
                        sex=rec.sex, deceased=rec.deceased, today=rec.today, facts=rec.facts)
    for s, opt in solution.chosen:
        if s.added:
            if opt.action == "add":
                new.meds.append(MedItem(ref=s.ref, display=opt.to or "", ingredients=opt.ingredients,
                                        classes=opt.classes, regular=True, proposed=True,
                                        acb=sum(kb.ingredient_acb.get(i, 0) for i in opt.ingredients)))
            continue
        m = s.med
        assert m is not None
        if opt.action == "keep":
            new.meds.append(m)
        elif opt.action == "adjust-dose":
            new.meds.append(replace(m, dose_reduced=True))
        elif opt.action == "switch":
            new.meds.append(replace(m, display=opt.to or "", ingredients=opt.ingredients, classes=opt.classes,
                                    acb=sum(kb.ingredient_acb.get(i, 0) for i in opt.ingredients),
                                    falls_risk=any(kb.ingredient_falls.get(i, False) for i in opt.ingredients),
                                    proposed=True))
    for a_ref, b_ref, _t in solution.seps:
        new.separated.add(frozenset((a_ref, b_ref)))
    for _kind, item in solution.actions:
        new.resolved_ids.add(item["id"])
    return new


def _slot_change(kb: Knowledge, s: Slot, opt: Option, gone: list[Finding], patient: str) -> dict[str, Any]:
    """One medicine change (stop, switch, adjust dose, add) with the findings it resolves as its reason."""
    target = patient if s.added else s.ref
    if s.added:
        protected = {r["id"] for r in kb.rules if r.get("add_protection") in opt.ingredients}
        fixed = [f for f in gone if f.rule in protected]
    else:
        fixed = [f for f in gone if s.ref in f.involves]
    why = "; ".join(f"{f.summary} [{f.rule}]" for f in fixed) or "supports the other changes"
    srcs = list(dict.fromkeys(src for f in fixed for src in f.sources))
    name = s.med.display if s.med else ""
    if opt.action == "stop":
        verb = "Do not start" if s.med and s.med.draft else "Stop (or review the indication for)"
        reason = f"{verb} {name}: resolves {why}."
    elif opt.action == "switch":
        reason = (f"Switch {name} to {opt.to}, an alternative the guideline allows ({opt.guideline}): "
                  f"resolves {why}.")
        if opt.guideline:
            srcs.append(opt.guideline)
    elif opt.action == "adjust-dose":
        reason = f"Review and reduce the dose of {name}: resolves {why}."
    elif any(f.kind == "omission" for f in fixed):
        reason = f"Start {opt.to} (indicated and missing): resolves {why}."
    else:
        reason = f"Add {opt.to} for protection: resolves {why}."
    return {"action": opt.action, "target": target, "to": opt.to, "reason": reason, "sources": srcs}


def _sequence(kb: Knowledge, changes: list[dict[str, Any]], by_ref: dict[str, MedItem]) -> list[dict[str, Any]]:
    """Order the changes clinically and number them (`step`): stop-first medicines (e.g. a potassium supplement
    before the potassium-sparing diuretic is reviewed), then other stops and switches, dose changes, additions,
    then schedule and review changes; each step cites the sequencing source where one applies."""
    first = {ref for ref, m in by_ref.items()
             if any(not m.ingredients.isdisjoint(g["_ingredients"]) for g in kb.stop_first)}
    order = {"stop": 1, "switch": 1, "adjust-dose": 2, "add": 3, "add-monitoring": 4}

    def key(ch: dict[str, Any]) -> int:
        if ch["action"] == "stop" and ch.get("target") in first:
            return 0
        return order.get(ch["action"], 5)

    out = sorted(changes, key=key)
    for n, ch in enumerate(out, 1):
        ch["step"] = n
        if key(ch) == 0:
            for g in kb.stop_first:
                m = by_ref.get(ch["target"])
                if m is not None and not m.ingredients.isdisjoint(g["_ingredients"]):
                    ch["reason"] += f" Do this first: {g['why']}"
                    ch["sources"] = list(dict.fromkeys([*ch["sources"], *g.get("sources", [])]))
    return out
