"""A diverged training stops with exit code 7 naming the step (`divergence.LossWatch`; one real
training through the CLI proves it), and a diverged regression model's validation metrics read
NaN, not a perfect correlation."""

from __future__ import annotations

import doctest
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest
from trainer_testlib import json_lines, pretraining_config, train_args, write_config

from berth_trainer import divergence
from berth_trainer.cli import main
from berth_trainer.divergence import LOSS_PATIENCE, LossWatch
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode, is_retryable
from berth_trainer.tasks.regression import correlations

NAN, INF = math.nan, math.inf


def _run(precision: str, calls: Sequence[tuple[float, float, float | None]]) -> tuple[int, str]:
    """Feed `calls` (loss, nonfinite, loss_scale) as steps 1, 2, ...: the step that stopped
    training and its message, or (0, "") when none did."""
    watch = LossWatch(precision)
    for step, (loss, nonfinite, scale) in enumerate(calls, start=1):
        try:
            watch.check(step, loss, nonfinite, scale)
        except TrainerError as err:
            assert err.code == ExitCode.DIVERGED
            return step, str(err)
    return 0, ""


def _halving(bad: int, start: float = 2.0**15) -> list[tuple[float, float, float | None]]:
    """`bad` non-finite mixed_float16 calls, the scale halving after each as the runner does."""
    calls: list[tuple[float, float, float | None]] = []
    scale = start
    for _ in range(bad):
        calls.append((NAN, 1.0, scale))
        scale = max(scale / 2, 1.0)
    return calls


def test_diverged_is_a_permanent_exit_code() -> None:
    assert ExitCode.DIVERGED == 7
    assert not is_retryable(ExitCode.DIVERGED)
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_loss_stops_at_once(precision: str, bad: float) -> None:
    step, message = _run(
        precision, [(2.5, 0.0, None)] * 9 + [(bad, 0.0, None)] + [(1.0, 0.0, None)] * 5
    )
    assert step == 10
    assert message.startswith(f"training diverged: the loss is {bad} at step 10 ")
    assert f"training.precision {precision}" in message
    assert "training.learningRate" in message
    # Step 9's update may already have made the weights NaN: only step 8's checkpoint is sure.
    assert message.endswith("start again from a checkpoint of step 8 or earlier")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_non_finite_gradients_stop_float32_at_once(precision: str) -> None:
    step, message = _run(precision, [(2.5, 0.0, None), (2.5, 1.0, None)])
    assert step == 2 and "the gradients are not finite at step 2" in message


def test_a_first_step_that_diverges_says_start_from_scratch() -> None:
    step, message = _run("float32", [(NAN, 0.0, None)])
    assert step == 1 and message.endswith("start again from scratch")


def test_several_steps_per_call_name_the_call_s_steps() -> None:
    watch = LossWatch("float32")
    watch.check(8, 2.0, 0.0, None, steps=8)
    with pytest.raises(TrainerError, match=r"the loss is nan in steps 9-16 .* step 7 or earlier"):
        watch.check(16, NAN, 0.0, None, steps=8)


@pytest.mark.parametrize(
    "precision", ["float32", "mixed_bfloat16", "mixed_float16", "mixed_float16-no-scale"]
)
def test_finite_losses_never_stop(precision: str) -> None:
    scale = None if precision != "mixed_float16" else 1.0  # even at the floor
    rng = np.random.default_rng(0)
    calls = [(float(x), 0.0, scale) for x in rng.lognormal(0, 5, 500)] + [(0.0, 0.0, scale)]
    assert _run(precision.removesuffix("-no-scale"), calls) == (0, "")


def test_float16_keeps_going_while_the_scale_can_halve_and_stops_at_the_floor() -> None:
    # From 2**15, 15 skipped steps halve the scale to 1.0; the 16th non-finite one is at it.
    calls = _halving(40)
    step, message = _run("mixed_float16", calls)
    assert step == 16
    assert [c[2] for c in calls[:16]][-2:] == [2.0, 1.0]
    assert "the loss is still not finite at step 16 with the loss scale at its floor" in message
    assert "mixed_bfloat16" in message and "training.precision mixed_float16" in message
    assert message.endswith("from scratch")  # the run was bad from step 1


def test_float16_recovers_from_a_run_of_overflowing_gradients() -> None:
    # Gradient overflow with a finite loss: the scale halves 10 times, then training is fine.
    scale, calls = 2.0**15, []
    for i in range(200):
        nonfinite = 1.0 if 50 <= i < 60 else 0.0
        calls.append((3.0, nonfinite, scale))
        if nonfinite:
            scale /= 2
    assert _run("mixed_float16", calls) == (0, "")


def test_float16_gradients_at_the_floor_stop_naming_the_first_bad_step() -> None:
    calls = [(3.0, 0.0, 4.0)] * 20 + [(3.0, 2.0, 4.0), (3.0, 2.0, 2.0), (3.0, 2.0, 1.0)]
    step, message = _run("mixed_float16", calls)
    assert step == 23
    assert "the gradients are still not finite at step 23 with the loss scale" in message
    assert message.endswith("a checkpoint of step 19 or earlier")  # first bad step: 21


