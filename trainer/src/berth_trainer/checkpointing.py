"""Step-exact fault-tolerance checkpoints, and initialising a model from existing weights.

Checkpoints are `tf.train.Checkpoint(model, backbone, head, optimizer, step)` managed by a
`CheckpointManager`. Under MultiWorkerMirroredStrategy every worker must call `save`: the chief
writes the real directory, the others a private temporary directory they delete right away.
(`keras.callbacks.BackupAndRestore` races between workers; see docs/trainer.md.)
"""

from __future__ import annotations

import logging
import os

import keras
import tensorflow as tf

from berth_trainer.config import Task
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.modeling import CLASSIFIER_NAME

log = logging.getLogger("berth_trainer")


class StepCheckpoints:
    """Save/restore the whole training state; `save` is called by every worker."""

    def __init__(self, directory: str, keep: int, worker: int, is_chief: bool, **objects) -> None:
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.directory = directory
        self.is_chief = is_chief
        own = directory if is_chief else os.path.join(directory, f".tmp-worker-{worker}")
        self._own_dir = own
        self.manager = tf.train.CheckpointManager(self.checkpoint, own, max_to_keep=keep)

    def restore_latest(self) -> int | None:
        """Restore the chief's latest checkpoint; returns its step (None if there is none)."""
        latest = tf.train.latest_checkpoint(self.directory)
        if not latest:
            return None
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError) as err:
            raise TrainerError(
                ExitCode.CHECKPOINT_MISMATCH,
                f"checkpoint.dir: {latest} does not match this model (was it written by a "
                f"different config?): {err}",
            ) from err
        return int(self.checkpoint.step.numpy())

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(self._own_dir)


def init_from(path: str, model: keras.Model, task: str, head_name: str | None = None) -> None:
    """Load initial weights from a Google BERT checkpoint, a Hugging Face BERT directory, a
    keras-hub preset directory or a Berth checkpoint directory (whichever `path` is); the head
    `head_name` comes from a Berth checkpoint of the same task, or of pretraining when it is
    the MLM head (seq2seq; default: pretraining's or classification's head)."""
    backbone = model.get_layer("bert")
    head = model.get_layer(
        head_name or ("mlm_head" if task == Task.PRETRAINING else CLASSIFIER_NAME)
    )
    isdir = tf.io.gfile.isdir(path)
    if isdir and tf.io.gfile.exists(os.path.join(path, "metadata.json")):
        _from_preset(path, backbone)
    elif isdir and tf.io.gfile.exists(os.path.join(path, "config.json")):
        from berth_trainer.huggingface import load_huggingface

        load_huggingface(path, model, task)
    elif isdir and tf.train.latest_checkpoint(path):
        _from_berth(tf.train.latest_checkpoint(path), backbone, head, task)
    elif tf.io.gfile.exists(path + ".index"):
        from berth_trainer.google_checkpoint import load_google_checkpoint

        load_google_checkpoint(path, model, task)
    else:
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"initCheckpoint: {path} is neither a Google BERT checkpoint prefix "
            "(bert_model.ckpt with .index), a Hugging Face BERT directory (config.json and "
            "model.safetensors), a keras-hub preset directory (metadata.json) nor a Berth "
            "checkpoint directory",
        )
    log.info("initialised from %s", path)


def _from_preset(path: str, backbone: keras.Model) -> None:
    import keras_hub

    source = keras_hub.models.BertBackbone.from_preset(path, load_weights=True)
    copy_weights(
        {w.path: w for w in source.weights},
        {w.path: w for w in backbone.weights},
        path,
    )


def copy_weights(source: dict, target: dict, where: str) -> None:
    """Assign source→target by name; one error lists every missing/unexpected/mis-shaped one."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = [
        f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(source) & set(target))
        if tuple(source[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"initCheckpoint: {where} does not match the model: missing {missing}, unexpected "
            f"{unexpected}, wrong shapes {shapes} (likely cause: model size/vocabulary in the "
            "config differ from the checkpoint's)",
        )
    for k, w in target.items():
        w.assign(keras.ops.convert_to_numpy(source[k]))


def _from_berth(prefix: str, backbone: keras.Model, head: keras.layers.Layer, task: str) -> None:
    saved = dict(tf.train.list_variables(prefix))
    objects = {"backbone": backbone}
    head_key = "head/"
    if any(k.startswith(head_key) for k in saved) and _same_task(prefix, task):
        objects["head"] = head
    try:
        status = tf.train.Checkpoint(**objects).restore(prefix)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"initCheckpoint: Berth checkpoint {prefix} does not match the model: {err}",
        ) from err


#: Tasks whose head is the MLM head: a checkpoint of one initialises the head of the other.
_MLM_TASKS = {Task.PRETRAINING, Task.SEQ2SEQ}


def _same_task(prefix: str, task: str) -> bool:
    """Whether the checkpoint's head is this task's head (same task, or both MLM heads)."""
    marker = os.path.join(os.path.dirname(prefix), "task.txt")
    if not tf.io.gfile.exists(marker):
        return False
    with tf.io.gfile.GFile(marker) as f:
        saved = f.read().strip()
    return saved == task or {saved, task} <= _MLM_TASKS
