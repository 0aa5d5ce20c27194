"""Token classification, e.g. named-entity recognition: a tag per word, BIO or BIOES.

Data: `conll` (a word and its tag per line, whitespace-separated, the tag in the LAST column
so CoNLL-2003's `word POS chunk NER` lines read as they are; a blank line between sentences;
`-DOCSTART-` lines skipped) or `jsonl` rows `{tokensField: [words], tagsField: [tags]}`. The
tag names are learned from the training data ("O" first, then sorted); a tag outside
`tokenClassification.scheme` or, in validation, unknown to training is a data error naming
file and line.

Each word becomes its word pieces (`tasks.text.word_pieces`, at least one); an example is
`[CLS] pieces [SEP]` cut to `training.sequenceLength`, and a word's tag goes on its FIRST
piece only (weight 1; other pieces, specials and padding weigh 0). Words whose first piece is
cut off are neither trained on nor scored (a warning counts the sentences cut in the first
chunk of a split that cuts any, once per split).

Model: the backbone's sequence output, dropout and a Dense named `classifier` (Hugging Face's
`BertForTokenClassification`), no pooler. Loss: per example the mean cross-entropy over its
words. Validation: entity-level precision, recall and F1, micro-averaged, with conlleval's
chunk rules (seqeval's default mode): `entities` and `prf` below.

Export: `text` (raw sentences) → per entity `entity_label`, `entity_start`/`entity_end`
(character offsets into the text, end exclusive), `entity_text` and per text `entity_count`;
per tagged word `word_tags`, `word_start`/`word_end` and `word_count`. Entity outputs are
padded ("" and 0) to the largest entity count in the batch, word outputs to the most tagged
words. The signature splits words exactly as `tasks.text.split_words` (whitespace,
punctuation, each CJK character), so a data word with punctuation inside (`U.S.`) is served
as several words.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

from berth_trainer.config import DataFormat, TagScheme, Task
from berth_trainer.modeling import text_inputs
from berth_trainer.tasks.base import Encoded, ExampleTask, bad_row, positions_loss
from berth_trainer.tasks.classification import CLASSIFIER
from berth_trainer.tasks.text import split_words, to_char_offsets, word_pieces
from berth_trainer.textfiles import lines, rows

log = logging.getLogger("berth_trainer")

#: Tag prefixes of each scheme (besides the tag "O").
PREFIXES = {TagScheme.BIO: "BI", TagScheme.BIOES: "BIES"}
#: Prefix codes of the serving graph (the tag "O" is 0).
_CODES = {"O": 0, "B": 1, "I": 2, "E": 3, "S": 4}


@dataclasses.dataclass
class Sentence:
    """Words of one sentence, their tags and where each word is (`file:line`)."""

    words: list[str] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=list)
    where: list[str] = dataclasses.field(default_factory=list)


class TokenClassification(ExampleTask):
    name = Task.TOKEN_CLASSIFICATION
    formats = (DataFormat.CONLL, DataFormat.JSONL)
    heads = (CLASSIFIER,)
    pooled = False
    architecture = "BertForTokenClassification"
    label_word = "tag"

    def __init__(self, cfg, encoder) -> None:
        super().__init__(cfg, encoder)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def pieces(words):
            ragged = tf.RaggedTensor.from_row_lengths(words, tf.shape(words, tf.int64))
            out = word_pieces(encoder.tokenizer, ragged, encoder.vocabulary.index("[UNK]"))
            return out.flat_values, out.values.row_lengths()

        self._pieces = pieces

    def word_pieces(self, sentences: list[list[str]]) -> list[list[list[int]]]:
        """Each word's piece ids, in one graph call and no eager op per row: `encode` runs in
        the input pipeline's generator, where many small eager ops stall a multi-worker run."""
        flat = tf.constant([w for s in sentences for w in s])
        ids, counts = (t.numpy() for t in self._pieces(flat))
        words = iter(np.split(ids, np.cumsum(counts)[:-1]))
        return [[next(words).tolist() for _ in s] for s in sentences]

    def examples(self, files, field):
        scheme = self.cfg.token_classification.scheme
        for s in self._sentences(files, field):
            for tag, where in zip(s.tags, s.where, strict=True):
                if problem := tag_problem(tag, scheme):
                    raise bad_row(field, where, problem)
            yield s

    def _sentences(self, files: list[str], field: str):
        if self.cfg.data.format == DataFormat.CONLL:
            for path in files:
                yield from conll_sentences(lines(path, field), path, field)
            return
        tc = self.cfg.token_classification
        keys = (tc.tokens_field, tc.tags_field)
        for where, row in rows(files, DataFormat.JSONL, list(keys), field):
            words, tags = row[tc.tokens_field], row[tc.tags_field]
            for key, value in zip(keys, (words, tags), strict=True):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise bad_row(field, where, f"{key} is not a list of strings")
            if not words:
                raise bad_row(field, where, f"{tc.tokens_field} is empty")
            if len(tags) != len(words):
                raise bad_row(
                    field,
                    where,
                    f"{tc.tags_field} has {len(tags)} tags but {tc.tokens_field} has "
                    f"{len(words)} words",
                )
            yield Sentence(list(words), list(tags), [where] * len(words))

    def labels_of(self, example):
        return zip(example.tags, example.where, strict=True)

    def name_labels(self, seen):
        return ["O", *sorted(seen - {"O"})]

    def encode(self, examples, field):
        index = {name: i for i, name in enumerate(self.labels or ())}
        n = self.cfg.training.sequence_length
        e = self.encoder
        pieces = self.word_pieces([s.words for s in examples])
        token_ids = np.full((len(examples), n), e.pad_id, np.int32)
        tags = np.zeros((len(examples), n), np.int32)
        weights = np.zeros((len(examples), n), np.float32)
        references: list[list[str]] = []
        cut_sentences = cut_words = 0
        for i, (s, words) in enumerate(zip(examples, pieces, strict=True)):
            ids, firsts = layout(words, n, e.specials.cls, e.specials.sep)
            token_ids[i, : len(ids)] = ids
            kept = len(firsts)
            tags[i, firsts] = [index[t] for t in s.tags[:kept]]
            weights[i, firsts] = 1.0
            references.append(s.tags[:kept])
            if sum(map(len, words)) > n - 2:
                cut_sentences += 1
                cut_words += len(words) - kept
        features = {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids),
            "padding_mask": (token_ids != e.pad_id).astype(np.int32),
        }
        labels = {"tags": tags, "weights": weights}
        cut = {"sentences": cut_sentences, "words": cut_words}
        return Encoded(features, labels, references, cut)

    def cut_message(self, cut, examples):
        return (
            f"{cut['sentences']} of {examples} sentences cut to training.sequenceLength "
            f"{self.cfg.training.sequence_length} word pieces; {cut['words']} words cut off are "
            "not trained on or scored"
        )

    def build(self, backbone):
        inputs = text_inputs(self.cfg.training.sequence_length)
        sequence = backbone(inputs)["sequence_output"]
        sequence = keras.layers.Dropout(
            backbone.dropout, dtype=backbone.dtype_policy, name="sequence_dropout"
        )(sequence)
        logits = keras.layers.Dense(
            len(self.labels or ()),
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name=self.head.layer,
        )(sequence)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        return keras.Model(inputs, {"logits": logits}, name="bert_token_classification")

    def loss(self, outputs, labels):
        return positions_loss(outputs["logits"], labels["tags"], labels["weights"])

    def score(self, model, encoded, outputs):
        """(gold, predicted) tags of the chunk's kept words."""
        names = np.asarray(self.labels)
        ids = outputs["logits"].argmax(-1)
        first = encoded.labels["weights"] > 0
        predicted = [names[row[w]].tolist() for row, w in zip(ids, first, strict=True)]
        return encoded.references, predicted

    def metrics(self, scores):
        gold = [tags for chunk, _ in scores for tags in chunk]
        predicted = [tags for _, chunk in scores for tags in chunk]
        entity = prf(gold, predicted, self.cfg.token_classification.scheme)
        return {k: round(v, 4) for k, v in entity.items()}

    def serve(self, model, archive):
        names = list(self.labels or ())
        n = self.cfg.training.sequence_length
        tokenizer, packer = self.encoder.tokenizer, self.encoder.packer
        unk = self.encoder.vocabulary.index("[UNK]")
        pad = self.encoder.pad_id
        types = sorted({t[2:] for t in names if t != "O"})
        prefix_of = tf.constant([_CODES[t[0]] if t != "O" else 0 for t in names], tf.int32)
        type_of = tf.constant([types.index(t[2:]) + 1 if t != "O" else 0 for t in names])
        tag_names = tf.constant(names)
        type_names = tf.constant(["", *types])

        def tag(text):
            words, starts, ends = split_words(text)
            pieces = word_pieces(tokenizer, words, unk)
            token_ids, segment_ids = packer(pieces.merge_dims(1, 2))
            token_ids = tf.cast(token_ids, tf.int32)
            features = {
                "token_ids": token_ids,
                "segment_ids": tf.cast(segment_ids, tf.int32),
                "padding_mask": tf.cast(tf.not_equal(token_ids, pad), tf.int32),
            }
            predicted = tf.argmax(model(features, training=False)["logits"], -1, tf.int32)
            # Each word's first piece: after [CLS] and the pieces of the words before it.
            lengths = tf.cast(pieces.row_lengths(axis=2).to_tensor(0), tf.int32)
            first = tf.cumsum(lengths, axis=1, exclusive=True)
            kept = tf.sequence_mask(words.row_lengths(), tf.shape(first)[1]) & (first < n - 2)
            tag_ids = tf.gather(predicted, tf.minimum(first + 1, n - 1), batch_dims=1)
            tag_ids = tf.where(kept, tag_ids, 0)
            spans = graph_entities(tf.gather(prefix_of, tag_ids), tf.gather(type_of, tag_ids))
            count, first_word, last_word, entity_type, valid = spans

            char_starts = to_char_offsets(text, starts).to_tensor(0)
            char_ends = to_char_offsets(text, ends).to_tensor(0)
            byte_start = tf.gather(tf.cast(starts.to_tensor(0), tf.int32), first_word, batch_dims=1)
            byte_end = tf.gather(tf.cast(ends.to_tensor(0), tf.int32), last_word, batch_dims=1)
            byte_start, byte_end = tf.where(valid, byte_start, 0), tf.where(valid, byte_end, 0)
            width = tf.shape(valid)[1]
            entity_text = tf.strings.substr(
                tf.broadcast_to(text[:, None], [tf.shape(text)[0], width]),
                byte_start,
                byte_end - byte_start,
                unit="BYTE",
            )
            word_count = tf.reduce_sum(tf.cast(kept, tf.int32), 1)
            words_out = tf.reduce_max(tf.concat([word_count, [0]], 0))
            return {
                "entity_label": tf.where(valid, tf.gather(type_names, entity_type), ""),
                "entity_start": tf.where(
                    valid, tf.gather(tf.cast(char_starts, tf.int32), first_word, batch_dims=1), 0
                ),
                "entity_end": tf.where(
                    valid, tf.gather(tf.cast(char_ends, tf.int32), last_word, batch_dims=1), 0
                ),
                "entity_text": entity_text,
                "entity_count": count,
                "word_tags": tf.where(kept, tf.gather(tag_names, tag_ids), "")[:, :words_out],
                "word_start": tf.where(kept, tf.cast(char_starts, tf.int32), 0)[:, :words_out],
                "word_end": tf.where(kept, tf.cast(char_ends, tf.int32), 0)[:, :words_out],
                "word_count": word_count,
            }

        text = tf.TensorSpec([None], tf.string, name="text")
        archive.add_endpoint("serving_default", tag, input_signature=[text])


