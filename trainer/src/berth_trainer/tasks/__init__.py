"""The fine-tuning tasks beyond classification, one module each behind one interface.

A task reads its data files into fixed-shape arrays at start (`read`: a malformed row is a
`TrainerError` naming file and line, exit code 3), builds its head on the backbone (`build`),
gives the custom step its per-example loss (`loss`), scores a validation split beyond the loss
(`evaluate`: entity F1, SQuAD EM/F1, Pearson/Spearman, ROUGE-L) and adds the SavedModel's
serving signature over raw strings (`serve`). The step, the strategies, checkpoints, resume,
init checkpoints and the export around them are the trainer's, shared with pretraining and
classification.

    >>> from berth_trainer.config import Task
    >>> sorted(str(t) for t in TASKS)
    ['questionAnswering', 'regression', 'seq2seq', 'tokenClassification']
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from berth_trainer.config import DataFormat, Task
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode

if TYPE_CHECKING:
    import keras
    import numpy as np
    import tensorflow as tf

    from berth_trainer.config import TrainerConfig
    from berth_trainer.data import ExampleEncoder

#: Task → module of `berth_trainer.tasks` defining its `FineTuning` subclass as `TASK_CLASS`.
TASKS: dict[Task, str] = {
    Task.REGRESSION: "regression",
    Task.TOKEN_CLASSIFICATION: "token_classification",
    Task.QUESTION_ANSWERING: "question_answering",
    Task.SEQ2SEQ: "seq2seq",
}


@dataclasses.dataclass
class Encoded:
    """One split's examples as arrays of fixed shape `[examples, ...]`, and what its metrics
    compare predictions with (task-specific: gold spans, answers, numbers, target texts)."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    references: Any = None

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))


class FineTuning:
    """What a fine-tuning task adds to the trainer (see the module docstring)."""

    #: Data formats the task reads (the first is the documented default).
    formats: tuple[DataFormat, ...] = ()
    #: Name of the head layer: checkpointed as "head", initialised by Berth checkpoints.
    head = "classifier"
    #: Whether the head reads the pooled output (else the pooler is not trained).
    uses_pooler = False

    def __init__(self, cfg: TrainerConfig, encoder: ExampleEncoder) -> None:
        self.cfg = cfg
        self.encoder = encoder

    def read(
        self, files: list[str], field: str, labels: list[str] | None
    ) -> tuple[Encoded, list[str] | None]:
        """Encode `files` (`field` is data.train or data.validation, for errors); training
        learns the label names (returned), validation gets them."""
        raise NotImplementedError

    def build(self, backbone: keras.Model, labels: list[str] | None) -> keras.Model:
        raise NotImplementedError

    def loss(
        self, outputs: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Per-example loss and the `train_step.STATS` counts it has (correct/count)."""
        raise NotImplementedError

    def evaluate(self, model: keras.Model, encoded: Encoded, batch_size: int) -> dict[str, float]:
        """The task's validation metrics (without the validation_ prefix)."""
        raise NotImplementedError

    def serve(self, model: keras.Model, archive, labels: list[str] | None) -> None:
        """Add the `serving_default` endpoint (raw strings in) to the export `archive`."""
        raise NotImplementedError


def for_task(cfg: TrainerConfig, encoder: ExampleEncoder) -> FineTuning | None:
    """The `FineTuning` of `cfg.task`, or None for pretraining and classification."""
    name = TASKS.get(Task(cfg.task))
    if name is None:
        return None
    module = importlib.import_module(f"berth_trainer.tasks.{name}")
    return module.TASK_CLASS(cfg, encoder)


def bad_row(field: str, where: str, what: str) -> TrainerError:
    """The error of a malformed data row: `field: file:line: what is wrong` (exit code 3)."""
    return TrainerError(ExitCode.DATA_INVALID, f"{field}: {where}: {what}")


def predict(
    model: keras.Model, features: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
    """The model's outputs over all examples, in order (inference mode)."""
    import numpy as np
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(batch):
        return model(batch, training=False)

    outputs: dict[str, list] = {}
    total = len(next(iter(features.values())))
    for start in range(0, total, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in features.items()}
        for k, v in run(batch).items():
            outputs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}
