"""Hugging Face BERT checkpoints in and out: a tiny checkpoint written with the `safetensors`
package (no PyTorch) imports with the outputs of an independent NumPy reference; the export
loads back identically, and loads into the real `transformers` library (JAX/Flax classes, in a
separate venv built by hack/hf-venv.sh); mismatches fail with one clear error."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hf_reference import hf_config, random_hf_state, reference_forward, write_hf_checkpoint
from trainer_testlib import TINY_MODEL, classification_config, pretraining_config, task_of

from berth_trainer.checkpointing import init_from
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.huggingface import export_huggingface, hf_to_tf1, tf1_to_hf
from berth_trainer.modeling import build_model
from berth_trainer.synthetic import vocabulary

REPO = Path(__file__).resolve().parents[3]
VOCAB = vocabulary()
SEQ = 16


def tiny_hf_config() -> dict:
    m = TINY_MODEL
    return hf_config(
        len(VOCAB),
        m["hiddenSize"],
        m["numLayers"],
        m["numHeads"],
        m["intermediateSize"],
        m["maxSequenceLength"],
    )


def model_of(corpus, tmp_path, task: str = "pretraining", sentences: bool = True):
    """A random model of `task` and the task."""
    raw = (pretraining_config if task == "pretraining" else classification_config)(corpus, tmp_path)
    if sentences:
        raw["pretraining"] = {"packing": "segmentPairs", "sentencePrediction": "nextSentence"}
    bert_task = task_of(raw, VOCAB)
    return build_model(bert_task), bert_task


def batch(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, len(VOCAB), (2, SEQ)).astype(np.int32)
    mask = np.ones((2, SEQ), np.int32)
    mask[1, 11:] = 0
    return {
        "token_ids": ids * mask,
        "segment_ids": (np.arange(SEQ)[None] >= 6).astype(np.int32).repeat(2, 0),
        "padding_mask": mask,
        "mask_positions": np.array([[1, 2, 7, 9], [3, 4, 10, 0]], np.int32),
    }


def outputs(model, inputs: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model(inputs).items()}


def test_trainer_huggingface_names_translate_both_ways():
    state = random_hf_state(tiny_hf_config(), 0) | {"classifier.weight": np.zeros((3, 4))}
    for name in state:
        tf1, transposed = hf_to_tf1(name)
        assert tf1_to_hf(tf1) == (name, transposed), name
    assert hf_to_tf1("encoder.layer.0.output.dense.weight") == (
        "bert/encoder/layer_0/output/dense/kernel",
        True,
    )  # a bare BertModel's names


def test_trainer_huggingface_import_matches_reference(tmp_path, corpus):
    config, state = tiny_hf_config(), random_hf_state(tiny_hf_config(), 0)
    directory = write_hf_checkpoint(tmp_path / "hf", config, state, VOCAB)
    model, task = model_of(corpus, tmp_path)
    init_from(directory, model, task)
    inputs = batch()
    ours = outputs(model, inputs)
    ref = reference_forward(
        state, config, inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"]
    )
    expected = np.take_along_axis(ref["mlm_logits"], inputs["mask_positions"][..., None], 1)
    np.testing.assert_allclose(ours["logits"], expected, atol=2e-4)
    np.testing.assert_allclose(ours["sentence_logits"], ref["nsp_logits"], atol=2e-4)


def test_trainer_huggingface_export_loads_back_identically(tmp_path, corpus):
    config = tiny_hf_config()
    source = write_hf_checkpoint(tmp_path / "hf", config, random_hf_state(config, 3), VOCAB)
    model, task = model_of(corpus, tmp_path)
    init_from(source, model, task)
    export_huggingface(model, task, VOCAB, str(tmp_path / "export"))
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["architectures"] == ["BertForPreTraining"]
    again, again_task = model_of(corpus, tmp_path / "again")
    init_from(str(tmp_path / "export"), again, again_task)
    inputs = batch(2)
    for key, value in outputs(model, inputs).items():
        np.testing.assert_array_equal(outputs(again, inputs)[key], value, err_msg=key)


_FLAX = """
import json, sys
import numpy as np
import transformers
model = getattr(transformers, sys.argv[1]).from_pretrained(sys.argv[2])
inputs = {k: np.array(v, np.int32) for k, v in json.loads(sys.argv[3]).items()}
out = model(input_ids=inputs["token_ids"], token_type_ids=inputs["segment_ids"],
            attention_mask=inputs["padding_mask"])
