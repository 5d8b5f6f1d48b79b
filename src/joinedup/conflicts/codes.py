"""Well-formedness of the codes the knowledge files carry: each function returns None for a well-formed code, else
a short reason.

- SNOMED CT identifiers (and dm+d ids, which are SNOMED CT identifiers in the UK edition): 6-18 digits, no leading
  zero, a Verhoeff check digit (the last digit), and a partition identifier (the two digits before it) of a concept:
  `00` (short format, International release) or `10` (long format, an extension's namespace such as the UK's
  1000000). SNOMED CT Technical Implementation Guide, "SCTID Data Type" and "Check-digit" (Verhoeff dihedral D5).
- LOINC codes: digits, a hyphen and a mod 10 check digit (LOINC Users' Guide, "Calculating Mod 10 check digits":
  the Luhn scheme over the digits before the hyphen).
- RxNorm concept unique identifiers (RXCUI): digits only (NLM RxNorm technical documentation).
- ICD-10 codes: a letter, a digit, a digit (or, in ICD-10-CM, a letter: M1A), optionally a dot and up to four more
  characters (WHO ICD-10 / ICD-10-CM code structure); the condition list matches by prefix, so a prefix of such a
  code (a chapter letter "C", a block "O0") is also well formed there.
"""

from __future__ import annotations

import re

# Verhoeff tables: multiplication in the dihedral group D5, the permutation, and the inverse
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
CONCEPT_PARTITIONS = ("00", "10")
_ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
_ICD10_PREFIX = re.compile(r"^[A-Z]([0-9]([0-9A-Z](\.?[0-9A-Z]{1,4})?)?)?$")
_LOINC = re.compile(r"^([0-9]{1,7})-([0-9])$")


def verhoeff_valid(digits: str) -> bool:
    """Whether a digit string (check digit last) passes the Verhoeff check."""
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _D[c][_P[i % 8][int(ch)]]
    return c == 0


def snomed_problem(code: str) -> str | None:
    """Why `code` is not a well-formed SNOMED CT concept identifier (None when it is)."""
    if not code.isdigit():
        return "not all digits"
    if not 6 <= len(code) <= 18:
        return f"{len(code)} digits (an SCTID has 6-18)"
    if code.startswith("0"):
        return "leading zero"
    partition = code[-3:-1]
    if partition not in CONCEPT_PARTITIONS:
        return f"partition {partition} is not a concept partition (00 or 10)"
    if not verhoeff_valid(code):
        return "Verhoeff check digit does not match"
    return None


def dmd_problem(code: str) -> str | None:
    """Why `code` is not a well-formed dm+d identifier (a SNOMED CT concept identifier)."""
    return snomed_problem(code)


def loinc_check_digit(number: str) -> int:
    """The LOINC mod 10 check digit for the digits before the hyphen."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return (10 - total % 10) % 10


def loinc_problem(code: str) -> str | None:
    """Why `code` is not a well-formed LOINC code (None when it is)."""
    m = _LOINC.match(code)
    if not m:
        return "not of the form NNNNN-N"
    if loinc_check_digit(m.group(1)) != int(m.group(2)):
        return f"check digit should be {loinc_check_digit(m.group(1))}"
    return None


def rxnorm_problem(code: str) -> str | None:
    """Why `code` is not a well-formed RxNorm RXCUI (None when it is)."""
    if not code.isdigit() or code.startswith("0") or len(code) > 8:
        return "an RXCUI is a number of up to 8 digits"
    return None


def icd10_problem(code: str) -> str | None:
    """Why `code` is not a well-formed ICD-10 code (None when it is)."""
    if not _ICD10.match(code):
        return "not an ICD-10 code (letter, two characters, optional .xxxx)"
    return None


def icd10_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` is not the start of a well-formed ICD-10 code (None when it is)."""
    if not _ICD10_PREFIX.match(prefix):
        return "not an ICD-10 code or code prefix (letter, digit, character, optional .xxxx)"
    return None
