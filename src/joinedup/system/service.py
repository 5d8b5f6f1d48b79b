"""The services and roles directory across settings ("who does what"): the public service of the system domain.

Services are FHIR HealthcareService entries (with the Organization that provides them, their Locations and the
PractitionerRoles that deliver them), maintained through the FHIR API and read here through the gate as the person
asking - every professional may read the directory (governance/roles.yaml, the `directory` group).

What each service accepts is read from standard elements: referral criteria `eligibility` (code text and comment),
how to refer `referralMethod` (http://terminology.hl7.org/CodeSystem/service-referral-method), opening hours
`availableTime` / `notAvailable` / `availabilityExceptions`, contact routes `telecom`; advice and guidance offered is
a `characteristic` coded `advice-and-guidance` in SERVICE_OFFER, the needs it meets `characteristic` codes in the
need system of knowledge/system/needs.yaml, and the response-time promise the RESPONSE_PROMISE extension
(valueDuration).

Other domains (referrals, the MDT picker) use `find_services` and `organisations_meeting`; this module imports no
other domain.
"""

from __future__ import annotations

from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.system import knowledge as kb

SERVICE_OFFER = codes.CODE_SYSTEM + "service-offer"
ADVICE_AND_GUIDANCE = "advice-and-guidance"
RESPONSE_PROMISE = codes.EXTENSION + "response-time-promise"
REFERRAL_METHOD = "http://terminology.hl7.org/CodeSystem/service-referral-method"
# FHIR R4 ValueSet service-referral-method (http://hl7.org/fhir/R4/valueset-service-referral-method.html)
REFERRAL_METHODS = {"fax": "Fax", "phone": "Phone", "elec": "Secure messaging", "semail": "Secure email",
                    "mail": "Mail"}
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAY_NAMES = {"mon": "Mon", "tue": "Tue", "wed": "Wed", "thu": "Thu", "fri": "Fri", "sat": "Sat", "sun": "Sun"}
MAX_NEED = 200
GENERIC_CRITERIA = "referral criteria"  # an eligibility code that only says "these are the criteria": not repeated
UNITS = {"h": "hours", "d": "days", "wk": "weeks", "min": "minutes"}


def need_system() -> str:
    return kb.needs()["system"]


# -- needs ------------------------------------------------------------------------------------------------------
def check_need(text: str | None) -> str:
    """The typed need, checked: 400 when missing, too long or not plain text."""
    t = (text or "").strip()
    if not t:
        raise FhirError(400, "Say what the person needs help with (need=, e.g. 'falls')", code="required",
                        expression=["need"])
    if len(t) > MAX_NEED:
        raise FhirError(400, f"The need is {len(t)} characters long; describe it in at most {MAX_NEED}",
                        code="too-long", expression=["need"])
    if any(ord(ch) < 32 for ch in t):
        raise FhirError(400, "The need contains control characters: type it as plain text", code="value",
                        expression=["need"])
    if not kb.normalise(t).strip():
        raise FhirError(400, f"'{t}' has no words to search for: describe the need in words", code="value",
                        expression=["need"])
    return t


def needs_in_text(text: str | None) -> list[str]:
    """The needs (keys of needs.yaml) a piece of text names: a need's key, label, keywords or the synonyms of the
    conditions it covers (conditions.yaml), as whole words."""
    hay = kb.normalise(text)
    conds = kb.conditions()
    found = []
    for key, spec in kb.needs()["needs"].items():
        phrases = [key.replace("-", " "), spec["label"], *(spec.get("keywords") or ())]
        for c in spec.get("conditions") or ():
            phrases += conds.get(c, {}).get("text") or ()
        if any(kb.contains_phrase(hay, p) for p in phrases):
            found.append(key)
    return found


def needs_of_condition(condition: dict[str, Any]) -> list[str]:
    """The needs one problem (a Condition) points to: its SNOMED CT codes through conditions.yaml, else its text."""
    index = kb.code_index()
    keys = {index[c.get("code")] for c in (condition.get("code") or {}).get("coding") or ()
            if c.get("system") == codes.SNOMED and c.get("code") in index}
    out = [k for k, spec in kb.needs()["needs"].items() if keys & set(spec.get("conditions") or ())]
    if out:
        return out
    code = condition.get("code") or {}
    text = " ".join([code.get("text") or "", *[c.get("display") or "" for c in code.get("coding") or ()]])
    return needs_in_text(text)


# -- one service, in words ------------------------------------------------------------------------------------------
def _texts(items: Any) -> list[str]:
    out = []
    for cc in items or ():
        t = cc.get("text") or next((c.get("display") for c in cc.get("coding") or () if c.get("display")), None)
        if t:
            out.append(t)
    return out


