"""Model pieces: config round-trips, clone_model, the XLA-compiled step, gradient accumulation."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from trainer_testlib import classification_config, pretraining_config, task_of

from berth_trainer.activations import fused_gelu
from berth_trainer.config import TrainerConfig
from berth_trainer.modeling import build_model, for_serving
from berth_trainer.optim import WarmupLinearDecay, build_optimizer
from berth_trainer.train_step import make_train_step


def _cfg(corpus, tmp_path, task: str, **training) -> TrainerConfig:
    make = pretraining_config if task == "pretraining" else classification_config
    return TrainerConfig.model_validate(make(corpus, tmp_path, **training))


def _batch(cfg: TrainerConfig, corpus) -> tuple[dict, dict]:
    return next(iter(task_of(cfg, prepare=True).dataset(8, (0, 1))))


@pytest.mark.parametrize(
    ("task", "sentences"),
    [("pretraining", None), ("pretraining", "nextSentence"), ("classification", None)],
)
def test_trainer_model_config_round_trip_and_clone(tmp_path, corpus, task, sentences):
    raw = _cfg(corpus, tmp_path, task).to_wire()
    if sentences:
        raw["pretraining"] = {"packing": "segmentPairs", "sentencePrediction": sentences}
    cfg = TrainerConfig.model_validate(raw)
    keras.utils.set_random_seed(0)
    model = build_model(task_of(cfg))
    features, _ = _batch(cfg, corpus)
    expected = model(features)
    assert ("sentence_logits" in expected) == bool(sentences)

    # Pretraining is a subclassed `BertPretrainer`: `keras.Model.from_config` rebuilds only
    # functional configs, so rebuild through the model's own class.
    rebuilt = type(model).from_config(model.get_config())
    clone = keras.models.clone_model(model)
    for again in (rebuilt, clone):
        again.set_weights(model.get_weights())
        for key, value in again(features).items():
            np.testing.assert_allclose(value, expected[key], atol=1e-5, err_msg=key)
    for layer in model.layers:
        again = layer.__class__.from_config(layer.get_config())
        assert again.get_config() == layer.get_config(), layer.name


def test_trainer_mlm_head_stays_tied_through_config_clone_and_save(tmp_path, corpus):
    cfg = _cfg(corpus, tmp_path, "pretraining")
    model = build_model(task_of(cfg))
    features, _ = _batch(cfg, corpus)
    expected = model(features)["logits"]

    def embedding(m):
        return m.get_layer("bert").token_embedding

    path = str(tmp_path / "model.keras")
    model.save(path)
    for again in (
        type(model).from_config(model.get_config()),
        keras.models.clone_model(model),
        keras.saving.load_model(path),
    ):
        assert again.get_layer("mlm_head").token_embedding is embedding(again)
        assert len(again.weights) == len(model.weights)  # no second vocabulary matrix
        again.set_weights(model.get_weights())
        np.testing.assert_allclose(again(features)["logits"], expected, atol=1e-5)
        # The tie is live: changing the input embedding changes the output projection.
        embedding(again).embeddings.assign(embedding(again).embeddings * 2.0)
        assert not np.allclose(again(features)["logits"], expected, atol=1e-3)
    assert "output_kernel" not in {w.path.rsplit("/", 1)[-1] for w in model.weights}

    # The head skips keras-hub's transposed copy of the embedding, not its arithmetic.
    head = model.get_layer("mlm_head")
    encoded = model.get_layer("bert")(
        {k: features[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    )["sequence_output"]
    np.testing.assert_allclose(
        head(encoded, mask_positions=features["mask_positions"]),
        keras_hub.layers.MaskedLMHead.call(head, encoded, features["mask_positions"]),
        atol=1e-5,
    )


def test_trainer_schedule_round_trip():
    schedule = WarmupLinearDecay(peak=1e-3, warmup_steps=10, total_steps=100)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert again.get_config() == schedule.get_config()
    assert [float(schedule(s)) for s in (0, 10, 100)] == pytest.approx([0.0, 1e-3, 0.0])


def _one_step(cfg: TrainerConfig, corpus, features, labels, seed: int = 0):
    keras.utils.set_random_seed(seed)
    strategy = tf.distribute.get_strategy()
    task = task_of(cfg)
    model = build_model(task)
    variables = task.trainable_variables(model)
    optimizer = build_optimizer(cfg.training)
    optimizer.build(variables)
    step = make_train_step(model, optimizer, strategy, cfg, task, variables)
    out = step(iter([(features, labels)]), tf.constant(0.0))
    assert np.isfinite(out.numpy()).all()
    return float(out[0]), [v.numpy() for v in variables]


def test_trainer_step_compiles_with_xla_and_accumulation_matches(tmp_path, corpus):
    base = _cfg(corpus, tmp_path, "pretraining", globalBatchSize=8, warmupSteps=0)
    features, labels = _batch(base, corpus)
    loss, plain = _one_step(base, corpus, features, labels)
    # Adam's first update is about ±lr per element, so gradients that differ only by float
    # rounding near zero may move an element by up to 2·lr: compare with that tolerance.
    atol = 2 * base.training.learning_rate

    xla = base.training.model_copy(update={"jit_compile": True})
    xla_loss, compiled = _one_step(
        base.model_copy(update={"training": xla}), corpus, features, labels
    )
    assert xla_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(plain, compiled, strict=True):
        np.testing.assert_allclose(a, b, atol=atol)

    accum = base.training.model_copy(update={"gradient_accumulation_steps": 2})
    acc_loss, accumulated = _one_step(
        base.model_copy(update={"training": accum}), corpus, features, labels
    )
    assert acc_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(plain, accumulated, strict=True):
        np.testing.assert_allclose(a, b, atol=atol)


def _gradient_graph(model: keras.Model, task, features: dict):
    """The traced graph of d(sum of logits)/d(trained weights), and the gradients themselves."""
    variables = task.trainable_variables(model)

    @tf.function
    def grads(features):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(features, training=False)["logits"])
        return tape.gradient(loss, variables)

    return grads.get_concrete_function(features).graph, grads(features)


@pytest.mark.parametrize("task", ["pretraining", "classification"])
def test_trainer_backbone_fuses_gelu_recomputes_layer_norm_with_the_same_gradients(
    tmp_path, corpus, task
):
    cfg = _cfg(corpus, tmp_path, task)
    bert_task = task_of(cfg)
    model = build_model(bert_task)
    features, _ = _batch(cfg, corpus)
    # Rebuilt from its config, the same model is keras-hub's own: Keras' GELU, no remat.
    plain = type(model).from_config(model.get_config())
    plain.set_weights(model.get_weights())
    fast_graph, fast_grads = _gradient_graph(model, bert_task, features)
    plain_graph, plain_grads = _gradient_graph(plain, bert_task, features)

    def count(graph, op_type: str) -> int:
        return sum(op.type == op_type for op in graph.get_operations())

    layers = cfg.model.resolved().num_layers
    # Recomputed in the backward pass: each LayerNormalization's rsqrt appears once more.
    # Fails if Keras stops honouring `Layer._remat_mode`.
    layer_norms = 1 + 2 * layers
    assert count(fast_graph, "Rsqrt") - count(plain_graph, "Rsqrt") == layer_norms
    # Each feed-forward GELU is the fused kernel: its tanh is inside the XLA-compiled
    # functions, not in the graph, and nothing of it is recomputed.
    assert count(plain_graph, "Tanh") - count(fast_graph, "Tanh") == layers
    dense = [
        layer
        for layer in model._flatten_layers(recursive=True)
        if layer.name == "feedforward_intermediate_dense"
    ]
    assert len(dense) == layers and all(d.activation is fused_gelu for d in dense)
    # Export traces with Keras' own ops (a SavedModel would carry the custom gradients and
    # XLA functions), then restores the fast ones.
    with for_serving(model):
        serving_graph = _gradient_graph(model, bert_task, features)[0]
        assert count(serving_graph, "Rsqrt") == count(plain_graph, "Rsqrt")
        assert count(serving_graph, "Tanh") == count(plain_graph, "Tanh")
    assert all(d.activation is fused_gelu for d in dense)
    assert count(_gradient_graph(model, bert_task, features)[0], "Rsqrt") == count(
        fast_graph, "Rsqrt"
    )
    # ...and give the same gradients to float32 rounding (the GELU is another kernel: 2e-6
    # relative), LayerNorm scales and offsets included.
    variables = bert_task.trainable_variables(model)
    assert len(fast_grads) == len(plain_grads) == len(variables)
    for v, a, b in zip(variables, fast_grads, plain_grads, strict=True):
        assert a is not None and b is not None, v.path
        np.testing.assert_allclose(
            tf.convert_to_tensor(a), tf.convert_to_tensor(b), rtol=2e-6, atol=1e-5, err_msg=v.path
        )
