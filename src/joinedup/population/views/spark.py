"""Run the same ViewDefinitions on Apache Spark (pyspark, local mode here; a cluster's master URL from
JOINEDUP_SPARK_MASTER), for populations beyond one machine.

The view is compiled with the Spark dialect (`compiler.py`: get_json_object / from_json / transform, rows as arrays
of structs expanded by LATERAL VIEW inline) and run over NDJSON read as text, one resource per line. One Spark
session serves the process (it takes seconds to start).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import orjson

from .compiler import CompiledView, ViewError, compile_view
from .conformance import CaseResult, compare
from .runner import OUTPUT_FORMATS, Result, ndjson_files, output_format

_lock = threading.Lock()
_session = None


def session(*, small: bool = False):
    """The process's Spark session (created on first use; `small` tunes it for many queries on tiny data)."""
    global _session
    with _lock:
        if _session is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise ViewError("--engine spark needs pyspark (pip install 'joinedup[analytics]') and Java 17") \
                    from None
            from joinedup import config

            master = config.value("SPARK_MASTER")
            builder = (SparkSession.builder.master(master).appName("joinedup-views")
                       .config("spark.ui.enabled", "false").config("spark.sql.ansi.enabled", "false")
                       .config("spark.sql.shuffle.partitions", "4")
                       .config("spark.driver.memory", config.value("SPARK_DRIVER_MEMORY"))
                       .config("spark.sql.session.timeZone", "UTC"))
            if small:  # tests and the conformance suite: tiny data, where planning dominates
                builder = (builder.config("spark.sql.codegen.wholeStage", "false")
                           .config("spark.sql.shuffle.partitions", "1").config("spark.default.parallelism", "1")
                           .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
                           .config("spark.sql.adaptive.enabled", "false"))
            try:  # one session per process serves record linkage too: its string-similarity jar is static config
                from splink.backends.spark import similarity_jar_location

                builder = builder.config("spark.jars", similarity_jar_location())
            except ImportError:
                pass
            try:
                _session = builder.getOrCreate()
            except Exception as exc:  # Java missing or unusable: one line
                raise ViewError(f"cannot start Spark ({master}): {' '.join(str(exc).split())[:300]}") from None
            _session.sparkContext.setLogLevel("ERROR")
        return _session


def _run_error(exc: Exception) -> ViewError:
    text = " ".join(str(exc).split())
    m = re.search(r"\[USER_RAISED_EXCEPTION\] (.*?) SQLSTATE", text)
    if m:
        text = m.group(1)
    return ViewError(f"running the view on Spark: {text[:500]}")


def _frame_of_resources(resources: list[dict]):
    spark = session()
    rows = [(orjson.dumps(r).decode(),) for r in resources]
    return spark.createDataFrame(rows, "resource string")


def _execute(compiled: CompiledView, frame) -> Result:
    spark = session()
    name = f"_src_{abs(hash(id(frame)))}"
    frame.createOrReplaceTempView(name)
    try:
        rows = spark.sql(compiled.query(name)).collect()
    except Exception as exc:  # AnalysisException, a raise_error() of a runtime check, Py4J errors
        raise _run_error(exc) from None
    finally:
        spark.catalog.dropTempView(name)
    return Result([c.name for c in compiled.columns], [_plain(tuple(r)) for r in rows])


def _plain(row: tuple) -> tuple:
    return tuple(list(v) if isinstance(v, list | tuple) else v for v in row)


def run_on_resources(view: Any, resources: list[dict]) -> Result:
    return _execute(compile_view(view, "spark"), _frame_of_resources(resources))


