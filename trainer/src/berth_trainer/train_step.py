"""One custom training step that runs identically under the default, Mirrored,
MultiWorkerMirrored and TPU strategies.

`model.fit` crashes under MultiWorkerMirroredStrategy (see docs/trainer.md), so the step is
`strategy.run(replica_fn)` inside one `tf.function`. Losses are averaged over the *global*
batch (`tf.nn.compute_average_loss`) and the Keras optimizer sums gradients across replicas.
Gradient accumulation splits each replica's batch into micro-batches inside the replica
function (one `apply_gradients` per step, so the LR schedule counts optimizer steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from berth_trainer.config import Precision, TrainerConfig

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask

#: What a step counts (summed over replicas and micro-batches), after its loss.
STATS = (
    "correct",  # MLM / classification predictions right
    "count",  # … of how many
    "sentence_correct",  # NSP / SOP predictions right
    "sentence_count",  # … of how many
    "tokens",  # non-padding positions of the batch
    "positions",  # all positions of the batch
)
#: Order of the values a step returns (summed over replicas). "stop" counts the workers that
#: got SIGTERM, "skip_save" those whose save would not fit the grace period (preemption.py).
STEP_OUTPUTS = ("loss", *STATS, "stop", "skip_save", "nonfinite")


def rates(sums: dict[str, float]) -> dict[str, float]:
    """Accuracies and the non-padding fraction from a step's (or a validation's) `STATS`
    (no accuracy for a task that counts no predictions, e.g. regression)."""
    out = {"non_padding_fraction": sums["tokens"] / max(sums["positions"], 1)}
    if sums["count"]:
        out["accuracy"] = sums["correct"] / sums["count"]
    if sums["sentence_count"]:
        out["sentence_accuracy"] = sums["sentence_correct"] / sums["sentence_count"]
    return out


def step_stats(
    task: BertTask, outputs: dict[str, tf.Tensor], features: dict, labels: dict
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example loss and the `STATS` vector of one batch of `task`."""
    per_example, stats = task.loss(outputs, labels)
    padding = tf.cast(features["padding_mask"], tf.float32)
    stats["tokens"] = tf.reduce_sum(padding)
    stats["positions"] = tf.cast(tf.size(padding), tf.float32)
    return per_example, tf.stack([stats.get(k, tf.zeros([])) for k in STATS])


def _densify(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    cfg: TrainerConfig,
    task: BertTask,
    variables: list | None = None,
    loss_scale: tf.Variable | None = None,
) -> Callable:
    """A `tf.function(iterator, stop) -> tensor[len(STEP_OUTPUTS)]` doing one optimizer step.

    `stop` is this worker's votes `[stop, skip_save]` (0/1 each; a scalar, as
    bench/trainer_throughput.py passes, is a stop vote alone): its wish to stop (SIGTERM), and
    to exit without saving (the save would not fit the grace period). Their sums over workers
    come back in the "stop" and "skip_save" outputs, so every worker stops at the same step
    and takes the same decision, in the all-reduce the step does anyway.

    With mixed_float16, `loss_scale` is the dynamic loss scale; a non-finite gradient on any
    replica makes every replica skip the step together and halves the scale.
    """
    t = cfg.training
    accum = t.gradient_accumulation_steps
    global_batch = t.global_batch_size
    variables = list(variables if variables is not None else task.trainable_variables(model))
    fp16 = t.precision == Precision.MIXED_FLOAT16

    def forward_backward(features, labels):
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            per_example, stats = step_stats(task, outputs, features, labels)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = loss * loss_scale if fp16 else loss
        grads = tape.gradient(scaled, variables)
        return loss, stats, grads

    if cfg.training.jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def accumulate(features, labels):
        if accum == 1:
            return forward_backward(features, labels)

        def micro(x):
            return tf.reshape(x, [accum, x.shape[0] // accum, *x.shape[1:]])

        feats = tf.nest.map_structure(micro, features)
        labs = tf.nest.map_structure(micro, labels)
        total, stats = tf.zeros([]), tf.zeros([len(STATS)])
        grads = [tf.zeros(v.shape, v.dtype) for v in variables]
        for i in tf.range(accum):
            pick = lambda x: x[i]  # noqa: B023,E731
            loss, s, g = forward_backward(
                tf.nest.map_structure(pick, feats), tf.nest.map_structure(pick, labs)
            )
            total, stats = total + loss, stats + s
            grads = [a + tf.cast(_densify(b), a.dtype) for a, b in zip(grads, g, strict=True)]
        return total, stats, grads

    def replica_fn(features, labels, stop):
        ctx = tf.distribute.get_replica_context()
        loss, stats, grads = accumulate(features, labels)
        nonfinite = tf.zeros([])
        if fp16:
            grads = [g / tf.cast(loss_scale, g.dtype) for g in map(_densify, grads)]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            nonfinite = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)
            )
            # Every replica sees the same flag, so all take the same branch together.
            grads = [tf.where(nonfinite > 0, tf.zeros_like(g), g) for g in grads]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        votes = tf.reshape(stop, [-1])
        if votes.shape[0] == 1:
            votes = tf.concat([votes, [0.0]], 0)
        return tf.concat([[loss], stats, votes, [nonfinite]], 0)

    @tf.function
    def train_step(iterator, stop):
        features, labels = next(iterator)
        per_replica = strategy.run(replica_fn, args=(features, labels, stop))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step
