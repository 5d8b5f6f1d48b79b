"""`joinedup knowledge list|show|check`: inspect and validate the conflict engine's knowledge (mounted by the main
CLI). Every command reads the packaged knowledge directory, or the one `--dir` names (same layout, e.g. a copy with
a proposed change under review)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .catalogue import KnowledgeFileError, render_json, render_markdown, render_rule, render_text, rule_entries
from .knowledge import knowledge_root

app = typer.Typer(help="The conflict engine's knowledge: list and show rules, check every rule file.",
                  no_args_is_help=True, add_completion=False)


class ListFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


DirOption = Annotated[Path | None, typer.Option("--dir", help="knowledge directory to read (default: the packaged "
                                                               "src/joinedup/knowledge)")]


@app.callback()
def _group() -> None:
    """The conflict engine's knowledge."""


def _root(directory: Path | None) -> Path:
    if directory is None:
        return Path(str(knowledge_root()))
    if not directory.is_dir():
        typer.echo(f"error: --dir {directory} is not a directory", err=True)
        raise typer.Exit(code=2)
    return directory


def _entries(directory: Path | None) -> list:
    try:
        return rule_entries(_root(directory))
    except KnowledgeFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Option("--kind", help="only rules of this kind (drug-drug, drug-disease, "
                                                            "drug-result, dose, omission, ...)")] = None,
    format: Annotated[ListFormat, typer.Option("--format", "-f", help="text, json or markdown (the reference page)",
                                               case_sensitive=False)] = ListFormat.text,
    directory: DirOption = None,
) -> None:
    """List every rule (id, kind, severity, criterion, summary)."""
    entries = _entries(directory)
    if kind is not None:
        kinds = sorted({e.kind for e in entries})
        if kind not in kinds:
            typer.echo(f"error: unknown kind {kind!r} (known: {', '.join(kinds)})", err=True)
            raise typer.Exit(code=2)
        entries = [e for e in entries if e.kind == kind]
    if format == ListFormat.json:
        typer.echo(render_json(entries))
    elif format == ListFormat.markdown:
        from .catalogue import read_yaml

        version = str(read_yaml(_root(directory), "conflicts/rules.yaml").get("version", ""))
        typer.echo(render_markdown(entries, version=version), nl=False)
    else:
        typer.echo(render_text(entries))


@app.command("show")
def show_command(
    rule: Annotated[str, typer.Argument(help="rule id, e.g. dd-nsaid-anticoagulant")],
    directory: DirOption = None,
) -> None:
    """Everything about one rule: what it detects, what it uses, its sources, review date and vignettes."""
    entries = _entries(directory)
    found = next((e for e in entries if e.id == rule), None)
    if found is None:
        near = [e.id for e in entries if rule.lower() in e.id.lower()][:5]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        typer.echo(f"error: no rule {rule!r}{hint}", err=True)
        raise typer.Exit(code=2)
    typer.echo(render_rule(found))


@app.command("check")
def check_command(
    directory: DirOption = None,
    no_vignettes: Annotated[bool, typer.Option("--no-vignettes", help="do not run the vignettes through "
                                                                      "detection (static checks only)")] = False,
) -> None:
    """Validate every rule file: sources, code formats, defined classes, vignettes per rule, unverified severity.
    Prints one line per problem and exits 2 when there is any."""
    from .knowledge_check import check_knowledge

    root = _root(directory)
    problems = check_knowledge(root, run_vignettes=not no_vignettes)
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        typer.echo(f"error: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {root}", err=True)
        raise typer.Exit(code=2)
    n = len(rule_entries(root))
    typer.echo(f"ok: {n} rules checked (sources, codes, classes, vignettes{'' if no_vignettes else ' run'})")
