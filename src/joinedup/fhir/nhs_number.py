"""NHS number: 10 digits with a modulus 11 check digit (NHS Data Dictionary, 'NHS Number')."""

from __future__ import annotations

from typing import Any

from joinedup.fhir import codes

NHS_NUMBER_SYSTEM = codes.NHS_NUMBER


def check_digit(first_nine: str) -> int | None:
    """The modulus 11 check digit for nine digits, or None when the number cannot be valid (10)."""
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1)))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(value: str) -> bool:
    """True when value is a 10-digit NHS number (spaces allowed) whose check digit is right."""
    digits = value.replace(" ", "") if isinstance(value, str) else ""
    if len(digits) != 10 or not digits.isdigit():
        return False
    return check_digit(digits[:9]) == int(digits[9])


def invalid_nhs_numbers(resource: dict[str, Any]) -> list[tuple[int, str]]:
    """Index and value of every NHS-number identifier on a resource that fails the check."""
    bad = []
    for i, ident in enumerate(resource.get("identifier") or []):
        if isinstance(ident, dict) and ident.get("system") == NHS_NUMBER_SYSTEM:
            if not is_valid(str(ident.get("value", ""))):
                bad.append((i, str(ident.get("value", ""))))
    return bad
