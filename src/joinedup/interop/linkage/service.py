"""Record linkage for records without an NHS number: train, run (confirm / queue for clerical review), review.

Every read and write goes through the gate. People are read with `gate.records` (purpose `record-linkage`) as the
integration account; each proposal is handed to `gate.propose_link`, which confirms it (a `patient_link` row, basis
`linkage`, audited on both records) or queues it as a link request for the privacy officer (it grants nothing until
approved). A pair refused before is never proposed again. A confirmed link is then written on both Patient
resources as `Patient.link` (type `seealso`) by the integration account through `gate.update`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from joinedup import config
from joinedup.fhir.errors import FhirError
from joinedup.governance import service as governance
from joinedup.governance.gate import Gate
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.interop.linkage import model

PURPOSE = "record-linkage"
REASON_PREFIX = "Record linkage (Splink)"
_REASON = re.compile(r"^Record linkage \(Splink\): match probability (?P<p>[0-9.]+), match weight (?P<w>-?[0-9.]+)"
                     r" \| (?P<doc>\{.*\})$", re.S)
DECISIONS = ("confirm", "review", "below-threshold")
ACTION = "link-review"  # the clerical review queue: privacy officer or records manager (review-record-linkage)


def thresholds(confirm: float | None = None, review: float | None = None) -> tuple[float, float]:
    """(confirm, review) match probabilities from the arguments or the settings; refuses nonsense."""
    c = float(config.value("LINKAGE_CONFIRM_PROBABILITY")) if confirm is None else confirm
    r = float(config.value("LINKAGE_REVIEW_PROBABILITY")) if review is None else review
    if not (0 < r <= c <= 1):
        raise FhirError(400, f"thresholds must satisfy 0 < review ({r}) <= confirm ({c}) <= 1", code="value",
                        expression=["confirm", "review"])
    return c, r


def people(gate: Gate, who: Principal) -> Iterator[dict]:
    """Every Patient resource, read through the gate as one audited population access."""
    for patient, _ in gate.records(who, purpose=PURPOSE, types={"Patient"}):
        if not patient.deleted:
            yield patient.content


def model_path(path: Path | None = None) -> Path:
    return Path(path or config.value("LINKAGE_MODEL"))


def train(gate: Gate, who: Principal, *, path: Path | None = None, backend: str = "duckdb") -> dict[str, Any]:
    """Train the model on the population (labels: records of one person linked by NHS number) and save it."""
    t0 = time.perf_counter()
    unlinked, reference, labels = model.training_sets(people(gate, who))
    try:
        trained = model.train(unlinked, reference, labels, backend=backend)
    except model.ModelError as exc:
        raise FhirError(422, str(exc), code="processing") from None
    target = model_path(path)
    trained.save(target)
    gate.record(who, "link-train", allowed=True, reason=f"record-linkage model trained ({trained.trained_on})",
                entity="record-linkage")
    return {"model": str(target), **trained.trained_on, "seconds": round(time.perf_counter() - t0, 2)}


def decide(pairs: list[dict[str, Any]], confirm: float, review: float,
           person: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Give each scored pair a decision. A record stands for one person, so at most one person among its candidates
    can be its match: each pair's *exclusive* probability is its odds o over 1 + o + the odds of every other
    candidate person of the record (Bayes' rule under that constraint: a lone candidate keeps its probability, two
    near-equal ones each fall below a half). Records that share a vouched NHS number (`person`: record id -> NHS
    number) are one candidate person, at the odds of its likeliest record, so one person's GP and hospital records
    do not compete. Taken on both sides (the record to link's candidates and the other record's), the smaller
    counts. A pair is confirmed when its exclusive probability is at or above `confirm`; a pair at or above
    `review` (by its own probability) goes to review, so does a confident pair whose exclusive probability falls
    short; the rest are below threshold.

    Two GP practices' own registration records (`registered_at`, see `model.registered_at`) are never one person
    to link: a person is registered with one practice at a time. Such a pair is no rival to anyone's candidates; it
    goes to review only when its own probability reaches `confirm` (a possible duplicate registration, with a
    caution saying so), else it is below threshold."""
    person = person or {}
    best: dict[tuple[str, str], float] = {}  # (record, candidate person) -> odds of the likeliest of its records
    for p in pairs:
        if two_registrations(p):
            continue
        o = _odds(p)
        for rec, other in ((p["unlinked"], p["reference"]), (p["reference"], p["unlinked"])):
            k = (rec, person.get(other, other))
            best[k] = max(best.get(k, 0.0), o)
    total: dict[str, float] = {}
    for (rec, _), o in best.items():
        total[rec] = total.get(rec, 0.0) + o
    for p in pairs:
        if two_registrations(p):
            p["exclusive_probability"] = 0.0
            p["decision"] = "review" if p["match_probability"] >= confirm else "below-threshold"
            at = p["registered_at"]
            p["caution"] = (f"both records are GP registrations, at Organization/{at[0]} and Organization/{at[1]}: a "
                            "person is registered with one practice at a time, so these are two people or a duplicate "
                            "registration")
            continue
        o = _odds(p)
        exclusive = min(o / (1 + o + total[rec] - best[(rec, person.get(other, other))])
                        for rec, other in ((p["unlinked"], p["reference"]), (p["reference"], p["unlinked"])))
        p["exclusive_probability"] = exclusive
        p["decision"] = ("confirm" if exclusive >= confirm else "review" if p["match_probability"] >= review
                         else "below-threshold")
    return pairs