def _codes(hs: dict[str, Any], system: str) -> list[str]:
    return [c.get("code") for cc in hs.get("characteristic") or () for c in cc.get("coding") or ()
            if c.get("system") == system and c.get("code")]


def promise_of(hs: dict[str, Any]) -> dict[str, Any] | None:
    """The response-time promise {value, unit, text} (None when the service makes none)."""
    for e in hs.get("extension") or ():
        if e.get("url") == RESPONSE_PROMISE and isinstance(e.get("valueDuration"), dict):
            d = e["valueDuration"]
            unit = d.get("unit") or UNITS.get(d.get("code") or "", d.get("code") or "")
            value = d.get("value")
            if value is None:
                return None
            shown = int(value) if float(value).is_integer() else value
            return {"value": value, "unit": unit, "text": f"within {shown} {unit}"}
    return None


def _day_range(days: list[str]) -> str:
    idx = sorted(DAYS.index(d) for d in days if d in DAYS)
    if not idx:
        return ""
    runs, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(DAY_NAMES[DAYS[start]] if start == prev else f"{DAY_NAMES[DAYS[start]]}–{DAY_NAMES[DAYS[prev]]}")
        if i is not None:
            start = prev = i
    return ", ".join(runs)


def hours_of(hs: dict[str, Any]) -> list[str]:
    """Opening hours in words, e.g. ['Mon–Fri 08:00–18:00', 'Sat 09:00–12:00']."""
    out = []
    for at in hs.get("availableTime") or ():
        days = _day_range(at.get("daysOfWeek") or [])
        if at.get("allDay"):
            when = "24 hours"
        else:
            start, end = (at.get("availableStartTime") or "")[:5], (at.get("availableEndTime") or "")[:5]
            when = f"{start}–{end}" if start and end else (start or end)
        text = " ".join(x for x in (days or "Every day", when) if x)
        out.append(text)
    return out


def service_view(hs: dict[str, Any], *, organisations: dict[str, dict], locations: dict[str, dict]) -> dict[str, Any]:
    """One HealthcareService as the directory shows it."""
    org_id = ((hs.get("providedBy") or {}).get("reference") or "").removeprefix("Organization/") or None
    org = organisations.get(org_id or "") or {}
    criteria = []
    for el in hs.get("eligibility") or ():
        label = [t for t in (_texts([el.get("code")]) if el.get("code") else []) if t.lower() != GENERIC_CRITERIA]
        parts = [t for t in label + [el.get("comment") or ""] if t]
        if parts:
            criteria.append(": ".join(parts))
    methods = []
    for cc in hs.get("referralMethod") or ():
        shown = _texts([cc]) or [REFERRAL_METHODS.get(c.get("code"), c.get("code")) for c in cc.get("coding") or ()]
        methods += [m for m in shown if m]
    locs = []
    for ref in hs.get("location") or ():
        lid = (ref.get("reference") or "").removeprefix("Location/")
        name = (locations.get(lid) or {}).get("name") or ref.get("display")
        if name:
            locs.append(name)
    need_names = kb.needs()["needs"]
    return {
        "id": hs.get("id"), "name": hs.get("name") or "Unnamed service", "active": hs.get("active") is not False,
        "organization": {"id": org_id, "name": org.get("name") or (hs.get("providedBy") or {}).get("display")},
        "type": _texts(hs.get("type")), "specialty": _texts(hs.get("specialty")),
        "programme": _texts(hs.get("program")), "comment": hs.get("comment"),
        "needs": [{"key": k, "label": need_names[k]["label"]} for k in _codes(hs, need_system()) if k in need_names],
        "criteria": criteria, "referral_methods": methods,
        "advice_and_guidance": ADVICE_AND_GUIDANCE in _codes(hs, SERVICE_OFFER),
        "response_promise": promise_of(hs),
        "contact": [{"system": t.get("system"), "value": t.get("value")} for t in hs.get("telecom") or ()
                    if t.get("value")],
        "hours": hours_of(hs), "hours_exceptions": hs.get("availabilityExceptions"),
        "not_available": [n.get("description") for n in hs.get("notAvailable") or () if n.get("description")],
        "locations": locs, "appointment_required": hs.get("appointmentRequired"),
    }


def complete(hs: dict[str, Any]) -> dict[str, bool]:
    """Which of the five things a directory entry should publish it does (referral criteria, how to refer, opening
    hours, a contact route, a response-time promise): the directory completeness measure."""
    return {"criteria": bool(hs.get("eligibility")), "referral_method": bool(hs.get("referralMethod")),
            "hours": bool(hs.get("availableTime")), "contact": any(t.get("value") for t in hs.get("telecom") or ()),
            "response_promise": promise_of(hs) is not None}