def conll_sentences(numbered: Iterable[tuple[int, str]], path: str, field: str):
    """`Sentence`s of a CoNLL file's (line number, line) pairs (`textfiles.lines`): the first
    column is the word, the last its tag.

    >>> [s.where for s in conll_sentences(enumerate(["-DOCSTART- O", "", "EU B-ORG"], 1), "f", "")]
    [['f:3']]
    """
    s = Sentence()
    for number, line in numbered:
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if s.words:
                yield s
            s = Sentence()
            continue
        if len(columns) < 2:
            raise bad_row(
                field, f"{path}:{number}", f"one column {line.strip()!r}: expected a word and a tag"
            )
        s.words.append(columns[0])
        s.tags.append(columns[-1])
        s.where.append(f"{path}:{number}")
    if s.words:
        yield s


def tag_problem(tag: str, scheme: str) -> str | None:
    """What is wrong with `tag` under `scheme`, or None: tags are "O" or PREFIX-TYPE.

    >>> tag_problem("B-PER", "bio"), tag_problem("E-PER", "bio"), tag_problem("E-PER", "bioes")
    (None, "tag 'E-PER' is not O or B-/I-TYPE (tokenClassification.scheme bio)", None)
    """
    prefixes = PREFIXES[TagScheme(scheme)]
    if tag == "O" or (len(tag) > 2 and tag[0] in prefixes and tag[1] == "-"):
        return None
    allowed = "/".join(f"{p}-" for p in prefixes)
    return f"tag {tag!r} is not O or {allowed}TYPE (tokenClassification.scheme {scheme})"


