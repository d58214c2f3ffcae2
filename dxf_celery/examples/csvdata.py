"""CSV side of the import example: generate a file, cut it into byte ranges, parse a range.

Chunks are planned from byte sizes, never by reading the whole file, the way a distributed
importer plans a 100 GB file: a boundary is a target offset moved forward to the next line
start. One record per line is therefore required (no newline inside a quoted field); a
record cut by a boundary is reported as a format error instead of being imported half.

Checksums are order independent (a sum of per-row digests modulo 2**64), so a chunk's
checksum can be recomputed from the table in any row order and the task's checksum is the
sum of its chunks' checksums.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dxf_celery.errors import DXFError

#: Column types the importer understands, with the Python type a cell becomes.
COLUMN_TYPES = ("int", "float", "text")
#: Rows whose digest is summed modulo this number.
CHECKSUM_MODULUS = 1 << 64
#: Bytes sampled from the start of the file to estimate the average line length.
SAMPLE_BYTES = 64 * 1024

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

Value = int | float | str | None


class CSVFormatError(DXFError):
    """The CSV cannot be imported as it is; the message names the file, the byte offset and the fix."""


@dataclass(frozen=True)
class Column:
    """One CSV column and the SQL type its cells are stored as."""

    name: str
    type: str = "text"

    def __post_init__(self) -> None:
        if not _IDENT.match(self.name) or self.name.lower().startswith("_dxf"):
            raise CSVFormatError(
                f"column name {self.name!r} cannot be a SQL column: use letters, digits and _ "
                f"(not starting with a digit or _dxf, at most 63 characters)"
            )
        if self.type not in COLUMN_TYPES:
            raise CSVFormatError(f"column {self.name!r} has type {self.type!r}; use one of {', '.join(COLUMN_TYPES)}")


@dataclass(frozen=True)
class Chunk:
    """A byte range of the CSV holding whole lines; ``ordinal`` is 1-based."""

    ordinal: int
    offset: int
    length: int


@dataclass(frozen=True)
class ChunkStats:
    """What a chunk holds: its row count and order-independent checksum."""

    rows: int
    checksum: int

    @property
    def checksum_hex(self) -> str:
        return f"{self.checksum:016x}"


def is_identifier(name: str) -> bool:
    """True when ``name`` is safe as a SQL table or column name."""
    return bool(_IDENT.match(name))


#: Columns written by :func:`generate_csv`.
GENERATED_COLUMNS = (
    Column("id", "int"),
    Column("name", "text"),
    Column("email", "text"),
    Column("amount", "float"),
    Column("quantity", "int"),
    Column("city", "text"),
)

_FIRST = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger", "Radia")
_LAST = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen", "Dijkstra", "Perlman")
_CITIES = ("Beijing", "Berlin", "Lagos", "Lima", "Osaka", "Paris", "Pune", "Quito", "Seoul", "Sydney", "São Paulo")


def generate_csv(path: str | os.PathLike[str], rows: int, seed: int = 0) -> Path:
    """Write a CSV of ``rows`` deterministic rows (same seed, same bytes) with a header line.

    Columns are :data:`GENERATED_COLUMNS`; names contain commas and quotes now and then so the
    parser's quoting is exercised, and cities are not all ASCII.
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    rnd = random.Random(seed)
    out = Path(path)
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([c.name for c in GENERATED_COLUMNS])
        for i in range(1, rows + 1):
            first, last = rnd.choice(_FIRST), rnd.choice(_LAST)
            name = f"{first} {last}"
            if i % 7 == 0:
                name = f"{last}, {first}"  # a comma: the field gets quoted
            elif i % 11 == 0:
                name = f'{first} "{last[:3]}" {last}'  # quotes: doubled inside a quoted field
            email = f"{first.lower()}.{last.lower()}{i}@example.org"
            amount = round(rnd.uniform(0, 10_000), 2)
            writer.writerow([i, name, email, repr(amount), rnd.randint(1, 500), rnd.choice(_CITIES)])
    return out