def test_float16_stops_when_the_loss_stays_non_finite_for_patience_calls() -> None:
    # A scale that grew far above the floor: the loss (the forward pass) still gets K calls.
    step, message = _run("mixed_float16", [(5.0, 0.0, 2.0**40)] * 10 + _halving(100, start=2.0**40))
    assert step == 10 + LOSS_PATIENCE
    assert f"has not been finite for {LOSS_PATIENCE} step calls in a row (steps 11-30" in message


def test_float16_patience_restarts_after_a_finite_loss() -> None:
    bad = (NAN, 1.0, 2.0**40)
    calls = ([bad] * (LOSS_PATIENCE - 1) + [(5.0, 0.0, 2.0**40)]) * 3
    assert _run("mixed_float16", calls) == (0, "")


def test_float16_without_a_scale_relies_on_patience() -> None:
    step, _ = _run("mixed_float16", [(NAN, 1.0, None)] * 50)
    assert step == LOSS_PATIENCE


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError):
        LossWatch("float64")


def test_divergence_docstring_examples() -> None:
    result = doctest.testmod(divergence)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "predicted",
    [
        [1.0, NAN, 3.0, 4.0],
        [NAN, NAN, NAN, NAN],
        [1.0, 2.0, INF, 4.0],
        [-INF, 2.0, 3.0, 4.0],
        [1.0, 2.0, 3.0, NAN],  # a NaN sorts last: Spearman read 1.0 before
        [NAN, 2.0, 3.0, 4.0],
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_predictions_give_nan_metrics(predicted, dtype) -> None:
    gold = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    m = correlations(np.array(predicted, dtype), gold)
    assert set(m) == {"pearson", "spearman", "mse"}
    assert all(math.isnan(v) for v in m.values()), m


@pytest.mark.parametrize(
    ("predicted", "expected"),
    [
        ([2.0, 2.0, 2.0, 2.0], {"pearson": 0.0, "spearman": 0.0, "mse": 1.5}),
        ([0.0, 0.0, 0.0, 0.0], {"pearson": 0.0, "spearman": 0.0, "mse": 7.5}),
        ([1.0, 2.0, 3.0, 4.0], {"pearson": 1.0, "spearman": 1.0, "mse": 0.0}),
        ([4.0, 3.0, 2.0, 1.0], {"pearson": -1.0, "spearman": -1.0, "mse": 5.0}),
        ([1.0, 2.0, 2.0, 4.0], {"pearson": 0.9234, "spearman": 0.9487, "mse": 0.25}),
        ([1e30, 2e30, 3e30, 4e30], {"pearson": 1.0, "spearman": 1.0, "mse": 7.5e60}),
    ],
)
def test_finite_predictions_keep_their_correlations(predicted, expected) -> None:
    m = correlations(np.array(predicted, np.float32), np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    assert m == pytest.approx(expected, rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_trainer_stops_when_the_loss_becomes_nan(tmp_path, corpus, capsys):
    """LAMB at the largest learningRate the config allows (1.0), no clipping, no decay and a
    schedule too long to decay during the test: the tiny model's weights double per step
    until the float32 loss is NaN (step ~35 on a CPU). Training stops at once with exit code 7,
    naming the step, before saving the poisoned weights, and says which checkpoint is safe."""
    cfg = pretraining_config(
        corpus,
        tmp_path,
        steps=10000,
        optimizer="lamb",
        learningRate=1.0,
        warmupSteps=0,
        clipNorm=0.0,
        weightDecay=0.0,
        logEverySteps=1,
    )
    cfg["checkpoint"] = {"everySteps": 25}
    config = write_config(tmp_path / "cfg.yaml", cfg)
    code = main(train_args(config, tmp_path / "term"))
    lines = json_lines(capsys.readouterr().out)
    message = (tmp_path / "term").read_text()
    assert code == ExitCode.DIVERGED, (code, message, lines[-3:])
    found = re.match(r"training diverged: the loss is (nan|-?inf) at step (\d+) ", message)
    assert found, message
    step = int(found[2])
    assert 2 < step <= 200, message
    assert "training.precision float32" in message and "training.learningRate" in message
    assert message.endswith(f"start again from a checkpoint of step {step - 2} or earlier")
    # Every step before it logged a finite loss; the diverged step's checkpoint was not saved.
    losses = {x["step"]: x["loss"] for x in lines if x["msg"] == "train step"}
    assert list(losses) == list(range(1, step))
    assert all(math.isfinite(v) for v in losses.values()), losses
    ckpts = tmp_path / "out" / "checkpoints"
    saved = sorted(int(f.name[5:-6]) for f in ckpts.glob("ckpt-*.index"))
    assert saved and saved[-1] < step, saved  # every 25 steps, none at or after the NaN
    (error,) = [x for x in lines if x.get("level") == "error"]
    assert error["msg"] == message and error["exit_code"] == ExitCode.DIVERGED
