"""The tiny BERT pre-training that the local-run, container and real-node tests train: a few
seconds per run on 2 shared cores."""

from __future__ import annotations

import json
import random
from pathlib import Path
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


#: Words of the pair-regression data (`write_pair_scores`), after the special tokens in its vocab.
PAIR_WORDS = ["good", "red", "blue", "green", "cat", "dog", "sun", "tree"]


def write_pair_scores(directory: Path, n: int, seed: int) -> str:
    """A csv (text, pair, score) whose score is how often "good" occurs in both texts (0-4): a
    regression a tiny BERT learns in ~150 steps. Writes vocab.txt beside it too."""
    rng = random.Random(seed)

    def text(goods: int) -> str:
        words = ["good"] * goods + [rng.choice(PAIR_WORDS[1:]) for _ in range(4 - goods)]
        rng.shuffle(words)
        return " ".join(words)

    rows = ["text,pair,score"]
    for _ in range(n):
        a, b = rng.randint(0, 2), rng.randint(0, 2)
        rows.append(f"{text(a)},{text(b)},{a + b}")
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PAIR_WORDS]) + "\n"
    )
    path = directory / f"scores-{seed}.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


#: Words of the multiple-choice data (`write_choices`), after the special tokens in its vocab.
CHOICE_WORDS = ["red", "blue", "green", "cat", "dog", "sun", "tree", "sky"]


def write_choices(directory: Path, n: int, seed: int, choices: int = 4) -> str:
    """A jsonl of `{"context", "endings", "label"}` rows whose right ending continues its
    two-word context with the context's last word and whose other endings share no word with
    it: a multiple choice a tiny BERT learns in ~100 steps. Writes vocab.txt beside it too."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        context = rng.sample(CHOICE_WORDS, 2)
        others = [w for w in CHOICE_WORDS if w not in context]
        endings = [rng.sample(others, 2) for _ in range(choices)]
        label = rng.randrange(choices)
        endings[label][0] = context[-1]
        row = {"context": " ".join(context), "endings": [" ".join(e) for e in endings]}
        lines.append(json.dumps(row | {"label": label}))
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHOICE_WORDS]) + "\n"
    )
    path = directory / f"choices-{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def checkpoint_steps(folder: Path) -> list[int]:
    """The steps of the checkpoints in `folder` (`ckpt-<step>.index`), ascending."""
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("ckpt-*.index"))
