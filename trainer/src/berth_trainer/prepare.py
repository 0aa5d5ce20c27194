"""`prepare` (text → pre-tokenized tfrecord) and `predict` (query an exported model)."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
import tensorflow as tf

from berth_trainer.config import PretrainingConfig
from berth_trainer.corpus import read_documents
from berth_trainer.data import resolve_files
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.vocab import load_vocabulary, make_tokenizer


def prepare_tfrecord(
    vocabulary: str,
    pattern: str,
    output: str,
    sequence_length: int,
    pretraining: PretrainingConfig,
    shards: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Tokenize and pack text files (one sentence per line, a blank line between documents)
    into `shards` TFRecord files of `tf.train.Example`s with the int64 features
    `corpus.PACKED_FEATURES` (masking happens at training time, so it stays dynamic).

    Files are read one at a time (a sentence pair's random B comes from the same file) and
    examples are dealt round-robin over the shards. One shard is written to `output`, several
    to `output-00000-of-0000N`. Returns the counts and the non-padding fraction.
    """
    from berth_trainer.packing import Specials, pack

    tokens = load_vocabulary(vocabulary)
    tokenizer = make_tokenizer(tokens)
    files = resolve_files(pattern, "--input")
    paths = (
        [output] if shards == 1 else [f"{output}-{i:05d}-of-{shards:05d}" for i in range(shards)]
    )
    specials = Specials.of(tokens)
    written = tokens_written = 0
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for n, path in enumerate(files):
            rng = random.Random(f"{seed}/{n}")
            documents = read_documents([path], tokenizer, tokens, pretraining.whole_word_masking)
            rng.shuffle(documents)
            for example in pack(
                documents,
                pretraining.packing,
                sequence_length,
                specials,
                rng,
                pretraining.sentence_prediction,
                pretraining.short_sequence_probability,
            ):
                feature = {
                    k: tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(v)))
                    for k, v in dataclasses.asdict(example).items()
                }
                record = tf.train.Example(features=tf.train.Features(feature=feature))
                writers[written % shards].write(record.SerializeToString())
                written += 1
                tokens_written += int(np.sum(example.token_ids != specials.pad))
    finally:
        for w in writers:
            w.close()
    if not written:
        raise TrainerError(ExitCode.DATA_INVALID, f"--input: no text lines in {files}")
    return {
        "examples": written,
        "shards": shards,
        "non_padding_fraction": round(tokens_written / (written * sequence_length), 4),
    }


def predict(model_dir: str, texts: list[str]) -> list[dict]:
    """Run the exported SavedModel's serving signature on raw strings: one string per example
    for a model with one input (`text`, `source`), else a JSON object per example naming every
    input (`{"question": ..., "context": ...}`, `{"text": ..., "text_pair": ...}`)."""
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)

    path = os.path.join(model_dir, "saved_model")
    if not tf.io.gfile.exists(path):
        raise TrainerError(ExitCode.CONFIG_INVALID, f"--model: no saved_model/ in {model_dir}")
    from berth_trainer.tasks import task_class

    with tf.io.gfile.GFile(os.path.join(model_dir, "config.json")) as f:
        task = task_class(json.load(f).get("task", "pretraining"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    names = sorted(serve.structured_input_signature[1])
    inputs = _predict_inputs(names, texts)
    out = {k: v.numpy() for k, v in serve(**inputs).items()}
    results = [
        task.prediction(text, {k: v[i] for k, v in out.items()}) for i, text in enumerate(texts)
    ]
    return json.loads(json.dumps(results))


def _predict_inputs(names: list[str], texts: list[str]) -> dict[str, tf.Tensor]:
    if len(names) == 1:
        return {names[0]: tf.constant(texts)}
    columns: dict[str, list] = {n: [] for n in names}
    for text in texts:
        try:
            example = json.loads(text)
        except json.JSONDecodeError:
            example = None
        if not isinstance(example, dict) or sorted(example) != names:
            raise TrainerError(
                ExitCode.CONFIG_INVALID,
                f"predict: this model takes the inputs {', '.join(names)}: pass each example as "
                f"a JSON object with exactly those keys, not {text[:80]!r}",
            )
        for n in names:
            value = example[n]
            columns[n].append([str(v) for v in value] if isinstance(value, list) else str(value))
    return {n: tf.constant(v) for n, v in columns.items()}
