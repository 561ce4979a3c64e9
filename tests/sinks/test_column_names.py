"""Every column name of every table is usable unquoted: DuckDB parses
`SELECT name FROM t ORDER BY name` (and max(name), WHERE name IS NOT NULL), and
no name is a reserved word of DuckDB, Spark SQL (ANSI mode) or Polars SQL.
(`at`, the old timestamp column of `_deadletters`/`_deletions`, was DuckDB 2's
parse error.)"""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from bsky_backfill.engine.refresh import DELETION_SCHEMA
from bsky_backfill.records.schema import DEAD_LETTER_SCHEMA, EXTRA_FIELDS, schema_for
from bsky_backfill.sinks.provenance import stamp
from bsky_backfill.sinks.superseded import SUPERSEDED_SCHEMA


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Spark SQL keywords reserved under ANSI mode (spark.sql.ansi.enabled, the default
# since Spark 4), from the keyword table of the Spark SQL reference, plus those
# reserved in the SQL:2016 standard that Spark lists as non-reserved but rejects
# as bare identifiers in some positions.
SPARK_RESERVED = _words(
    """all and any anti any_value array as asc authorization between both by case cast
    check collate column constraint create cross cube current current_date
    current_time current_timestamp current_user default delete desc describe
    distinct drop else end escape except exists false fetch filter for foreign from
    full function global grant group grouping having in inner insert intersect
    interval into is join lateral leading left like limit local minus natural not
    null of offset on only or order outer overlaps partition primary range
    references right rollup row rows select semi session_user set some start table
    tablesample then time to trailing true truncate union unique unknown update user
    using values when where window with"""
)


def _polars_accepts(table: pa.Table, name: str) -> None:
    """Polars' own SQL engine runs the same query unquoted (a parse error raises)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    with pl.SQLContext(t=frame, eager=True) as ctx:
        ctx.execute(f"SELECT {name} FROM t ORDER BY {name}")


def _record_schema(collection: str) -> pa.Schema:
    """A record table as the sink writes it: the collection's columns plus provenance."""
    empty = schema_for(collection).empty_table()
    return stamp(empty, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).schema


TABLES: dict[str, pa.Schema] = {
    **{c: _record_schema(c) for c in [*EXTRA_FIELDS, "com.example.other"]},
    "_deadletters": DEAD_LETTER_SCHEMA,
    "_deletions": DELETION_SCHEMA,
    "_superseded": SUPERSEDED_SCHEMA,
}


def test_the_tables_under_test_have_provenance() -> None:
    for name, schema in TABLES.items():
        if not name.startswith("_"):
            assert {"rev", "fetched_at"} <= set(schema.names), name
    assert "failed_at" in DEAD_LETTER_SCHEMA.names and "at" not in DEAD_LETTER_SCHEMA.names
    assert "detected_at" in DELETION_SCHEMA.names and "at" not in DELETION_SCHEMA.names


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_column_name_is_accepted_unquoted(table: str) -> None:
    schema = TABLES[table]
    con = duckdb.connect()
    t = schema.empty_table()
    con.register("t", t)
    reserved = {
        name
        for (name,) in con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'"
        ).fetchall()
    }
    assert "select" in reserved and "order" in reserved  # the catalogue is what we think
    for name in schema.names:
        assert name == name.lower() and name.isidentifier(), name
        assert name not in reserved, f"{table}.{name} is a DuckDB keyword"
        assert name not in SPARK_RESERVED, f"{table}.{name} is reserved in Spark SQL"
        _polars_accepts(t, name)
        for sql in (
            f"SELECT {name} FROM t ORDER BY {name}",
            f"SELECT max({name}), count({name}) FROM t WHERE {name} IS NOT NULL",
            f"SELECT {name}, count(*) FROM t GROUP BY {name}",
        ):
            con.execute(sql).fetchall()  # a parse error fails the test
    con.close()


def test_a_reserved_name_would_be_caught() -> None:
    """The check above can fail: `at` (the old name) is refused unquoted by DuckDB."""
    con = duckdb.connect()
    con.register("t", pa.table({"at": pa.array([1])}))
    with pytest.raises(duckdb.ParserException):
        con.execute("SELECT did, at FROM t ORDER BY at")
    con.close()


def test_polars_would_refuse_a_keyword() -> None:
    """The Polars check can fail too: a keyword as a column name does not parse."""
    with pytest.raises(pl.exceptions.PolarsError):
        _polars_accepts(pa.table({"from": pa.array([1])}), "from")
