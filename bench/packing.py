"""Padding vs packing: the share of non-padding tokens and the useful tokens/s of pre-training
on a corpus of short lines, per `pretraining.packing` mode, side by side in one run.

    .venv/bin/python bench/packing.py                       # sequence length 128, mini BERT
    .venv/bin/python bench/packing.py --steps 40 --rounds 2 --model tiny

The corpus: grammar sentences (berth_trainer.synthetic), one to five per line (so lines of
~5-45 word pieces, median ~20), 3-10 lines per document. Each mode trains `--steps` steps in
its own `berth-trainer train` process; the modes alternate `--rounds` times and the table shows
the median of the logged rates after the first log line (compilation). "none" is what Berth
did before packing existed: one line per example, padded. Load and CPU count are printed
beside the figures: rates from different machines or runs are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from berth_trainer import synthetic

MODES = ("none", "fullSentences", "docSentences", "segmentPairs")


def write_corpus(directory: Path, lines: int, seed: int) -> dict[str, str]:
    paths = synthetic.write_quickstart_corpus(directory, seed=seed, documents=2, files=1)
    rng = random.Random(seed)
    docs, left = [], lines
    while left > 0:
        n = min(left, rng.randint(3, 10))
        docs.append(
            "\n".join(
                " ".join(synthetic.sentence(rng) for _ in range(rng.randint(1, 5)))
                for _ in range(n)
            )
        )
        left -= n
    (directory / "short-lines.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return {"corpus": str(directory / "short-lines.txt"), "vocab": paths["vocab"]}


def run_mode(mode: str, corpus: dict[str, str], args: argparse.Namespace, out: Path) -> dict:
    cfg = {
        "task": "pretraining",
        "vocabulary": corpus["vocab"],
        "model": {"size": args.model, "maxSequenceLength": args.seq},
        "data": {"train": corpus["corpus"]},
        "pretraining": {"packing": mode},
        "training": {
            "sequenceLength": args.seq,
            "globalBatchSize": args.batch,
            "steps": args.steps,
            "logEverySteps": max(1, args.steps // 8),
            "maxPredictionsPerSequence": 20,
        },
        "checkpoint": {"everySteps": 10**6},
        "output": {"dir": str(out)},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "berth_trainer", "train", "--config", str(path)),
            *("--metrics-port", "0", "--termination-log", str(out) + ".term"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    steps = [
        json.loads(line)
        for line in proc.stdout.splitlines()
        if line.startswith("{") and '"train step"' in line
    ][1:]  # the first log line includes compilation
    if proc.returncode or not steps:
        raise SystemExit(f"{mode}: exit {proc.returncode}\n{proc.stdout[-2000:]}")
    return {
        "non_padding_fraction": statistics.median(s["non_padding_fraction"] for s in steps),
        "examples_per_second": statistics.median(s["examples_per_second"] for s in steps),
        "tokens_per_second": statistics.median(s["tokens_per_second"] for s in steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--model", default="mini")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-packing-"))
    corpus = write_corpus(work, args.lines, seed=0)
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES:
            results[mode].append(run_mode(mode, corpus, args, work / f"{mode}-{r}"))
    load = os.getloadavg()[0]
    print(
        f"\nsequence length {args.seq}, batch {args.batch}, model {args.model}, {args.steps} "
        f"steps x {args.rounds} round(s); {os.cpu_count()} CPUs, load1 {load:.2f} at the end\n"
    )
    base = statistics.median(x["tokens_per_second"] for x in results["none"])
    print(f"{'packing':<14} {'non-padding':>11} {'examples/s':>11} {'tokens/s':>9} {'vs none':>8}")
    for mode, runs in results.items():
        frac = statistics.median(x["non_padding_fraction"] for x in runs)
        eps = statistics.median(x["examples_per_second"] for x in runs)
        tps = statistics.median(x["tokens_per_second"] for x in runs)
        print(f"{mode:<14} {frac:>11.1%} {eps:>11.1f} {tps:>9.0f} {tps / base:>7.2f}x")


if __name__ == "__main__":
    main()