def layout(pieces: list[list[int]], n: int, cls: int, sep: int) -> tuple[list[int], list[int]]:
    """`[CLS] pieces [SEP]` of one sentence's words (their pieces) cut to `n` tokens, and the
    position of each kept word's first piece (a word is kept when its first piece fits).

    >>> layout([[7], [8, 9], [10]], 5, 1, 2)
    ([1, 7, 8, 9, 2], [1, 2])
    """
    ids, firsts = [cls], []
    for word in pieces:
        if len(ids) >= n - 1:
            break
        firsts.append(len(ids))
        ids += word[: n - 1 - len(ids)]
    return [*ids, sep], firsts


def _split(tag: str) -> tuple[str, str]:
    """(prefix, type) of a tag the way conlleval/seqeval read it; "O" has type "_"."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """Whether a chunk ends before this tag (conlleval's endOfChunk)."""
    return (
        prev in "ES"
        or (prev in "BI" and tag in "BSO")
        or (prev != "O" and prev != "." and prev_type != type_)
    )


def _starts(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """Whether a chunk starts at this tag (conlleval's startOfChunk)."""
    return (
        tag in "BS"
        or (prev in "ESO" and tag in "EI")
        or (tag != "O" and tag != "." and prev_type != type_)
    )


def entities(tags: list[str], scheme: str = TagScheme.BIO) -> list[tuple[str, int, int]]:
    """Chunks of a tag sequence as (type, first word, end word exclusive), by conlleval's
    rules (seqeval's default, lenient mode): an I- or E- after O, after an E-/S- or after a
    different type starts a chunk; B-/S- start one; E-/S- end one; a change of type ends one.

    >>> entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5), ('ORG', 5, 6)]
    """
    for tag in tags:
        problem = tag_problem(tag, scheme)
        if problem:
            raise ValueError(problem)
    out: list[tuple[str, int, int]] = []
    prev, prev_type, begin = "O", "_", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = _split(tag)
        if _ends(prev, prev_type, prefix, type_):
            out.append((prev_type, begin, i))
        if _starts(prev, prev_type, prefix, type_):
            begin = i
        prev, prev_type = prefix, type_
    return out


def prf(
    gold: list[list[str]], predicted: list[list[str]], scheme: str = TagScheme.BIO
) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (an entity counts when
    type and span match exactly); 0 where nothing was predicted or there was nothing to find.

    >>> prf([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    {'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666}
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    right = found = wanted = 0
    for g, p in zip(gold, predicted, strict=True):
        if len(g) != len(p):
            raise ValueError(f"a sentence of {len(g)} gold tags but {len(p)} predicted")
        truth, guess = set(entities(g, scheme)), set(entities(p, scheme))
        right += len(truth & guess)
        found += len(guess)
        wanted += len(truth)
    precision = right / found if found else 0.0
    recall = right / wanted if wanted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def graph_entities(prefix: tf.Tensor, type_: tf.Tensor):
    """`entities` in the graph over a batch of words `[batch, words]`: each word's prefix code
    (O 0, B 1, I 2, E 3, S 4) and type index (O 0, types from 1). Returns per text the entity
    count `[batch]` and per entity `[batch, max count]` its first and last word, its type index
    and whether it exists (padding after the count)."""
    prev = tf.pad(prefix[:, :-1], [[0, 0], [1, 0]])
    prev_type = tf.pad(type_[:, :-1], [[0, 0], [1, 0]])
    code = _CODES
    inner = tf.equal(prefix, code["I"]) | tf.equal(prefix, code["E"])
    after_end = tf.equal(prev, code["O"]) | tf.equal(prev, code["E"]) | tf.equal(prev, code["S"])
    member = tf.not_equal(prefix, code["O"])
    begins = member & (
        tf.equal(prefix, code["B"])
        | tf.equal(prefix, code["S"])
        | (inner & after_end)
        | tf.not_equal(prev_type, type_)
    )
    # Every word that is not O lies in the chunk begun last (a chunk ends only where the next
    # one begins, or at an O), so entity ids are a running count of the beginnings.
    entity = tf.cumsum(tf.cast(begins, tf.int32), axis=1) - 1
    count = tf.reduce_sum(tf.cast(begins, tf.int32), 1)
    batch, words = tf.shape(prefix)[0], tf.shape(prefix)[1]
    width = tf.reduce_max(tf.concat([count, [0]], 0))
    rows = tf.range(batch)[:, None] * width
    segment = tf.where(member, rows + entity, batch * width)  # the last segment: no entity
    index = tf.broadcast_to(tf.range(words)[None, :], tf.shape(prefix))
    segments = batch * width + 1
    first = tf.math.unsorted_segment_min(index, segment, segments)[:-1]
    last = tf.math.unsorted_segment_max(index, segment, segments)[:-1]
    valid = tf.range(width)[None, :] < count[:, None]
    first = tf.where(valid, tf.reshape(first, [batch, width]), 0)
    last = tf.where(valid, tf.reshape(last, [batch, width]), 0)
    entity_type = tf.where(valid, tf.gather(type_, first, batch_dims=1), 0)
    return count, first, last, entity_type, valid


TASK_CLASS = TokenClassification
