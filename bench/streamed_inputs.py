"""Streamed fine-tuning inputs: seconds to the first training step and peak memory as a
split grows, Berth against an earlier Berth (`--before`, a source tree whose trainer read and
encoded a whole split before step 1), side by side in one run.

    .venv/bin/python bench/streamed_inputs.py --before ../old-checkout --rows 20000 200000

A regression split of `--rows` sentence pairs (grammar sentences of berth_trainer.synthetic,
~10-30 word pieces each) at sequence length 128 trains a tiny BERT for 3 steps in its own
`berth-trainer train` process; the two sides alternate `--rounds` times per size. "first step"
is from the process's start to its first logged step (TensorFlow's import and the model build
are in both sides' figure); "peak RSS" is the process's maximum resident set. Load and CPU count
are printed beside the figures: numbers from different machines or runs are not comparable.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from berth_trainer import synthetic


def write_split(directory: Path, rows: int, seed: int) -> str:
    rng = random.Random(seed)
    path = directory / f"pairs-{rows}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "pair", "score"])
        for _ in range(rows):
            out.writerow([synthetic.sentence(rng), synthetic.sentence(rng), f"{rng.random():.3f}"])
    return str(path)


def run(src: str | None, train: str, vocab: str, out: Path) -> dict[str, float]:
    """One training of 3 steps; seconds to its first step and its peak RSS (GiB)."""
    cfg = {
        "task": "regression",
        "vocabulary": vocab,
        "model": {"size": "tiny", "maxSequenceLength": 128},
        "data": {"train": train, "format": "csv", "textPairField": "pair", "labelField": "score"},
        "training": {"sequenceLength": 128, "globalBatchSize": 32, "steps": 3, "logEverySteps": 1},
        "checkpoint": {"everySteps": 10**6},
        "output": {"dir": str(out)},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = [sys.executable, "-m", "berth_trainer", "train", "--config", str(path)]
    args += ["--metrics-port", "0", "--termination-log", f"{out}.term"]
    started = time.time()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its own resource usage
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    steps = [json.loads(x) for x in stdout.splitlines() if '"train step"' in x]
    if code or not steps:
        raise SystemExit(f"{src or 'Berth'}: exit {code}\n{stdout[-2000:]}")
    return {"first_step": steps[0]["time"] - started, "rss": usage.ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="a Berth source tree to compare with")
    parser.add_argument("--rows", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    before = str(Path(args.before).resolve() / "trainer" / "src")
    work = Path(tempfile.mkdtemp(prefix="berth-streamed-"))
    vocab = synthetic.write_quickstart_corpus(work, seed=0, documents=2, files=1)["vocab"]
    table = []
    for rows in sorted(args.rows):
        train = write_split(work, rows, seed=rows)
        sides: dict[str, list[dict]] = {"before": [], "streamed": []}
        for r in range(args.rounds):
            for side, src in (("before", before), ("streamed", None)):
                sides[side].append(run(src, train, vocab, work / f"{side}-{rows}-{r}"))
        table.append((rows, sides))
    print(
        f"\nregression, tiny BERT, sequence length 128, 3 steps, {args.rounds} round(s) per side; "
        f"{os.cpu_count()} CPUs, load1 {os.getloadavg()[0]:.2f} at the end\n"
    )
    print(f"{'rows':>8} {'side':<9} {'first step s':>13} {'peak RSS GiB':>13}")
    for rows, sides in table:
        for side, runs in sides.items():
            first = statistics.median(x["first_step"] for x in runs)
            rss = max(x["rss"] for x in runs)
            print(f"{rows:>8} {side:<9} {first:>13.1f} {rss:>13.2f}")


if __name__ == "__main__":
    main()
