"""`predict`: query an exported model with raw strings."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode


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