# -- reading the directory --------------------------------------------------------------------------------------
def _all_services(gate: Gate, who: Principal, params: list[tuple[str, str]] | None = None
                  ) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    services: list[dict] = []
    orgs: dict[str, dict] = {}
    locs: dict[str, dict] = {}
    offset = 0
    base = [("_include", "HealthcareService:organization"), ("_include", "HealthcareService:location"),
            *(params or [])]
    while True:
        found = gate.search(who, "HealthcareService", base + [("_count", "500"), ("_offset", str(offset))],
                            max_count=500)
        # services not marked inactive (`active` is optional in FHIR: an entry without it is listed)
        services += [s.content for s in found.matches if s.content.get("active") is not False]
        for s in found.included:
            (orgs if s.rtype == "Organization" else locs)[s.id] = s.content
        if not found.has_more or not found.matches:
            break
        offset += len(found.matches)
    return services, orgs, locs


def _service_text(hs: dict[str, Any], org: dict[str, Any] | None) -> str:
    parts = [hs.get("name") or "", hs.get("comment") or "", *_texts(hs.get("type")), *_texts(hs.get("specialty")),
             *_texts(hs.get("program")), *_texts(hs.get("category"))]
    for el in hs.get("eligibility") or ():
        parts += _texts([el.get("code")]) if el.get("code") else []
        parts.append(el.get("comment") or "")
    return kb.normalise(" ".join(parts))


def meets(hs: dict[str, Any], need: str, text: str | None = None) -> str | None:
    """How a service meets a need: 'coded' (it says so), 'text' (its description names it) or None."""
    if need in _codes(hs, need_system()):
        return "coded"
    spec = kb.needs()["needs"].get(need)
    if spec is None:
        return None
    hay = text if text is not None else _service_text(hs, None)
    return "text" if any(kb.contains_phrase(hay, t) for t in spec.get("service_terms") or ()) else None


def find_services(*, gate: Gate, who: Principal, need: str) -> dict[str, Any]:
    """Services that can help with a need typed in words: the needs recognised in it (needs.yaml) and, for each
    service that meets one, why; when no need is recognised, services whose own description contains every word."""
    text = check_need(need)
    keys = needs_in_text(text)
    services, orgs, locs = _all_services(gate, who)
    matches = []
    words = [w for w in kb.normalise(text).split() if len(w) > 2]
    for hs in services:
        hay = _service_text(hs, orgs.get(((hs.get("providedBy") or {}).get("reference") or "").split("/")[-1]))
        how = [(k, m) for k in keys if (m := meets(hs, k, hay))]
        if not keys and words and all(f" {w}" in hay for w in words):
            how = [("", "text")]
        if how:
            view = service_view(hs, organisations=orgs, locations=locs)
            view["matched"] = [{"need": k or None, "how": m} for k, m in how]
            view["_rank"] = (0 if any(m == "coded" for _, m in how) else 1, view["organization"]["name"] or "",
                             view["name"])
            matches.append(view)
    matches.sort(key=lambda v: v.pop("_rank"))
    labels = kb.needs()["needs"]
    return {"need": text, "recognised": [{"key": k, "label": labels[k]["label"]} for k in keys],
            "total": len(matches), "services": matches}


def directory(*, gate: Gate, who: Principal, query: str | None = None) -> dict[str, Any]:
    """The whole directory (active services, by organisation), or the services that meet a need when `query` is
    given."""
    if query is not None and query.strip():
        return find_services(gate=gate, who=who, need=query)
    services, orgs, locs = _all_services(gate, who)
    views = sorted((service_view(hs, organisations=orgs, locations=locs) for hs in services),
                   key=lambda v: (v["organization"]["name"] or "", v["name"]))
    return {"need": None, "recognised": [], "total": len(views), "services": views}


def get_service(*, gate: Gate, who: Principal, service_id: str) -> dict[str, Any]:
    """One service with the people (PractitionerRoles) who deliver it."""
    hs = gate.read(who, "HealthcareService", service_id).content
    orgs, locs = {}, {}
    org_id = ((hs.get("providedBy") or {}).get("reference") or "").removeprefix("Organization/")
    if org_id:
        try:
            orgs[org_id] = gate.read(who, "Organization", org_id).content
        except FhirError:
            pass
    view = service_view(hs, organisations=orgs, locations=locs)
    roles = gate.search(who, "PractitionerRole", [("service", f"HealthcareService/{service_id}"), ("active", "true"),
                                                  ("_include", "PractitionerRole:practitioner"), ("_count", "200")])
    people = {f"Practitioner/{s.id}": s.content for s in roles.included if s.rtype == "Practitioner"}
    view["people"] = []
    for s in roles.matches:
        prac = people.get((s.content.get("practitioner") or {}).get("reference") or "")
        name = _person_name(prac) if prac else None
        view["people"].append({"role_id": s.id, "name": name, "role": ", ".join(_texts(s.content.get("code"))) or None,
                               "practitioner": (s.content.get("practitioner") or {}).get("reference")})
    return view


