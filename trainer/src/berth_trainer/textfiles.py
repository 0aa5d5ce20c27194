"""The one place the trainer reads text data files (local paths or gs://, via tf.io.gfile).

Files are read as bytes and decoded as UTF-8 here, so that every data reader behaves the same:

- a UTF-8 byte order mark at the start of a file is dropped (it is not part of the first line,
  word or csv header);
- bytes that are not UTF-8 are a data error (exit code 3) naming the field, file, line and
  column: `data.train: a.csv:3: not UTF-8 text (byte 0xe9 at column 5); save the file as UTF-8`;
- lines end at "\\n" (a "\\r" before it is dropped too); nothing else splits a line, so line
  numbers are those of `wc -l` and editors;
- files are streamed in blocks, never read whole, except by `read_text`.

Every error of a bad row starts with `FIELD: FILE:LINE: `, e.g. `data.validation: b.jsonl:7: `.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

_BOM = b"\xef\xbb\xbf"
#: Bytes read at a time.
_BLOCK = 1 << 20


def _not_utf8(data: bytes, at: int, line: int, path: str, field: str) -> TrainerError:
    """The error of the bad byte `data[at]`; `data` starts at the start of line `line`.

    The column counts characters from 1, as an editor does.

    >>> str(_not_utf8("día\\nné".encode("latin-1"), 5, 1, "a.txt", "data.train"))
    'data.train: a.txt:2: not UTF-8 text (byte 0xe9 at column 2); save the file as UTF-8'
    """
    begin = data.rfind(b"\n", 0, at) + 1
    line += data.count(b"\n", 0, at)
    column = len(data[begin:at].decode("utf-8", "replace")) + 1
    return TrainerError(
        ExitCode.DATA_INVALID,
        f"{field}: {path}:{line}: not UTF-8 text (byte 0x{data[at]:02x} at column {column}); "
        "save the file as UTF-8",
    )


def _decoded(path: str, field: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of `path`, each without its "\\n" but with any "\\r" (csv keeps
    "\\r\\n" inside a quoted field); no BOM.

    Reads blocks, not `GFile.readline`: TensorFlow's readline drops every "\\r" of a line.
    """
    number = 0
    pending: list[bytes] = []  # the pieces of a line longer than a block, not copied per block
    with tf.io.gfile.GFile(path, "rb") as f:
        while block := f.read(_BLOCK):
            *whole, last = block.split(b"\n")
            if whole:
                whole[0], pending = b"".join([*pending, whole[0]]), []
            pending.append(last)
            for raw in whole:
                number += 1
                yield number, _decode(raw, number, path, field)
    if tail := b"".join(pending):
        yield number + 1, _decode(tail, number + 1, path, field)


def _decode(raw: bytes, number: int, path: str, field: str) -> str:
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(raw, err.start, number, path, field) from err


def lines(path: str, field: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its "\\n" or "\\r\\n") of the text file `path`,
    streamed; a line that is not UTF-8 is a `TrainerError` naming `field` (exit code 3)."""
    for number, text in _decoded(path, field):
        yield number, text[:-1] if text.endswith("\r") else text


def read_text(path: str, field: str) -> str:
    """The whole text file `path` (e.g. a JSON document) without its BOM; bytes that are not
    UTF-8 are a `TrainerError` naming `field`, the line and column of the first bad byte."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    data = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(data, err.start, 1, path, field) from err


def no_examples(field: str, files: list[str]) -> TrainerError:
    """The error of data files without a single example.

    >>> str(no_examples("data.train", ["a.csv"]))
    "data.train: no examples in ['a.csv']"
    """
    return TrainerError(ExitCode.DATA_INVALID, f"{field}: no examples in {files}")


def rows(
    files: list[str], fmt: str, wanted: list[str], field: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`FILE:LINE`, row) of csv, tsv or jsonl `files`, streamed.

    csv: quoted fields (strict QUOTE_MINIMAL) may span lines, LINE is the line a row STARTS on;
    tsv: tab-separated, no quoting. Both have a header row (its first non-blank line) naming the
    fields; blank lines are skipped. jsonl: a JSON object per line, blank lines skipped. A file
    of only a header or blank lines yields nothing (the caller raises `no_examples`).

    Errors (exit code 3, `FIELD: FILE:LINE: ...`): not UTF-8, a csv/tsv row with another number
    of fields than the header, a csv syntax error (LINE is where it was found), invalid JSON or
    not a JSON object, a `wanted` key missing or null.
    """
    for path in files:
        source = _jsonl(path, field) if fmt == "jsonl" else _table(path, fmt, field)
        for number, row in source:
            where = f"{path}:{number}"
            absent = [k for k in wanted if row.get(k) is None]
            if absent:
                raise _bad(field, where, f"missing field(s) {absent}")
            yield where, row


def _bad(field: str, where: str, what: str) -> TrainerError:
    return TrainerError(ExitCode.DATA_INVALID, f"{field}: {where}: {what}")


def _jsonl(path: str, field: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in lines(path, field):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise _bad(field, f"{path}:{number}", f"invalid JSON: {err}") from err
        if not isinstance(row, dict):
            raise _bad(field, f"{path}:{number}", "not a JSON object")
        yield number, row


def _table(path: str, fmt: str, field: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt not in ("csv", "tsv"):
        raise ValueError(f"rows: unknown format {fmt!r} (csv, tsv or jsonl)")
    tsv = fmt == "tsv"
    reader = csv.reader(
        (text + "\n" for _, text in _decoded(path, field)),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        strict=True,
    )
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            number, start = start, reader.line_num + 1
            if not row:
                continue
            if header is None:
                header = row
            elif len(row) != len(header):
                raise _bad(
                    field,
                    f"{path}:{number}",
                    f"malformed row: expected {len(header)} fields ({', '.join(header)}), "
                    f"got {len(row)}",
                )
            else:
                yield number, dict(zip(header, row, strict=True))
    except csv.Error as err:
        where = f" (in the row from line {start})" if start < reader.line_num else ""
        raise _bad(field, f"{path}:{reader.line_num}", f"malformed: {err}{where}") from err