def read_header(path: str | os.PathLike[str]) -> tuple[list[str], int]:
    """The header's cells and the byte offset where data starts."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            line = fh.readline()
    except OSError as err:
        raise CSVFormatError(f"cannot read the CSV {name!r}: {err.strerror or err}; check csv_path") from None
    if not line.strip():
        raise CSVFormatError(f"{name}: no header line; the first line must name the columns")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CSVFormatError(f"{name}: the header is not UTF-8 ({err.reason}); save the file as UTF-8") from None
    cells = next(csv.reader([text.rstrip("\r\n")]))
    return [c.strip() for c in cells], len(line)


def resolve_columns(path: str | os.PathLike[str], declared: Sequence[Column] | None) -> list[Column]:
    """The columns to import: the declared ones (which must match the header) or all text."""
    header, _ = read_header(path)
    if not declared:
        return [Column(name) for name in header]
    names = [c.name for c in declared]
    if names != header:
        raise CSVFormatError(
            f"{os.fspath(path)}: the header is {header} but the task declares columns {names}; "
            f"make the task's 'columns' match the header (same names, same order)"
        )
    return list(declared)


def plan_chunks(path: str | os.PathLike[str], chunk_rows: int) -> list[Chunk]:
    """Cut the data part of the file into ranges of about ``chunk_rows`` lines each.

    The average line length comes from the first :data:`SAMPLE_BYTES`; each boundary is then
    moved to the next line start, so only a few bytes around every boundary are read.
    """
    if chunk_rows < 1:
        raise CSVFormatError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _, start = read_header(path)
    size = os.path.getsize(path)
    if start >= size:
        return []
    with open(path, "rb") as fh:
        fh.seek(start)
        sample = fh.read(SAMPLE_BYTES)
        lines = max(1, sample.count(b"\n"))
        target = max(1, len(sample) // lines * chunk_rows)
        chunks: list[Chunk] = []
        offset = start
        while offset < size:
            end = offset + target
            if end >= size:
                end = size
            else:
                fh.seek(end - 1)
                # Move to just past the next newline (``end - 1`` so a boundary on a line start stays).
                rest = fh.readline()
                end = min(size, end - 1 + len(rest))
            chunks.append(Chunk(len(chunks) + 1, offset, end - offset))
            offset = end
    return chunks


def convert(text: str, column: Column) -> Value:
    """A cell's typed value; empty numeric cells are NULL."""
    if column.type == "text":
        return text
    if text.strip() == "":
        return None
    if column.type == "int":
        return int(text)
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def canonical(value: Value) -> str:
    """The text a value is hashed as, identical whether it came from the CSV or the database."""
    if value is None:
        return "\\N"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def row_digest(values: Sequence[Value]) -> int:
    data = "\x1f".join(canonical(v) for v in values).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def stats_of(rows: Iterator[Sequence[Value]] | Sequence[Sequence[Value]]) -> ChunkStats:
    """Row count and checksum of any iterable of rows."""
    n = 0
    total = 0
    for row in rows:
        n += 1
        total = (total + row_digest(row)) % CHECKSUM_MODULUS
    return ChunkStats(n, total)


def combine(stats: Sequence[ChunkStats]) -> ChunkStats:
    """The stats of the union of disjoint chunks."""
    return ChunkStats(sum(s.rows for s in stats), sum(s.checksum for s in stats) % CHECKSUM_MODULUS)


def read_chunk(path: str | os.PathLike[str], chunk: Chunk, columns: Sequence[Column]) -> Iterator[list[Value]]:
    """Parse the rows of one chunk into typed values; bad input raises :class:`CSVFormatError`.

    Errors name the byte offset of the bad line, which ``dd``/editors can jump to, because line
    numbers are unknown without reading everything before the chunk.
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(chunk.offset)
            data = fh.read(chunk.length)
    except OSError as err:
        raise CSVFormatError(f"cannot read the CSV {name!r}: {err.strerror or err}; check csv_path") from None
    if len(data) != chunk.length:
        raise CSVFormatError(
            f"{name}: chunk {chunk.ordinal} expects {chunk.length} bytes at offset {chunk.offset} but the file is "
            f"shorter; the file changed after the task was planned: submit a new task"
        )
    offset = chunk.offset
    width = len(columns)
    for raw in io.BytesIO(data):
        line_offset = offset
        offset += len(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CSVFormatError(
                f"{name}: line at byte offset {line_offset} is not UTF-8 ({err.reason}); save the file as UTF-8"
            ) from None
        stripped = text.rstrip("\r\n")
        if stripped == "":
            continue
        try:
            cells = next(csv.reader([stripped], strict=True))
        except csv.Error as err:
            raise CSVFormatError(
                f"{name}: line at byte offset {line_offset} is not valid CSV ({err}); a quoted field may hold a "
                f"newline, which this importer does not support: one record per line"
            ) from None
        if len(cells) != width:
            raise CSVFormatError(
                f"{name}: line at byte offset {line_offset} has {len(cells)} fields, expected {width} "
                f"({', '.join(c.name for c in columns)}); fix or remove that line: {_preview(stripped)}"
            )
        row: list[Value] = []
        for cell, column in zip(cells, columns, strict=True):
            try:
                row.append(convert(cell, column))
            except ValueError:
                raise CSVFormatError(
                    f"{name}: line at byte offset {line_offset}: column {column.name!r} must be {column.type}, "
                    f"got {cell!r}; fix that line: {_preview(stripped)}"
                ) from None
        yield row


def _preview(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")
