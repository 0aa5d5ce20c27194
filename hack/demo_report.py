"""Print what the quickstart model learned: top-5 fills of masked sentences, MLM accuracy."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

from rich.console import Console
from rich.table import Table

from berth_trainer.predict import predict

SENTENCES = [
    "the cat [MASK] the ball .",
    "a bird sees the [MASK] near the sea .",
    "the teacher follows [MASK] book in the park .",
    "my friend watches the moon at [MASK] .",
]


def main(model_dir: str) -> int:
    console = Console()
    table = Table(title="Top-5 predictions of the exported model", title_justify="left")
    table.add_column("masked sentence")
    table.add_column("top-5 for [MASK] (probability)")
    for result in predict(model_dir, SENTENCES):
        for mask in result["masks"]:
            guesses = ", ".join(f"{t['token']} ({t['probability']:.2f})" for t in mask["top_k"])
            table.add_row(result["text"], guesses)
    console.print(table)
    metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    before = metrics["initial_validation_accuracy"]
    after = metrics["validation_accuracy"]
    console.print(
        f"MLM accuracy on held-out documents (masked tokens): before training {before:.1%} "
        f"→ after {int(metrics['steps'])} steps {after:.1%}",
        soft_wrap=True,
    )
    return 0 if after > before else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
