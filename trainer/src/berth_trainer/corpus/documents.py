"""Documents of a text corpus, streamed: files of one sentence per line with a blank line
between documents, cut into byte-range slices so that N readers together see every document
exactly once, tokenized a batch of lines at a time.

A document belongs to the slice that holds the byte where its first line starts. Slice i of n
covers bytes [i*T/n, (i+1)*T/n) of the files laid end to end (T = their total size); a reader
starts at its first byte, skips what continues a document begun before it, and reads on past
its end to finish its last document. A file's start is always a document's start (documents
never span files). Memory is bounded by one batch of lines, never by the corpus.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "c.txt")
>>> _ = open(path, "w").write("a1\\na2\\n\\nb1\\n\\nc1\\nc2\\n")
>>> [[doc for doc in read_part(p, "data.train")] for p in slice_parts([path], 0, 2)]
[[['a1', 'a2'], ['b1']]]
>>> [[doc for doc in read_part(p, "data.train")] for p in slice_parts([path], 1, 2)]
[[['c1', 'c2']]]
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import re
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from berth_trainer.ahead import ahead
from berth_trainer.config import PretrainingConfig, WholeWordMasking
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.packing import Document, Example, Sentence, Specials, pack
from berth_trainer.textfiles import _BOM, _not_utf8

#: Bytes read at a time.
_BLOCK = 1 << 20
#: Lines tokenized in one call (TensorFlow Text's C++ WordPiece: one op per batch).
TOKENIZE_LINES = 4096
#: Documents the shuffle buffer holds (a corpus is shuffled within windows of this many).
SHUFFLE_DOCUMENTS = 4096
#: A byte that is never part of a blank line (printable ASCII other than space).
_INK = re.compile(rb"[!-~]")


@dataclasses.dataclass(frozen=True)
class Part:
    """Bytes [start, end) of one file: the documents whose first line starts there."""

    path: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def slice_parts(files: list[str], index: int, count: int) -> list[Part]:
    """Slice `index` of `count` of `files` (in the order given), as parts of files."""
    sizes = [tf.io.gfile.stat(f).length for f in files]
    total = sum(sizes)
    lo, hi = index * total // count, (index + 1) * total // count
    parts, base = [], 0
    for path, size in zip(files, sizes, strict=True):
        start, end = max(lo - base, 0), min(hi - base, size)
        if start < end:
            parts.append(Part(path, start, end))
        base += size
    return parts


def read_part(
    part: Part, field: str, progress: Callable[[int], None] | None = None
) -> Iterator[list[str]]:
    """The documents of `part`: lists of their non-blank lines, stripped.

    `progress(n)` hears of every n bytes of the part read. A line that is not UTF-8 is a data
    error naming the file and line (exit code 3).
    """
    with tf.io.gfile.GFile(part.path, "rb") as f:
        pos, skipping = part.start, False
        if pos > 0:
            f.seek(pos - 1)
            if f.read(1) != b"\n":  # inside a line begun before the part: not ours
                f.seek(pos)
                pos += len(_rest_of_line(f))
            skipping = not _blank_before(f, pos)
        f.seek(pos)
        doc: list[str] = []
        counted = part.start
        for start, raw in _lines(f, pos):
            if progress and start > counted:
                done = min(start, part.end)
                if done > counted:
                    progress(done - counted)
                    counted = done
            line = _decode(raw, start, part.path, field).strip()
            if not line:
                skipping = False
                if doc:
                    yield doc
                    doc = []
            elif skipping:
                continue
            elif doc:
                doc.append(line)
            elif start >= part.end:  # the next slice's document
                break
            else:
                doc.append(line)
        if doc:
            yield doc
    if progress and part.end > counted:
        progress(part.end - counted)


def _lines(f, pos: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its "\\n") from `pos` on, read in blocks."""
    pending = b""
    while block := f.read(_BLOCK):
        data = pending + block
        begin = 0
        while (end := data.find(b"\n", begin)) >= 0:
            yield pos + begin, data[begin:end]
            begin = end + 1
        pos += begin
        pending = data[begin:]
    if pending:
        yield pos, pending


def _rest_of_line(f) -> bytes:
    """The bytes up to and including the next "\\n" (or the end of the file)."""
    out = []
    while block := f.read(4096):
        end = block.find(b"\n")
        if end >= 0:
            out.append(block[: end + 1])
            break
        out.append(block)
    return b"".join(out)


def _blank_before(f, pos: int) -> bool:
    """Whether the line that ends at byte pos - 1 (a "\\n") is blank (or pos is 0)."""
    if pos <= 1:
        return True
    chunks, end = [], pos - 1
    while end > 0:
        begin = max(0, end - 4096)
        f.seek(begin)
        chunk = f.read(end - begin)
        cut = chunk.rfind(b"\n")
        chunk = chunk[cut + 1 :]
        if _INK.search(chunk):
            return False
        chunks.append(chunk)
        if cut >= 0:
            break
        end = begin
    line = b"".join(reversed(chunks))
    if begin == 0 and cut < 0:
        line = line.removeprefix(_BOM)
    return not line.decode("utf-8", "replace").strip()


