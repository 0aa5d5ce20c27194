"""Training throughput of Berth's custom step: sequences/s, achieved GFLOP/s, % of a matmul
ceiling measured in the same run, and peak RSS — one subprocess per configuration.

    .venv/bin/python bench/trainer_throughput.py                       # the full grid
    .venv/bin/python bench/trainer_throughput.py --models tiny --steps 20
    .venv/bin/python bench/trainer_throughput.py --anchor --models base --batches 8

`--anchor` runs the same step in Hugging Face BERT on PyTorch (bench/anchor_hf.py, from a
virtualenv of bench/requirements-anchor.txt that it creates on demand) in the same invocation,
alternating Berth and the anchor `--rounds` times per configuration, each run in its own
process, and prints both sides, their ratio (anchor s/step ÷ Berth s/step: above 1, Berth is
faster) and each side's matmul ceilings measured in its own process.

FLOPs are counted exactly for the matmuls (training = 3 x forward, 2 FLOPs per multiply-add):
every dense matmul of the encoder, the attention score/context matmuls, and the MLM head at
the masked positions only; the untrained pooler and non-matmul work (softmax, LayerNorm, GELU,
AdamW) count zero: 6 x encoder weight-matrix parameters x tokens, plus attention and head.
The ceiling is a 2048x2048 float32 `tf.matmul`, timed in the same process with the same
threads right after the steps; `mixed_bfloat16` rows also report a bfloat16 ceiling ("own").
Threads follow $BERTH_NUM_THREADS exactly as in the trainer. "load1" is the 1-minute load
average when the configuration started (it includes the previous configuration's tail).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR_REQUIREMENTS = HERE / "requirements-anchor.txt"

SIZES = {"tiny": (2, 128), "base": (12, 768)}
VOCAB = 30522
PREDICTIONS = 20


def time_steps(step, steps: int, warmup: int, after_first=None) -> float:
    """Seconds per call of `step` over `steps` calls after `warmup` untimed ones."""
    for i in range(warmup):
        step()
        if i == 0 and after_first:
            after_first()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def result(model: str, batch: int, seq: int, precision: str, seconds: float, **more) -> dict:
    """The fields both sides of `--anchor` print for one configuration."""
    return {
        "model": model,
        "batch": batch,
        "seq": seq,
        "precision": precision,
        "s_per_step": round(seconds, 3),
        "seq_per_s": round(batch / seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **more,
    }


def training_flops(layers: int, hidden: int, batch: int, seq: int) -> float:
    ff = 4 * hidden
    per_token = layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * ff + 2 * 2 * seq * hidden)
    head = PREDICTIONS * (2 * hidden * hidden + 2 * hidden * VOCAB)
    return 3.0 * batch * (seq * per_token + head)


CEILING_N = 2048


def sustained_gflops(square_matmul, seconds: float = 3.0) -> float:
    """GFLOP/s of `square_matmul()` (a CEILING_N² product, run to completion) over `seconds`,
    after one untimed call: the ceiling each side of `--anchor` measures in its own process."""
    square_matmul()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        square_matmul()
        count += 1
    return 2 * CEILING_N**3 * count / (time.perf_counter() - start) / 1e9


def matmul_ceiling(dtype: str) -> float:
    """GFLOP/s of a large square `tf.matmul`, the machine's practical ceiling for this dtype."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([CEILING_N, CEILING_N], dtype=tf.float32), dtype)
    mm = tf.function(lambda x: tf.matmul(x, x))
    return sustained_gflops(lambda: mm(a).numpy())