def two_registrations(pair: dict[str, Any]) -> bool:
    """Both records of the pair are GP practices' own registration records, at different practices."""
    a, b = (pair.get("registered_at") or (None, None))
    return a is not None and b is not None and a != b


def _odds(pair: dict[str, Any]) -> float:
    """A pair's match odds (2 ** match weight, which Splink keeps where the probability rounds to 1)."""
    return 2.0 ** min(float(pair["match_weight"]), 200.0)


def reason_for(pair: dict[str, Any]) -> str:
    doc = {"fields": pair["fields"], "organisations": pair["organisations"]}
    if pair.get("caution"):
        doc["caution"] = pair["caution"]
    return (f"{REASON_PREFIX}: match probability {pair['match_probability']:.4f}, match weight "
            f"{pair['match_weight']:.2f} | {json.dumps(doc, separators=(',', ':'))}")


def parse_reason(reason: str | None) -> dict[str, Any] | None:
    """The score and compared values a linkage proposal carries (None for other link requests)."""
    m = _REASON.match(reason or "")
    if not m:
        return None
    try:
        doc = json.loads(m.group("doc"))
    except ValueError:
        return None
    return {"match_probability": float(m.group("p")), "match_weight": float(m.group("w")),
            "fields": doc.get("fields") or {}, "organisations": doc.get("organisations") or [],
            "caution": doc.get("caution") if isinstance(doc.get("caution"), str) else None}


def run(gate: Gate, who: Principal, *, path: Path | None = None, confirm: float | None = None,
        review: float | None = None, report: Path | None = None, dry_run: bool = False,
        backend: str = "duckdb", organisation: str | None = None) -> dict[str, Any]:
    """Score every record without an NHS number (only those one organisation holds, when `organisation` is given)
    against the others, act on the decisions and summarise."""
    if organisation is not None and (not isinstance(organisation, str) or not organisation.strip()
                                     or len(organisation) > 64):
        raise FhirError(400, "'organisation' must name an organisation (e.g. \"Organization/org-la\")",
                        code="value", expression=["organisation"])
    organisation = organisation.strip().removeprefix("Organization/") if organisation else None
    c, r = thresholds(confirm, review)
    try:
        trained = model.Trained.load(model_path(path))
    except model.ModelError as exc:
        raise FhirError(422, str(exc), code="processing") from None
    t0 = time.perf_counter()
    without, reference = model.split(people(gate, who))
    unlinked = [u for u in without if u["organisation"] == organisation] if organisation is not None else without
    if not unlinked:
        pairs: list[dict] = []
    else:
        try:
            # candidates: the records with an NHS number, and the other records without one (another
            # organisation's record of the same person may lack it too)
            pairs = model.score(trained, unlinked, [*reference, *without], threshold=min(r, 0.001),
                                backend=backend)
        except model.ModelError as exc:
            raise FhirError(422, str(exc), code="processing") from None
    scored = time.perf_counter() - t0
    decide(pairs, c, r, {x["unique_id"]: x["nhs_number"] for x in reference if x.get("nhs_number")})
    counts = {"confirmed": 0, "queued": 0, "linked": 0, "pending": 0, "rejected": 0}
    for p in pairs:
        if p["decision"] == "below-threshold" or dry_run:
            p["outcome"] = "dry-run" if dry_run and p["decision"] != "below-threshold" else None
            continue
        outcome = gate.propose_link(who, p["unlinked"], p["reference"], confirm=p["decision"] == "confirm",
                                    reason=reason_for(p))
        p["outcome"] = outcome
        counts[outcome] += 1
        if outcome == "confirmed":
            write_links(gate, p["unlinked"], p["reference"])
    if report is not None:
        write_report(report, pairs)
    summary = {"organisation": organisation, "records_without_nhs_number": len(unlinked), "reference_records": len(reference),
               "pairs_scored": len(pairs), "confirm_probability": c, "review_probability": r,
               "decisions": {d: sum(1 for p in pairs if p["decision"] == d) for d in DECISIONS},
               "outcomes": counts, "dry_run": dry_run, "seconds_scoring": round(scored, 2)}
    gate.record(who, "link-run", allowed=True, reason=f"record linkage run: {summary['decisions']}",
                entity="record-linkage", detail={k: summary[k] for k in ("pairs_scored", "outcomes")})
    summary["pairs"] = pairs
    return summary


