"""Raw text → words with offsets → word pieces: the same graph ops when the trainer reads its
data files (run eagerly, in batches) and inside the exported serving signatures, so serving
splits text exactly as training did.

Words are what keras-hub's BERT tokenizer splits on before WordPiece (whitespace,
punctuation, each CJK character), but cut from the *original* string so that their offsets
point into it; lower-casing and accent stripping then happen per word, in the tokenizer.

    >>> texts = tf.constant(["Héllo, wörld"])
    >>> words, starts, ends = split_words(texts)
    >>> [w.decode() for w in words[0].numpy()], starts.to_list(), ends.to_list()
    (['Héllo', ',', 'wörld'], [[0, 6, 8]], [[6, 7, 14]])
    >>> to_char_offsets(texts, starts).to_list(), to_char_offsets(texts, ends).to_list()
    ([[0, 5, 7]], [[5, 6, 12]])
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text
from keras_hub.src.tokenizers.word_piece_tokenizer import (
    PUNCTUATION_AND_CJK_REGEX,
    WHITESPACE_PUNCTUATION_AND_CJK_REGEX,
)


def split_words(texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor, tf.RaggedTensor]:
    """Words of each text `[batch]` and their UTF-8 byte offsets (start, end): ragged
    `[batch, (words)]`."""
    return tf_text.regex_split_with_offsets(
        texts, WHITESPACE_PUNCTUATION_AND_CJK_REGEX, PUNCTUATION_AND_CJK_REGEX
    )


def word_pieces(tokenizer, words: tf.RaggedTensor, unk_id: int) -> tf.RaggedTensor:
    """Word-piece ids of ragged `words` `[batch, (words)]` → `[batch, (words), (pieces)]`,
    int32; a word the tokenizer drops entirely (e.g. a zero-width space) becomes `[UNK]`, so
    every word keeps at least one piece (the one its label goes on)."""
    flat = words.flat_values
    pieces = tokenizer(tf.concat([flat, [""]], 0))[:-1]  # never an empty batch
    if not isinstance(pieces, tf.RaggedTensor):  # keras-hub densifies rows of equal length
        pieces = tf.RaggedTensor.from_tensor(pieces)
    pieces = tf.cast(pieces, tf.int32)
    empty = tf.cast(tf.equal(pieces.row_lengths(), 0), tf.int64)
    unk = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(empty)], tf.constant(unk_id, tf.int32)), empty
    )
    return words.with_flat_values(tf.concat([pieces, unk], axis=1))


def to_char_offsets(texts: tf.Tensor, byte_offsets: tf.RaggedTensor) -> tf.RaggedTensor:
    """UTF-8 byte offsets into `texts` `[batch]` → character (code point) offsets; an offset
    at the end of a text maps to its length."""
    _, char_starts = tf.strings.unicode_decode_with_offsets(texts, "UTF-8")
    lengths = tf.cast(tf.strings.length(texts), tf.int64)  # bytes
    bounds = tf.concat([char_starts, tf.expand_dims(lengths, 1)], 1).to_tensor(tf.int64.max)
    dense = byte_offsets.to_tensor(0)
    chars = tf.searchsorted(bounds, tf.cast(dense, tf.int64), side="left")
    return tf.RaggedTensor.from_tensor(chars, lengths=byte_offsets.row_lengths())
