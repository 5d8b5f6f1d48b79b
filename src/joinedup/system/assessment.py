"""The integration self-assessment: framework items as data, a partnership board's scores, live evidence, rounds.

Why QuestionnaireResponse: a board's self-assessment is a set of answers (a 1-5 score, free-text evidence, an owner)
to fixed questions, given by people at a time - exactly what FHIR Questionnaire/QuestionnaireResponse model. The
Questionnaire is generated from the versioned framework files (one group per framework, one group per item with
`score`, `evidence` and `owner` questions) and its version changes when they change; each round is one
QuestionnaireResponse to it about the partnership (never about a person), so rounds keep their full version history
in the store. Observation would fit a measured value about a subject; a judgement with evidence and an owner is not
that, and the live measures are recomputed from the record rather than stored.

Writes and reads of rounds go through the gate's `save_assessment_round` / `assessment_rounds` (the
`assess-integration` activity: the board role); the Questionnaire itself is directory content the platform writes.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.system import evidence
from joinedup.system import knowledge as kb

QUESTIONNAIRE_ID = "integration-self-assessment"
QUESTIONNAIRE_URL = "https://joinedup.example/fhir/Questionnaire/" + QUESTIONNAIRE_ID
ROUND_SYSTEM = codes.CODE_SYSTEM.replace("/CodeSystem/", "/Id/") + "assessment-round"
SCORED = codes.EXTENSION + "assessment-scored"
PLATFORM = Principal(name="integration-assessment", role="system", display="JoinedUp integration self-assessment")
SCORES = {1: "Not started", 2: "Early", 3: "Developing", 4: "Established", 5: "Embedded"}
MAX_EVIDENCE = 4000
MAX_OWNER = 200
_LABEL = re.compile(r"^[\w][\w .:/()\-]{0,59}$")


def version() -> str:
    """The Questionnaire's version: the versions of the three framework files."""
    return "+".join(f"{f['framework']}-{f['version']}" for f in kb.frameworks())


def items() -> list[dict[str, Any]]:
    """Every scorable framework item, each with its framework's id, title and source."""
    out = []
    for f in kb.frameworks():
        for it in f["items"]:
            out.append({**it, "framework": f["framework"], "framework_title": f["title"], "source": f["source"]})
    return out


def item_ids() -> dict[str, dict[str, Any]]:
    return {it["id"]: it for it in items()}


def questionnaire() -> dict[str, Any]:
    """The FHIR Questionnaire generated from the framework files."""
    groups = []
    for f in kb.frameworks():
        children = []
        for it in f["items"]:
            text = it["title"] + (f" - {it['question']}" if it.get("question") else "")
            children.append({
                "linkId": it["id"], "text": text, "type": "group",
                "item": [
                    {"linkId": f"{it['id']}.score", "text": "Score (1 not started - 5 embedded)", "type": "integer",
                     "answerOption": [{"valueInteger": n} for n in SCORES]},
                    {"linkId": f"{it['id']}.evidence", "text": "Evidence", "type": "text"},
                    {"linkId": f"{it['id']}.owner", "text": "Owner", "type": "string"},
                ]})
        groups.append({"linkId": f["framework"], "text": f"{f['title']} ({' '.join(f['source']['citation'].split())})",
                       "type": "group", "item": children})
    return {"resourceType": "Questionnaire", "id": QUESTIONNAIRE_ID, "url": QUESTIONNAIRE_URL, "version": version(),
            "name": "IntegrationSelfAssessment", "title": "Integration self-assessment for partnership boards",
            "status": "active", "subjectType": ["Organization"], "item": groups}


def ensure_questionnaire(gate: Gate) -> None:
    """Write the Questionnaire when it is missing or its framework files have changed (the platform writes it)."""
    want = questionnaire()
    if gate.entry_status("Questionnaire", QUESTIONNAIRE_ID) == "current":
        have = gate.read(PLATFORM, "Questionnaire", QUESTIONNAIRE_ID).content
        if have.get("version") == want["version"]:
            return
    gate.update(PLATFORM, "Questionnaire", QUESTIONNAIRE_ID, want)