def write_report(path: Path, pairs: list[dict[str, Any]]) -> None:
    """NDJSON: one line per scored pair with its weight, probability, decision and what was done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"unlinked": f"Patient/{p['unlinked']}", "reference": f"Patient/{p['reference']}",
                                 "match_weight": p["match_weight"], "match_probability": p["match_probability"],
                                 "prior": p.get("prior"),
                                 "exclusive_probability": p.get("exclusive_probability"), "decision": p["decision"],
                                 "outcome": p.get("outcome"), "fields": p["fields"],
                                 **({"caution": p["caution"]} if p.get("caution") else {})}) + "\n")


def write_links(gate: Gate, a: str, b: str) -> None:
    """Record a confirmed link on both Patient resources as Patient.link (type seealso), as the integration
    account; a record merged away keeps its replaced-by link and is not touched."""
    for x, y in ((a, b), (b, a)):
        try:
            stored = gate.read(SYSTEM, "Patient", x)
        except FhirError:
            continue
        patient = stored.content
        if model.merged_away(patient):
            continue
        links = [lk for lk in patient.get("link") or () if isinstance(lk, dict)]
        if any((lk.get("other") or {}).get("reference") == f"Patient/{y}" for lk in links):
            continue
        patient = {**patient, "link": [*links, {"other": {"reference": f"Patient/{y}"}, "type": "seealso"}]}
        gate.update(SYSTEM, "Patient", x, patient)


def review_queue(gate: Gate, who: Principal, *, status: str = "pending") -> list[dict[str, Any]]:
    """Link requests that came from record linkage, with their scores and the fields that agree or differ."""
    out = []
    for req in governance.link_requests(gate, who, status=status, limit=1000, action=ACTION):
        detail = parse_reason(req.get("reason"))
        if detail is None:
            continue
        fields = detail["fields"]
        left = {f: (v or [None, None])[0] for f, v in fields.items()}
        right = {f: (v or [None, None])[1] for f, v in fields.items()}
        req = {**req, **detail, "agreement": model.agreement(left, right),
               "differences": model.differences(left, right), "labels": model.FIELDS}
        req.pop("reason", None)
        out.append(req)
    out.sort(key=lambda q: -q["match_probability"])
    return out


def decide_review(gate: Gate, who: Principal, request_id: str, *, outcome: Any, note: Any = None) -> dict[str, Any]:
    """Accept (approved) or reject a queued pair; an accepted pair is then recorded as Patient.link on both. Only
    record linkage's own proposals are decided here (other link requests are the privacy officer's)."""
    if outcome in governance.LINK_OUTCOMES and not any(q["id"] == request_id
                                                      for q in review_queue(gate, who, status="all")):
        raise FhirError(404, f"No link request '{request_id}' from record linkage", code="not-found")
    out = governance.decide_link(gate, who, request_id, outcome=outcome, note=note, action=ACTION)
    if outcome == "approved":
        write_links(gate, out["patient"].removeprefix("Patient/"), out["other_patient"].removeprefix("Patient/"))
    return out


def links(gate: Gate, who: Principal) -> dict[str, list[dict[str, Any]]]:
    """Confirmed links from record linkage (and accepted pairs), and pairs unlinked since."""
    return governance.record_links(gate, who, action=ACTION)


def unlink(gate: Gate, who: Principal, patient: Any, other_patient: Any, *, reason: Any) -> dict[str, Any]:
    """Undo a confirmed linkage link (audited, reversible with `relink`); the Patient.link (seealso) entries record
    linkage wrote on the two records are removed by the integration account."""
    out = governance.unlink_records(gate, who, patient=patient, other_patient=other_patient, reason=reason,
                                    action=ACTION)
    remove_links(gate, out["patient"].removeprefix("Patient/"), out["other_patient"].removeprefix("Patient/"))
    return out


def relink(gate: Gate, who: Principal, unlink_id: str, *, reason: Any) -> dict[str, Any]:
    """Put back a link that was unlinked, as it was; Patient.link written again on both records."""
    out = governance.relink_records(gate, who, unlink_id, reason=reason, action=ACTION)
    write_links(gate, out["patient"].removeprefix("Patient/"), out["other_patient"].removeprefix("Patient/"))
    return out


def remove_links(gate: Gate, a: str, b: str) -> None:
    """Remove the Patient.link (type seealso) entries between two records, as the integration account."""
    for x, y in ((a, b), (b, a)):
        try:
            patient = gate.read(SYSTEM, "Patient", x).content
        except FhirError:
            continue
        kept = [lk for lk in patient.get("link") or () if not (isinstance(lk, dict) and lk.get("type") == "seealso"
                and (lk.get("other") or {}).get("reference") == f"Patient/{y}")]
        if len(kept) == len(patient.get("link") or ()):
            continue
        patient = {k: v for k, v in patient.items() if k != "link"}
        if kept:
            patient["link"] = kept
        gate.update(SYSTEM, "Patient", x, patient)
