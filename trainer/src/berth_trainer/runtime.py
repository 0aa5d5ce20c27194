"""Process set-up: thread pools from the environment and the tf.distribute strategy.

The strategy follows the environment the operator (or `berth run`) gives the process:

- `TF_CONFIG` with more than one worker → `MultiWorkerMirroredStrategy`;
- `TPU_NAME` (`local`, a TPU name or a `grpc://` address) → `TPUStrategy`;
- more than one local GPU → `MirroredStrategy`;
- otherwise the default strategy.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import logging
import os

import tensorflow as tf

from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

log = logging.getLogger("berth_trainer")


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Who this process is in the job."""

    index: int
    count: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def configure_threads() -> int | None:
    """Honour $BERTH_NUM_THREADS (cores ÷ workers when workers share a machine).

    Must run before TensorFlow creates its thread pools (before any op or strategy).
    """
    value = os.environ.get("BERTH_NUM_THREADS")
    if not value:
        return None
    threads = max(1, int(value))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(threads, 2)))
    return threads


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc `malloc_trim(0)`): True if any were.

    The first call of a step function traces, optimises and instantiates its graph, which
    leaves ~0.1 GiB (BERT-base) of freed but still resident heap: memory that counts against
    the pod's limit for the rest of the run. Call it once after that first call.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


def require_expected_gpus() -> int:
    """Fail fast when the pod asked for GPUs ($BERTH_EXPECTED_GPUS) that TensorFlow cannot see.

    The operator sets the variable for a worker whose trainer requests `nvidia.com/gpu`
    (unless `spec.allowCpuFallback`); without the check a CPU-only image or a node without a
    driver would train on CPU, silently and far slower. Returns the GPUs TensorFlow sees.
    """
    expected = int(os.environ.get("BERTH_EXPECTED_GPUS") or 0)
    visible = len(tf.config.list_physical_devices("GPU"))
    if visible < expected:
        # tensorflow[and-cuda] brings the CUDA libraries as `nvidia.*` packages.
        cause = (
            "CUDA libraries are installed, so the node's NVIDIA driver or device is not "
            "available to the container"
            if importlib.util.find_spec("nvidia") is not None
            else "this image has no CUDA libraries: use the GPU trainer image "
            "(berth-trainer:<version>-gpu)"
        )
        raise TrainerError(
            ExitCode.GPU_MISSING,
            f"the pod requests nvidia.com/gpu: {expected} but TensorFlow sees {visible} GPU(s): "
            f"{cause}; set spec.allowCpuFallback: true to train on CPU anyway",
        )
    return visible


def default_jit_compile(setting: bool | None, on_tpu: bool, gpus: int) -> bool:
    """`training.jitCompile`, or where unset: XLA on GPUs and TPUs, not on CPUs.

    On TPUs the step is compiled with XLA whatever the setting. On GPUs, XLA is the fast path
    that NVIDIA's and TensorFlow Model Garden's BERT recipes turn on (it fuses the element-wise
    work between matmuls). On CPUs it made BERT-base's step 2x slower than oneDNN's kernels
    (docs/benchmarks.md), so it stays off there.
    """
    return setting if setting is not None else (on_tpu or gpus > 0)


def tf_config_workers() -> WorkerInfo:
    """This worker's index and the worker count, from $TF_CONFIG (1 worker without it)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return WorkerInfo(0, 1)
    cfg = json.loads(raw)
    cluster = cfg.get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task = cfg.get("task", {})
    index = int(task.get("index", 0))
    if task.get("type") == "worker" and "chief" in cluster:
        index += 1
    return WorkerInfo(index, max(1, workers))


def resolve_strategy() -> tuple[tf.distribute.Strategy, WorkerInfo, str]:
    """Pick the strategy from the environment; returns it, this worker and a description."""
    workers = tf_config_workers()
    tpu = os.environ.get("TPU_NAME")
    if workers.count > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        workers = WorkerInfo(int(resolver.task_id), workers.count)
        name = f"MultiWorkerMirroredStrategy({workers.count} workers)"
    elif tpu:
        from berth_trainer.tpu import resolve_tpu_strategy

        strategy = resolve_tpu_strategy(tpu)
        name = f"TPUStrategy({tpu})"
    elif len(tf.config.list_physical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
        name = f"MirroredStrategy({strategy.num_replicas_in_sync} GPUs)"
    else:
        strategy = tf.distribute.get_strategy()
        name = "default strategy (one device)"
    return strategy, workers, name