def _decode(raw: bytes, offset: int, path: str, field: str) -> str:
    if offset == 0 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(raw, err.start, _line_number(path, offset), path, field) from err


def _line_number(path: str, offset: int) -> int:
    """The number (from 1) of the line starting at byte `offset` (read only for an error)."""
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset > 0 and (block := f.read(min(_BLOCK, offset))):
            count += block.count(b"\n")
            offset -= len(block)
    return count + 1


def read_documents(
    parts: Iterable[Part], field: str, progress: Callable[[int], None] | None = None
) -> Iterator[list[str]]:
    """The documents of several parts, in order."""
    for part in parts:
        yield from read_part(part, field, progress)


class Tokenize:
    """Documents of lines → documents of `Sentence`s, a batch of lines per tokenizer call
    (`ids`: `vocab.ragged_ids` of the tokenizer).

    Word starts: wordPiece and none from the vocabulary (a `##` piece continues a word),
    chinese from jieba's segmentation (every character of a word after its first continues it).
    """

    def __init__(
        self,
        ids: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
        vocabulary: list[str],
        whole_word: str,
    ) -> None:
        self.ids = ids
        self.continues = np.array([t.startswith("##") for t in vocabulary])
        self.whole_word = whole_word

    def __call__(self, documents: Iterable[list[str]]) -> Iterator[Document]:
        batch: list[list[str]] = []
        lines = 0
        for doc in documents:
            batch.append(doc)
            lines += len(doc)
            if lines >= TOKENIZE_LINES:
                yield from self._documents(batch)
                batch, lines = [], 0
        yield from self._documents(batch)

    def _documents(self, batch: list[list[str]]) -> Iterator[Document]:
        if not batch:
            return
        texts = [line for doc in batch for line in doc]
        if self.whole_word == WholeWordMasking.CHINESE:
            sentences = self._segmented(texts)
        else:
            values, splits = self.ids(texts)
            starts = (~self.continues[values]).astype(np.int32)
            sentences = [Sentence(values[a:b], starts[a:b]) for a, b in itertools.pairwise(splits)]
        k = 0
        for doc in batch:
            kept = [s for s in sentences[k : k + len(doc)] if len(s)]  # e.g. only "\u200b"
            k += len(doc)
            if kept:
                yield kept

    def _segmented(self, texts: list[str]) -> list[Sentence]:
        """Each line's words from jieba; a word's first word piece starts it."""
        import jieba

        jieba.setLogLevel(logging.WARNING)
        words = [[w for w in jieba.lcut(line) if w.strip()] for line in texts]
        values, splits = self.ids([w for ws in words for w in ws])
        out, k = [], 0
        for ws in words:
            pieces = [values[splits[j] : splits[j + 1]] for j in range(k, k + len(ws))]
            starts = [np.eye(1, len(p), dtype=np.int32)[0] for p in pieces]
            k += len(ws)
            out.append(Sentence.of(np.concatenate(pieces or [[]]), np.concatenate(starts or [[]])))
        return out


def shuffled(items: Iterable, rng: random.Random, size: int) -> Iterator:
    """`items` in a random order drawn from a buffer of `size` (a corpus never in memory)."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def packed_examples(
    parts: list[Part],
    field: str,
    tokenize: Tokenize,
    pretraining: PretrainingConfig,
    sequence_length: int,
    specials: Specials,
    rng: random.Random,
    shuffle: bool = True,
    progress: Callable[[int], None] | None = None,
    overlap: bool = False,
) -> Iterator[Example]:
    """The packed examples of `parts`: their documents read, tokenized, shuffled within
    `SHUFFLE_DOCUMENTS` (with `shuffle`) and packed per `pretraining`, all streamed. With
    `overlap`, reading and tokenizing run in a thread of their own beside the packing (and
    whatever the caller does with the examples): TensorFlow releases the GIL in the tokenizer
    op; +20-25% for `prepare` on an idle 2-core machine, nothing when the cores are busy."""
    documents = tokenize(read_documents(parts, field, progress))
    if overlap:
        documents = ahead(documents, size=TOKENIZE_LINES, name="tokenize")
    if shuffle:
        documents = shuffled(documents, rng, SHUFFLE_DOCUMENTS)
    return pack(
        documents,
        pretraining.packing,
        sequence_length,
        specials,
        rng,
        pretraining.sentence_prediction,
        pretraining.short_sequence_probability,
    )


def no_text(field: str, files: list[str], index: int = 0, count: int = 1) -> TrainerError:
    where = f"slice {index} of {count} of {files}" if count > 1 else str(files)
    return TrainerError(ExitCode.DATA_INVALID, f"{field}: no text lines in {where}")
