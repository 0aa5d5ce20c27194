"""The tiny BERT pre-training that the local-run, container and real-node tests train: a few
seconds per run on 2 shared cores."""

from __future__ import annotations

from typing import Any

TINY_MODEL = {
    "numLayers": 1,
    "hiddenSize": 32,
    "numHeads": 2,
    "intermediateSize": 64,
    "maxSequenceLength": 32,
    "dropout": 0.0,
}


def tiny_config(
    vocabulary: str, train: str, *, steps: int, checkpoint_dir: str, output_dir: str
) -> dict[str, Any]:
    """The trainer-config fields (camelCase) of a tiny MLM pre-training, checkpoints every 10
    steps: a BertTraining's spec or a `berth-trainer train --config` file."""
    return {
        "model": dict(TINY_MODEL),
        "vocabulary": vocabulary,
        "data": {"train": train},
        "training": {
            "sequenceLength": 16,
            "globalBatchSize": 8,
            "steps": steps,
            "learningRate": 0.001,
            "maxPredictionsPerSequence": 3,
            "logEverySteps": 5,
        },
        "checkpoint": {"dir": checkpoint_dir, "everySteps": 10},
        "output": {"dir": output_dir},
    }
