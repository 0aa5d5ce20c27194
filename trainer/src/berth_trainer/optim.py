"""Optimizers (AdamW, LAMB) with BERT's linear warm-up then linear decay."""

from __future__ import annotations

import keras
import tensorflow as tf

from berth_trainer.config import Optimizer, TrainingConfig

#: Variable names excluded from weight decay: LayerNorm scale/offset and every bias.
NO_DECAY_NAMES = ["bias", "gamma", "beta"]


@keras.saving.register_keras_serializable(package="berth")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    >>> s = WarmupLinearDecay(peak=1.0, warmup_steps=10, total_steps=110)
    >>> [round(float(s(x)), 2) for x in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.cast(max(self.warmup_steps, 1), "float32")
        decay_span = keras.ops.cast(max(self.total_steps - self.warmup_steps, 1), "float32")
        rising = self.peak * step / warmup
        falling = self.peak * keras.ops.maximum(0.0, 1.0 - (step - self.warmup_steps) / decay_span)
        return keras.ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@keras.saving.register_keras_serializable(package="berth")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras' AdamW whose Adam update is TensorFlow's one-kernel `ResourceApplyAdam`.

    Keras updates each variable with about ten element-wise ops (three assignments and the
    arithmetic between them), each a full pass over the variable's memory; on BERT-base that
    was a fifth of a CPU training step. `ResourceApplyAdam` computes the same formula
    (`m += (g - m)(1 - β1)`, `v += (g² - v)(1 - β2)`,
    `var -= lr·√(1 - β2ᵗ)/(1 - β1ᵗ) · m / (√v + ε)`) in one kernel, which CPUs, GPUs and
    TPUs (through XLA) all have. Variables, slots, weight decay, clipping, the schedule and
    the config are AdamW's own, so checkpoints are interchangeable with it. A sparse (gather)
    gradient's repeated rows are summed before the update, as for a dense gradient (Keras 3's
    AdamW squares each repeat into `v` separately).
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        i = self._get_variable_index(variable)
        var = variable.value if isinstance(variable, keras.Variable) else variable
        dtype = var.dtype

        def const(x):
            return tf.cast(x, dtype)

        step = const(self.iterations + 1)
        beta_1, beta_2 = const(self.beta_1), const(self.beta_2)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=self._momentums[i].value.handle,
            v=self._velocities[i].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=const(learning_rate),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=const(self.epsilon),
            grad=const(tf.convert_to_tensor(gradient)),  # IndexedSlices: repeats summed
        )


def build_optimizer(t: TrainingConfig) -> keras.optimizers.Optimizer:
    """The configured optimizer; build it inside `strategy.scope()` so its state is mirrored."""
    schedule = WarmupLinearDecay(t.learning_rate, t.warmup_steps, t.steps)
    clip = {"global_clipnorm": t.clip_norm} if t.clip_norm > 0 else {}
    if t.optimizer == Optimizer.LAMB:
        opt: keras.optimizers.Optimizer = keras.optimizers.Lamb(
            learning_rate=schedule, weight_decay=t.weight_decay or None, epsilon=1e-6, **clip
        )
    else:
        opt = FusedAdamW(learning_rate=schedule, weight_decay=t.weight_decay, epsilon=1e-6, **clip)
    if t.weight_decay:
        opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return opt
