"""`berth-trainer train`: build everything under the strategy, run the step loop, export."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from berth_trainer import tpu
from berth_trainer.config import Precision, TrainerConfig
from berth_trainer.corpus.prepare import prepared
from berth_trainer.data import ExampleEncoder, resolve_files
from berth_trainer.divergence import LossWatch
from berth_trainer.errors import TrainerError, write_termination_log
from berth_trainer.exit_codes import ExitCode
from berth_trainer.observability import Reporter, final_figures
from berth_trainer.preemption import (
    EXIT_SECONDS,
    SAVE_MARGIN,
    GraceBudget,
    Sigterm,
    grace_from_environment,
)
from berth_trainer.runtime import (
    configure_threads,
    default_jit_compile,
    release_free_memory,
    require_expected_gpus,
    resolve_strategy,
)
from berth_trainer.tasks import for_task
from berth_trainer.tasks.base import BertTask
from berth_trainer.train_step import STEP_OUTPUTS, make_train_step, rates
from berth_trainer.vocab import load_vocabulary

if TYPE_CHECKING:
    from berth_trainer.checkpointing import StepCheckpoints

log = logging.getLogger("berth_trainer")


def train(
    cfg: TrainerConfig, metrics_port: int = 0, termination_log: str | None = None
) -> dict[str, float]:
    """Train per `cfg`; returns the final metrics (also written to output.dir/metrics.json).

    On success the chief also writes its final figures (`observability.final_figures`) to
    `termination_log` (None: nowhere), where the operator reads them once the pod is done.
    """
    threads = configure_threads()
    require_expected_gpus()
    strategy, worker, strategy_name = resolve_strategy()
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if tpu.provider() == "cloud":
        tpu.validate_cloud_paths(cfg)
    if on_tpu and cfg.training.precision != Precision.MIXED_BFLOAT16:
        # TPUs compute in bfloat16 (float16 has no TPU kernels; no loss scaling is needed).
        log.info("TPU: using mixed_bfloat16 instead of %s", cfg.training.precision)
        training = cfg.training.model_copy(update={"precision": Precision.MIXED_BFLOAT16})
        cfg = cfg.model_copy(update={"training": training})
    jit = default_jit_compile(
        cfg.training.jit_compile, on_tpu, len(tf.config.list_logical_devices("GPU"))
    )
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"jit_compile": jit})})
    t = cfg.training
    # Several steps per tf.function call (one host round trip): the TPU default.
    per_call = t.steps_per_execution or (
        math.gcd(t.log_every_steps, cfg.checkpoint.every_steps) if on_tpu else 1
    )
    replicas = strategy.num_replicas_in_sync
    if t.global_batch_size % (replicas * t.gradient_accumulation_steps):
        raise TrainerError(
            ExitCode.CONFIG_INVALID,
            f"training.globalBatchSize: {t.global_batch_size} is not divisible by replicas "
            f"({replicas}) x gradientAccumulationSteps ({t.gradient_accumulation_steps})",
        )
    log.info(
        "starting",
        extra={
            "fields": {
                "strategy": strategy_name,
                "worker": worker.index,
                "workers": worker.count,
                "replicas": replicas,
                "threads": threads,
                "steps_per_execution": per_call,
                "jit_compile": jit,
            }
        },
    )
    keras.mixed_precision.set_global_policy(t.precision)
    keras.utils.set_random_seed(t.seed)
    cfg = prepared(cfg)  # data.prepare: the shards its workers wrote
    vocabulary = load_vocabulary(cfg.vocabulary)
    task = for_task(cfg, ExampleEncoder(cfg, vocabulary))
    # Files are resolved and checked now, so bad inputs fail before training starts.
    validation = (
        resolve_files(cfg.data.validation, "data.validation") if cfg.data.validation else []
    )
    task.prepare(resolve_files(cfg.data.train, "data.train"), validation)
    ckpt_dir = cfg.checkpoint.dir or os.path.join(cfg.output.dir, "checkpoints")

    from berth_trainer.checkpointing import StepCheckpoints, init_from, write_atomically
    from berth_trainer.modeling import build_model
    from berth_trainer.optim import build_optimizer

    with strategy.scope():
        model = build_model(task)
        backbone, head = model.get_layer("bert"), model.get_layer(task.head.layer)
        optimizer = build_optimizer(t)
        variables = task.trainable_variables(model)
        optimizer.build(variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        loss_scale = tf.Variable(2.0**15, trainable=False, name="loss_scale")
    ckpts = StepCheckpoints(
        ckpt_dir,
        cfg.checkpoint.keep,
        worker.index,
        worker.is_chief,
        model=model,
        backbone=backbone,
        head=head,
        optimizer=optimizer,
        step=step_var,
        loss_scale=loss_scale,
    )
    ckpts.remove_torn()
    restored = ckpts.restore_latest()
    if restored is None and cfg.init_checkpoint:
        init_from(cfg.init_checkpoint, model, task)
    start = restored or 0
    if worker.is_chief:
        tf.io.gfile.makedirs(ckpt_dir)
        write_atomically(os.path.join(ckpt_dir, "task.txt"), str(cfg.task))
    log.info("resumed" if restored else "fresh start", extra={"fields": {"step": start}})
    initial_path = os.path.join(ckpt_dir, "initial_metrics.json")
    before: dict[str, float] = {}
    if restored is None and validation and worker.is_chief:
        # Validation before the first step: the "before" of a before/after comparison. Kept
        # beside the checkpoints so a resumed run still reports it.
        before = evaluate(task, model)
        initial = {f"initial_{k}": v for k, v in before.items()}
        write_atomically(initial_path, json.dumps(initial, indent=2, sort_keys=True))

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(t.global_batch_size)
        shard = (ctx.input_pipeline_id, ctx.num_input_pipelines)
        log.info("data " + task.describe_shard(shard), extra={"fields": {"worker": worker.index}})
        per_pipeline = batch * ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return task.dataset(batch, shard, skip=start * per_pipeline)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step_fn = make_train_step(model, optimizer, strategy, cfg, task, variables, loss_scale)
    multi_step_fn = tpu.make_multi_step(step_fn, per_call, len(STEP_OUTPUTS))
    tb_dir = os.path.join(cfg.output.dir, "tensorboard") if worker.is_chief else None
    guest = tpu.GuestAttributes.from_environment() if worker.is_chief else None
    reporter = Reporter(t.steps, metrics_port, tb_dir, worker.index, guest)
    sigterm = Sigterm()
    budget = GraceBudget(grace_from_environment())

    def saved(step: int, seconds: float) -> None:
        budget.record_save(seconds)
        reporter.checkpoint(step)

    ckpts.on_saved = saved
    reporter.start(start)
    if before:
        reporter.validation(start, before)
    metrics: dict[str, float] = {}
    step = start
    call_seconds = 0.0
    good_steps = 0
    watch = LossWatch(t.precision)
    try:
        while step < t.steps:
            if sigterm.received and worker.count == 1:
                # Arrived during a periodic save: stop before starting another step.
                raise _preempted(step, None, ckpts, sigterm, budget)
            called = time.monotonic()
            # With several workers, this call is the one that agrees on stopping: vote to skip
            # the save if it would not fit once this call and a background write are done.
            ahead = call_seconds + (
                budget.expected_save() or 0.0 if ckpts.writing() is not None else 0.0
            )
            late = sigterm.received and not budget.save_fits(sigterm.seconds_since() + ahead)
            stop = tf.constant([1.0 if sigterm.received else 0.0, 1.0 if late else 0.0])
            # Whole calls of `per_call` steps once aligned (after a resume from a SIGTERM
            # checkpoint the step may not be), so log and checkpoint boundaries fall on calls.
            steps = per_call if step % per_call == 0 and step + per_call <= t.steps else 1
            out = multi_step_fn(iterator, stop) if steps > 1 else step_fn(iterator, stop)
            values = dict(zip(STEP_OUTPUTS, out.numpy().tolist(), strict=True))
            call_seconds = time.monotonic() - called
            if step == start:
                release_free_memory()  # what building the step's graph left behind
            step += steps
            step_var.assign(step)
            # Before the loss scale moves, the log and a save: a diverged step is neither.
            fp16 = t.precision == Precision.MIXED_FLOAT16
            scale = float(loss_scale.numpy()) if fp16 else None  # a host read: fp16 only
            watch.check(step, values["loss"] / steps, values["nonfinite"], scale, steps)
            if fp16:
                good_steps = _update_loss_scale(loss_scale, values["nonfinite"] > 0, good_steps)
            metrics = {"loss": values["loss"] / steps, **rates(values)}
            log_now = step % t.log_every_steps == 0 or step == t.steps
            reporter.step(step, metrics, t.global_batch_size * steps, log_now, values["tokens"])
            # One worker needs no agreement: stop after the step the SIGTERM arrived in
            # rather than after one more (the flag only reaches the peers inside a step).
            if values["stop"] > 0 or (sigterm.received and worker.count == 1):
                # One worker decides now; several take the decision their votes agreed on.
                agreed = values["skip_save"] > 0 if worker.count > 1 else None
                raise _preempted(step, agreed, ckpts, sigterm, budget)
            if step % cfg.checkpoint.every_steps == 0 or step == t.steps:
                if cfg.checkpoint.background and step < t.steps:
                    ckpts.save_in_background(step)
                else:
                    ckpts.save(step)
    except tf.errors.OpError as err:
        reporter.close()
        if task.failure is not None:  # bad data met while training: its own exit code
            raise task.failure from err
        if isinstance(err, tf.errors.UnavailableError) or "ollective ops is aborted" in str(err):
            message = f"lost a peer worker (collective aborted): {str(err)[:300]}"
            raise TrainerError(ExitCode.PEER_FAILURE, message) from err
        raise
    except BaseException:
        reporter.close()
        raise
    final = {f"train_{k}": v for k, v in metrics.items()} | {"steps": float(step)}
    after: dict[str, float] = {}
    if validation and worker.is_chief:
        after = evaluate(task, model)
        reporter.validation(step, after)  # validation/*: not repeated under final/
        reporter.scalars(step, final, prefix="final/")
        final |= after
        if tf.io.gfile.exists(initial_path):
            with tf.io.gfile.GFile(initial_path) as f:
                final |= json.load(f)
    reporter.close()
    log.info("finished", extra={"fields": {"worker": worker.index, **final}})
    if worker.is_chief:
        from berth_trainer.export import export_all

        export_all(model, task, final)
        if termination_log is not None:
            figures = final_figures(step, t.steps, metrics.get("loss"), after, step, cfg.task)
            write_termination_log(figures, termination_log)
    return final


def _preempted(
    step: int,
    agreed_skip: bool | None,
    ckpts: StepCheckpoints,
    sigterm: Sigterm,
    budget: GraceBudget,
) -> TrainerError:
    """On SIGTERM at `step`: finish a background write in flight, save unless the save would
    not fit the grace period (one worker judges alone; several pass `agreed_skip`, their
    vote), log what was done; returns the retryable error to exit with."""
    reason = None  # why not to save, when the vote or the grace budget is not the reason
    writing = ckpts.writing()
    if writing is not None:
        # One worker finishes the write if it can (abandons it at once if, by the last saves'
        # times, it cannot); several all wait, to keep the agreed decision (the vote counted
        # the write), even at the risk of the SIGKILL.
        writing, ran = writing
        waiting, spent = time.monotonic(), sigterm.seconds_since()
        left = budget.grace_seconds - spent - EXIT_SECONDS
        expected = budget.expected_save()
        hopeless = expected is not None and (expected - ran) * SAVE_MARGIN > left
        if agreed_skip is not None:
            finished = ckpts.wait()
        else:
            finished = not hopeless and ckpts.wait(max(left, 0.0))
        log.warning(
            f"SIGTERM: {'finished' if finished else 'abandoned'} the background save of step "
            f"{writing}",
            extra={
                "fields": {"step": step, "since_sigterm_seconds": round(sigterm.seconds_since(), 3)}
            },
        )
        if finished and writing == step:
            return _saved(step, time.monotonic() - waiting, spent, background=True)
        if not finished:
            agreed_skip = True
            reason = (
                f"the background save of step {writing} cannot finish in the "
                f"{budget.grace_seconds:g} s grace"
            )
    spent = sigterm.seconds_since()
    if agreed_skip if agreed_skip is not None else not budget.save_fits(spent):
        resume = ckpts.last_complete or 0
        left = max(budget.grace_seconds - spent, 0.0)
        why = reason or (
            f"a save takes ~{budget.expected_save():.1f} s and {left:.1f} s of the "
            f"{budget.grace_seconds:g} s grace are left"
            if not budget.save_fits(spent)
            else f"a peer worker's save would not fit the {budget.grace_seconds:g} s grace"
        )
        log.warning(
            f"SIGTERM: {why}: exiting without saving; the restart resumes from step {resume}",
            extra={
                "fields": {
                    "step": step,
                    "resume_step": resume,
                    "since_sigterm_seconds": round(spent, 3),
                }
            },
        )
        return TrainerError(
            ExitCode.PREEMPTED,
            f"preempted (SIGTERM) at step {step}; no checkpoint saved ({why}): restart to "
            f"resume from step {resume}",
        )
    began = time.monotonic()
    ckpts.save(step)
    return _saved(step, time.monotonic() - began, spent)


def _saved(step: int, save_seconds: float, spent: float, **fields: object) -> TrainerError:
    """Log the SIGTERM checkpoint of `step`, saved in `save_seconds` starting `spent` seconds
    after the signal; the retryable error to exit with."""
    log.warning(
        "SIGTERM: saved a checkpoint, exiting",
        extra={
            "fields": {
                "step": step,
                "save_seconds": round(save_seconds, 3),
                "since_sigterm_seconds": round(spent, 3),
                **fields,
            }
        },
    )
    return TrainerError(
        ExitCode.PREEMPTED,
        f"preempted (SIGTERM) at step {step}; checkpoint saved, restart to resume",
    )


def _update_loss_scale(scale: tf.Variable, nonfinite: bool, good_steps: int) -> int:
    """Dynamic loss scaling: halve on a skipped step, double after 2000 good ones."""
    if nonfinite:
        scale.assign(max(float(scale.numpy()) / 2, 1.0))
        return 0
    if good_steps + 1 >= 2000:
        scale.assign(float(scale.numpy()) * 2)
        return 0
    return good_steps + 1


def evaluate(task: BertTask, model: keras.Model) -> dict[str, float]:
    """Loss, accuracies, non-padding fraction and the task's own metrics over the whole
    validation set, in one pass (chief only)."""
    start = time.monotonic()
    metrics = task.evaluate(model, task.cfg.training.global_batch_size)
    result = {f"validation_{k}": v for k, v in metrics.items()}
    log.info("validation", extra={"fields": {**result, "seconds": time.monotonic() - start}})
    return result
