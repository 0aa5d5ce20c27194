"""Exit codes of `berth-trainer`, shared with the operator's restart policy.

Codes 1-127 are permanent: retrying cannot help (bad config, missing data, a checkpoint that
does not fit the model). Codes 128-255 are retryable: the process was preempted, killed, or lost
a peer. `PREEMPTED_TF_DEFAULT` (42) is what `tf.distribute`'s preemption handler exits with by
default; it is below 128 but retryable, so the policy lists it explicitly.

This module imports nothing heavy: the operator and the CRD generator use it.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes of the trainer."""

    OK = 0
    #: An unexpected error in the trainer itself (a bug): permanent.
    INTERNAL = 1
    #: The config file is missing or invalid (the message names the field).
    CONFIG_INVALID = 2
    #: Training or validation data cannot be read, is empty or malformed.
    DATA_INVALID = 3
    #: The vocabulary is missing, unreadable or lacks a required special token.
    VOCAB_INVALID = 4
    #: An init checkpoint or Berth checkpoint does not match the model.
    CHECKPOINT_MISMATCH = 5
    #: The pod requests GPUs (nvidia.com/gpu) but TensorFlow sees fewer: a CPU-only image, or
    #: no driver/device on the node.
    GPU_MISSING = 6
    #: The loss became non-finite (NaN/inf) and, under mixed_float16, loss scaling could not
    #: recover (`divergence.LossWatch`); a restart would resume from the same checkpoint and
    #: diverge again, so it is permanent.
    DIVERGED = 7
    #: tf.distribute's PreemptionCheckpointHandler default exit code (retryable).
    PREEMPTED_TF_DEFAULT = 42
    #: SIGTERM received; a checkpoint was saved if it fit the grace period (else the last
    #: periodic one stands); restart to resume (retryable).
    PREEMPTED = 200
    #: A peer worker died or the collective was aborted (retryable).
    PEER_FAILURE = 201


#: Exit codes below 128 that a restart policy must still treat as retryable.
RETRYABLE_BELOW_128: frozenset[int] = frozenset({ExitCode.PREEMPTED_TF_DEFAULT})


def is_retryable(code: int) -> bool:
    """Whether a worker that exited with `code` may succeed when restarted.

    >>> is_retryable(137), is_retryable(2), is_retryable(42), is_retryable(ExitCode.DIVERGED)
    (True, False, True, False)
    """
    return code >= 128 or code in RETRYABLE_BELOW_128
