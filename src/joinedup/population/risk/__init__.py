"""Risk and burden scores per person and per population: Cambridge Multimorbidity Score, electronic Frailty Index,
Charlson (Quan ICD-10), count of regular medicines and treatment burden (knowledge/population/risk.yaml)."""
