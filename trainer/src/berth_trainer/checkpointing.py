"""Step-exact fault-tolerance checkpoints, and initialising a model from existing weights.

Checkpoints are `tf.train.Checkpoint(model, backbone, head, optimizer, step)` managed by a
`CheckpointManager`. Under MultiWorkerMirroredStrategy every worker must call `save`: the chief
writes the real directory, the others a private temporary directory they delete right away.
(`keras.callbacks.BackupAndRestore` races between workers; see docs/trainer.md.)

A process killed while saving (SIGKILL after a pod's grace period) leaves no checkpoint that
counts: TensorFlow writes `ckpt-N_temp/`, moves its files to `ckpt-N.*`, and only then names
`ckpt-N` in the `checkpoint` state file (written to a temporary name and renamed). The next
start resumes from the last checkpoint that file names, and the chief deletes the torn files.

`checkpoint.background` saves write in a thread: `save_in_background` takes a snapshot between
steps (an eager read of every checkpointed variable: a tensor sharing the variable's buffer;
TensorFlow copies a variable's buffer before updating it while such a tensor holds it, so the
snapshot stays the step's state), the thread writes it the way `CheckpointManager.save` does
and only then names it in the state file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from tensorflow.python.checkpoint import functional_saver, tensor_callable

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

if TYPE_CHECKING:
    from berth_trainer.tasks.base import BertTask

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
        #: The step of the newest complete checkpoint (restored or saved), None before one.
        self.last_complete: int | None = None
        #: Called with (step, seconds) when a save completes (in the writer thread for a
        #: background save).
        self.on_saved: Callable[[int, float], None] = lambda step, seconds: None
        self._writer: threading.Thread | None = None
        self._writer_began = 0.0
        self._writer_error: BaseException | None = None

    def restore_latest(self) -> int | None:
        """Restore the newest readable checkpoint the state file names; returns its step (None
        if it names none).

        A named checkpoint that cannot be read (its files gone, or torn: a node that lost power
        before the page cache reached the disk; TensorFlow does not fsync) is skipped with a
        warning for the one before it. When none is readable the trainer stops: training
        silently back at step 0 would throw the run away.
        """
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None or not state.model_checkpoint_path:
            return None
        named = [*state.all_model_checkpoint_paths, state.model_checkpoint_path]
        for prefix in sorted(set(named), key=_step_of, reverse=True):
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
            except (AssertionError, ValueError) as err:
                raise TrainerError(
                    ExitCode.CHECKPOINT_MISMATCH,
                    f"checkpoint.dir: {prefix} does not match this model (was it written by a "
                    f"different config?): {err}",
                ) from err
            except _UNREADABLE as err:
                log.warning(
                    "checkpoint unreadable, trying the one before",
                    extra={"fields": {"checkpoint": prefix, "error": str(err)[:300]}},
                )
                continue
            self.last_complete = int(self.checkpoint.step.numpy())
            return self.last_complete
        raise TrainerError(
            ExitCode.CHECKPOINT_MISMATCH,
            f"checkpoint.dir: {self.directory}/checkpoint names {sorted(set(named))}, and none "
            "of them can be read (files missing or torn); restore them, or delete the "
            "directory to start over from step 0",
        )

    def save(self, step: int) -> None:
        """Save now (after any background write in flight)."""
        self.wait()
        began = time.monotonic()
        self.manager.save(checkpoint_number=step)
        self._saved(step, began)

    def save_in_background(self, step: int) -> None:
        """Snapshot the state now and write it in a thread (after any write in flight).

        Costs the main thread a read of every variable (no copy on a CPU; a copy to host
        memory from an accelerator) and, while the write runs, the memory of the copies
        TensorFlow makes of the variables the next steps update: up to one more copy of the
        checkpointed state (weights and Adam slots).
        """
        self.wait()
        self.checkpoint.save_counter.assign_add(1)  # as CheckpointManager.save does
        tensors, _, registered, _ = self.checkpoint._saver._gather_serialized_tensors(None)
        for per_object in tensors.values():
            for key, value in list(per_object.items()):
                per_object[key] = (
                    {k: _read_now(v) for k, v in value.items()}
                    if isinstance(value, dict)
                    else _read_now(value)
                )
        self._writer_began = time.monotonic()
        self._writer = threading.Thread(
            target=self._write,
            args=(step, tensors, registered, self._writer_began),
            name=f"checkpoint-{step}",
            daemon=True,  # a process that exits abandons the write: a torn save, never used
        )
        self._writer.start()

    def writing(self) -> tuple[int, float] | None:
        """The step a background write in flight is saving and the seconds it has run, None
        if none is in flight."""
        writer = self._writer
        if writer is None or not writer.is_alive():
            return None
        return int(writer.name.rsplit("-", 1)[1]), time.monotonic() - self._writer_began

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background write in flight (at most `timeout` seconds): whether none is
        left. Re-raises what the write raised."""
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                return False
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise error
        return True

    def _write(self, step: int, tensors, registered, began: float) -> None:
        """The second half of `CheckpointManager.save` (TensorFlow 2.21): write, then record
        the checkpoint in the state file and delete those beyond `keep`."""
        try:
            tf.io.gfile.makedirs(self._own_dir)
            prefix = os.path.join(self._own_dir, f"ckpt-{step}")
            functional_saver.MultiDeviceSaver(tensors, registered).save(prefix)
            manager = self.manager
            manager._maybe_delete.pop(prefix, None)
            manager._maybe_delete[prefix] = time.time()
            manager._latest_checkpoint = prefix
            manager._record_state()
            manager._sweep()
            manager._record_state()
            self._saved(step, began)
        except BaseException as err:  # raised in the main thread by `wait`
            self._writer_error = err

    def _saved(self, step: int, began: float) -> None:
        if not self.is_chief:
            tf.io.gfile.rmtree(self._own_dir)
        self.last_complete = step
        self.on_saved(step, time.monotonic() - began)

    def remove_torn(self) -> list[str]:
        """Delete what a save killed midway left (chief only, before training): `ckpt-N_temp/`,
        temporary files, and once a state file exists, `ckpt-N.*` files of a checkpoint it does
        not name. A torn save at a step that is never saved again (a SIGTERM save) would
        otherwise stay forever."""
        if not self.is_chief or not tf.io.gfile.isdir(self.directory):
            return []
        state = tf.train.get_checkpoint_state(self.directory)
        named = {os.path.basename(p) for p in state.all_model_checkpoint_paths} if state else None
        torn = []
        for name in tf.io.gfile.listdir(self.directory):
            name = name.rstrip("/")
            match = _CHECKPOINT_FILE.fullmatch(name)
            if match and (
                match["temp"]
                or match["temp_file"]
                or (named is not None and match["prefix"] not in named)
            ):
                path = os.path.join(self.directory, name)
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
                torn.append(name)
        if torn:
            log.warning("removed a torn checkpoint save", extra={"fields": {"files": sorted(torn)}})
        return torn


