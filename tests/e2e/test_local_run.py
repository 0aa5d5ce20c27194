"""`berth run`: a manifest trained by real local worker processes, with the operator's policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from berth_operator.local.runner import die_with_parent
from berth_trainer.synthetic import write_quickstart_corpus
from tests.support.tiny import tiny_config, write_pair_scores
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

BERTH = [sys.executable, "-m", "berth_operator.local.cli"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_quickstart_corpus(tmp_path_factory.mktemp("corpus"), seed=1, documents=60)


def manifest(tmp_path: Path, corpus: dict[str, str], steps: int = 60, **spec: object) -> Path:
    body = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "BertTraining",
        "metadata": {"name": "tiny"},
        "spec": {
            **tiny_config(
                corpus["vocab"],
                corpus["corpus"],
                steps=steps,
                checkpoint_dir="ckpt",
                output_dir="model",
            ),
            "workers": 2,
            **spec,
        },
    }
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def start(path: Path, work_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BERTH, "run", str(path), "--work-dir", str(work_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_child_setup,
    )


def _child_setup() -> None:
    """No orphan if pytest dies; Ctrl-C (SIGINT) as in a terminal, even when pytest was started
    in the background, where it and every child inherit SIGINT ignored."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def status(work_dir: Path) -> dict:
    path = work_dir / "status.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("status", {}) if path.exists() else {}


def worker_pids(work_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted((work_dir / "logs").glob("worker-*.pid"))]


def wait_progress(work_dir: Path, field: str, at_least: int) -> list[int]:
    """The worker pids once status.progress[field] (as `berth run` writes it) >= at_least."""
    return wait_for(
        lambda: (
            (status(work_dir).get("progress") or {}).get(field, 0) >= at_least
            and worker_pids(work_dir)
        ),
        timeout=240,
        what=f"progress.{field} >= {at_least}",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    return state != "Z"


def assert_no_orphans(work_dir: Path) -> None:
    pids = worker_pids(work_dir)
    assert pids, "no worker was started"
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="worker processes gone")


