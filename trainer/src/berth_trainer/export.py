"""Export at the end of training (chief only).

Layout of `output.dir`:

    model.keras          the Keras model (named dict inputs: token_ids, segment_ids,
                         padding_mask[, mask_positions]; output {"logits"})
    saved_model/         TF SavedModel; signature "serving_default" over raw strings:
                           pretraining:    text → top_k_tokens, top_k_ids, top_k_probabilities,
                                           mask_positions, mask_valid
                           classification: text[, text_pair] → probabilities, label_id, label
                         (the serving process must `import tensorflow_text`)
    huggingface/         the same weights as a Hugging Face BERT directory (config.json,
                         model.safetensors, vocab.txt): BertForMaskedLM, BertForPreTraining
                         (with a sentence head) or BertForSequenceClassification
    vocab.txt            the WordPiece vocabulary
    config.json          the trainer config (camelCase) plus labels
    metrics.json         final metrics
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from berth_trainer.config import Task, TrainerConfig
from berth_trainer.data import ExampleEncoder
from berth_trainer.huggingface import export_huggingface
from berth_trainer.modeling import for_serving
from berth_trainer.tasks import FineTuning

#: How many candidates the pretraining signature returns per [MASK].
TOP_K = 5


def export_all(
    cfg: TrainerConfig,
    model: keras.Model,
    encoder: ExampleEncoder,
    vocabulary: list[str],
    label_names: list[str] | None,
    metrics: dict[str, float],
    task: FineTuning | None = None,
) -> None:
    out = cfg.output.dir
    tf.io.gfile.makedirs(out)
    model.save(os.path.join(out, "model.keras"))
    with for_serving(model):
        export_saved_model(
            cfg, model, encoder, vocabulary, label_names, os.path.join(out, "saved_model"), task
        )
    export_huggingface(model, cfg.task, vocabulary, label_names, os.path.join(out, "huggingface"))
    with tf.io.gfile.GFile(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("".join(tok + "\n" for tok in vocabulary))
    config = {**cfg.to_wire(), "labels": label_names}
    for name, data in (("config.json", config), ("metrics.json", metrics)):
        with tf.io.gfile.GFile(os.path.join(out, name), "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True))


def export_saved_model(
    cfg: TrainerConfig,
    model: keras.Model,
    encoder: ExampleEncoder,
    vocabulary: list[str],
    label_names: list[str] | None,
    path: str,
    task: FineTuning | None = None,
) -> None:
    """A SavedModel whose serving signature takes raw strings (tokenizer and packer inside)."""
    # Build the text layers (a tfrecord-trained model never called the tokenizer).
    encoder.packer(encoder.tokenizer(tf.constant(["[MASK]"])))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(encoder.tokenizer)
    archive.track(encoder.packer)
    mask_id = encoder.mask_id

    text = tf.TensorSpec([None], tf.string, name="text")
    if task is not None:
        task.serve(model, archive, label_names)
    elif cfg.task == Task.PRETRAINING:
        vocab = tf.constant(vocabulary)
        p = cfg.training.max_predictions_per_sequence

        def serve(text):
            inputs = encoder.encode_texts(text)
            is_mask = tf.equal(inputs["token_ids"], mask_id)
            order = tf.argsort(tf.cast(tf.logical_not(is_mask), tf.int32), axis=-1, stable=True)
            positions = tf.cast(order[:, :p], tf.int32)
            valid = tf.gather(is_mask, positions, batch_dims=1)
            logits = model({**inputs, "mask_positions": positions}, training=False)["logits"]
            top = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32)), k=TOP_K)
            return {
                "top_k_tokens": tf.gather(vocab, top.indices),
                "top_k_ids": top.indices,
                "top_k_probabilities": top.values,
                "mask_positions": positions,
                "mask_valid": valid,
            }

        archive.add_endpoint("serving_default", serve, input_signature=[text])
    else:
        labels = tf.constant(label_names or [])

        def classify(*texts):
            logits = model(encoder.encode_texts(*texts), training=False)["logits"]
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
            label_id = tf.argmax(probabilities, -1, output_type=tf.int32)
            return {
                "probabilities": probabilities,
                "label_id": label_id,
                "label": tf.gather(labels, label_id),
            }

        if cfg.data.text_pair_field:
            pair = tf.TensorSpec([None], tf.string, name="text_pair")
            archive.add_endpoint(
                "serving_default", lambda text, text_pair: classify(text, text_pair), [text, pair]
            )
        else:
            archive.add_endpoint("serving_default", lambda text: classify(text), [text])
    archive.write_out(path, verbose=False)