def _read_now(value):
    """A variable's value to save, read now rather than when the file is written."""
    return value.tensor if isinstance(value, tensor_callable.Callable) else value


#: What reading a missing or torn checkpoint raises (a truncated file: IndexError).
_UNREADABLE = (
    tf.errors.NotFoundError,
    tf.errors.DataLossError,
    tf.errors.OutOfRangeError,
    IndexError,
)


def _step_of(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


#: What `CheckpointManager` writes for checkpoint N: `ckpt-N.index`, `ckpt-N.data-*-of-*`, and
#: while it writes them, `ckpt-N_temp/`; and the temporary names of the state file
#: (`checkpoint.tmp<hex>`) and of `write_atomically` (`NAME.tmp-<hex>`).
_CHECKPOINT_FILE = re.compile(
    r"(?P<prefix>ckpt-\d+)(?:\.index|\.data-\d+-of-\d+|(?P<temp>_temp))"
    r"|(?P<temp_file>checkpoint\.tmp[0-9a-f]{32}|.+\.tmp-[0-9a-f]{32})"
)


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` so that a kill midway leaves the old file or the new, never a
    torn one: a temporary name, then a rename (on gs:// an object appears whole anyway)."""
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temp, path, overwrite=True)


def init_from(path: str, model: keras.Model, task: BertTask) -> None:
    """Load initial weights from a Google BERT checkpoint, a Hugging Face BERT directory, a
    keras-hub preset directory or a Berth checkpoint directory (whichever `path` is); the head
    comes from a Berth checkpoint of a task whose head is of the same family (the same task,
    or pretraining's MLM head for seq2seq)."""
    backbone = model.get_layer("bert")
    head = model.get_layer(task.head.layer)
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


def _from_berth(
    prefix: str, backbone: keras.Model, head: keras.layers.Layer, task: BertTask
) -> None:
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


def _same_task(prefix: str, task: BertTask) -> bool:
    """Whether the checkpoint's head is this task's head (a head of the same family)."""
    from berth_trainer.tasks import task_class

    marker = os.path.join(os.path.dirname(prefix), "task.txt")
    if not tf.io.gfile.exists(marker):
        return False
    with tf.io.gfile.GFile(marker) as f:
        saved = f.read().strip()
    if saved == task.name:
        return True
    try:
        family = task_class(saved).heads[0].family
    except ValueError:  # a task this trainer does not know
        return False
    return bool(family) and family == task.head.family