def test_two_workers_train_to_the_last_step(tmp_path: Path, corpus: dict[str, str]) -> None:
    work = tmp_path / "run"
    proc = start(manifest(tmp_path, corpus), work)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    final = status(work)
    assert final["phase"] == "Succeeded"
    assert final["progress"]["step"] == final["progress"]["totalSteps"] == 60
    assert final["restarts"] == 0
    exported = tmp_path / "model"  # relative to the manifest's folder
    assert (exported / "model.keras").is_file() and (exported / "vocab.txt").is_file()
    assert (exported / "saved_model").is_dir()
    assert_no_orphans(work)

    # Fine-tune a classifier from that run's Berth checkpoint (as examples/ does).
    classify = manifest(
        tmp_path,
        corpus,
        steps=120,
        task="classification",
        initCheckpoint="ckpt",
        data={
            "train": corpus["classification_train"],
            "format": "csv",
            "validation": corpus["classification_validation"],
        },
        workers=1,
        output={"dir": "classifier"},
        checkpoint={"dir": "classifier-ckpt", "everySteps": 20},
    )
    body = yaml.safe_load(classify.read_text())
    body["spec"]["training"].update(numClasses=2, learningRate=0.003)
    classify.write_text(yaml.safe_dump(body))
    result = subprocess.run(
        [*BERTH, "run", str(classify), "--work-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "c" / "logs" / "worker-0.log").read_text()
    assert f"initialised from {tmp_path / 'ckpt'}" in log
    metrics = json.loads((tmp_path / "classifier" / "metrics.json").read_text())
    assert metrics["validation_accuracy"] > 0.9
    # The view's last line and the status: the final figures, from worker 0's termination log.
    summary = f"acc {metrics['validation_accuracy']:.3f}"
    last = [line for line in result.stderr.splitlines() if line.startswith("tiny: ")][-1]
    assert "Phase=Succeeded" in last and "Step=120/120  %=100" in last, last
    assert f"Metric={summary}" in last, last
    final = status(tmp_path / "c")
    assert (final["progress"]["percent"], final["validation"]["step"]) == (100, 120), final
    assert final["validation"]["summary"] == summary, final


def test_killed_worker_restarts_the_group_and_resumes(
    tmp_path: Path, corpus: dict[str, str]
) -> None:
    """With data.prepare: two prepare processes write the shards first, the workers train
    from them, and the group restart after the kill does not prepare again."""
    work = tmp_path / "run"
    path = manifest(tmp_path, corpus, steps=120)
    body = yaml.safe_load(path.read_text())
    body["spec"]["data"]["prepare"] = {"workers": 2, "output": "shards"}  # beside the manifest
    path.write_text(yaml.safe_dump(body))
    proc = start(path, work)
    first = wait_progress(work, "lastCheckpointStep", 20)
    os.kill(first[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    final = status(work)
    assert final["phase"] == "Succeeded"
    assert final["restarts"] == 1
    assert final["progress"]["step"] == 120
    assert set(worker_pids(work)).isdisjoint(first), "the group was not recreated"
    log = (work / "logs" / "worker-0.log").read_text()
    assert '"msg": "resumed"' in log, "worker 0 did not resume from the checkpoint"
    assert_no_orphans(work)
    conditions = {c["type"]: c["status"] for c in final["conditions"]}
    assert conditions["Prepared"] == "True"
    markers = sorted(p.name for p in (tmp_path / "shards").glob("slice-*.json"))
    assert markers == ["slice-00000-of-00002.json", "slice-00001-of-00002.json"]
    for index in (0, 1):  # one run each: the restarted group read the shards
        prepared = (work / "logs" / f"prepare-{index}.log").read_text()
        assert prepared.count('"msg": "wrote ') == 1 and "prepared already" not in prepared
    assert "FILE shard 0/2" in log and "train-00000-of-00002.tfrecord" in log  # the shards


def test_failure_policy_never_fails_and_leaves_no_orphans(
    tmp_path: Path, corpus: dict[str, str]
) -> None:
    work = tmp_path / "run"
    path = manifest(tmp_path, corpus, steps=400, runPolicy={"restartPolicy": "Never"})
    proc = start(path, work)
    pids = wait_progress(work, "step", 5)
    os.kill(pids[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    final = status(work)
    assert final["phase"] == "Failed"
    assert "exit code 137" in final["message"], final["message"]
    assert final["restarts"] == 0
    assert_no_orphans(work)


def test_sigint_stops_every_worker(tmp_path: Path, corpus: dict[str, str]) -> None:
    work = tmp_path / "run"
    proc = start(manifest(tmp_path, corpus, steps=2000), work)
    wait_progress(work, "step", 5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in status(work)["message"]
    assert_no_orphans(work)
    # The workers got SIGTERM and saved where they were (checkpoints every 10 steps otherwise).
    saved = sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in (tmp_path / "ckpt").glob("ckpt-*.index")
    )
    assert saved, "no checkpoint kept"
    for index in (0, 1):
        assert "preempted (SIGTERM)" in (work / "logs" / f"worker-{index}.log").read_text()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"workers": 3}, "spec.training.globalBatchSize"),
        ({"training": {"sequenceLength": 64}}, "spec.training.sequenceLength"),
        ({"model": {"size": "huge"}}, "spec.model.size"),
        ({"checkpoint": {"everySteps": 10}}, "spec.checkpoint.dir"),
        ({"colour": "blue"}, "spec.colour"),
    ],
)
def test_invalid_manifest_exits_2_naming_the_field(
    tmp_path: Path, corpus: dict[str, str], change: dict, field: str
) -> None:
    path = manifest(tmp_path, corpus, **change)
    work = tmp_path / "run"
    started = time.monotonic()
    result = subprocess.run(
        [*BERTH, "run", str(path), "--work-dir", str(work)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert field in result.stderr
    assert not work.exists(), "a process or file was started for an invalid manifest"
    assert time.monotonic() - started < 30


def test_fine_tuning_task_from_a_manifest(tmp_path: Path) -> None:
    """A regression task (one of the fine-tuning tasks) runs from a BertTraining manifest on two
    local workers to a learned score, and its export answers raw pairs."""
    data = tmp_path / "data"
    data.mkdir()
    spec = tiny_config(
        str(data / "vocab.txt"),
        write_pair_scores(data, 512, 1),
        steps=150,
        checkpoint_dir="ckpt",
        output_dir="model",
    )
    spec["model"] = {**spec["model"], "numLayers": 2, "hiddenSize": 64}
    spec["data"] |= {
        "validation": write_pair_scores(data, 128, 2),
        "format": "csv",
        "textPairField": "pair",
        "labelField": "score",
    }
    spec["training"] |= {"globalBatchSize": 32, "learningRate": 0.002, "warmupSteps": 10}
    body = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "BertTraining",
        "metadata": {"name": "scores"},
        "spec": {**spec, "task": "regression", "workers": 2},
    }
    path = tmp_path / "scores.yaml"
    path.write_text(yaml.safe_dump(body))
    result = subprocess.run(
        [*BERTH, "run", str(path), "--work-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert status(tmp_path / "run")["phase"] == "Succeeded"
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["validation_pearson"] >= 0.9, metrics
    pair = json.dumps({"text": "good good red cat", "text_pair": "good good sun tree"})
    model = str(tmp_path / "model")
    served = subprocess.run(
        [sys.executable, "-m", "berth_trainer", "predict", "--model", model, pair],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    (answer,) = json.loads(served.stdout[served.stdout.index("[") :])
    assert abs(answer["score"] - 4) < 0.75, answer
