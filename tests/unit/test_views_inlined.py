"""The worker's set-wise reads name the tables as their views read them (`final_rows`): this holds
the views to what those reads assume, so a view that changes its definition fails here first."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sinks.auxiliary import AUX_OBJECTS, AUX_TABLE, AUX_VIEW
from sinks.clickhouse import DATUM_VIEW, RAW_OBJECTS, RAW_TABLE, final_rows
from sinks.ddl import SchemaObject, View
from sinks.rollups import ROLLUP_OBJECTS, ROLLUP_TABLE, ROLLUP_VIEW


def view(objects: Sequence[SchemaObject], name: str) -> View:
    (found,) = [o for o in objects if isinstance(o, View) and o.name == name]
    return found


@pytest.mark.parametrize(
    ("objects", "name", "table", "live"),
    [
        (RAW_OBJECTS, DATUM_VIEW, RAW_TABLE, False),
        (ROLLUP_OBJECTS, ROLLUP_VIEW, ROLLUP_TABLE, True),
        (AUX_OBJECTS, AUX_VIEW, AUX_TABLE, True),
    ],
)
def test_each_view_is_its_table_final_and_live_rows_only_where_read_so(
    objects: Sequence[SchemaObject], name: str, table: str, live: bool
) -> None:
    v = view(objects, name)
    assert v.table == table
    # the lines after the column list: the FROM, and the WHERE if any
    clauses = [line for line in v.select if line.startswith(("FROM", "WHERE"))]
    assert clauses == ["FROM {table} FINAL", *(["WHERE deleted = 0"] if live else [])]
    source, condition = final_rows(table, "x", live=live)
    assert source == f"{table} AS x FINAL"
    assert condition == (" AND x.deleted = 0" if live else "")