def build_step(model: str, batch: int, seq: int, precision: str, jit_compile: bool = False):
    """Berth's model, optimizer and training step on one random static-shaped batch, built as
    the trainer builds them; returns a namespace (also used by bench/step_profile.py)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import types

    import keras
    import tensorflow as tf

    from berth_trainer.config import TrainerConfig
    from berth_trainer.data import ExampleEncoder
    from berth_trainer.modeling import build_model
    from berth_trainer.optim import build_optimizer
    from berth_trainer.runtime import configure_threads
    from berth_trainer.tasks import for_task
    from berth_trainer.train_step import make_train_step
    from berth_trainer.vocab import SPECIAL_TOKENS

    configure_threads()  # as the trainer does: $BERTH_NUM_THREADS, before any op

    cfg = TrainerConfig.model_validate(
        {
            "task": "pretraining",
            "vocabulary": "unused",
            "model": {"size": model},
            "data": {"train": "unused"},
            "output": {"dir": "unused"},
            "training": {
                "sequenceLength": seq,
                "globalBatchSize": batch,
                "precision": precision,
                "maxPredictionsPerSequence": PREDICTIONS,
                "steps": 1000,
                "jitCompile": jit_compile,
            },
        }
    )
    keras.mixed_precision.set_global_policy(precision)
    strategy = tf.distribute.get_strategy()
    # A vocabulary of BERT's size (the model reads only its size and special tokens).
    vocabulary = [*SPECIAL_TOKENS, *(f"w{i}" for i in range(VOCAB - len(SPECIAL_TOKENS)))]
    task = for_task(cfg, ExampleEncoder(cfg, vocabulary))
    model_ = build_model(task)
    variables = task.trainable_variables(model_)
    optimizer = build_optimizer(cfg.training)
    optimizer.build(variables)
    step = make_train_step(model_, optimizer, strategy, cfg, task, variables)
    rng = tf.random.Generator.from_seed(0)
    features = {
        "token_ids": rng.uniform([batch, seq], 5, VOCAB, tf.int32),
        "segment_ids": tf.zeros([batch, seq], tf.int32),
        "padding_mask": tf.ones([batch, seq], tf.int32),
        "mask_positions": rng.uniform([batch, PREDICTIONS], 1, seq, tf.int32),
    }
    labels = {
        "mask_ids": rng.uniform([batch, PREDICTIONS], 5, VOCAB, tf.int32),
        "mask_weights": tf.ones([batch, PREDICTIONS]),
    }
    data = iter(tf.data.Dataset.from_tensors((features, labels)).repeat())
    stop = tf.constant(0.0)
    return types.SimpleNamespace(
        cfg=cfg,
        task=task,
        model=model_,
        variables=variables,
        optimizer=optimizer,
        features=features,
        labels=labels,
        run=lambda: step(data, stop),
    )


def run_one(
    model: str,
    batch: int,
    seq: int,
    precision: str,
    steps: int,
    warmup: int,
    jit_compile: bool = False,
) -> dict:
    load = os.getloadavg()[0]
    b = build_step(model, batch, seq, precision, jit_compile)
    import keras
    import tensorflow as tf

    from berth_trainer.runtime import release_free_memory

    layers, hidden = SIZES[model]
    # After the first step, return the heap freed by building the graph, as the trainer does.
    seconds = time_steps(lambda: b.run().numpy(), steps, warmup, release_free_memory)
    achieved = training_flops(layers, hidden, batch, seq) / seconds / 1e9
    ceiling = matmul_ceiling("float32")
    bf16 = matmul_ceiling("bfloat16")
    own = bf16 if precision == "mixed_bfloat16" else ceiling
    return result(
        model,
        batch,
        seq,
        precision,
        seconds,
        gflops=round(achieved, 1),
        ceiling_gflops=round(ceiling, 1),
        pct_of_ceiling=round(100 * achieved / ceiling, 1),
        own_dtype_ceiling_gflops=round(own, 1),
        pct_of_own_dtype_ceiling=round(100 * achieved / own, 1),
        bf16_ceiling_gflops=round(bf16, 1),
        load1=round(load, 2),
        versions=f"tensorflow {tf.__version__}, keras {keras.__version__}",
    )


def anchor_python() -> str:
    """The anchor virtualenv's python, created on first use (keyed by the requirements' hash)."""
    digest = hashlib.sha256(ANCHOR_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    cache = Path(
        os.environ.get("BERTH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berth"
    )
    venv = cache / f"bench-anchor-{digest}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        print(f"# creating the anchor virtualenv {venv.name} (once; ~5.6 GB)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-cache-dir",
                "-r",
                str(ANCHOR_REQUIREMENTS),
            ],
            check=True,
        )
        (venv / ".complete").touch()
    return str(python)


def run_json(cmd: list[str]) -> dict:
    """Run `cmd` in its own process; its last stdout line as JSON, or {"error": stderr tail}."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_side(python: str, script: str, config: str, args: argparse.Namespace) -> dict:
    """One configuration in its own process; its JSON line, or {"error": ...}."""
    return run_json(
        [
            python,
            script,
            "--one",
            config,
            "--seq",
            str(args.seq),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            *(["--jit-compile"] if args.jit_compile else []),
        ]
    )


