"""berth_trainer.textfiles: UTF-8 decoding, BOMs, line numbers, rows and their errors."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import tensorflow as tf

from berth_trainer import textfiles
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.textfiles import lines, no_examples, read_text, rows

BOM = b"\xef\xbb\xbf"

#: The same three rows (the third with an "é") in each format.
GOOD = {
    "csv": "text,label\nfine,pos\nvoilà,neg\n",
    "tsv": "text\tlabel\nfine\tpos\nvoilà\tneg\n",
    "jsonl": '{"text": "fine", "label": "pos"}\n{"text": "voilà", "label": "neg"}\n',
}
#: The line numbers of the rows of GOOD.
GOOD_LINES = {"csv": [2, 3], "tsv": [2, 3], "jsonl": [1, 2]}


def _write(tmp_path: Path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _error(call) -> str:
    with pytest.raises(TrainerError) as err:
        call()
    assert err.value.code == ExitCode.DATA_INVALID
    return str(err.value)


def test_docstring_examples() -> None:
    result = doctest.testmod(textfiles)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 20])
@pytest.mark.parametrize(
    "data",
    [
        b"one\ntwo\n",
        b"one\ntwo",
        b"one\r\ntwo\r\n\r\nfour",
        b"\n\nthree\n\n",
        b"a long line\n" * 7,
        "caf\u00e9 \u2028 \x85 x\rin line\n\u6f22\u5b57".encode(),
    ],
)
def test_lines_numbers_and_strips_line_ends_at_any_block_size(tmp_path, monkeypatch, data, block):
    """Lines end at "\\n" only (a "\\r" before it goes too), however the blocks fall."""
    monkeypatch.setattr(textfiles, "_BLOCK", block)
    path = _write(tmp_path, "a.txt", data)
    expected = data.decode().split("\n")
    if expected[-1] == "":
        expected.pop()
    expected = [t.removesuffix("\r") for t in expected]
    assert list(lines(path, "data.train")) == list(enumerate(expected, 1))


@pytest.mark.parametrize("fmt", ["text", "csv", "tsv", "jsonl"])
def test_a_bom_is_not_part_of_the_first_line_or_header(tmp_path, fmt):
    data = GOOD.get(fmt, "first line\nsecond\n")
    path = _write(tmp_path, f"a.{fmt}", BOM + data.encode())
    if fmt == "text":
        assert list(lines(path, "data.train")) == [(1, "first line"), (2, "second")]
    else:
        got = list(rows([path], fmt, ["text", "label"], "data.train"))
        assert [r for _, r in got] == [
            {"text": "fine", "label": "pos"},
            {"text": "voilà", "label": "neg"},
        ]
        assert [w for w, _ in got] == [f"{path}:{n}" for n in GOOD_LINES[fmt]]
    assert read_text(path, "data.train") == data


def test_only_a_leading_bom_is_dropped(tmp_path):
    path = _write(tmp_path, "a.txt", BOM + BOM + b"x\n" + BOM + b"y\n")
    assert list(lines(path, "f")) == [(1, "\ufeffx"), (2, "\ufeffy")]


def test_a_bom_is_not_a_column(tmp_path):
    path = _write(tmp_path, "a.txt", BOM + b"ab\xe9\n")
    assert "(byte 0xe9 at column 3)" in _error(lambda: list(lines(path, "f")))


@pytest.mark.parametrize("fmt", ["text", "csv", "tsv", "jsonl", "read_text"])
def test_bytes_that_are_not_utf8_name_field_file_line_and_column(tmp_path, fmt):
    """Line 3 has Latin-1 bytes: "voilà" with an "à" of one byte 0xe0."""
    data = GOOD.get(fmt, "one\ntwo\nvoilà\nfour\n")
    if fmt != "jsonl":
        data = data + "fourth,line\n" if fmt == "csv" else data
        encoded = data.encode()
    else:
        encoded = ('{"text": "x", "label": "y"}\n' + data).encode()
    encoded = BOM + encoded.replace("à".encode(), b"\xe0")
    path = _write(tmp_path, "bad", encoded)
    if fmt == "text":
        message = _error(lambda: list(lines(path, "data.train")))
    elif fmt == "read_text":
        message = _error(lambda: read_text(path, "data.train"))
    else:
        message = _error(lambda: list(rows([path], fmt, ["text"], "data.train")))
    column = 15 if fmt == "jsonl" else 5
    assert message == (
        f"data.train: {path}:3: not UTF-8 text (byte 0xe0 at column {column}); "
        "save the file as UTF-8"
    )


def test_a_utf16_file_is_not_utf8_at_line_1_column_1(tmp_path):
    path = _write(tmp_path, "a.csv", "text,label\n".encode("utf-16"))
    message = _error(lambda: list(rows([path], "csv", ["text"], "data.validation")))
    assert message.startswith(f"data.validation: {path}:1: not UTF-8 text (byte 0xff at column 1)")


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("csv", "text,label\n"),
        ("csv", "text,label"),
        ("csv", "\ufefftext,label\r\n\r\n\r\n"),
        ("csv", "\n\n"),
        ("csv", "\ufeff"),
        ("tsv", "text\tlabel\n\n"),
        ("jsonl", "\n  \n\t\n"),
        ("jsonl", "\ufeff\r\n"),
    ],
)
def test_a_file_without_rows_yields_nothing(tmp_path, fmt, data):
    path = _write(tmp_path, f"a.{fmt}", data)
    assert list(rows([path], fmt, ["text", "label"], "data.train")) == []


def test_no_examples_names_field_and_files():
    err = no_examples("data.validation", ["a.csv", "b.csv"])
    assert err.code == ExitCode.DATA_INVALID
    assert str(err) == "data.validation: no examples in ['a.csv', 'b.csv']"


@pytest.mark.parametrize(
    ("fmt", "data", "line", "what"),
    [
        ("csv", "text,label\na,b\na,b,c\n", 3, "malformed row: expected 2 fields (text, label)"),
        ("csv", "text,label\na\n", 2, "malformed row: expected 2 fields (text, label), got 1"),
        ("csv", 'text,label\n"a"b,c\n', 2, "malformed: ',' expected after '\"'"),
        ("csv", 'text,label\na,b\n"open,b\nc,d\n', 4, "malformed: unexpected end of data"),
        ("csv", "text,other\na,b\n", 2, "missing field(s) ['label']"),
        ("tsv", "text\tlabel\na\tb\tc\n", 2, "malformed row: expected 2 fields"),
        ("tsv", "text\nx\n", 2, "missing field(s) ['label']"),
        ("jsonl", '{"text": "a", "label": "b"}\n{"text": \n', 2, "invalid JSON: Expecting value"),
        ("jsonl", '\n\n["a", "b"]\n', 3, "not a JSON object"),
        ("jsonl", '{"text": "a"}\n', 1, "missing field(s) ['label']"),
        ("jsonl", '{"text": null, "label": null}\n', 1, "missing field(s) ['text', 'label']"),
    ],
)
def test_every_bad_row_names_field_file_and_line(tmp_path, fmt, data, line, what):
    good = _write(tmp_path, "good", GOOD[fmt])
    bad = _write(tmp_path, "bad", data)
    message = _error(lambda: list(rows([good, bad], fmt, ["text", "label"], "data.validation")))
    assert message.startswith(f"data.validation: {bad}:{line}: {what}"), message


def test_an_unclosed_quote_names_the_line_its_row_starts_on(tmp_path):
    path = _write(tmp_path, "a.csv", 'text,label\na,b\n"open,b\nc,d\n')
    message = _error(lambda: list(rows([path], "csv", ["text"], "data.train")))
    assert message.endswith("unexpected end of data (in the row from line 3)")


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_a_quoted_csv_field_spans_lines_and_its_row_is_named_by_its_first(tmp_path, end):
    data = end.join(["text,label", '"two', 'lines",pos', 'next,"a, b"', '"""q""",neg', ""])
    path = _write(tmp_path, "a.csv", data)
    got = list(rows([path], "csv", ["text", "label"], "data.train"))
    assert got == [
        (f"{path}:2", {"text": f"two{end}lines", "label": "pos"}),
        (f"{path}:4", {"text": "next", "label": "a, b"}),
        (f"{path}:5", {"text": '"q"', "label": "neg"}),
    ]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_crlf_line_ends_are_not_part_of_a_value(tmp_path, fmt):
    path = _write(tmp_path, f"a.{fmt}", GOOD[fmt].replace("\n", "\r\n"))
    got = list(rows([path], fmt, ["text", "label"], "data.train"))
    assert [r["label"] for _, r in got] == ["pos", "neg"]
    assert [w for w, _ in got] == [f"{path}:{n}" for n in GOOD_LINES[fmt]]


def test_tsv_quotes_are_text(tmp_path):
    path = _write(tmp_path, "a.tsv", 'text\tlabel\n"a\t"b\n')
    assert [r for _, r in rows([path], "tsv", [], "f")] == [{"text": '"a', "label": '"b'}]


def test_rows_of_several_files_are_named_by_their_file(tmp_path):
    a = _write(tmp_path, "a.jsonl", '{"text": "x", "label": "1"}\n')
    b = _write(tmp_path, "b.jsonl", '\n{"text": "y", "label": "2"}\n')
    assert [w for w, _ in rows([a, b], "jsonl", ["text"], "f")] == [f"{a}:1", f"{b}:2"]


def test_an_unknown_format_is_a_programming_error(tmp_path):
    path = _write(tmp_path, "a.txt", "x\n")
    with pytest.raises(ValueError, match="unknown format 'conll'"):
        list(rows([path], "conll", [], "f"))


@pytest.mark.parametrize("fmt", ["text", "csv", "tsv", "jsonl"])
def test_files_are_streamed_not_read_whole(tmp_path, monkeypatch, fmt):
    """The first row of a ~3 MB file comes after reading one block, not the file, and without
    its bad last line; reading on to the end finds it."""
    sizes: list[int] = []

    class Counting(tf.io.gfile.GFile):
        def read(self, n=-1):
            out = super().read(n)
            sizes.append(len(out))
            return out

    monkeypatch.setattr(tf.io.gfile, "GFile", Counting)
    row = {
        "text": "some words, of\ttext " * 20,
        "csv": "word word word,pos",
        "tsv": "word word word\tpos",
        "jsonl": json.dumps({"text": "word word word", "label": "pos"}),
    }[fmt]
    header = {"csv": "text,label\n", "tsv": "text\tlabel\n"}.get(fmt, "")
    data = (header + (row + "\n") * (3_000_000 // len(row))).encode() + b"\xff\n"
    path = _write(tmp_path, "big", data)
    if fmt == "text":
        first = lines(path, "data.train")
        assert next(first) == (1, row)
    else:
        first = rows([path], fmt, ["text", "label"], "data.train")
        assert next(first)[1]["label"] == "pos"
    assert sum(sizes) == textfiles._BLOCK < len(data)
    assert "not UTF-8 text (byte 0xff at column 1)" in _error(lambda: list(first))


def test_read_text_keeps_everything_but_the_bom(tmp_path):
    data = '{"data": [\r\n  "\u2028 é"\r\n]}'
    path = _write(tmp_path, "a.json", BOM + data.encode())
    assert read_text(path, "data.train") == data
    assert json.loads(read_text(path, "data.train")) == {"data": ["\u2028 é"]}
