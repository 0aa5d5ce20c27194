"""Fixtures of the trainer tests (helpers live in trainer_testlib.py)."""

from __future__ import annotations

import pytest

from berth_trainer.synthetic import write_quickstart_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The quickstart's grammar corpus, vocab.txt and sentiment CSVs (deterministic)."""
    return write_quickstart_corpus(tmp_path_factory.mktemp("corpus"), seed=0)
