"""Stop a training whose loss diverged to NaN or infinity (exit code 7, `ExitCode.DIVERGED`).

The runner calls `LossWatch.check` once per step call with the call's outputs; it raises a
`TrainerError` naming the step when training cannot recover:

- float32 and mixed_bfloat16 (float32's exponent range): nothing skips a bad step, so the first
  non-finite loss — or non-finite gradient, were the step to count them — ends training: the
  weights are, or are about to be, NaN, and every later step and checkpoint would be too.
- mixed_float16: the step already skips a step whose gradients are non-finite on any replica
  and halves the dynamic loss scale (`runner._update_loss_scale`, floor 1.0): that is the cure
  for a backward pass overflowing float16, so it gets its chance. Training ends when it has had
  it: a step is still non-finite with the scale at its floor, or the LOSS itself (a forward pass
  that overflows, which no loss scale changes) stays non-finite for `LOSS_PATIENCE` calls in a
  row.

The outputs are all-reduced, so every worker sees the same values and stops at the same step.
Imports nothing heavy (no TensorFlow): the unit tests build it directly.
"""

from __future__ import annotations

import math

from berth_trainer.config import Precision
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

#: The dynamic loss scale's floor (`runner._update_loss_scale` never halves below it).
LOSS_SCALE_FLOOR = 1.0
#: mixed_float16: step calls in a row with a non-finite loss before training stops. One batch
#: that overflows the forward pass is harmless (its step is skipped); a run of them means the
#: weights overflow float16 on every batch. 20 is more than the 16 calls the floor rule needs
#: from the initial scale 2**15 (so a gradient overflow is always blamed on the floor first)
#: while still stopping a scale that grew past 2**19 in a long good stretch (it doubles every
#: 2000 good steps, with no ceiling) within 20 skipped steps.
LOSS_PATIENCE = 20

_ADVICE = "lower training.learningRate or raise training.warmupSteps"


class LossWatch:
    """Watches each step call's loss; `check` raises `TrainerError(ExitCode.DIVERGED)`.

    >>> watch = LossWatch("float32")
    >>> watch.check(1, 2.5, 0.0, None)
    >>> watch.check(2, float("nan"), 0.0, None)
    Traceback (most recent call last):
    ...
    berth_trainer.errors.TrainerError: training diverged: the loss is nan at step 2 \
(training.precision float32); lower training.learningRate or raise training.warmupSteps, then \
start again from scratch
    """

    def __init__(self, precision: str) -> None:
        self.precision = Precision(precision)
        #: First step of the current run of non-finite calls (None: the last call was finite).
        self._first_bad: int | None = None
        #: Calls in a row with a non-finite loss.
        self._bad_losses = 0

    def check(
        self, step: int, loss: float, nonfinite: float, loss_scale: float | None, steps: int = 1
    ) -> None:
        """After the call that ended at `step` (1-based, as the runner counts after the call)
        and ran `steps` optimizer steps: `loss` its loss, `nonfinite` how many replicas had
        non-finite gradients (0 when none), `loss_scale` the loss scale the call ran with
        (read before the runner updates it; None outside mixed_float16)."""
        first = step - steps + 1
        where = f"at step {step}" if steps == 1 else f"in steps {first}-{step}"
        bad_loss = not math.isfinite(loss)
        if not bad_loss and nonfinite <= 0:
            self._first_bad, self._bad_losses = None, 0
            return
        if self._first_bad is None:
            self._first_bad = first
        self._bad_losses = self._bad_losses + 1 if bad_loss else 0
        precision = f"training.precision {self.precision}"
        if self.precision != Precision.MIXED_FLOAT16:
            what = f"the loss is {loss}" if bad_loss else "the gradients are not finite"
            self._diverged(f"{what} {where} ({precision})", _ADVICE)
        if loss_scale is not None and loss_scale <= LOSS_SCALE_FLOOR:
            what = "the loss is" if bad_loss else "the gradients are"
            self._diverged(
                f"{what} still not finite {where} with the loss scale at its floor "
                f"{LOSS_SCALE_FLOOR} (loss {loss}, {precision})",
                f"{_ADVICE}, or use mixed_bfloat16",
            )
        if self._bad_losses >= LOSS_PATIENCE:
            self._diverged(
                f"the loss has not been finite for {self._bad_losses} step calls in a row "
                f"(steps {self._first_bad}-{step}, now {loss}; {precision}): loss scaling "
                "cannot fix a forward pass that overflows float16",
                f"{_ADVICE}, or use mixed_bfloat16",
            )

    def _diverged(self, what: str, advice: str) -> None:
        # The weights the first bad call started from came out of the step before it, whose
        # update may already have been non-finite: only a checkpoint one step older is sure.
        assert self._first_bad is not None
        good = self._first_bad - 2
        restart = f"a checkpoint of step {good} or earlier" if good > 0 else "scratch"
        message = f"training diverged: {what}; {advice}, then start again from {restart}"
        raise TrainerError(ExitCode.DIVERGED, message)