names = ("prediction_logits", "seq_relationship_logits", "logits", "start_logits", "end_logits")
print(json.dumps({k: np.asarray(getattr(out, k)).tolist() for k in names if hasattr(out, k)}))
"""


def flax_outputs(hf_python: str, architecture: str, directory, inputs: dict) -> dict:
    """The outputs of `transformers`' `architecture` loaded from `directory` on `inputs`."""
    arg = json.dumps({k: v.tolist() for k, v in inputs.items()})
    result = subprocess.run(
        [hf_python, "-c", _FLAX, architecture, str(directory), arg],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {k: np.array(v) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "architecture"),
    [
        ("pretraining", "FlaxBertForPreTraining"),
        ("classification", "FlaxBertForSequenceClassification"),
    ],
)
def test_trainer_huggingface_export_loads_in_transformers(
    tmp_path, corpus, hf_python, task, architecture
):
    model, bert_task = model_of(corpus, tmp_path, task, sentences=task == "pretraining")  # random
    bert_task.labels = ["negative", "positive"] if task == "classification" else None
    export_huggingface(model, bert_task, VOCAB, str(tmp_path / "export"))
    inputs = batch(4)
    text = {k: v for k, v in inputs.items() if k != "mask_positions"}
    theirs = flax_outputs(hf_python, architecture, tmp_path / "export", text)
    if task == "classification":
        np.testing.assert_allclose(outputs(model, text)["logits"], theirs["logits"], atol=2e-4)
        return
    ours = outputs(model, inputs)
    mlm = np.take_along_axis(theirs["prediction_logits"], inputs["mask_positions"][..., None], 1)
    np.testing.assert_allclose(ours["logits"], mlm, atol=2e-4)
    np.testing.assert_allclose(
        ours["sentence_logits"], theirs["seq_relationship_logits"], atol=2e-4
    )


def fine_tuning_model(tmp_path, task: str, labels: list[str] | None):
    """A random model of a fine-tuning task, built as the trainer builds it."""
    raw = pretraining_config({"vocab": "vocab.txt", "corpus": "x"}, tmp_path)
    raw["task"] = task
    raw["questionAnswering"] = {"docStride": 4, "maxQueryLength": 4}
    bert_task = task_of(raw, VOCAB)
    bert_task.labels = labels  # as `prepare` learns them from data.train
    return build_model(bert_task), bert_task


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "architecture", "labels", "theirs_of"),
    [
        ("regression", "FlaxBertForSequenceClassification", None, {"score": "logits"}),
        (
            "tokenClassification",
            "FlaxBertForTokenClassification",
            ["O", "B-PER", "I-PER"],
            {"logits": "logits"},
        ),
        (
            "questionAnswering",
            "FlaxBertForQuestionAnswering",
            None,
            {"start_logits": "start_logits", "end_logits": "end_logits"},
        ),
    ],
)
def test_trainer_huggingface_fine_tuning_heads_export_and_import(
    tmp_path, hf_python, task, architecture, labels, theirs_of
):
    """Each fine-tuning head is the transformers class's head: the export computes Berth's
    outputs in transformers, and loads back into a fresh model identically."""
    model, bert_task = fine_tuning_model(tmp_path, task, labels)
    directory = tmp_path / "export"
    export_huggingface(model, bert_task, VOCAB, str(directory))
    assert json.loads((directory / "config.json").read_text())["architectures"] == [
        architecture.removeprefix("Flax")
    ]
    inputs = {k: v for k, v in batch(5).items() if k != "mask_positions"}
    theirs = flax_outputs(hf_python, architecture, directory, inputs)
    ours = outputs(model, inputs)
    for mine, their in theirs_of.items():
        np.testing.assert_allclose(
            ours[mine], theirs[their].reshape(ours[mine].shape), atol=2e-4, err_msg=mine
        )
    again, again_task = fine_tuning_model(tmp_path, task, labels)
    init_from(str(directory), again, again_task)
    for key, value in ours.items():
        np.testing.assert_array_equal(outputs(again, inputs)[key], value, err_msg=key)


def _edit(tmp_path, config=None, drop=(), rename=None) -> str:
    config = config or tiny_hf_config()
    state = random_hf_state(tiny_hf_config(), 0)
    state = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state
    directory = write_hf_checkpoint(tmp_path / "bad", config, state, VOCAB)
    if rename:
        path = Path(directory) / "model.safetensors"
        path.rename(path.with_name(rename))
    return directory


@pytest.mark.parametrize(
    ("edit", "task", "named"),
    [
        ({"config": tiny_hf_config() | {"hidden_size": 32}}, "pretraining", "hidden_size 32"),
        ({"config": tiny_hf_config() | {"model_type": "roberta"}}, "pretraining", "'roberta'"),
        ({"config": tiny_hf_config() | {"hidden_act": "relu"}}, "pretraining", "not a GELU"),
        ({"drop": ("cls.predictions.",)}, "pretraining", "cls/predictions/output_bias"),
        ({"drop": ("bert.pooler.",)}, "classification", "the pooler is needed"),
        ({"drop": ("bert.encoder.layer.1.output.dense",)}, "pretraining", "layer_1/output"),
        ({"rename": "pytorch_model.bin"}, "pretraining", "needs PyTorch"),
    ],
)
def test_trainer_huggingface_mismatch_is_one_clear_error(tmp_path, corpus, edit, task, named):
    directory = _edit(tmp_path, **edit)
    model, bert_task = model_of(corpus, tmp_path, task, sentences=False)
    with pytest.raises(TrainerError) as err:
        init_from(directory, model, bert_task)
    assert err.value.code == ExitCode.CHECKPOINT_MISMATCH
    assert named in str(err.value), str(err.value)


def test_trainer_huggingface_exact_gelu_loads_with_a_warning(tmp_path, corpus, caplog):
    directory = _edit(tmp_path, config=tiny_hf_config() | {"hidden_act": "gelu"})
    logger = logging.getLogger("berth_trainer")
    logger.addHandler(caplog.handler)
    try:
        init_from(directory, *model_of(corpus, tmp_path, sentences=False))
    finally:
        logger.removeHandler(caplog.handler)
    assert "exact GELU" in caplog.text