def run_suite(tests_dir: Path) -> list[CaseResult]:
    """Every case of the suite on Spark. All the cases that should give rows run as one query (a UNION ALL of each
    case's rows as JSON, tagged with the case), as Spark spends far longer planning a query than running it on a
    few resources; a case expecting an error runs on its own, and so does every case if the batch fails."""
    files = sorted(tests_dir.glob("*.json"))
    if not files:
        raise ViewError(f"{tests_dir}: no test files (*.json)")
    spark = session(small=True)
    results: dict[tuple[int, int], CaseResult] = {}
    batch: dict[tuple[int, int], tuple[CompiledView, str]] = {}
    suites, frames = [], []
    for n, f in enumerate(files):
        suite = orjson.loads(f.read_bytes())
        suites.append((f.name, suite.get("tests", [])))
        frame = _frame_of_resources(suite.get("resources", [])).coalesce(1).cache()
        frames.append(frame)
        view_name = f"_suite_{n}"
        frame.createOrReplaceTempView(view_name)
        for i, test in enumerate(suite.get("tests", [])):
            title, tags = test.get("title", ""), tuple(test.get("tags", []))
            try:
                compiled = compile_view(test.get("view"), "spark")
            except ViewError as exc:
                expected = bool(test.get("expectError"))
                results[(n, i)] = CaseResult(f.name, title, tags, expected, None if expected else f"error: {exc}")
                continue
            if test.get("expectError"):
                results[(n, i)] = run_case(f.name, test, frame)
            else:
                batch[(n, i)] = (compiled, view_name)
    try:
        rows = _run_batch(batch) if batch else {}
    except Exception:  # noqa: BLE001 - a case failed at run time: run them one by one for their own results
        rows = None
    for (n, i), (compiled, _) in batch.items():
        file, tests = suites[n]
        test = tests[i]
        if rows is None:
            results[(n, i)] = run_case(file, test, frames[n])
            continue
        reason = compare(test, Result([c.name for c in compiled.columns], rows.get((n, i), [])))
        results[(n, i)] = CaseResult(file, test.get("title", ""), tuple(test.get("tags", [])), reason is None,
                                     reason)
    for n, frame in enumerate(frames):
        spark.catalog.dropTempView(f"_suite_{n}")
        frame.unpersist()
    return [results[key] for key in sorted(results)]


def _run_batch(batch: dict[tuple[int, int], tuple[CompiledView, str]]) -> dict[tuple[int, int], list[tuple]]:
    parts = []
    for (n, i), (compiled, view_name) in batch.items():
        fields = ", ".join(f"'{c.name}', `{c.name}`" for c in compiled.columns)
        parts.append(f"SELECT {n} AS _file, {i} AS _case, to_json(named_struct({fields})) AS _row FROM "
                     f"({compiled.query(view_name)}) AS _q_{n}_{i}")
    got: dict[tuple[int, int], list[tuple]] = {}
    for r in session().sql(" UNION ALL ".join(parts)).collect():
        key = (r["_file"], r["_case"])
        data = orjson.loads(r["_row"])
        got.setdefault(key, []).append(tuple(data.get(c.name) for c in batch[key][0].columns))
    return got


def run_case(file: str, test: dict, frame) -> CaseResult:
    name = test.get("title", "")
    tags = tuple(test.get("tags", []))
    try:
        result = _execute(compile_view(test.get("view"), "spark"), frame)
    except ViewError as exc:
        if test.get("expectError"):
            return CaseResult(file, name, tags, True)
        return CaseResult(file, name, tags, False, f"error: {exc}")
    if test.get("expectError"):
        return CaseResult(file, name, tags, False, "expected an error, the view ran")
    reason = compare(test, result)
    return CaseResult(file, name, tags, reason is None, reason)


def run_view_on_files(view: Any, source: Path, out: Path) -> tuple[CompiledView, int]:
    """Run a view over NDJSON files on Spark and write one output file (.csv, .parquet or .ndjson)."""
    compiled = compile_view(view, "spark")
    fmt = output_format(out)
    files = ndjson_files(source, compiled.resource)
    spark = session()
    if files:
        frame = spark.read.text([str(p) for p in files]).withColumnRenamed("value", "resource")
        frame = frame.where("trim(resource) <> ''")
    else:
        frame = spark.createDataFrame([], "resource string")
    name = "_view_source"
    frame.createOrReplaceTempView(name)
    try:
        rows = [_plain(tuple(r)) for r in spark.sql(compiled.query(name)).collect()]
    except Exception as exc:
        raise _run_error(exc) from None
    finally:
        spark.catalog.dropTempView(name)
    _write_rows(compiled, rows, out, fmt)
    return compiled, len(rows)


