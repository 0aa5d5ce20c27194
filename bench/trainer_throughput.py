"""Training throughput of Berth's custom step: sequences/s, achieved GFLOP/s, % of a matmul
ceiling measured in the same run, and peak RSS — one subprocess per configuration.

    .venv/bin/python bench/trainer_throughput.py                       # the full grid
    .venv/bin/python bench/trainer_throughput.py --models tiny --steps 20

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
import itertools
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {"tiny": (2, 128), "base": (12, 768)}
VOCAB = 30522
PREDICTIONS = 20


def training_flops(layers: int, hidden: int, batch: int, seq: int) -> float:
    ff = 4 * hidden
    per_token = layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * ff + 2 * 2 * seq * hidden)
    head = PREDICTIONS * (2 * hidden * hidden + 2 * hidden * VOCAB)
    return 3.0 * batch * (seq * per_token + head)


def matmul_ceiling(dtype: str, seconds: float = 3.0) -> float:
    """GFLOP/s of a large square matmul, the machine's practical ceiling for this dtype."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    mm = tf.function(lambda x: tf.matmul(x, x))
    mm(a).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mm(a).numpy()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def run_one(
    model: str,
    batch: int,
    seq: int,
    precision: str,
    steps: int,
    warmup: int,
    jit_compile: bool = False,
) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load = os.getloadavg()[0]
    import keras
    import tensorflow as tf

    from berth_trainer.config import TrainerConfig
    from berth_trainer.modeling import build_model
    from berth_trainer.optim import build_optimizer
    from berth_trainer.runner import trainable_variables
    from berth_trainer.runtime import configure_threads, release_free_memory
    from berth_trainer.train_step import make_train_step

    configure_threads()  # as the trainer does: $BERTH_NUM_THREADS, before any op

    layers, hidden = SIZES[model]
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
    model_ = build_model(cfg, VOCAB)
    variables = trainable_variables(model_, cfg)
    optimizer = build_optimizer(cfg.training)
    optimizer.build(variables)
    step = make_train_step(model_, optimizer, strategy, cfg, variables)
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
    for i in range(warmup):
        step(data, stop).numpy()
        if i == 0:
            release_free_memory()  # as the trainer does after its first step
    start = time.perf_counter()
    for _ in range(steps):
        step(data, stop).numpy()
    seconds = (time.perf_counter() - start) / steps
    achieved = training_flops(layers, hidden, batch, seq) / seconds / 1e9
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ceiling = matmul_ceiling("float32")
    own = matmul_ceiling("bfloat16") if precision == "mixed_bfloat16" else ceiling
    return {
        "model": model,
        "batch": batch,
        "seq": seq,
        "precision": precision,
        "s_per_step": round(seconds, 3),
        "seq_per_s": round(batch / seconds, 2),
        "gflops": round(achieved, 1),
        "ceiling_gflops": round(ceiling, 1),
        "pct_of_ceiling": round(100 * achieved / ceiling, 1),
        "own_dtype_ceiling_gflops": round(own, 1),
        "pct_of_own_dtype_ceiling": round(100 * achieved / own, 1),
        "peak_rss_gib": round(peak_rss, 2),
        "load1": round(load, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "base"], choices=sorted(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing, compile)")
    p.add_argument("--jit-compile", action="store_true", help="training.jitCompile: true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        model, batch, precision = args.one.split(",")
        r = run_one(
            model, int(batch), args.seq, precision, args.steps, args.warmup, args.jit_compile
        )
        print(json.dumps(r))
        return
    header = (
        f"{'model':6} {'batch':>5} {'seq':>4} {'precision':15} {'s/step':>7} {'seq/s':>8} "
        f"{'GFLOP/s':>8} {'fp32 ceil':>9} {'%fp32':>6} {'own ceil':>9} {'%own':>6} "
        f"{'RSS GiB':>8} {'load1':>6}"
    )
    print(header)
    for model, batch, precision in itertools.product(args.models, args.batches, args.precisions):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"{model},{batch},{precision}",
            "--seq",
            str(args.seq),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            *(["--jit-compile"] if args.jit_compile else []),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{model:6} {batch:>5} {args.seq:>4} {precision:15} FAILED: {out.stderr[-300:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{model:6} {batch:>5} {args.seq:>4} {precision:15} {r['s_per_step']:>7} "
            f"{r['seq_per_s']:>8} {r['gflops']:>8} {r['ceiling_gflops']:>9} "
            f"{r['pct_of_ceiling']:>6} {r['own_dtype_ceiling_gflops']:>9} "
            f"{r['pct_of_own_dtype_ceiling']:>6} {r['peak_rss_gib']:>8} {r['load1']:>6}",
            flush=True,
        )


if __name__ == "__main__":
    main()