def _person_name(p: dict[str, Any]) -> str:
    n = (p.get("name") or [{}])[0]
    return n.get("text") or " ".join([*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]).strip()


def organisations_meeting(*, gate: Gate, who: Principal, need: str) -> dict[str, list[str]]:
    """Organisation id -> names of its services that meet a need (for referral and MDT pickers)."""
    out: dict[str, list[str]] = {}
    for v in find_services(gate=gate, who=who, need=need)["services"]:
        if v["organization"]["id"]:
            out.setdefault(v["organization"]["id"], []).append(v["name"])
    return out


# -- who can help this person ------------------------------------------------------------------------------------
def _search_or_withheld(gate: Gate, who: Principal, rtype: str, patient_id: str, what: str,
                        not_shown: list[str]) -> list[Any]:
    try:
        return gate.search(who, rtype, [("patient", f"Patient/{patient_id}"), ("_count", "500")]).matches
    except FhirError as exc:
        if exc.status != 403:
            raise
        not_shown.append(f"The person's {what} are not shown to your role, so needs they point to are not listed.")
        return []


def person_needs(*, gate: Gate, who: Principal, patient_id: str,
                 not_shown: list[str] | None = None) -> list[dict[str, Any]]:
    """The needs a person's active problems and care plan goals point to, each with what it came from (read through
    the gate as `who`: the person's choices and the viewer's relationship apply; what the role may not read is noted
    in `not_shown`, never silently left out)."""
    found: dict[str, list[str]] = {}
    not_shown = not_shown if not_shown is not None else []
    for s in _search_or_withheld(gate, who, "Condition", patient_id, "problems", not_shown):
        c = s.content
        status = {x.get("code") for x in (c.get("clinicalStatus") or {}).get("coding") or ()}
        if status and not status & {"active", "recurrence", "relapse"}:
            continue
        label = (c.get("code") or {}).get("text") or next(
            (x.get("display") for x in (c.get("code") or {}).get("coding") or () if x.get("display")), "a problem")
        for k in needs_of_condition(c):
            found.setdefault(k, []).append(f"problem: {label}")
    for s in _search_or_withheld(gate, who, "Goal", patient_id, "care plan goals", not_shown):
        g = s.content
        if g.get("lifecycleStatus") in ("completed", "cancelled", "entered-in-error", "rejected"):
            continue
        text = (g.get("description") or {}).get("text") or ""
        for k in needs_in_text(text):
            found.setdefault(k, []).append(f"care plan goal: {text}")
    labels = kb.needs()["needs"]
    return [{"key": k, "label": labels[k]["label"], "from": sorted(set(v))} for k, v in found.items()]


def who_can_help(*, gate: Gate, who: Principal, patient_id: str, need: str | None = None) -> dict[str, Any]:
    """Services matched to the person's needs (their active problems and care plan goals), or to one typed need."""
    gate.read(who, "Patient", patient_id)  # refused (and audited) without a relationship
    if need is not None and need.strip():
        result = find_services(gate=gate, who=who, need=need)
        return {"patient": patient_id, "not_shown": [],
                "needs": [{**r, "from": ["your search"], "services": result["services"]} for r in result["recognised"]] or
                [{"key": None, "label": result["need"], "from": ["your search"], "services": result["services"]}]}
    not_shown: list[str] = []
    needs = person_needs(gate=gate, who=who, patient_id=patient_id, not_shown=not_shown)
    services, orgs, locs = _all_services(gate, who) if needs else ([], {}, {})
    texts = {id(hs): _service_text(hs, None) for hs in services}
    for n in needs:
        n["services"] = []
        for hs in services:
            how = meets(hs, n["key"], texts[id(hs)])
            if how:
                v = service_view(hs, organisations=orgs, locations=locs)
                v["matched"] = [{"need": n["key"], "how": how}]
                n["services"].append(v)
        n["services"].sort(key=lambda v: (v["matched"][0]["how"] != "coded", v["organization"]["name"] or "",
                                          v["name"]))
    return {"patient": patient_id, "needs": needs, "not_shown": not_shown}
