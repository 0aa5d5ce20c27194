"""Helpers of the trainer tests: config files, and real `berth-trainer` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

#: A tiny BERT: fast enough for 50 steps in a few seconds on 2 shared cores.
TINY_MODEL = {
    "numLayers": 2,
    "hiddenSize": 64,
    "numHeads": 2,
    "intermediateSize": 128,
    "maxSequenceLength": 32,
    "dropout": 0.0,
}


def pretraining_config(corpus: dict[str, str], out: Path, **training) -> dict:
    return {
        "task": "pretraining",
        "vocabulary": corpus["vocab"],
        "model": dict(TINY_MODEL),
        "data": {"train": corpus["corpus"]},
        "training": {
            "sequenceLength": 16,
            "globalBatchSize": 32,
            "steps": 50,
            "learningRate": 0.002,
            "warmupSteps": 5,
            "maxPredictionsPerSequence": 4,
            "logEverySteps": 5,
            **training,
        },
        "checkpoint": {"everySteps": 25},
        "output": {"dir": str(out / "out")},
    }


def classification_config(corpus: dict[str, str], out: Path, **training) -> dict:
    cfg = pretraining_config(corpus, out, numClasses=2, **training)
    cfg["task"] = "classification"
    cfg["data"] = {
        "train": corpus["classification_train"],
        "validation": corpus["classification_validation"],
        "format": "csv",
    }
    return cfg


#: `berth-trainer` in a fresh process of this interpreter.
TRAINER = [sys.executable, "-m", "berth_trainer"]


def train_args(config: str, termination_log: Path) -> list[str]:
    """`berth-trainer` arguments of a training without a metrics server."""
    return [
        "train",
        "--config",
        config,
        "--metrics-port",
        "0",
        "--termination-log",
        str(termination_log),
    ]


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def json_lines(text: str) -> list[dict]:
    """The trainer's structured log lines (TensorFlow's own stderr noise is skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`berth-trainer ARGS` in a fresh process."""
    return subprocess.run(
        [*TRAINER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        check=False,
    )


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
