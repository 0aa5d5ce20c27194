"""`berth run` with data.prepare: prepare processes first, all at once, then the training.

The processes are real; a small stand-in for `berth-trainer` (no TensorFlow) records its
arguments and exits as told, so the test takes a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from berth_operator.local.runner import LocalRun, run_to_completion
from tests.unit.operator.factories import make_training

#: Stands in for `berth-trainer`: appends its argv to $RECORD; `prepare --worker $FAIL_SLICE`
#: writes a reason to its termination log and exits 3 (DATA_INVALID); all else exits 0.
TRAINER = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["RECORD"], "a") as record:
    record.write(json.dumps(args) + "\\n")
if args[0] == "prepare" and args[args.index("--worker") + 1] == os.environ.get("FAIL_SLICE"):
    with open(args[args.index("--termination-log") + 1], "w") as log:
        log.write("corpus/b.txt line 2: not UTF-8")
    sys.exit(3)
"""


def run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str = ""
) -> tuple[LocalRun, list[str], list[list[str]]]:
    """Run a training of 2 workers with 3 prepare slices to its end: the run, the phases seen
    after each pass, and the stand-in's calls in order."""
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.setenv("FAIL_SLICE", fail)
    training = make_training(workers=2)
    training["spec"]["data"]["prepare"] = {"workers": 3, "output": str(tmp_path / "shards")}
    local = LocalRun(training, tmp_path / "run", [sys.executable, "-c", TRAINER])
    phases: list[str] = []
    run_to_completion(local, lambda r: phases.append(r.status["phase"]), interval=0.05)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    return local, phases, calls


def test_prepare_processes_run_before_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, phases, calls = run(tmp_path, monkeypatch)
    assert local.status["phase"] == "Succeeded"
    assert phases[0] == "Preparing"
    prepares = [c for c in calls if c[0] == "prepare"]
    assert calls[: len(prepares)] == prepares  # every prepare before any train
    assert sorted(c[c.index("--worker") + 1] for c in prepares) == ["0", "1", "2"]
    for call in prepares:
        assert call[call.index("--workers") + 1] == "3"
        assert call[call.index("--metrics-port") + 1] == "0"
        assert call[call.index("--config") + 1] == str(tmp_path / "run" / "config.yaml")
    assert [c[0] for c in calls[len(prepares) :]] == ["train", "train"]
    conditions = {c["type"]: c["status"] for c in local.status["conditions"]}
    assert conditions["Prepared"] == "True"
    assert local.status["prepare"]["summary"] == "3/3"


def test_failed_prepare_process_fails_the_run_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, _, calls = run(tmp_path, monkeypatch, fail="1")
    assert local.status["phase"] == "Failed"
    message = local.status["message"]
    assert "slice 1" in message and "exit code 3" in message
    assert "corpus/b.txt line 2: not UTF-8" in message
    assert not [c for c in calls if c[0] == "train"]
    assert any("PrepareFailed" in event for event in local.events)
