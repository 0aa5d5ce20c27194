"""`berth-trainer train`: build everything under the strategy, run the step loop, export."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from berth_trainer import tpu
from berth_trainer.config import Precision, Task, TrainerConfig
from berth_trainer.data import ExampleEncoder, describe_shard, make_dataset, plan_data
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.observability import Reporter
from berth_trainer.runtime import (
    configure_threads,
    default_jit_compile,
    release_free_memory,
    require_expected_gpus,
    resolve_strategy,
)
from berth_trainer.tasks import FineTuning
from berth_trainer.train_step import STATS, STEP_OUTPUTS, make_train_step, step_stats
from berth_trainer.vocab import load_vocabulary

log = logging.getLogger("berth_trainer")


class _Sigterm:
    """Remembers a SIGTERM; the loop agrees with the other workers, saves and exits."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_) -> None:
        self.received = True


def train(cfg: TrainerConfig, metrics_port: int = 0) -> dict[str, float]:
    """Train per `cfg`; returns the final metrics (also written to output.dir/metrics.json)."""
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
    vocabulary = load_vocabulary(cfg.vocabulary)
    encoder = ExampleEncoder(cfg, vocabulary)
    plan = plan_data(cfg, encoder)
    ckpt_dir = cfg.checkpoint.dir or os.path.join(cfg.output.dir, "checkpoints")

    from berth_trainer.checkpointing import StepCheckpoints, init_from
    from berth_trainer.modeling import build_backbone, build_model
    from berth_trainer.optim import build_optimizer

    with strategy.scope():
        backbone = build_backbone(cfg, len(vocabulary))
        model = build_model(cfg, len(vocabulary), backbone, plan.task, plan.label_names)
        head = model.get_layer(head_name(cfg.task, plan.task))
        optimizer = build_optimizer(t)
        variables = trainable_variables(model, cfg, plan.task)
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
    restored = ckpts.restore_latest()
    if restored is None and cfg.init_checkpoint:
        init_from(cfg.init_checkpoint, model, cfg.task, head.name)
    start = restored or 0
    if worker.is_chief:
        tf.io.gfile.makedirs(ckpt_dir)
        with tf.io.gfile.GFile(os.path.join(ckpt_dir, "task.txt"), "w") as f:
            f.write(str(cfg.task))
    log.info("resumed" if restored else "fresh start", extra={"fields": {"step": start}})
    initial_path = os.path.join(ckpt_dir, "initial_metrics.json")
    if restored is None and plan.validation_files and worker.is_chief:
        # Validation before the first step: the "before" of a before/after comparison. Kept
        # beside the checkpoints so a resumed run still reports it.
        initial = {f"initial_{k}": v for k, v in evaluate(model, plan, cfg, encoder).items()}
        write_json(initial_path, initial)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(t.global_batch_size)
        shard = (ctx.input_pipeline_id, ctx.num_input_pipelines)
        log.info("data " + describe_shard(plan, shard), extra={"fields": {"worker": worker.index}})
        per_pipeline = batch * ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return make_dataset(plan, cfg, encoder, batch, shard, skip_examples=start * per_pipeline)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step_fn = make_train_step(model, optimizer, strategy, cfg, variables, loss_scale, plan.task)
    multi_step_fn = tpu.make_multi_step(step_fn, per_call, len(STEP_OUTPUTS))
    tb_dir = os.path.join(cfg.output.dir, "tensorboard") if worker.is_chief else None
    guest = tpu.GuestAttributes.from_environment() if worker.is_chief else None
    reporter = Reporter(t.steps, metrics_port, tb_dir, worker.index, guest)
    sigterm = _Sigterm()
    reporter.start(start)
    metrics: dict[str, float] = {}
    step = start
    good_steps = 0
    try:
        while step < t.steps:
            stop = tf.constant(1.0 if sigterm.received else 0.0)
            # Whole calls of `per_call` steps once aligned (after a resume from a SIGTERM
            # checkpoint the step may not be), so log and checkpoint boundaries fall on calls.
            steps = per_call if step % per_call == 0 and step + per_call <= t.steps else 1
            out = multi_step_fn(iterator, stop) if steps > 1 else step_fn(iterator, stop)
            values = dict(zip(STEP_OUTPUTS, out.numpy().tolist(), strict=True))
            if step == start:
                release_free_memory()  # what building the step's graph left behind
            step += steps
            step_var.assign(step)
            if t.precision == Precision.MIXED_FLOAT16:
                good_steps = _update_loss_scale(loss_scale, values["nonfinite"] > 0, good_steps)
            metrics = {"loss": values["loss"] / steps, **rates(values)}
            log_now = step % t.log_every_steps == 0 or step == t.steps
            reporter.step(step, metrics, t.global_batch_size * steps, log_now, values["tokens"])
            if values["stop"] > 0:
                ckpts.save(step)
                reporter.checkpoint(step)
                log.warning(
                    "SIGTERM: saved a checkpoint, exiting", extra={"fields": {"step": step}}
                )
                raise TrainerError(
                    ExitCode.PREEMPTED,
                    f"preempted (SIGTERM) at step {step}; checkpoint saved, restart to resume",
                )
            if step % cfg.checkpoint.every_steps == 0 or step == t.steps:
                ckpts.save(step)
                reporter.checkpoint(step)
    except tf.errors.OpError as err:
        reporter.close()
        if isinstance(err, tf.errors.UnavailableError) or "ollective ops is aborted" in str(err):
            message = f"lost a peer worker (collective aborted): {str(err)[:300]}"
            raise TrainerError(ExitCode.PEER_FAILURE, message) from err
        raise
    except BaseException:
        reporter.close()
        raise
    final = {f"train_{k}": v for k, v in metrics.items()} | {"steps": float(step)}
    if plan.validation_files and worker.is_chief:
        final |= evaluate(model, plan, cfg, encoder)
        if tf.io.gfile.exists(initial_path):
            with tf.io.gfile.GFile(initial_path) as f:
                final |= json.load(f)
        reporter.scalars(step, final, prefix="final/")
    reporter.close()
    log.info("finished", extra={"fields": {"worker": worker.index, **final}})
    if worker.is_chief:
        from berth_trainer.export import export_all

        export_all(cfg, model, encoder, vocabulary, plan.label_names, final, plan.task)
    return final


