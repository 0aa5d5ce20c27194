"""WordPiece vocabularies: load and check a Google-format vocab.txt, or build one from a corpus."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

#: Tokens every BERT vocabulary must contain.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocabulary(path: str) -> list[str]:
    """Read a vocab.txt (one token per line, local or gs://) and check its special tokens."""
    if not tf.io.gfile.exists(path):
        raise TrainerError(ExitCode.VOCAB_INVALID, f"vocabulary: file not found: {path}")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            tokens = [line.rstrip("\r\n") for line in f]
    except (tf.errors.OpError, UnicodeDecodeError) as err:
        raise TrainerError(
            ExitCode.VOCAB_INVALID, f"vocabulary: cannot read {path}: {err}"
        ) from err
    while tokens and not tokens[-1]:
        tokens.pop()
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise TrainerError(
            ExitCode.VOCAB_INVALID,
            f"vocabulary: {path} lacks the special token(s) {', '.join(missing)} "
            f"(a BERT WordPiece vocab.txt needs {', '.join(SPECIAL_TOKENS)})",
        )
    if len(set(tokens)) != len(tokens):
        raise TrainerError(ExitCode.VOCAB_INVALID, f"vocabulary: {path} has duplicate tokens")
    return tokens


def is_uncased(tokens: list[str]) -> bool:
    """Whether a vocabulary is lower-cased (Google's uncased models), so input must be too."""
    return not any(t.lower() != t for t in tokens if not (t.startswith("[") and t.endswith("]")))


def make_tokenizer(tokens: list[str]):  # -> keras_hub.models.BertTokenizer
    """A keras-hub BertTokenizer where a literal `[MASK]` in the text stays one token; an
    uncased vocabulary lower-cases and strips accents, as Google's and Hugging Face's uncased
    BERT tokenizers do ("Café" → "cafe")."""
    import keras_hub

    uncased = is_uncased(tokens)
    return keras_hub.models.BertTokenizer(
        vocabulary=tokens, lowercase=uncased, strip_accents=uncased, special_tokens_in_strings=True
    )


def ragged_ids(tokenizer) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """`tokenizer` as a function of Python strings → their ids, flat, and the row splits.

    It calls the tokenizer in a graph, traced once: there keras-hub runs TensorFlow Text's C++
    WordPiece (the serving signature's); called eagerly it takes its pure-Python path, 20x
    slower."""
    flat = tf.function(
        lambda texts: (lambda t: (t.flat_values, t.row_splits))(tokenizer(texts)),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )

    def ids(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        values, splits = flat(tf.constant(texts or [""], tf.string))
        return values.numpy().astype(np.int32), splits.numpy()

    return ids


def build_vocabulary(
    corpus: list[str], vocabulary_size: int, output: str, lowercase: bool = True
) -> list[str]:
    """Learn a WordPiece vocabulary from text files (globs allowed) and write it to `output`."""
    import keras_hub

    files = sorted({f for pattern in corpus for f in tf.io.gfile.glob(pattern)})
    if not files:
        raise TrainerError(ExitCode.DATA_INVALID, f"vocab: no file matches {corpus}")
    lines = tf.data.TextLineDataset(files).filter(lambda s: tf.strings.length(s) > 0)
    tokens = keras_hub.tokenizers.compute_word_piece_vocabulary(
        lines.batch(1024),
        vocabulary_size=vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=list(SPECIAL_TOKENS),
    )
    with tf.io.gfile.GFile(output, "w") as f:
        f.write("".join(t + "\n" for t in tokens))
    return list(tokens)
