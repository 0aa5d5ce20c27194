"""Checkpoint on SIGTERM: from a SIGTERM delivered to a training worker to its checkpoint
complete and the process gone — does it fit a pod's grace period (GKE Spot: 15 s)?

    .venv/bin/python bench/sigterm_checkpoint.py                  # tiny, base, large
    .venv/bin/python bench/sigterm_checkpoint.py --models tiny --workers 2
    .venv/bin/python bench/sigterm_checkpoint.py --models base --checkpoint-dir /mnt/pvc/x

Each row runs the real `berth-trainer train` CLI as a worker process (MLM pretraining on the
quickstart corpus, a BERT-sized vocabulary of 30522 so the checkpoint has BERT's size), waits
for a few steps, then sends SIGTERM 50 ms after a step was logged, with the next step in
flight: the worst case. Python runs the handler once that step returns; one worker then saves,
several run one more step, in which they agree to stop. Columns:

- `step s`: one training step (from the trainer's examples/s), for scale;
- `to boundary`: SIGTERM sent → the step that carried the stop flag done (the bench's clock
  against the trainer's log); `trainer`: the same as the trainer measured it from the signal's
  arrival, which its grace budget counts from;
- `save`: `CheckpointManager.save` (trainer's clock); `ckpt MB`: its files;
- `exit`: the save's log line → the process gone (the bench's wall clock; 10 ms log polls);
- `total`: SIGTERM sent → every worker gone (the bench's wall clock), against `--grace`;
- `fsync`: afterwards, the bench fsyncs the checkpoint's files: what making the page cache
  durable would still cost on this disk (TensorFlow does not fsync).

`measure(model)` returns one row as a dict (bench/faults.py imports it). "load1" is the 1-minute
load average when the row started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the trainer tests' worker helpers

from tests.unit.trainer.trainer_testlib import free_ports, json_lines, tf_config  # noqa: E402

#: BERT's WordPiece vocabulary size: the embedding (and its Adam slots) is a quarter of base.
VOCAB_SIZE = 30522
#: Per model: (global batch, sequence length) — BERT's phase-1 length, small batches so that
#: BERT-large steps on a 2-core CPU stay in seconds.
SHAPES = {"tiny": (8, 128), "base": (8, 128), "large": (2, 128)}
GRACE_SECONDS = 15.0


def write_data(directory: Path) -> dict[str, str]:
    """The quickstart corpus, its vocabulary padded to `VOCAB_SIZE` with `[unusedN]`."""
    from berth_trainer.synthetic import write_quickstart_corpus

    paths = write_quickstart_corpus(directory, seed=0)
    vocab = Path(paths["vocab"]).read_text(encoding="utf-8").split()
    vocab += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(vocab))]
    Path(paths["vocab"]).write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return paths


def trainer_config(
    model: str,
    data: dict[str, str],
    out: Path,
    ckpt: Path,
    shape,
    every_steps: int,
    background: bool = False,
) -> dict:
    batch, seq = shape
    return {
        "task": "pretraining",
        "vocabulary": data["vocab"],
        "model": {"size": model},
        "data": {"train": data["corpus"]},
        "training": {
            "sequenceLength": seq,
            "globalBatchSize": batch,
            "steps": 1_000_000,
            "maxPredictionsPerSequence": 20,
            "logEverySteps": 1,
        },
        "checkpoint": {"everySteps": every_steps, "dir": str(ckpt), "background": background},
        "output": {"dir": str(out)},
    }


def start(
    config: Path, logs: list[Path], threads: int | None, grace: float
) -> list[subprocess.Popen]:
    """One `berth-trainer train` per log; two or more form a MultiWorkerMirrored group."""
    ports = free_ports(len(logs))
    procs = []
    for i, log in enumerate(logs):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        env["BERTH_TERMINATION_GRACE_SECONDS"] = str(grace)
        env.pop("TF_CONFIG", None)
        if len(logs) > 1:
            env["TF_CONFIG"] = tf_config(ports, i)
        if threads:
            env["BERTH_NUM_THREADS"] = str(threads)
        with open(log, "w") as out:
            cmd = [sys.executable, "-m", "berth_trainer", "train", "--config", str(config)]
            cmd += ["--metrics-port", "0", "--termination-log", str(log.with_suffix(".term"))]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
    return procs


def wait_for_new_step(log: Path, after: int, procs, timeout: float) -> int:
    """Poll `log` until a `train step` line beyond `after` appears; returns its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited early:\n{log.read_text()[-3000:]}")
        steps = [
            x["step"]
            for x in json_lines(log.read_text(errors="replace"))
            if x.get("msg") == "train step"
        ]
        if steps and steps[-1] > after:
            return steps[-1]
        time.sleep(0.01)
    raise TimeoutError(f"no step beyond {after} in {timeout} s:\n{log.read_text()[-3000:]}")


def fsync_seconds(files: list[Path]) -> float:
    start = time.monotonic()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - start


