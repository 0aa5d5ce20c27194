"""Optimizers (AdamW, LAMB) with BERT's linear warm-up then linear decay."""

from __future__ import annotations

import keras

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


def build_optimizer(t: TrainingConfig) -> keras.optimizers.Optimizer:
    """The configured optimizer; build it inside `strategy.scope()` so its state is mirrored."""
    schedule = WarmupLinearDecay(t.learning_rate, t.warmup_steps, t.steps)
    clip = {"global_clipnorm": t.clip_norm} if t.clip_norm > 0 else {}
    if t.optimizer == Optimizer.LAMB:
        opt: keras.optimizers.Optimizer = keras.optimizers.Lamb(
            learning_rate=schedule, weight_decay=t.weight_decay or None, epsilon=1e-6, **clip
        )
    else:
        opt = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=t.weight_decay, epsilon=1e-6, **clip
        )
    if t.weight_decay:
        opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return opt
