"""Load the generator's knowledge files (src/joinedup/knowledge/synth/*.yaml) and precompute lookup tables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

KNOWLEDGE_DIR = Path(__file__).resolve().parents[1] / "knowledge" / "synth"

# Classes that must not appear twice on one person's list unless a problem was planted (duplication groups).
GROUP_OF_CLASS = {"ace_inhibitor": "ras_blocker", "arb": "ras_blocker", "anticoagulant_doac": "anticoagulant",
                  "anticoagulant_vka": "anticoagulant"}


def _load(name: str) -> dict[str, Any]:
    with open(KNOWLEDGE_DIR / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@lru_cache(maxsize=1)
def knowledge() -> dict[str, Any]:
    """All knowledge files, parsed, with derived tables (cumulative weights, normalisers, product groups)."""
    k = {name.split(".")[0]: _load(name) for name in
         ("conditions.yaml", "medicines.yaml", "observations.yaml", "population.yaml", "names.yaml",
          "organisations.yaml")}
    cond = k["conditions"]
    bands = cond["bands"]
    grads = cond["deprivation_gradients"]
    order = list(cond["conditions"])
    base: dict[str, tuple[list[float], list[float]]] = {}
    for key in order:
        c = cond["conditions"][key]
        base[key] = (c["female"], c["male"])
    # normaliser so the marginal prevalence stays near the target despite co-occurrence multipliers
    norm: dict[str, list[list[float]]] = {}
    for key in order:
        deps = cond["conditions"][key].get("co_occurs_with") or {}
        table = []
        for sex in (0, 1):
            row = []
            for b in range(len(bands)):
                f = 1.0
                for dep, rr in deps.items():
                    f *= 1.0 + (rr - 1.0) * base[dep][sex][b]
                row.append(f)
            table.append(row)
        norm[key] = table
    k["derived"] = {
        "order": order,
        "band_upper": [hi for _, hi in bands],
        "base": base,
        "norm": norm,
        "deprivation": {key: grads[cond["conditions"][key].get("deprivation", "none")] for key in order},
    }
    products = k["medicines"]["products"]
    for key, p in products.items():
        p["key"] = key
        p["groups"] = sorted({GROUP_OF_CLASS.get(c, c) for c in p["classes"]})
    return k


def cumulative(weights: list[float]) -> list[float]:
    """Cumulative weights normalised to end at 1.0, for bisect-based weighted choice."""
    total = float(sum(weights))
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out