def rates(sums: dict[str, float]) -> dict[str, float]:
    """Accuracies and the non-padding fraction from a step's (or a validation's) `STATS`
    (no accuracy for a task that counts no predictions, e.g. regression)."""
    out = {"non_padding_fraction": sums["tokens"] / max(sums["positions"], 1)}
    if sums["count"]:
        out["accuracy"] = sums["correct"] / sums["count"]
    if sums["sentence_count"]:
        out["sentence_accuracy"] = sums["sentence_correct"] / sums["sentence_count"]
    return out


def head_name(task: str, fine_tuning: FineTuning | None) -> str:
    """The task head's layer name (checkpointed as "head")."""
    if fine_tuning is not None:
        return fine_tuning.head
    return "mlm_head" if task == Task.PRETRAINING else "classifier"


def trainable_variables(
    model: keras.Model, cfg: TrainerConfig, fine_tuning: FineTuning | None = None
) -> list:
    """What the step trains: the pooler only feeds a classifier, a regressor or a sentence
    head."""
    if fine_tuning is not None:
        pooled = fine_tuning.uses_pooler
    else:
        pooled = cfg.task != Task.PRETRAINING or model.sentence_head is not None
    if pooled:
        return model.trainable_variables
    pooler = {id(v) for v in model.get_layer("bert").get_layer("pooled_dense").weights}
    return [v for v in model.trainable_variables if id(v) not in pooler]


def _update_loss_scale(scale: tf.Variable, nonfinite: bool, good_steps: int) -> int:
    """Dynamic loss scaling: halve on a skipped step, double after 2000 good ones."""
    if nonfinite:
        scale.assign(max(float(scale.numpy()) / 2, 1.0))
        return 0
    if good_steps + 1 >= 2000:
        scale.assign(float(scale.numpy()) * 2)
        return 0
    return good_steps + 1


def evaluate(
    model: keras.Model, plan, cfg: TrainerConfig, encoder: ExampleEncoder
) -> dict[str, float]:
    """Loss, accuracies and non-padding fraction over the whole validation set, and a
    fine-tuning task's own metrics (chief only)."""
    ds = make_dataset(plan, cfg, encoder, cfg.training.global_batch_size, (0, 1), validation=True)

    @tf.function(reduce_retracing=True)
    def batch_metrics(features, labels):
        outputs = model(features, training=False)
        per_example, stats = step_stats(plan.task or cfg.task, outputs, features, labels)
        size = tf.cast(tf.size(per_example), tf.float32)
        return tf.concat([[tf.reduce_sum(per_example), size], stats], 0)

    totals = np.zeros(len(STATS) + 2)
    start = time.monotonic()
    for features, labels in ds:
        totals += batch_metrics(features, labels).numpy()
    sums = dict(zip(STATS, totals[2:].tolist(), strict=True))
    result = {
        f"validation_{k}": v
        for k, v in {"loss": totals[0] / max(totals[1], 1), **rates(sums)}.items()
    }
    if plan.task is not None:
        metrics = plan.task.evaluate(model, plan.validation_encoded, cfg.training.global_batch_size)
        result |= {f"validation_{k}": v for k, v in metrics.items()}
    log.info("validation", extra={"fields": {**result, "seconds": time.monotonic() - start}})
    return result


def write_json(path: str, data: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
