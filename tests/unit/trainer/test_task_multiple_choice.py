"""Multiple choice (SWAG style): a tiny model learning a synthetic set through the CLI, its
export choosing among raw strings in a fresh process and loading in `transformers` as
`BertForMultipleChoice` with Berth's logits, initialisation from Google, Hugging Face and Berth
checkpoints, and bad rows named by file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from trainer_testlib import TINY_MODEL, cli_env, failed_training, train_to_metrics

from berth_trainer.checkpointing import init_from
from berth_trainer.config import TrainerConfig
from berth_trainer.data import ExampleEncoder
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.google_checkpoint import tf1_value, weight_map
from berth_trainer.huggingface import export_huggingface
from berth_trainer.modeling import build_model
from berth_trainer.tasks import for_task
from berth_trainer.tasks.multiple_choice import Example
from tests.support.tiny import CHOICE_WORDS, write_choices

REPO = Path(__file__).resolve().parents[3]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHOICE_WORDS]


def _config(tmp_path: Path) -> dict:
    return {
        "task": "multipleChoice",
        "vocabulary": str(tmp_path / "vocab.txt"),
        "model": dict(TINY_MODEL),
        "data": {
            "train": write_choices(tmp_path, 512, 1),
            "validation": write_choices(tmp_path, 128, 2),
            "format": "jsonl",
        },
        "training": {
            "sequenceLength": 8,
            "globalBatchSize": 32,
            "steps": 100,
            "learningRate": 0.002,
            "warmupSteps": 10,
            "logEverySteps": 5,
        },
        "checkpoint": {"everySteps": 50},
        "output": {"dir": str(tmp_path / "out")},
    }


EXAMPLES = [
    ("red cat", ["sun tree", "dog sky", "cat blue", "green sun"], 2),
    ("sky tree", ["tree dog", "red cat", "blue green", "sun cat"], 0),
]

#: The export in a fresh process: raw strings in, its outputs as JSON out.
_SERVE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
examples = json.loads(sys.argv[2])
out = serve(context=tf.constant([c for c, _ in examples]),
            endings=tf.constant([e for _, e in examples]))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""

#: transformers' BertForMultipleChoice (Flax) on `[batch, choices, n]` features.
_FLAX = """
import json, sys
import numpy as np
import transformers
model = transformers.FlaxBertForMultipleChoice.from_pretrained(sys.argv[1])
f = {k: np.array(v, np.int32) for k, v in json.loads(sys.argv[2]).items()}
out = model(input_ids=f["token_ids"], token_type_ids=f["segment_ids"],
            attention_mask=f["padding_mask"])