# -- rounds -------------------------------------------------------------------------------------------------------
def _now() -> str:
    """Now, to the microsecond: rounds opened within one second still sort in the order they were opened."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _label_of(qr: dict[str, Any]) -> str:
    return (qr.get("identifier") or {}).get("value") or (qr.get("authored") or "")[:10]


def _answers(qr: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """item id -> {score, evidence, owner, scored_by, scored_at} from one round."""
    out = {}
    for group in qr.get("item") or ():
        for it in group.get("item") or ():
            got: dict[str, Any] = {}
            for q in it.get("item") or ():
                ans = (q.get("answer") or [{}])[0]
                field = q.get("linkId", "").rsplit(".", 1)[-1]
                got[field] = ans.get("valueInteger", ans.get("valueString"))
            for e in it.get("extension") or ():
                if e.get("url") == SCORED:
                    for part in e.get("extension") or ():
                        got["scored_" + part.get("url", "")] = part.get("valueString") or part.get("valueDateTime")
            if got.get("score") is not None:
                out[it["linkId"]] = got
    return out


def rounds(*, gate: Gate, who: Principal) -> list[dict[str, Any]]:
    """Every round, oldest first: {id, label, status, authored, scored, answers}."""
    out = []
    for s in gate.assessment_rounds(who, questionnaire=QUESTIONNAIRE_URL):
        qr = s.content
        answers = _answers(qr)
        out.append({"id": s.id, "label": _label_of(qr), "status": qr.get("status"), "authored": qr.get("authored"),
                    "updated": s.last_updated, "version": s.version, "scored": len(answers), "answers": answers})
    out.sort(key=lambda r: (r["authored"] or "", r["id"]))
    return out


def _check_label(label: str | None) -> str:
    t = (label or "").strip()
    if not t:
        raise FhirError(422, "Name the round (for example '2026 Q4')", code="required", expression=["label"])
    if not _LABEL.match(t):
        raise FhirError(422, "A round's name is up to 60 letters, digits, spaces and . : / ( ) -", code="value",
                        expression=["label"])
    return t


def _new_round(label: str) -> dict[str, Any]:
    return {"resourceType": "QuestionnaireResponse", "questionnaire": QUESTIONNAIRE_URL,
            "identifier": {"system": ROUND_SYSTEM, "value": label}, "status": "in-progress", "authored": _now(),
            "subject": {"display": "Integrated care partnership (self-assessment)"},
            "item": [{"linkId": f["framework"], "text": f["title"]} for f in kb.frameworks()]}


def start_round(*, gate: Gate, who: Principal, label: str | None) -> dict[str, Any]:
    """Open a new round (the open one, if any, is completed): scores from now on belong to it."""
    label = _check_label(label)
    ensure_questionnaire(gate)
    existing = rounds(gate=gate, who=who)
    if any(r["label"] == label for r in existing):
        raise FhirError(409, f"There is already a round called '{label}'", code="duplicate", expression=["label"])
    for r in existing:
        if r["status"] == "in-progress":
            _close(gate, who, r["id"])
    w = gate.save_assessment_round(who, _new_round(label), questionnaire=QUESTIONNAIRE_URL)
    return {"id": w.id, "label": label, "status": "in-progress"}


def _close(gate: Gate, who: Principal, round_id: str) -> None:
    stored = next(s for s in gate.assessment_rounds(who, questionnaire=QUESTIONNAIRE_URL) if s.id == round_id)
    qr = dict(stored.content, status="completed")
    gate.save_assessment_round(who, qr, questionnaire=QUESTIONNAIRE_URL)


def check_score(score: Any, evidence_text: Any, owner: Any) -> tuple[int, str | None, str | None]:
    """A score 1-5, free-text evidence and an owner, checked (422 naming the field)."""
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if isinstance(score, bool) or not isinstance(score, int) or score not in SCORES:
        raise FhirError(422, "The score must be a whole number from 1 (not started) to 5 (embedded)", code="value",
                        expression=["score"])
    texts = []
    for value, name, limit in ((evidence_text, "evidence", MAX_EVIDENCE), (owner, "owner", MAX_OWNER)):
        if value is not None and not isinstance(value, str):
            raise FhirError(422, f"The {name} must be text", code="value", expression=[name])
        t = (value or "").strip() or None
        if t and len(t) > limit:
            raise FhirError(422, f"The {name} is {len(t):,} characters long; the limit is {limit:,}", code="too-long",
                            expression=[name])
        texts.append(t)
    return score, texts[0], texts[1]


def score_item(*, gate: Gate, who: Principal, item_id: str, score: Any, evidence_text: Any = None,
               owner: Any = None) -> dict[str, Any]:
    """Score one framework item in the open round (one is opened, named for this month, when there is none)."""
    known = item_ids()
    if item_id not in known:
        raise FhirError(404, f"'{item_id}' is not an item of the self-assessment frameworks", code="not-found",
                        expression=["item"])
    score, text, owner_text = check_score(score, evidence_text, owner)
    ensure_questionnaire(gate)
    open_rounds = [s for s in gate.assessment_rounds(who, questionnaire=QUESTIONNAIRE_URL)
                   if s.content.get("status") == "in-progress"]
    if open_rounds:
        qr = dict(open_rounds[-1].content)
    else:
        label = datetime.now(UTC).strftime("%Y-%m")
        if any(r["label"] == label for r in rounds(gate=gate, who=who)):
            label = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        qr = _new_round(label)
    it = known[item_id]
    groups = {g["linkId"]: g for g in qr.get("item") or ()}
    group = groups.get(it["framework"])
    if group is None:
        group = {"linkId": it["framework"], "text": it["framework_title"]}
        qr["item"] = [*qr.get("item", []), group]
    answers = [{"linkId": f"{item_id}.score", "answer": [{"valueInteger": score}]}]
    if text:
        answers.append({"linkId": f"{item_id}.evidence", "answer": [{"valueString": text}]})
    if owner_text:
        answers.append({"linkId": f"{item_id}.owner", "answer": [{"valueString": owner_text}]})
    entry = {"linkId": item_id, "text": it["title"], "item": answers, "extension": [{"url": SCORED, "extension": [
        {"url": "by", "valueString": who.display or who.name}, {"url": "at", "valueDateTime": _now()}]}]}
    group["item"] = [x for x in group.get("item") or () if x.get("linkId") != item_id] + [entry]
    w = gate.save_assessment_round(who, qr, questionnaire=QUESTIONNAIRE_URL)
    return {"round": w.id, "label": _label_of(qr), "item": item_id, "score": score, "evidence": text,
            "owner": owner_text}


# -- the report -------------------------------------------------------------------------------------------------------
def _source(f: dict[str, Any], it: dict[str, Any]) -> dict[str, Any]:
    src = f["source"]
    return {"framework": f["framework"], "framework_title": f["title"], "framework_version": f["version"],
            "citation": " ".join(src["citation"].split()), "doi": src.get("doi"), "url": src.get("url"),
            "wording": it.get("wording", "paraphrased"), **({"attribution": src["attribution"]}
                                                              if src.get("attribution") else {})}


def report(*, gate: Gate, who: Principal, today: date | None = None) -> dict[str, Any]:
    """Every framework item with its source, latest score (and change since the round before) and live evidence
    (`measure`, `value`, `period`; with `evidence_note` when part of the item still rests on the board's own
    evidence) or `no_evidence: true` with `no_evidence_reason`."""
    today = today or datetime.now(UTC).date()
    history = rounds(gate=gate, who=who)
    raw = evidence.figures(gate=gate, who=who, today=today)
    live = evidence.published(raw, today=today)
    out_frameworks = []
    flat = []
    for f in kb.frameworks():
        out_items = []
        for it in f["items"]:
            scored = [(r, r["answers"][it["id"]]) for r in history if it["id"] in r["answers"]]
            latest = previous = None
            if scored:
                r, a = scored[-1]
                latest = {"score": a["score"], "label": SCORES[a["score"]], "evidence": a.get("evidence"),
                          "owner": a.get("owner"), "round": r["label"], "round_id": r["id"],
                          "scored_by": a.get("scored_by"), "scored_at": a.get("scored_at")}
            if len(scored) > 1:
                r, a = scored[-2]
                previous = {"score": a["score"], "round": r["label"]}
            row: dict[str, Any] = {
                "id": it["id"], "framework": f["framework"], "title": it["title"], "question": it.get("question"),
                "source": _source(f, it), "latest_score": latest, "previous_score": previous,
                "change": (latest["score"] - previous["score"]) if latest and previous else None,
                "sub_items": [{"id": s["id"], "level": s.get("level"), "text": s["text"],
                               "wording": s.get("wording", "paraphrased")} for s in it.get("sub_items") or ()],
                "questions": [{"id": q["id"], "text": q["text"], "wording": it.get("wording", "paraphrased"),
                               **({"evidence": list(q["evidence"])} if q.get("evidence") else {})}
                              for q in it.get("questions") or ()]}
            if it.get("most_influential"):
                row["most_influential"] = True
            # the item's evidence, then its questions' own (each measure once)
            wanted = [*(it.get("evidence") or ()),
                      *(m for q in it.get("questions") or () for m in q.get("evidence") or ())]
            ev = [live[m] for m in dict.fromkeys(wanted) if m in live]
            if ev:
                row["evidence"] = ev
                if it.get("evidence_note"):
                    # what the live evidence does not show, and so still rests on the board's own evidence
                    row["evidence_note"] = " ".join(it["evidence_note"].split())
            else:
                row["no_evidence"] = True
                row["no_evidence_reason"] = " ".join((it.get("no_evidence_reason") or (
                    "JoinedUp has no measurement for this item: it rests on the board's own judgement and "
                    "evidence.")).split())
            out_items.append(row)
            flat.append(row)
        out_frameworks.append({"framework": f["framework"], "title": f["title"], "version": f["version"],
                               "source": _source(f, {"wording": "verified"}), "items": out_items})
    computed = datetime.fromtimestamp(raw["computed_at"], UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"generated": _now(), "evidence_computed_at": computed, "questionnaire": {"url": QUESTIONNAIRE_URL, "version": version()},
            "rounds": [{k: r[k] for k in ("id", "label", "status", "authored", "scored")} for r in history],
            "frameworks": out_frameworks, "items": flat, "measures": list(live.values()),
            "suppression": "counts from 1 to JOINEDUP_SUPPRESS_HIGH are shown as '*', others rounded to "
                           "JOINEDUP_SUPPRESS_ROUND; a share with a suppressed part is not published"}
