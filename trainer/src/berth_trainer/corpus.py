"""A pre-training corpus: text files of documents (one sentence per line, a blank line
between documents), tokenized with word starts; and the packed TFRecords `berth-trainer
prepare` writes from them.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from berth_trainer.config import TrainerConfig, WholeWordMasking
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.packing import Document, Sentence
from berth_trainer.textfiles import lines


def read_documents(
    files: list[str],
    tokenizer,
    vocabulary: list[str],
    whole_word: str,
    shard: tuple[int, int] = (0, 1),
    field: str = "data.train",
) -> list[Document]:
    """Documents of text files (one sentence per line, a blank line between documents),
    tokenized; with `shard` (index, count) every count-th document only.

    Word starts: wordPiece and none from the vocabulary (a `##` piece continues a word),
    chinese from jieba's segmentation (every character of a word after its first continues it).
    """
    continues = np.array([t.startswith("##") for t in vocabulary])
    documents: list[list[str]] = [[]]
    for path in files:
        for _, line in lines(path, field):
            if line.strip():
                documents[-1].append(line.strip())
            elif documents[-1]:
                documents.append([])
        if documents[-1]:
            documents.append([])
    index, count = shard
    mine = [d for d in documents if d][index::count]
    sentences = [line for doc in mine for line in doc]
    tokenized: list[Sentence] = []
    for start in range(0, len(sentences), 512):
        batch = sentences[start : start + 512]
        if whole_word == WholeWordMasking.CHINESE:
            tokenized += _segmented(batch, tokenizer)
        else:
            for ids in _ids(tokenizer, batch):
                tokenized.append(Sentence.of(ids, (~continues[ids]).astype(np.int32)))
    out, k = [], 0
    for doc in mine:
        sentences = [s for s in tokenized[k : k + len(doc)] if len(s)]  # e.g. only "\u200b"
        out += [sentences] if sentences else []
        k += len(doc)
    return out


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    tokens = tokenizer(tf.constant(texts))
    return tokens.to_list() if hasattr(tokens, "to_list") else [list(t) for t in tokens]


def _segmented(lines: list[str], tokenizer) -> list[Sentence]:
    """Each line's words from jieba; a word's first word piece starts it."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    words = [[w for w in jieba.lcut(line) if w.strip()] for line in lines]
    flat = _ids(tokenizer, [w for ws in words for w in ws] or [""])
    out, k = [], 0
    for ws in words:
        ids, starts = [], []
        for pieces in flat[k : k + len(ws)]:
            ids += pieces
            starts += [1] + [0] * (len(pieces) - 1)
        k += len(ws)
        out.append(Sentence.of(ids, starts))
    return out


#: Features of a packed pre-training example (`berth-trainer prepare` writes them as int64).
PACKED_FEATURES = ("token_ids", "segment_ids", "word_starts", "sentence_label")


def check_records(path: str, cfg: TrainerConfig, field: str) -> None:
    """The first record of `path` must be a packed example of training.sequenceLength."""
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    if first is None:
        raise TrainerError(ExitCode.DATA_INVALID, f"{field}: no records in {path}")
    example = tf.train.Example.FromString(first.numpy()).features.feature
    absent = [k for k in PACKED_FEATURES if k not in example]
    if absent:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} is not a packed pre-training file (no {absent}); write it with "
            "`berth-trainer prepare --sequence-length N` (files from before packing existed "
            "must be prepared again)",
        )
    length = len(example["token_ids"].int64_list.value)
    if length != cfg.training.sequence_length:
        raise TrainerError(
            ExitCode.DATA_INVALID,
            f"{field}: {path} holds examples of {length} tokens but training.sequenceLength is "
            f"{cfg.training.sequence_length}; prepare it again with --sequence-length "
            f"{cfg.training.sequence_length}",
        )


def parse_packed(sequence_length: int):
    spec = {k: tf.io.FixedLenFeature([sequence_length], tf.int64) for k in PACKED_FEATURES[:3]}
    spec["sentence_label"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            k: tf.cast(v, tf.int32) for k, v in tf.io.parse_single_example(record, spec).items()
        }

    return parse