print(json.dumps(np.asarray(out.logits).tolist()))
"""


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )


def _answer(proc: subprocess.Popen):
    """The JSON a `_start`ed process printed last."""
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.splitlines()[-1])


@pytest.mark.slow
def test_multiple_choice_learns_and_exports_raw_strings_and_huggingface(tmp_path, hf_python):
    cfg = _config(tmp_path)
    metrics = train_to_metrics(cfg, tmp_path)
    assert metrics["validation_accuracy"] >= 0.9, metrics
    assert metrics["validation_accuracy"] > metrics["initial_validation_accuracy"] + 0.3, metrics
    out = tmp_path / "out"
    hf = json.loads((out / "huggingface" / "config.json").read_text())
    assert hf["architectures"] == ["BertForMultipleChoice"]

    # The SavedModel on raw strings and transformers on the same features, side by side.
    pairs = [(context, endings) for context, endings, _ in EXAMPLES]
    encoded = _task(cfg).encode([Example(*x, "test") for x in EXAMPLES], "data.validation")
    features = json.dumps({k: v.tolist() for k, v in encoded.features.items()})
    serving = _start([sys.executable, "-c", _SERVE, str(out / "saved_model"), json.dumps(pairs)])
    transformers = _start([hf_python, "-c", _FLAX, str(out / "huggingface"), features])
    ours = keras.models.load_model(out / "model.keras")(encoded.features)["logits"].numpy()

    served = _answer(serving)
    assert served["choice"] == [label for _, _, label in EXAMPLES], served
    probabilities = np.array(served["probabilities"])
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(tf.nn.softmax(ours).numpy(), probabilities, atol=1e-5)
    np.testing.assert_allclose(ours, np.array(_answer(transformers)), atol=2e-4)


def _task(raw: dict):
    cfg = TrainerConfig.model_validate(raw)
    return for_task(cfg, ExampleEncoder(cfg, VOCAB))


def _blank_task(tmp_path: Path):
    """A multipleChoice task of the tiny model; no data read yet."""
    return _task(
        {
            "task": "multipleChoice",
            "vocabulary": "vocab.txt",
            "model": dict(TINY_MODEL),
            "data": {"train": "x.jsonl", "format": "jsonl"},
            "training": {"sequenceLength": 8},
            "output": {"dir": str(tmp_path / "out")},
        }
    )


def _task_and_model(tmp_path: Path):
    task = _blank_task(tmp_path)
    return task, build_model(task)


def _features(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, len(VOCAB), (2, 4, 8)).astype(np.int32)
    mask = np.ones((2, 4, 8), np.int32)
    mask[1, :, 6:] = 0
    return {
        "token_ids": ids * mask,
        "segment_ids": (np.arange(8) >= 4).astype(np.int32) * np.ones((2, 4, 1), np.int32),
        "padding_mask": mask,
    }


@pytest.mark.parametrize("source", ["google", "huggingface", "berth"])
def test_multiple_choice_initialises_from_checkpoints(tmp_path, source):
    task, model = _task_and_model(tmp_path)
    rng = np.random.default_rng(3)
    for w in model.weights:  # every weight random, the classifier's bias too
        w.assign(rng.normal(0, 0.1, w.shape).astype(w.dtype))
    path = tmp_path / source
    if source == "google":
        weights = {n: tf1_value(v, kind) for n, (v, kind) in weight_map(model).items()}
        assert {"output_weights", "output_bias"} <= set(weights)
        path.mkdir()
        names = sorted(weights)
        tf.raw_ops.SaveV2(
            prefix=str(path / "bert_model.ckpt"),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(weights[n]) for n in names],
        )
        path = path / "bert_model.ckpt"
    elif source == "huggingface":
        export_huggingface(model, task, VOCAB, str(path))
    else:
        tf.train.Checkpoint(
            backbone=model.get_layer("bert"), head=model.get_layer("classifier")
        ).save(str(path / "ckpt"))
        (path / "task.txt").write_text("multipleChoice")
    fresh = type(model).from_config(model.get_config())  # the config round-trips too
    inputs = _features(4)
    before = fresh(inputs)["logits"].numpy()
    init_from(str(path), fresh, task)
    expected = model(inputs)["logits"].numpy()
    assert expected.shape == (2, 4)
    assert not np.allclose(before, expected, atol=1e-3)
    np.testing.assert_allclose(fresh(inputs)["logits"].numpy(), expected, atol=1e-5)


GOOD = {"context": "red cat", "endings": ["sun", "dog", "cat", "sky"], "label": 2}


def _bad_file(tmp_path: Path, row: dict) -> Path:
    """A jsonl whose line 2 is `row`."""
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n{json.dumps(row)}\n")
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (GOOD | {"endings": ["sun", "dog", "cat"]}, "endings has 3 endings, "),
        (GOOD | {"endings": "sun dog cat sky"}, "endings is not a list of strings"),
        (GOOD | {"label": 4}, "label 4 is not an index 0..3"),
        (GOOD | {"label": -1}, "label -1 is not an index 0..3"),
        (GOOD | {"label": "2"}, "label '2' is not an integer index"),
        (GOOD | {"label": 1.0}, "label 1.0 is not an integer index"),
        (GOOD | {"context": ["red"]}, "context is not a string"),
    ],
)
def test_multiple_choice_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _bad_file(tmp_path, row)
    task = _blank_task(tmp_path)
    with pytest.raises(TrainerError) as err:
        task.prepare([str(path)], [])
    assert err.value.code == ExitCode.DATA_INVALID
    assert f"data.train: {path}:2: {message}" in str(err.value)


def test_multiple_choice_bad_row_exits_3_through_the_cli(tmp_path):
    cfg = _config(tmp_path)
    path = _bad_file(tmp_path, GOOD | {"endings": ["sun", "dog", "cat"]})
    cfg["data"] = {"train": str(path), "format": "jsonl"}
    assert (
        f"data.train: {path}:2: endings has 3 endings, multipleChoice.numChoices is 4"
        in failed_training(cfg, tmp_path)
    )
