"""Export at the end of training (chief only).

Layout of `output.dir`:

    model.keras          the Keras model (named dict inputs: token_ids, segment_ids,
                         padding_mask[, mask_positions]; output {"logits"})
    saved_model/         TF SavedModel; signature "serving_default" over raw strings, the
                         task's (`BertTask.serve`; e.g. pretraining: text → top_k_tokens, ...;
                         classification: text[, text_pair] → probabilities, label_id, label)
                         (the serving process must `import tensorflow_text`)
    huggingface/         the same weights as a Hugging Face BERT directory (config.json,
                         model.safetensors, vocab.txt) of the task's `BertFor...` class
    vocab.txt            the WordPiece vocabulary
    config.json          the trainer config (camelCase) plus labels
    metrics.json         final metrics
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from berth_trainer.huggingface import export_huggingface
from berth_trainer.modeling import for_serving

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask


def export_all(model: keras.Model, task: BertTask, metrics: dict[str, float]) -> None:
    """Write `output.dir` (see the module docstring) for the trained `model` of `task`."""
    out = task.cfg.output.dir
    vocabulary = task.encoder.vocabulary
    tf.io.gfile.makedirs(out)
    model.save(os.path.join(out, "model.keras"))
    with for_serving(model):
        export_saved_model(model, task, os.path.join(out, "saved_model"))
    export_huggingface(model, task, vocabulary, os.path.join(out, "huggingface"))
    with tf.io.gfile.GFile(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("".join(tok + "\n" for tok in vocabulary))
    config = {**task.cfg.to_wire(), "labels": task.labels}
    for name, data in (("config.json", config), ("metrics.json", metrics)):
        with tf.io.gfile.GFile(os.path.join(out, name), "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True))


def export_saved_model(model: keras.Model, task: BertTask, path: str) -> None:
    """A SavedModel whose serving signature takes raw strings (tokenizer and packer inside)."""
    encoder = task.encoder
    # Build the text layers (a tfrecord-trained model never called the tokenizer).
    encoder.packer(encoder.tokenizer(tf.constant(["[MASK]"])))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(encoder.tokenizer)
    archive.track(encoder.packer)
    task.serve(model, archive)
    archive.write_out(path, verbose=False)