_DUCK_TYPES = {"STRING": "VARCHAR", "BOOLEAN": "BOOLEAN", "INTEGER": "INTEGER", "BIGINT": "BIGINT",
               "DOUBLE": "DOUBLE"}


def _write_rows(compiled: CompiledView, rows: list[tuple], out: Path, fmt: str) -> None:
    """Write the collected rows with DuckDB, typed as the view's columns, so that a file written from either
    engine is the same."""
    import pandas as pd

    from .runner import connect

    assert fmt in OUTPUT_FORMATS.values()
    names = [c.name for c in compiled.columns]
    frame = pd.DataFrame.from_records(rows, columns=names).astype(object)
    frame = frame.where(frame.notna(), None)
    casts = []
    for c in compiled.columns:
        base = _DUCK_TYPES.get(c.sql_type.removesuffix("[]"), "VARCHAR")
        casts.append(f'CAST("{c.name}" AS {base}{"[]" if c.collection else ""}) AS "{c.name}"')
    con = connect()
    try:
        con.register("_spark_rows", frame)
        options = {"csv": "FORMAT csv, HEADER true", "parquet": "FORMAT parquet", "ndjson": "FORMAT json"}[fmt]
        tmp = out.with_name(f".{out.name}.partial{out.suffix}")
        path = "'" + str(tmp).replace("'", "''") + "'"
        con.sql(f"COPY (SELECT {', '.join(casts)} FROM _spark_rows) TO {path} ({options})")
        os.replace(tmp, out)
    finally:
        con.close()


_SPARK_TYPES = {"VARCHAR": "string", "INTEGER": "int", "DOUBLE": "double", "DATE": "date"}
_INLINE_ROWS = 2000  # a table loaded from Python with at most this many rows is written into the SQL


