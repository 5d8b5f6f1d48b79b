"""Least-harm resolution with OR-Tools CP-SAT.

Each active medicine is a slot with options (keep, stop, switch to a guideline alternative, adjust dose); protective
medicines named by rules can be added; timing clashes can be separated; lifestyle and review clashes can be
reconciled. Findings are encoded as booleans that must be 1 whenever their causes survive the chosen options. The
objective minimises severity-weighted harm plus a small cost per change, subject to every treated condition staying
treated by a class its guideline allows. A hard constraint forbids residual critical findings; it is dropped only if
no combination of guideline options can satisfy it. Residual findings are recomputed by running detection on the
proposed regimen, so the report never disagrees with the detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations, product
from typing import Any

from ortools.sat.python import cp_model

from .detect import detect
from .knowledge import Knowledge
from .models import Finding, MedItem, PatientRecord

SCALE = 100
COST = {"keep": 0, "stop": 10, "stop-unlinked": 5, "stop-draft": 3, "switch": 6, "adjust-dose": 4, "add": 5,
        "separate-timing": 1, "merge-reviews": 1, "agree-advice": 2}
BIG = 1000


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
    dose_rules = {r["id"] for r in kb.rules if r.get("dose_adjustable")}
    dose_refs = {ref for f in findings if f.rule in dose_rules for ref in f.involves}
    slots: list[Slot] = []
    treated = [set(g.get("treats_classes", [])) for c, g in kb.guidance.items() if c in rec.conditions]
    for m in rec.meds:
        opts = [Option("keep", m.ingredients, m.classes, 0)]
        # a medicine with no recorded indication among the person's conditions is cheaper to review/stop
        linked = any(m.classes & t for t in treated)
        stop_cost = COST["stop-draft"] if m.draft else COST["stop" if linked else "stop-unlinked"]
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


def resolve(kb: Knowledge, rec: PatientRecord, findings: list[Finding], *, time_limit: float = 2.0) -> dict[str, Any]:
    """Choose the least-harm combination of changes; return changes and residual findings."""
    if not findings:
        return {"changes": [], "residual": []}
    slots = _build_slots(kb, rec, findings)
    model = cp_model.CpModel()
    X: list[list[Any]] = []
    for s_i, s in enumerate(slots):
        xs = [model.NewBoolVar(f"x{s_i}_{o}") for o in range(len(s.options))]
        model.AddExactlyOne(xs)
        X.append(xs)
    harm: list[tuple[int, Any]] = []
    critical: list[Any] = []
    w = kb.severity_weights
    extra_costs: list[tuple[int, Any]] = []
    nfind = 0

    def finding_var(sev: str) -> Any:
        nonlocal nfind
        v = model.NewBoolVar(f"f{nfind}")
        nfind += 1
        harm.append((w[sev] * SCALE, v))
        if sev == "critical":
            critical.append(v)
        return v

    def protection(rule: dict[str, Any]) -> Any:
        if not rule["_unless"]:
            return 0
        terms = [t for sel in rule["_unless"] for s_i, s in enumerate(slots) for t in _terms(X[s_i], s, sel.ingredients)]
        if not terms:
            return 0
        p = model.NewBoolVar("prot")
        model.Add(p <= sum(terms))
        return p

    conds = rec.conditions
    for rule in kb.rules:
        sev = rule["severity"]
        kind = rule["kind"]
        if rule.get("allergy"):
            for a in rec.allergies:
                for s_i, s in enumerate(slots):
                    t = _terms(X[s_i], s, a.ingredients, classes=a.classes)
                    if t:
                        model.Add(finding_var(sev) >= sum(t))
            continue
        if "burden" in rule:
            b = rule["burden"]
            if b["type"] == "acb":
                total = []
                for s_i, s in enumerate(slots):
                    for o, opt in enumerate(s.options):
                        acb = sum(kb.ingredient_acb.get(i, 0) for i in opt.ingredients)
                        if acb:
                            total.append(acb * X[s_i][o])
                if total:
                    model.Add(sum(total) <= b["threshold"] - 1 + BIG * finding_var(sev))
            elif b["type"] == "regular_count":
                count = []
                for s_i, s in enumerate(slots):
                    if s.regular:
                        count.extend(X[s_i][o] for o, opt in enumerate(s.options) if opt.ingredients)
                if len(count) >= b["threshold"]:
                    model.Add(sum(count) <= b["threshold"] - 1 + BIG * finding_var(sev))
            elif b["type"] == "falls_risk_count":
                count = []
                for s_i, s in enumerate(slots):
                    count.extend(_terms(X[s_i], s, pred=lambda opt: any(kb.ingredient_falls.get(i) for i in opt.ingredients)))
                if len(count) >= b["threshold"]:
                    model.Add(sum(count) <= b["threshold"] - 1 + BIG * finding_var(sev))
            continue
        if kind == "duplicate":
            for cls in rule["duplicate_classes"]:
                cand = [(s_i, s) for s_i, s in enumerate(slots) if s.regular or not rule.get("regular_only")]
                exprs = [sum(t) for s_i, s in cand if (t := _terms(X[s_i], s, classes=frozenset({cls})))]
                if len(exprs) >= 2:
                    f = finding_var(sev)
                    for a, b2 in combinations(exprs, 2):
                        model.Add(f >= a + b2 - 1)
            continue
        drugs = rule["_drugs"]
        if kind == "drug-drug":
            per_role = [[s_i for s_i, s in enumerate(slots) if _terms(X[s_i], s, sel.ingredients)] for sel in drugs]
            if not all(per_role):
                continue
            prot = None
            for combo in product(*per_role):
                groups: dict[int, list[int]] = {}
                for role, s_i in enumerate(combo):
                    groups.setdefault(s_i, []).append(role)
                exprs = []
                for s_i, roles in groups.items():
                    s = slots[s_i]
                    t = [X[s_i][o] for o, opt in enumerate(s.options)
                         if opt.ingredients and all(not opt.ingredients.isdisjoint(drugs[r].ingredients) for r in roles)]
                    if not t:
                        break
                    exprs.append(sum(t))
                else:
                    if prot is None:
                        prot = protection(rule)
                    model.Add(finding_var(sev) >= sum(exprs) - (len(exprs) - 1) - prot)
            continue
        if kind == "drug-disease" and rule["_conditions"]:
            if not any(c in conds for c in rule["_conditions"]):
                continue
            prot = None
            for s_i, s in enumerate(slots):
                if rule.get("regular_only") and not s.regular:
                    continue
                t = _terms(X[s_i], s, drugs[0].ingredients)
                if t:
                    if prot is None:
                        prot = protection(rule)
                    model.Add(finding_var(sev) >= sum(t) - prot)
            continue
        if kind == "drug-result":
            spec = rule["result"]
            res = rec.results.get(spec["code"])
            if res is None:
                continue
            from .detect import _compare  # local import keeps module import graph simple
            if not _compare(res.value, spec["op"], spec["value"]):
                continue
            for s_i, s in enumerate(slots):
                t = _terms(X[s_i], s, drugs[0].ingredients, not_dose=bool(rule.get("dose_adjustable")))
                if t:
                    model.Add(finding_var(sev) >= sum(t))
    # lifestyle clashes and merged reviews: reconciled by a cheap action
    actions: list[tuple[str, Any, dict[str, Any]]] = []
    present = {f.rule for f in findings}
    for clash in kb.lifestyle:
        if clash["id"] in present:
            act = model.NewBoolVar(f"agree_{clash['id']}")
            extra_costs.append((COST["agree-advice"] * SCALE, act))
            model.Add(finding_var(clash["severity"]) >= 1 - act)
            actions.append(("agree-advice", act, clash))
    rv = kb.reviews
    if rv and rv["id"] in present:
        act = model.NewBoolVar("merge_reviews")
        extra_costs.append((COST["merge-reviews"] * SCALE, act))
        model.Add(finding_var(rv["severity"]) >= 1 - act)
        actions.append(("merge-reviews", act, rv))
    # administration timing
    seps: list[tuple[str, str, Any, dict[str, Any]]] = []
    for t in kb.timing:
        a, b = t["_drugs"]
        for (i, si), (j, sj) in product(enumerate(slots), repeat=2):
            if i == j:
                continue
            ta, tb = _terms(X[i], si, a.ingredients), _terms(X[j], sj, b.ingredients)
            if ta and tb:
                sep = model.NewBoolVar(f"sep{i}_{j}")
                extra_costs.append((COST["separate-timing"] * SCALE, sep))
                model.Add(finding_var(t["severity"]) >= sum(ta) + sum(tb) - 1 - sep)
                seps.append((si.ref, sj.ref, sep, t))
    # every treated condition stays treated as its guideline allows
    for cond in sorted(conds):
        g = kb.guidance.get(cond)
        if not g:
            continue
        treats = frozenset(g.get("treats_classes", []))
        if not any(m.classes & treats for m in rec.meds):
            continue
        t = [tt for s_i, s in enumerate(slots) for tt in _terms(X[s_i], s, classes=treats)]
        model.Add(sum(t) >= 1)
    objective = [c * X[s_i][o] for s_i, s in enumerate(slots) for o, opt in enumerate(s.options)
                 for c in [opt.cost] if c]
    objective += [c * v for c, v in harm] + [c * v for c, v in extra_costs]
    model.Minimize(sum(objective))
    enforce = model.NewBoolVar("no_critical")
    if critical:
        model.Add(sum(critical) == 0).OnlyEnforceIf(enforce)
        model.AddAssumptions([enforce])
    solver = cp_model.CpSolver()
    solver.parameters.num_search_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_time_in_seconds = time_limit
    status = solver.Solve(model)
    critical_relaxed = False
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        model.ClearAssumptions()
        critical_relaxed = True
        status = solver.Solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return {"changes": [], "residual": [f.as_dict() for f in findings], "status": "no-solution"}
    # apply the chosen options to a copy of the record and re-detect
    new = PatientRecord(patient=rec.patient, age=rec.age, conditions=rec.conditions, results=rec.results,
                        allergies=rec.allergies, separated=set(rec.separated), resolved_ids=set(rec.resolved_ids))
    changes: list[dict[str, Any]] = []
    chosen: list[tuple[Slot, Option]] = []
    for s_i, s in enumerate(slots):
        o = next(o for o in range(len(s.options)) if solver.Value(X[s_i][o]))
        opt = s.options[o]
        chosen.append((s, opt))
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
    for a_ref, b_ref, sep, _t in seps:
        if solver.Value(sep):
            new.separated.add(frozenset((a_ref, b_ref)))
    for _kind, act, item in actions:
        if solver.Value(act):
            new.resolved_ids.add(item["id"])
    residual = detect(kb, new)
    residual_keys = {(f.rule, tuple(f.involves)) for f in residual}
    gone = [f for f in findings if (f.rule, tuple(f.involves)) not in residual_keys]

    def resolved_for(refs: set[str]) -> list[Finding]:
        return [f for f in gone if refs & set(f.involves)]

    patient = rec.patient or "Patient/unknown"
    for s, opt in chosen:
        if opt.action in ("keep", "none"):
            continue
        target = patient if s.added else s.ref
        fixed = resolved_for({s.ref}) if not s.added else [f for f in gone if f.rule in {
            r["id"] for r in kb.rules if r.get("add_protection") in opt.ingredients}]
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
        else:
            reason = f"Add {opt.to} for protection: resolves {why}."
        changes.append({"action": opt.action, "target": target, "to": opt.to, "reason": reason, "sources": srcs})
    for a_ref, b_ref, sep, t in seps:
        if solver.Value(sep):
            changes.append({"action": "separate-timing", "target": a_ref, "to": b_ref,
                            "reason": f"{t['resolution']}: {t['summary']}.", "sources": list(t["sources"])})
    for kind, act, item in actions:
        if solver.Value(act):
            changes.append({"action": kind, "target": patient, "to": item["resolution"],
                            "reason": f"{item['summary']}: {item['resolution']}.", "sources": list(item["sources"])})
    if any(f.rule.startswith("burden-") for f in residual):
        ng56 = [s for f in residual if f.rule.startswith("burden-") for s in f.sources]
        changes.append({"action": "add-monitoring", "target": patient, "to": "structured medication review",
                        "reason": "Medicine burden remains high after the changes above: offer a structured "
                                  "medication review with the person.", "sources": list(dict.fromkeys(ng56))})
    out: dict[str, Any] = {"changes": changes, "residual": [f.as_dict() for f in residual]}
    if critical_relaxed:
        out["note"] = ("No combination of guideline options removes every critical finding; "
                       "specialist review is needed.")
    return out