def print_berth_table(args: argparse.Namespace) -> None:
    header = (
        f"{'model':6} {'batch':>5} {'seq':>4} {'precision':15} {'s/step':>7} {'seq/s':>8} "
        f"{'GFLOP/s':>8} {'fp32 ceil':>9} {'%fp32':>6} {'own ceil':>9} {'%own':>6} "
        f"{'RSS GiB':>8} {'load1':>6}"
    )
    print(header)
    for model, batch, precision in itertools.product(args.models, args.batches, args.precisions):
        r = run_side(sys.executable, __file__, f"{model},{batch},{precision}", args)
        if "error" in r:
            print(f"{model:6} {batch:>5} {args.seq:>4} {precision:15} FAILED: {r['error']}")
            continue
        print(
            f"{model:6} {batch:>5} {args.seq:>4} {precision:15} {r['s_per_step']:>7} "
            f"{r['seq_per_s']:>8} {r['gflops']:>8} {r['ceiling_gflops']:>9} "
            f"{r['pct_of_ceiling']:>6} {r['own_dtype_ceiling_gflops']:>9} "
            f"{r['pct_of_own_dtype_ceiling']:>6} {r['peak_rss_gib']:>8} {r['load1']:>6}",
            flush=True,
        )


def print_anchor_table(args: argparse.Namespace) -> None:
    """Berth and the PyTorch anchor alternating, then medians and the ratio per configuration."""
    python = anchor_python()
    anchor_script = str(HERE / "anchor_hf.py")
    print(
        f"{'model':6} {'batch':>5} {'precision':15} {'round':>5} {'side':7} {'s/step':>7} "
        f"{'seq/s':>7} {'RSS GiB':>8} {'fp32 ceil':>9} {'bf16 ceil':>9} {'load1':>6}"
    )
    summary = []
    for model, batch, precision in itertools.product(args.models, args.batches, args.precisions):
        config = f"{model},{batch},{precision}"
        runs: dict[str, list[dict]] = {"berth": [], "anchor": []}
        for round_ in range(1, args.rounds + 1):
            for side, (py, script) in (
                ("berth", (sys.executable, __file__)),
                ("anchor", (python, anchor_script)),
            ):
                r = run_side(py, script, config, args)
                if "error" in r:
                    print(
                        f"{model:6} {batch:>5} {precision:15} {round_:>5} {side:7} FAILED: "
                        f"{r['error']}"
                    )
                    continue
                runs[side].append(r)
                print(
                    f"{model:6} {batch:>5} {precision:15} {round_:>5} {side:7} "
                    f"{r['s_per_step']:>7} {r['seq_per_s']:>7} {r['peak_rss_gib']:>8} "
                    f"{r['ceiling_gflops']:>9} {r['bf16_ceiling_gflops']:>9} {r['load1']:>6}",
                    flush=True,
                )
        if runs["berth"] and runs["anchor"]:
            summary.append((config, runs))
    print()
    print(
        f"{'model':6} {'batch':>5} {'precision':15} {'Berth s/step':>12} {'anchor s/step':>13} "
        f"{'ratio':>6} {'ratios per round':>17} {'Berth RSS':>9} {'anchor RSS':>10}"
    )
    for config, runs in summary:
        model, batch, precision = config.split(",")
        berth = statistics.median(r["s_per_step"] for r in runs["berth"])
        anchor = statistics.median(r["s_per_step"] for r in runs["anchor"])
        rounds = " ".join(
            f"{a['s_per_step'] / b['s_per_step']:.2f}"
            for b, a in zip(runs["berth"], runs["anchor"], strict=False)
        )
        print(
            f"{model:6} {batch:>5} {precision:15} {berth:>12.3f} {anchor:>13.3f} "
            f"{anchor / berth:>5.2f}x {rounds:>17} "
            f"{max(r['peak_rss_gib'] for r in runs['berth']):>9} "
            f"{max(r['peak_rss_gib'] for r in runs['anchor']):>10}"
        )
    if summary:
        first = summary[0][1]
        print(f"# Berth: {first['berth'][0]['versions']}; anchor: {first['anchor'][0]['versions']}")
    print("# ratio = anchor s/step / Berth s/step (median of the rounds); RSS = the largest peak")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "base"], choices=sorted(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing, compile)")
    p.add_argument("--jit-compile", action="store_true", help="training.jitCompile: true")
    p.add_argument("--anchor", action="store_true", help="alternate with the PyTorch anchor")
    p.add_argument("--rounds", type=int, default=2, help="with --anchor: runs per side")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        model, batch, precision = args.one.split(",")
        r = run_one(
            model, int(batch), args.seq, precision, args.steps, args.warmup, args.jit_compile
        )
        print(json.dumps(r))
    elif args.anchor:
        print_anchor_table(args)
    else:
        print_berth_table(args)


if __name__ == "__main__":
    main()