class SparkTables:
    """The population engines' tables on Spark (`tables.Tables`): temporary views of a session of their own (so two
    computations never see each other's tables; the Spark context and its JVM are shared), each checkpointed as it
    is made (`localCheckpoint`: computed once and kept by the executors, however often it is read, and its plan cut
    to the stored rows, so that later queries neither re-plan nor print the whole lineage of the tables before it),
    except a small table loaded from Python, written into the SQL as literal rows (a local relation: no Spark job);
    `close` drops them."""

    engine = "spark"

    def __init__(self) -> None:
        from .dialect import Spark

        self.dialect = Spark()
        self.spark = session().newSession()
        for key, value in (("spark.sql.session.timeZone", "UTC"), ("spark.sql.ansi.enabled", "false"),
                           ("spark.sql.maxPlanStringLength", "65536")):
            self.spark.conf.set(key, value)
        self._cached: list[str] = []
        self._frames: list[Any] = []
        self._parts: dict[str, list[str]] = {}
        self._n = 0

    def __enter__(self) -> SparkTables:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def declare(self, statement: str) -> None:
        self._sql(statement)

    def _sql(self, statement: str):
        try:
            return self.spark.sql(statement)
        except Exception as exc:  # AnalysisException, a raise_error() of a view's runtime check, Py4J errors
            raise _run_error(exc) from None

    def _cache(self, name: str, frame) -> None:
        try:
            frame = frame.localCheckpoint(eager=True)  # made now: each table's time is its own
        except Exception as exc:
            raise _run_error(exc) from None
        frame.createOrReplaceTempView(name)
        self._frames.append(frame)
        if name not in self._cached:
            self._cached.append(name)

    def create(self, name: str, select: str, *, replace: bool = False) -> None:
        self._cache(name, self._sql(select))

    def load(self, name: str, columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
        if len(rows) <= _INLINE_ROWS:  # rows written into the statement: a local relation, no Spark job
            self._plain_view(name, self.spark.sql(self._inline(columns, rows)))
            return
        schema = ", ".join(f"{c} {_SPARK_TYPES[t]}" for c, t in columns)
        self._cache(name, self.spark.createDataFrame(list(rows), schema))

    def _inline(self, columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> str:
        """A SELECT of the rows (typed as the columns) written as literals."""
        def literal(value: Any, kind: str) -> str:
            if value is None:
                return f"CAST(NULL AS {_SPARK_TYPES[kind]})"
            if kind == "VARCHAR":
                return self.dialect.q(str(value))
            if kind == "INTEGER":
                return f"CAST({int(value)} AS INT)"
            if kind == "DOUBLE":
                return f"CAST({self.dialect.q(repr(float(value)))} AS DOUBLE)"
            return f"DATE {self.dialect.q(value.isoformat())}"

        cast = ", ".join(f"CAST(_c{i} AS {_SPARK_TYPES[t]}) AS `{c}`" for i, (c, t) in enumerate(columns))
        if not rows:
            nulls = ", ".join(f"CAST(NULL AS {_SPARK_TYPES[t]}) AS _c{i}" for i, (_c, t) in enumerate(columns))
            return f"SELECT {cast} FROM (SELECT {nulls}) AS _t WHERE false"
        values = ", ".join("(" + ", ".join(literal(v, t) for v, (_c, t) in zip(row, columns)) + ")" for row in rows)
        names = ", ".join(f"_c{i}" for i in range(len(columns)))
        return f"SELECT {cast} FROM VALUES {values} AS _t({names})"

    def _plain_view(self, name: str, frame) -> None:
        frame.createOrReplaceTempView(name)
        if name not in self._cached:
            self._cached.append(name)

    def load_csv(self, name: str, path: Path, columns: list[str], *, header: bool) -> None:
        schema = ", ".join(f"{c} string" for c in columns)
        self._cache(name, self.spark.read.csv(str(path), header=header, schema=schema))

    def append(self, name: str, select: str) -> None:
        """The rows of `select` added to `name`: a part made on its own, `name` the union of its parts."""
        parts = self._parts.setdefault(name, [f"{name}__0"])
        if len(parts) == 1:  # the table as first made is its first part
            self.spark.table(name).createOrReplaceTempView(parts[0])
            self._cached.append(parts[0])
        part = f"{name}__{len(parts)}"
        self._cache(part, self._sql(select))
        parts.append(part)
        self.spark.sql(" UNION ALL ".join(f"SELECT * FROM {p}" for p in parts)).createOrReplaceTempView(name)

    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self._sql(select).collect()]
        except ViewError:
            raise
        except Exception as exc:
            raise _run_error(exc) from None

    def relation(self, files: list[Path]) -> str:
        self._n += 1
        name = f"_resources_{self._n}"
        if files:
            frame = self.spark.read.text([str(p) for p in files]).withColumnRenamed("value", "resource")
            frame = frame.where("trim(resource) <> ''")
        else:
            frame = self.spark.createDataFrame([], "resource string")
        frame.createOrReplaceTempView(name)
        return name

    def flatten(self, name: str, compiled: CompiledView, files: list[Path], *, numbered: bool = False) -> None:
        query = compiled.query(self.relation(files))
        if numbered:  # the order Spark read the lines in (files in the order it split them)
            query = f"SELECT _v.*, monotonically_increasing_id() AS _line FROM ({query}) AS _v"
        self._cache(name, self._sql(query))

    def close(self) -> None:
        for name in self._cached:
            self.spark.catalog.dropTempView(name)
        for frame in self._frames:  # the checkpointed rows, freed now rather than when the JVM collects them
            try:
                frame.unpersist()
            except Exception:  # noqa: BLE001 - the session is going away; nothing else to free
                pass
        self._cached, self._frames = [], []
