"""TPU specifics: resolving the slice, bfloat16, a multi-step loop, Cloud TPU VM reporting.

The operator tells the trainer where it runs through the environment:

* `TPU_NAME`: `local` (one host: GKE TPU node pool, single-host Cloud TPU VM), a Cloud TPU
  node name (worker 0 of a multi-host slice; the resolver looks it up through the Cloud TPU
  API) or `grpc://a:8470,grpc://b:8470` (used as given);
* `BERTH_TPU_PROVIDER`: `gke` or `cloud`. On `cloud` the trainer runs on a TPU VM outside the
  cluster: data and checkpoints must be on gs:// (`validate_cloud_paths`), and progress goes to
  the VM's guest attributes under `berth/` (`GuestAttributes`), which the operator reads.

TPUs want static shapes (every batch is `drop_remainder=True`, sequences padded to
`sequenceLength`), bfloat16 compute (`use_bfloat16`), and several steps per host round trip
(`make_multi_step`, the steps_per_execution idea inside one `tf.function`).

    >>> os.environ.get("BERTH_TPU_PROVIDER") is None or provider() in ("gke", "cloud")
    True
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from berth_trainer.config import TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

log = logging.getLogger("berth_trainer")

GUEST_ATTRIBUTES_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/berth"
)


def provider() -> str | None:
    """`gke`, `cloud` or None (not on a TPU the operator set up)."""
    return os.environ.get("BERTH_TPU_PROVIDER") or None


def resolve_tpu_strategy(tpu_name: str) -> tf.distribute.TPUStrategy:
    """Connect to the slice and initialise it; the TPUStrategy over all its cores.

    `tpu_name` goes to TPUClusterResolver as given: `local`, a node name or grpc:// addresses.
    """
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def use_bfloat16() -> None:
    """Compute in bfloat16, keep variables in float32 (no loss scaling needed on TPUs)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")


def validate_cloud_paths(cfg: TrainerConfig) -> None:
    """On a Cloud TPU VM every input and output must be on gs:// (the VM sees no volumes)."""
    paths = {
        "vocabulary": cfg.vocabulary,
        "data.train": cfg.data.train,
        "data.validation": cfg.data.validation,
        "checkpoint.dir": cfg.checkpoint.dir,
        "output.dir": cfg.output.dir,
        "initCheckpoint": cfg.init_checkpoint,
    }
    local = sorted(k for k, v in paths.items() if v and not v.startswith("gs://"))
    if local:
        raise TrainerError(
            ExitCode.CONFIG_INVALID,
            f"{', '.join(local)}: must be gs:// paths on a Cloud TPU VM (the TPU hosts read "
            "data and write checkpoints directly; they cannot see the cluster's volumes)",
        )


def make_multi_step(
    train_step: Callable[[tf.data.Iterator, tf.Tensor], tf.Tensor],
    steps_per_execution: int,
    outputs: int,
) -> Callable[[tf.data.Iterator, tf.Tensor], tf.Tensor]:
    """Run `train_step` `steps_per_execution` times inside one tf.function (one host round
    trip per call, as Keras' steps_per_execution); returns the outputs summed over the steps."""

    @tf.function
    def multi_step(iterator: tf.data.Iterator, stop: tf.Tensor) -> tf.Tensor:
        total = tf.zeros([outputs])
        for _ in tf.range(steps_per_execution):
            total += train_step(iterator, stop)
        return total

    return multi_step


class GuestAttributes:
    """Report progress to the Cloud TPU VM's guest attributes (namespace `berth`).

    The operator reads them with the Cloud TPU API's get_guest_attributes into
    status.progress; failures to write are logged, never raised (training goes on).
    """

    def __init__(self, base_url: str = GUEST_ATTRIBUTES_URL, timeout: float = 2.0) -> None:
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    @classmethod
    def from_environment(cls) -> GuestAttributes | None:
        """A reporter when running on a Cloud TPU VM the operator created, else None."""
        return cls() if provider() == "cloud" else None

    def put(self, values: Mapping[str, object]) -> None:
        for key, value in values.items():
            request = urllib.request.Request(
                f"{self.base_url}/{key}",
                data=str(value).encode(),
                method="PUT",
                headers={"Metadata-Flavor": "Google"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout):
                    pass
            except OSError as error:
                log.debug("guest attribute %s not written: %s", key, error)

    def report(
        self,
        step: int,
        loss: float,
        examples_per_second: float,
        last_checkpoint_step: int | None = None,
    ) -> None:
        values: dict[str, object] = {
            "state": "running",
            "step": step,
            "loss": f"{loss:.6g}",
            "examples_per_second": f"{examples_per_second:.6g}",
        }
        if last_checkpoint_step is not None:
            values["last_checkpoint_step"] = last_checkpoint_step
        self.put(values)
