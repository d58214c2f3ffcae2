"""The CSV and table halves of the csv_import example, on real files and real databases."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from sqlalchemy import select

from dxf_celery.context import Context
from dxf_celery.examples import csvdata, csvtable
from dxf_celery.examples.csvdata import GENERATED_COLUMNS, Chunk, Column, CSVFormatError


def test_generate_csv_is_deterministic_and_parses_with_the_csv_module(tmp_path: Path) -> None:
    a = csvdata.generate_csv(tmp_path / "a.csv", 500, seed=7)
    b = csvdata.generate_csv(tmp_path / "b.csv", 500, seed=7)
    c = csvdata.generate_csv(tmp_path / "c.csv", 500, seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with a.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [col.name for col in GENERATED_COLUMNS]
    assert len(rows) == 501
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 501))
    assert any("," in r[1] for r in rows[1:]) and any('"' in r[1] for r in rows[1:])


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 10_000])
def test_chunks_cover_the_data_exactly_on_line_starts(tmp_path: Path, chunk_rows: int) -> None:
    path = csvdata.generate_csv(tmp_path / "d.csv", 1000, seed=1)
    data = path.read_bytes()
    header_len = data.index(b"\n") + 1
    chunks = csvdata.plan_chunks(path, chunk_rows)
    assert chunks[0].offset == header_len
    assert [c.ordinal for c in chunks] == list(range(1, len(chunks) + 1))
    for a, b in itertools.pairwise(chunks):
        assert a.offset + a.length == b.offset
        assert data[b.offset - 1 : b.offset] == b"\n"
    assert chunks[-1].offset + chunks[-1].length == len(data)
    rows = [r for c in chunks for r in csvdata.read_chunk(path, c, GENERATED_COLUMNS)]
    assert [r[0] for r in rows] == list(range(1, 1001))
    if chunk_rows == 100:
        assert 5 <= len(chunks) <= 20  # sized from the average line, not exact


def test_checksum_is_order_independent_and_composes(tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "d.csv", 300, seed=3)
    chunks = csvdata.plan_chunks(path, 50)
    per_chunk = [csvdata.stats_of(csvdata.read_chunk(path, c, GENERATED_COLUMNS)) for c in chunks]
    everything = Chunk(1, chunks[0].offset, path.stat().st_size - chunks[0].offset)
    whole = csvdata.stats_of(csvdata.read_chunk(path, everything, GENERATED_COLUMNS))
    assert csvdata.combine(per_chunk) == whole
    rows = list(csvdata.read_chunk(path, chunks[0], GENERATED_COLUMNS))
    assert csvdata.stats_of(list(reversed(rows))) == csvdata.stats_of(rows)
    changed = [list(r) for r in rows]
    changed[3][3] = float(changed[3][3] or 0) + 0.01  # type: ignore[arg-type]
    assert csvdata.stats_of(changed) != csvdata.stats_of(rows)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(CSVFormatError, match="no header line"):
        csvdata.plan_chunks(empty, 10)
    header_only = tmp_path / "h.csv"
    header_only.write_bytes(b"a,b")
    assert csvdata.plan_chunks(header_only, 10) == []
    assert [c.name for c in csvdata.resolve_columns(header_only, None)] == ["a", "b"]


def test_bad_lines_give_errors_that_name_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    good = b"id,name\n1,a\n2,b\n"
    cols = [Column("id", "int"), Column("name")]
    for bad, pattern in [
        (b"3\n", r"has 1 fields, expected 2"),
        (b"x,c\n", r"column 'id' must be int, got 'x'"),
        (b'4,"unterminated\n', r"not valid CSV"),
        (b"5,\xff\xfe\n", r"not UTF-8"),
    ]:
        path.write_bytes(good + bad)
        chunk = Chunk(1, 8, len(good) - 8 + len(bad))
        with pytest.raises(CSVFormatError, match=pattern) as info:
            list(csvdata.read_chunk(path, chunk, cols))
        assert f"byte offset {len(good)}" in str(info.value)
    with pytest.raises(CSVFormatError, match="file changed"):
        list(csvdata.read_chunk(path, Chunk(1, 8, 10_000), cols))
    with pytest.raises(CSVFormatError, match="check csv_path"):
        csvdata.plan_chunks(tmp_path / "missing.csv", 10)


def test_declared_columns_must_match_the_header(tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "d.csv", 3)
    assert csvdata.resolve_columns(path, GENERATED_COLUMNS) == list(GENERATED_COLUMNS)
    with pytest.raises(CSVFormatError, match="make the task's 'columns' match the header"):
        csvdata.resolve_columns(path, [Column("id", "int")])
    with pytest.raises(CSVFormatError, match="use one of"):
        Column("x", "decimal")
    with pytest.raises(CSVFormatError, match="cannot be a SQL column"):
        Column("drop table;")


def test_replace_chunk_is_idempotent_and_cancellable(db_url: str, tmp_path: Path) -> None:
    path = csvdata.generate_csv(tmp_path / "d.csv", 2500, seed=5)
    chunks = csvdata.plan_chunks(path, 1000)
    table = csvtable.build_table("imp_rows", GENERATED_COLUMNS)
    target = csvtable.target_for(db_url)
    try:
        with target.write.begin() as conn:
            table.drop(conn, checkfirst=True)
        csvtable.ensure_table(target.write, table)
        csvtable.ensure_table(target.write, table)  # exists with the same columns: fine
        ctx = Context.background()
        expected = []
        for c in chunks:
            rows = list(csvdata.read_chunk(path, c, GENERATED_COLUMNS))
            expected.append(csvdata.stats_of(rows))
            assert csvtable.replace_chunk(target.write, table, 42, c.ordinal, rows, ctx) == len(rows)
            # Running the same chunk again replaces it: same rows, same checksum.
            csvtable.replace_chunk(target.write, table, 42, c.ordinal, rows, ctx)
            assert csvtable.chunk_stats(target.read, table, 42, c.ordinal) == expected[-1]
        assert csvtable.count_task_rows(target.read, table, 42) == 2500

        cancelled = Context.background()
        cancelled.cancel(RuntimeError("stop"))
        rows = list(csvdata.read_chunk(path, chunks[0], GENERATED_COLUMNS))
        with pytest.raises(RuntimeError, match="stop"):
            csvtable.replace_chunk(target.write, table, 42, chunks[0].ordinal, rows, cancelled)
        # The cancelled transaction rolled back: the chunk still holds its rows.
        assert csvtable.chunk_stats(target.read, table, 42, chunks[0].ordinal) == expected[0]

        with target.read.connect() as conn:
            amounts = [r[0] for r in conn.execute(select(table.c.amount).limit(5))]
        assert all(isinstance(a, float) for a in amounts)
        assert csvtable.delete_task_rows(target.write, table, 42) == 2500
        assert csvtable.count_task_rows(target.read, table, 42) == 0

        other = csvtable.build_table("imp_rows", [Column("a")])
        with pytest.raises(csvtable.TargetTableError, match="pick another table name"):
            csvtable.ensure_table(target.write, other)
        with target.write.begin() as conn:
            table.drop(conn)
    finally:
        csvtable.dispose_targets()
