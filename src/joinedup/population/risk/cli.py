"""`joinedup risk person ID|population` (mounted by the main CLI)."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from joinedup.population.registers.cli import DateOpt, Pcn, Practice, _run

app = typer.Typer(help="Risk and burden: Cambridge Multimorbidity Score, eFI, Charlson, regular medicines, contacts.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Risk and burden scores."""


@app.command("person")
def person(patient_id: Annotated[str, typer.Argument(help="Patient id, e.g. p-0000017.")],
           date: DateOpt = None) -> None:
    """Every score for one person, as JSON."""
    from joinedup.fhir.errors import FhirError
    from joinedup.population import service
    from joinedup.terminal import fail

    try:
        service.check_patient_id(patient_id)  # before the database is opened
    except FhirError as exc:
        fail(exc.diagnostics)

    def one(*, gate, who, today):
        try:
            return service.person_risk(gate=gate, who=who, patient_id=patient_id, today=today)
        except FhirError as exc:
            fail(exc.diagnostics)

    typer.echo(orjson.dumps(_run(one, day=date), option=orjson.OPT_INDENT_2).decode())


@app.command("population")
def population(practice: Practice = None, pcn: Pcn = None, date: DateOpt = None) -> None:
    """The distribution of each score by practice (planning: opt-outs excluded, small numbers suppressed)."""
    from joinedup.population import service

    typer.echo(orjson.dumps(_run(service.population_risk, practice=practice, pcn=pcn, day=date),
                            option=orjson.OPT_INDENT_2).decode())
