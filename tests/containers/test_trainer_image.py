"""The trainer image, run as a pod runs it: user 65532, read-only root, only /tmp writable, no
network. Data and config are mounted read-only, the output folder read-write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from berth_trainer.exit_codes import ExitCode
from berth_trainer.synthetic import write_quickstart_corpus
from tests.support.images import UID, image, owned_by_image_user, podman_run, readable
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The quickstart corpus on the host; its paths as the container sees them (under /data)."""
    root = readable(tmp_path_factory.mktemp("data"))
    paths = write_quickstart_corpus(root, seed=1, documents=40)
    return {key: "/data" + value.removeprefix(str(root)) for key, value in paths.items()} | {
        "host": str(root)
    }


def config_volume(tmp_path: Path, corpus: dict[str, str], **changes: object) -> Path:
    """A folder holding train.yaml: a tiny BERT, 20 steps, output in /out (the container's)."""
    cfg: dict = {
        "task": "pretraining",
        **tiny_config(
            corpus["vocab"],
            corpus["corpus"],
            steps=20,
            checkpoint_dir="/out/checkpoints",
            output_dir="/out/model",
        ),
        **changes,
    }
    folder = tmp_path / "config"
    folder.mkdir()
    readable(folder)
    (folder / "train.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def test_trainer_image_trains_and_exports_a_tiny_model(
    tmp_path: Path, data: dict[str, str]
) -> None:
    out = owned_by_image_user(tmp_path / "out")
    result = podman_run(
        image("trainer"),
        *("train", "--config", "/config/train.yaml", "--metrics-port", "0"),
        volumes=[
            (data["host"], "/data", "ro"),
            (config_volume(tmp_path, data), "/config", "ro"),
            (out, "/out", "rw"),
        ],
    )
    assert result.returncode == ExitCode.OK, result.stdout[-3000:] + result.stderr[-3000:]
    model = out / "model"
    for name in ("model.keras", "saved_model/saved_model.pb", "vocab.txt", "config.json"):
        assert (model / name).is_file(), f"{name} not exported; output: {sorted(model.rglob('*'))}"
    assert (model / "model.keras").stat().st_uid == UID
    assert any((out / "checkpoints").iterdir())


def test_trainer_image_missing_data_exits_data_invalid(
    tmp_path: Path, data: dict[str, str]
) -> None:
    """A data path that does not exist: the documented permanent exit code (3), with the message
    in the termination log (mounted where Kubernetes mounts it) and in the log."""
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    os.chown(termination_log, UID, UID)  # the kubelet's file, writable by the container's user
    owned_by_image_user(tmp_path / "out")
    result = podman_run(
        image("trainer"),
        *("train", "--config", "/config/train.yaml", "--metrics-port", "0"),
        volumes=[
            (data["host"], "/data", "ro"),
            (config_volume(tmp_path, data, data={"train": "/data/nowhere/*.txt"}), "/config", "ro"),
            (tmp_path / "out", "/out", "rw"),
            (termination_log, "/dev/termination-log", "rw"),
        ],
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.DATA_INVALID, output[-3000:]
    message = termination_log.read_text()
    assert "data.train: no file matches '/data/nowhere/*.txt'" in message
    assert message in output
