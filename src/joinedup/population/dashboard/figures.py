"""The dashboard's figures from the precomputed document: for the chosen area (the ICS, a PCN or a practice), period
and breakdown, each figure's table (what the chart shows, suppressed values as published), its Vega-Lite chart, its
definition, period, source and suppression note, and - only for roles with a direct-care relationship - the links
down to the case-finding worklist. Pure functions over published figures: no records are read here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BREAKDOWN_WORDS = {"practice": "Practice", "pcn": "Primary care network", "organisation": "Organisation",
                   "imd": "Deprivation quintile (IMD)", "age": "Age band", "ethnicity": "Ethnic group"}
PERIOD_WORDS = {"current": "Latest 12 months", "previous": "The 12 months before"}
STATUS_COLOURS = {"done": "#007f3b", "due": "#ffb81c", "overdue": "#d5281b"}
SETTING_COLOURS = ["#005eb8", "#d5281b", "#007f3b", "#7c2855", "#ffb81c"]
RISK_TITLES = {"cms": "Cambridge Multimorbidity Score", "efi": "electronic Frailty Index category (65 and over)",
               "multimorbidity": "Long-term conditions (QOF registers, frailty excluded)",
               "regular_medicines": "Regular medicines"}


class FilterError(ValueError):
    """A filter value the dashboard does not know (one line, safe to show)."""


@dataclass
class Filters:
    area: str = ""          # "" (whole ICS), "pcn:ODS" or "practice:ODS"
    period: str = "current"
    by: str = "practice"

    def level(self) -> tuple[str, str]:
        if not self.area:
            return "ics", "all"
        kind, _, code = self.area.partition(":")
        return kind, code


@dataclass
class Figure:
    id: str
    section: str
    title: str
    definition: str
    period: str
    source: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    spec: dict[str, Any] | None
    suppression: str
    note: str = ""
    headline: str = ""
    drill: list[dict[str, str]] = field(default_factory=list)


def check(doc: dict[str, Any], f: Filters) -> None:
    if f.period not in doc["periods"]:
        raise FilterError(f"period must be one of {', '.join(doc['periods'])}, not '{f.period}'")
    if f.by not in BREAKDOWN_WORDS:
        raise FilterError(f"breakdown must be one of {', '.join(BREAKDOWN_WORDS)}, not '{f.by}'")
    if f.area:
        kind, code = f.level()
        if kind not in ("pcn", "practice") or code not in doc["organisations"][kind]:
            raise FilterError(f"no practice or primary care network '{f.area}' in these figures")


def area_name(doc: dict[str, Any], f: Filters) -> str:
    kind, code = f.level()
    if kind == "ics":
        return "the whole integrated care system"
    return f"{doc['organisations'][kind][code]['name']} ({code})"


def _shown(v: Any) -> Any:
    return "withheld" if v is None else v


def _bar(rows: list[dict[str, Any]], x: str, y: str, *, x_title: str, y_title: str, colour: str | None = None,
         colour_title: str = "", horizontal: bool = True, stack: bool = False, domain: list[str] | None = None,
         colours: list[str] | None = None) -> dict[str, Any]:
    values = [r for r in rows if isinstance(r.get(y), (int, float)) and not isinstance(r.get(y), bool)]
    cat = {"field": x, "type": "nominal", "title": x_title, "sort": None}
    num = {"field": y, "type": "quantitative", "title": y_title}
    if stack:
        num["stack"] = "zero"
    enc: dict[str, Any] = {"y": cat, "x": num} if horizontal else {"x": cat, "y": num}
    tooltip = [{"field": x, "type": "nominal"}, {"field": y, "type": "quantitative"}]
    if colour:
        scale: dict[str, Any] = {}
        if domain:
            scale["domain"] = domain
        if colours:
            scale["range"] = colours
        enc["color"] = {"field": colour, "type": "nominal", "title": colour_title, "scale": scale, "sort": domain}
        tooltip.append({"field": colour, "type": "nominal"})
    enc["tooltip"] = tooltip
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": "container",
            "autosize": {"type": "fit-x", "contains": "padding"},
            "height": {"step": 18} if horizontal else 220, "data": {"values": values}, "mark": {"type": "bar"},
            "encoding": enc}


def _line(rows: list[dict[str, Any]], x: str, y: str, *, y_title: str) -> dict[str, Any]:
    values = [r for r in rows if isinstance(r.get(y), (int, float)) and not isinstance(r.get(y), bool)]
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": "container", "height": 200,
            "data": {"values": values}, "mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": x, "type": "ordinal", "title": "Month"},
                         "y": {"field": y, "type": "quantitative", "title": y_title},
                         "tooltip": [{"field": x, "type": "ordinal"}, {"field": y, "type": "quantitative"}]}}


def _value_field(m: dict[str, Any]) -> tuple[str, str]:
    if m["id"] == "advice-guidance-response":
        return "median_days", "Median days to an answer"
    if m["kind"] == "mean_index":
        return "value", "Mean index (0-1)"
    if m.get("per"):
        return "value", f"Per {m['per']:,}"
    if m["kind"] == "share":
        return "value", "Share (0-1)"
    return "value", "Value"


def _measure_cols(m: dict[str, Any]) -> list[tuple[str, str]]:
    if m["id"] == "advice-guidance-response":
        return [("requests", "Requests"), ("answered", "Answered"), ("unanswered", "Unanswered"),
                ("median_days", "Median days"), ("p90_days", "90th centile days")]
    if m["kind"] == "mean_index":
        return [("denominator", "People (2+ consultations)"), ("value", "Mean")]
    cols = [("numerator", "Numerator"), ("denominator", "Denominator"), ("value", _value_field(m)[1])]
    if "mean_delay_days" in m.get("total", {}):
        cols.append(("mean_delay_days", "Mean delay (days)"))
    return cols


def measure_figures(doc: dict[str, Any], f: Filters) -> list[Figure]:
    out = []
    kind, code = f.level()
    per_period = doc["measures"].get(f.period, {})
    for mid in doc["measure_order"]:
        figs = per_period.get(mid) or {}
        total = figs.get("total")
        if not total:
            continue
        vf, vtitle = _value_field(total)
        period = f"{total['period_start']} to {total['period_end']}"
        src = f"{total['source']['document']} ({total['source']['version']})"
        definition = f"Numerator: {total['numerator']} Denominator: {total['denominator']} Exclusions: {total['exclusions']}"
        headline_cell = total["total"]
        where = "whole ICS"
        if kind in ("pcn", "practice") and kind in figs:
            cell = next((g for g in figs[kind].get("groups", []) if g["group"] == code), None)
            headline_cell = cell or {}
            where = area_name(doc, f)
        hv = headline_cell.get(vf)
        headline = (f"{where}: {hv:,.2f}" if isinstance(hv, (int, float)) else f"{where}: withheld (small numbers)"
                    if headline_cell else f"{where}: nothing counted")
        cols = _measure_cols(total)
        month = figs.get("month")
        if month:
            rows = [{"month": g["group"], **{k: _shown(g.get(k)) for k, _ in cols}} for g in month["groups"]]
            spec_rows = [{"month": g["group"], vf: g.get(vf)} for g in month["groups"]]
            out.append(Figure(id=f"{mid}-trend", section="measures", title=f"{total['title']}: trend by month",
                              definition=definition, period=period, source=src, columns=[("month", "Month"), *cols],
                              rows=rows, spec=_line(spec_rows, "month", vf, y_title=vtitle),
                              suppression=doc["suppression"], headline=headline,
                              note="The trend is for the whole ICS (the measures are broken down by one dimension "
                                   "at a time)."))
        by = f.by
        breakdown = figs.get(by)
        if breakdown is None:
            out.append(Figure(id=f"{mid}-by-{by}", section="measures",
                              title=f"{total['title']} by {BREAKDOWN_WORDS[by].lower()}", definition=definition,
                              period=period, source=src, columns=[("group", BREAKDOWN_WORDS[by])], rows=[],
                              spec=None, suppression=doc["suppression"], headline="" if month else headline,
                              note=f"This measure is not broken down by {BREAKDOWN_WORDS[by].lower()} (it can be by "
                                   f"{', '.join(b for b in total['breakdowns'] if b != 'month')})."))
            continue
        groups = breakdown.get("groups", [])
        if by == "practice" and kind == "pcn":
            groups = [g for g in groups if doc["organisations"]["practice"].get(g["group"], {}).get("pcn") == code]
        rows = [{"group": _label(doc, by, g["group"]), **{k: _shown(g.get(k)) for k, _ in cols}} for g in groups]
        spec_rows = [{"group": _label(doc, by, g["group"]), vf: g.get(vf)} for g in groups]
        out.append(Figure(id=f"{mid}-by-{by}", section="measures",
                          title=f"{total['title']} by {BREAKDOWN_WORDS[by].lower()}", definition=definition,
                          period=period, source=src, columns=[("group", BREAKDOWN_WORDS[by]), *cols], rows=rows,
                          spec=_bar(spec_rows, "group", vf, x_title=BREAKDOWN_WORDS[by], y_title=vtitle),
                          suppression=doc["suppression"], headline="" if month else headline,
                          note="" if kind == "ics" or (by == "practice" and kind == "pcn") else
                          "The breakdown is for the whole ICS (the headline is for the area chosen)."))
    return out


def _label(doc: dict[str, Any], by: str, group: str) -> str:
    if by in ("practice", "pcn"):
        org = doc["organisations"].get(by, {}).get(group)
        return f"{org['name']} ({group})" if org else group
    if by == "organisation":
        for kind in ("practice", "pcn"):
            org = doc["organisations"][kind].get(group)
            if org:
                return f"{org['name']} ({group})"
    return group


def register_figures(doc: dict[str, Any], f: Filters, *, drill: bool) -> list[Figure]:
    kind, code = f.level()
    level = doc["registers"].get(kind, {}).get(code)
    if level is None:
        return []
    cat = doc["register_catalogue"]
    as_at = f"as at {doc['date']}"
    definition = (f"People on each register (a recognised, unresolved long-term condition meeting the register's age "
                  f"limit; frailty also from an eFI of 0.25 or more), as in the {doc['register_rules']}; prevalence "
                  f"= people on the register / people registered ({_shown(level['list_size'])}), deceased excluded.")
    rows = [{"register": cat[r]["display"], "people": v["people"], "prevalence_pct": _shown(v["prevalence_pct"])}
            for r, v in level["registers"].items()]
    sources = "; ".join(sorted({cat[r]["source"] for r in level["registers"]}))[:600]
    practice = code if kind == "practice" else ""
    links = [{"label": f"{cat[r]['display']}: people with care processes overdue",
              "href": f"/population/worklist?practice={practice}&register={r}&status=overdue"}
             for r in level["registers"] if cat[r]["processes"]] if drill else []
    figs = [Figure(id="registers-size", section="registers", title=f"Register sizes, {area_name(doc, f)}",
                   definition=definition, period=as_at, source=sources,
                   columns=[("register", "Register"), ("people", "People"), ("prevalence_pct", "Prevalence %")],
                   rows=rows, spec=_bar(rows, "register", "people", x_title="Register", y_title="People"),
                   suppression=doc["suppression"], drill=links)]
    prow = []
    for r, v in level["registers"].items():
        for pid, p in v["processes"].items():
            label = f"{cat[r]['display']}: {cat[r]['processes'][pid]['display']}"
            prow.append({"process": label, "done": p["done"], "due": p["due"], "overdue": p["overdue"],
                         "done_pct": _shown(p["done_pct"]), "due_pct": _shown(p["due_pct"]),
                         "overdue_pct": _shown(p["overdue_pct"])})
    long = [{"process": r["process"], "status": s, "percent": r[f"{s}_pct"]}
            for r in prow for s in ("done", "due", "overdue")]
    figs.append(Figure(
        id="registers-processes", section="registers", title=f"Care processes done, due or overdue, {area_name(doc, f)}",
        definition="For each register's care processes (their intervals and sources in registers.yaml): done within "
                   "the interval, due when it expires within 30 days, else overdue (never done counts as overdue); "
                   "percent of the people on the register.",
        period=as_at, source="knowledge/population/registers.yaml (NICE NG28, NG19, NG106, NG203, QOF, National "
                             "Diabetes Audit)",
        columns=[("process", "Register: care process"), ("done", "Done"), ("due", "Due"), ("overdue", "Overdue"),
                 ("done_pct", "Done %"), ("due_pct", "Due %"), ("overdue_pct", "Overdue %")],
        rows=prow, spec=_bar(long, "process", "percent", x_title="Care process", y_title="Percent of people",
                             colour="status", colour_title="Status", stack=True, domain=list(STATUS_COLOURS),
                             colours=list(STATUS_COLOURS.values())),
        suppression=doc["suppression"], drill=links))
    return figs


def risk_figures(doc: dict[str, Any], f: Filters) -> list[Figure]:
    kind, code = f.level()
    level = doc["risk"].get(kind, {}).get(code)
    if level is None:
        return []
    out = []
    for score, bands in doc["risk_bands"].items():
        counts = level["scores"].get(score, {})
        rows = [{"band": b, "people": counts.get(b, 0)} for b in bands]
        out.append(Figure(
            id=f"risk-{score}", section="risk", title=f"{RISK_TITLES[score]}, {area_name(doc, f)}",
            definition={"cms": "Cambridge Multimorbidity Score (general-outcome weights, Payne et al. CMAJ 2020) in "
                               "bands", "efi": "eFI = deficits present / 36 (Clegg et al. Age Ageing 2016); fit <= "
                               "0.12, mild 0.13-0.24, moderate 0.25-0.36, severe > 0.36; people aged 65 and over",
                        "multimorbidity": "Number of QOF long-term condition registers a person is on (frailty not "
                                          "counted)",
                        "regular_medicines": "Distinct current regular medicines (not when-required), a medicine "
                                             "recorded by several organisations counted once"}[score],
            period=f"as at {doc['date']}", source="knowledge/population/risk.yaml",
            columns=[("band", "Band"), ("people", "People")], rows=rows,
            spec=_bar(rows, "band", "people", x_title="Band", y_title="People", horizontal=False),
            suppression=doc["suppression"]))
    return out


def cost_figures(doc: dict[str, Any], f: Filters) -> list[Figure]:
    report = doc["cost"].get(f.period)
    if not report:
        return []
    kind, code = f.level()
    settings = report["settings"]
    period = f"{report['period_start']} to {report['period_end']}"
    src = f"{report['schedule']['source']['document']}; prices {report['schedule']['price_year']}"
    if kind == "ics":
        cell, where = report["total"], "whole ICS"
    else:
        cell = next((g for g in report[kind] if g["group"] == code), None)
        where = area_name(doc, f)
    out = []
    if cell is not None:
        rows = [{"setting": settings[s], "contacts": v["contacts"], "contacts_per_person": _shown(v["contacts_per_person"]),
                 "cost": _shown(v["cost"]), "cost_per_person": _shown(v["cost_per_person"])}
                for s, v in cell["settings"].items()]
        cpp = cell["cost_per_person"]
        out.append(Figure(
            id="cost-setting", section="cost", title=f"Cost of care per person by setting, {where}",
            definition=report["definition"], period=period, source=src,
            columns=[("setting", "Setting"), ("contacts", "Contacts"), ("contacts_per_person", "Contacts per person"),
                     ("cost", "Cost (GBP)"), ("cost_per_person", "Cost per person (GBP)")],
            rows=rows, spec=_bar(rows, "setting", "cost_per_person", x_title="Setting", y_title="GBP per person"),
            suppression=report["suppression"],
            headline=(f"{where}: GBP {cpp:,.2f} per person, {cell['people']} people" if cpp is not None
                      else f"{where}: withheld (small numbers)")))
    for seg, spec in report["segments"].items():
        rows, long = [], []
        for g in spec["groups"]:
            rows.append({"segment": g["group"], "people": g["people"], "cost_per_person": _shown(g["cost_per_person"]),
                         **{f"{s}_per_person": _shown(v["cost_per_person"]) for s, v in g["settings"].items()}})
            long += [{"segment": g["group"], "setting": settings[s], "cost_per_person": v["cost_per_person"]}
                     for s, v in g["settings"].items()]
        out.append(Figure(
            id=f"cost-{seg}", section="cost", title=f"Cost per person by {spec['display']} (whole ICS)",
            definition=report["definition"] + "; segments as worked out by the risk and register engines",
            period=period, source=src,
            columns=[("segment", "Segment"), ("people", "People"), ("cost_per_person", "Cost per person (GBP)"),
                     *[(f"{s}_per_person", f"{name} per person") for s, name in settings.items()]],
            rows=rows, spec=_bar(long, "segment", "cost_per_person", x_title=spec["display"], y_title="GBP per person",
                                 colour="setting", colour_title="Setting", stack=True,
                                 domain=list(settings.values()), colours=SETTING_COLOURS),
            suppression=report["suppression"]))
    rows = [{"activity": a["activity"], "setting": settings[a["setting"]], "count": a["count"], "people": a["people"],
             "units": _shown(a["units"]) if a["unit"] else "", "cost": _shown(a["cost"])} for a in report["activities"]]
    out.append(Figure(
        id="cost-activity", section="cost", title="Activity and cost by kind of contact (whole ICS)",
        definition="Each contact or care package recognised by the schedule's rules and priced with its unit cost",
        period=period, source=src,
        columns=[("activity", "Activity"), ("setting", "Setting"), ("count", "Contacts"), ("people", "People"),
                 ("units", "Hours or weeks"), ("cost", "Cost (GBP)")], rows=rows,
        spec=_bar(rows, "activity", "cost", x_title="Activity", y_title="GBP"),
        suppression=report["suppression"]))
    return out


def build(doc: dict[str, Any], f: Filters, *, drill: bool) -> list[Figure]:
    check(doc, f)
    return measure_figures(doc, f) + register_figures(doc, f, drill=drill) + risk_figures(doc, f) + \
        cost_figures(doc, f)
