"""FHIR errors carried as exceptions and rendered as OperationOutcome."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """An error with an HTTP status and an OperationOutcome issue list."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str = "invalid",
        expression: list[str] | None = None,
        severity: str = "error",
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = expression
        self.issues = issues or [issue]

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome resource for this error."""
        return operation_outcome(self.issues)


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap issues in an OperationOutcome."""
    return {"resourceType": "OperationOutcome", "issue": issues}


def info_outcome(text: str) -> dict[str, Any]:
    """An informational OperationOutcome (e.g. after a delete)."""
    return operation_outcome([{"severity": "information", "code": "informational", "diagnostics": text}])


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, f"{resource_type}/{resource_id} is not known", code="not-found")


def gone(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(410, f"{resource_type}/{resource_id} has been deleted", code="deleted")


def forbidden(reason: str) -> FhirError:
    return FhirError(403, reason, code="forbidden")