def measure(
    model: str,
    workers: int = 1,
    shape: tuple[int, int] | None = None,
    warm_steps: int = 2,
    checkpoint_dir: str | None = None,
    timeout: float = 900,
    every_steps: int = 1_000_000,
    grace: float = GRACE_SECONDS,
    background: bool = False,
) -> dict:
    """Train `model` (tiny, base or large) in `workers` real trainer processes, SIGTERM the last
    one right after a logged step, and time the way out (seconds; see the module docstring).

    With `every_steps` below `warm_steps`, periodic saves are measured first, so the trainer
    skips a SIGTERM save that would not fit `grace` (then `save_s` is None, `ckpt_mb` 0)."""
    shape = shape or SHAPES[model]
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="berth-sigterm-") as tmp:
        root = Path(tmp)
        ckpt = Path(checkpoint_dir or root / "ckpt")
        data = write_data(root / "data")
        config = root / "cfg.json"
        cfg = trainer_config(model, data, root / "out", ckpt, shape, every_steps, background)
        config.write_text(json.dumps(cfg))
        logs = [root / f"worker-{i}.log" for i in range(workers)]
        procs = start(config, logs, threads=1 if workers > 1 else None, grace=grace)
        try:
            target = logs[-1]
            seen = wait_for_new_step(target, warm_steps - 1, procs, timeout)
            wait_for_new_step(target, seen, procs, timeout)
            # The next step is in flight by now (right at the log line, the worker may still be
            # between steps, writing TensorBoard scalars: the best case, not the worst).
            time.sleep(0.05)
            sent = time.time()
            procs[-1].send_signal(signal.SIGTERM)
            gone = []
            for p in procs:
                p.wait(timeout=timeout)
                gone.append(time.time())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        steps = [
            x
            for x in json_lines(target.read_text(errors="replace"))
            if x.get("msg") == "train step"
        ]
        ends = [
            x
            for log in logs
            for x in json_lines(log.read_text(errors="replace"))
            if x.get("msg", "").startswith("SIGTERM: ")
            and ("save_seconds" in x or "resume_step" in x)
        ]
        assert len(ends) == workers, f"{len(ends)} of {workers} workers logged their SIGTERM"
        saves = [x for x in ends if "save_seconds" in x]
        assert len(saves) in (0, workers), "the workers took different decisions"
        # The boundary on the wall clock, against the bench's own SIGTERM.
        boundary = min(x["time"] - x.get("save_seconds", 0.0) for x in ends)
        files = sorted(ckpt.glob(f"ckpt-{saves[0]['step']}.*")) if saves else []
        return {
            "model": model,
            "workers": workers,
            "batch": shape[0],
            "seq": shape[1],
            "exit_codes": [p.returncode for p in procs],
            "step_s": round(shape[0] / steps[-1]["examples_per_second"], 3),
            "to_boundary_s": round(boundary - sent, 3),
            # The same, as the trainer timed it from the signal's arrival (preemption.Sigterm).
            "trainer_to_boundary_s": max(x["since_sigterm_seconds"] for x in ends),
            "save_s": max(x["save_seconds"] for x in saves) if saves else None,
            "exit_s": round(max(gone) - max(x["time"] for x in ends), 3),
            "total_s": round(max(gone) - sent, 3),
            "ckpt_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
            "fsync_s": round(fsync_seconds(files), 3),
            "load1": round(load1, 2),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "base", "large"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--checkpoint-dir", help="where to save (default: a temporary directory)")
    p.add_argument(
        "--grace", type=float, default=GRACE_SECONDS, help="also the trainer's grace budget"
    )
    p.add_argument(
        "--every-steps",
        type=int,
        default=1_000_000,
        help="checkpoint.everySteps; 1: saves are measured first, so a save that cannot fit "
        "the grace is skipped",
    )
    p.add_argument("--background", action="store_true", help="checkpoint.background: true")
    args = p.parse_args()
    print("model  workers batch seq  step s  to boundary  trainer  save    ckpt MB", end="")
    print("  exit   total   fsync  fits  load1")
    for model in args.models:
        r = measure(
            model,
            args.workers,
            checkpoint_dir=args.checkpoint_dir,
            every_steps=args.every_steps,
            grace=args.grace,
            background=args.background,
        )
        save = "skipped" if r["save_s"] is None else f"{r['save_s']:.3f}"
        fits = "yes" if r["total_s"] <= args.grace else "NO"
        print(
            f"{r['model']:6} {r['workers']:>7} {r['batch']:>5} {r['seq']:>3} {r['step_s']:>7.3f}"
            f" {r['to_boundary_s']:>12.3f} {r['trainer_to_boundary_s']:>8.3f}"
            f" {save:>7} {r['ckpt_mb']:>8.1f}"
            f" {r['exit_s']:>6.3f} {r['total_s']:>7.3f} {r['fsync_s']:>6.3f} {fits:>5}"
            f" {r['load1']:>6.2f}",
            flush=True,
        )
        if set(r["exit_codes"]) != {200}:
            print(f"# unexpected exit codes {r['exit_codes']}", flush=True)
    print(f"# grace {args.grace:g} s; SIGTERM with a step in flight (the worst case)")


if __name__ == "__main__":
    main()
