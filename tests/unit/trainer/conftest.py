"""Fixtures of the trainer tests (helpers live in trainer_testlib.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from berth_trainer.synthetic import write_quickstart_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The quickstart's grammar corpus, vocab.txt and sentiment CSVs (deterministic)."""
    return write_quickstart_corpus(tmp_path_factory.mktemp("corpus"), seed=0)


@pytest.fixture(scope="session")
def hf_python() -> str:
    """The python of a venv with `transformers` (hack/hf-venv.sh builds it once per version)."""
    return subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[3] / "hack" / "hf-venv.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout.strip()
