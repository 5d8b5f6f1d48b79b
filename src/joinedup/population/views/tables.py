"""Where the population engines (outcome measures, registers) keep their tables while they compute: a DuckDB
connection, or a Spark session's temporary views (each cached when made). The engines write one SQL for both, with
the spellings that differ taken from the dialect (`dialect.py`), over the same ViewDefinitions flattened by the same
compiler; `open_tables("duckdb" | "spark")` gives the one asked for.

A table is made from a SELECT (`create`), from rows computed in Python (`load`), from a CSV file (`load_csv`) or
from the NDJSON files of a resource type through a view (`flatten`); `append` adds a SELECT's rows to a table and
`fetch` reads a SELECT's rows back into Python."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from . import dialect as dialects
from . import runner
from .compiler import CompiledView

ENGINES = ("duckdb", "spark")


class Tables(ABC):
    dialect: dialects.Dialect
    engine = ""

    @abstractmethod
    def declare(self, statement: str) -> None:
        """A setting or a macro of the engine (no rows, no table)."""

    @abstractmethod
    def create(self, name: str, select: str, *, replace: bool = False) -> None:
        ...

    @abstractmethod
    def load(self, name: str, columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
        """A table of rows from Python; column types VARCHAR, INTEGER, DOUBLE or DATE."""

    @abstractmethod
    def load_csv(self, name: str, path: Path, columns: list[str], *, header: bool) -> None:
        """A table of text columns from a CSV file."""

    @abstractmethod
    def append(self, name: str, select: str) -> None:
        ...

    @abstractmethod
    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        ...

    @abstractmethod
    def relation(self, files: list[Path]) -> str:
        """SQL for a relation of the resources in NDJSON files (one column `resource`)."""

    @abstractmethod
    def flatten(self, name: str, compiled: CompiledView, files: list[Path], *, numbered: bool = False) -> None:
        """The table `name` of a view's rows over NDJSON files; `numbered`: each row's position in the files
        readable as `dialect.line_number(table)`."""

    @abstractmethod
    def close(self) -> None:
        ...

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_TYPES = {"VARCHAR": "VARCHAR", "INTEGER": "INTEGER", "DOUBLE": "DOUBLE", "DATE": "DATE"}


class DuckTables(Tables):
    engine = "duckdb"

    def __init__(self) -> None:
        self.dialect = dialects.DuckDB()
        self.con = runner.connect()
        self.con.sql("SET enable_progress_bar = false")

    def declare(self, statement: str) -> None:
        self.con.sql(statement)

    def create(self, name: str, select: str, *, replace: bool = False) -> None:
        self.con.sql(f"CREATE {'OR REPLACE ' if replace else ''}TABLE {name} AS {select}")

    def load(self, name: str, columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
        self.con.sql(f"CREATE TABLE {name} ({', '.join(f'{c} {_TYPES[t]}' for c, t in columns)})")
        if rows:
            self.con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' for _ in columns)})", rows)

    def load_csv(self, name: str, path: Path, columns: list[str], *, header: bool) -> None:
        cols = ", ".join(f"'{c}': 'VARCHAR'" for c in columns)
        self.con.sql(f"CREATE TABLE {name} AS SELECT * FROM read_csv({self.dialect.q(str(path))}, "
                     f"header = {'true' if header else 'false'}, columns = {{{cols}}})")

    def append(self, name: str, select: str) -> None:
        self.con.sql(f"INSERT INTO {name} {select}")

    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        return self.con.sql(select).fetchall()

    def relation(self, files: list[Path]) -> str:
        return runner.ndjson_relation(files)

    def flatten(self, name: str, compiled: CompiledView, files: list[Path], *, numbered: bool = False) -> None:
        try:  # a DuckDB table's rowid is its rows' order of insertion: the files' order
            runner.materialise(self.con, runner.file_queries(compiled, files), name, temp=False)
        except Exception as exc:  # a runtime check of the view failed on this data
            raise runner._run_error(exc) from None

    def close(self) -> None:
        self.con.close()


def open_tables(engine: str = "duckdb") -> Tables:
    if engine == "duckdb":
        return DuckTables()
    if engine == "spark":
        from .spark import SparkTables

        return SparkTables()
    raise ValueError(f"unknown engine {engine!r} ({' or '.join(ENGINES)})")
