"""Process-level helpers of `runtime.py`."""

from __future__ import annotations

import os

import pytest

from berth_trainer.runtime import default_jit_compile, release_free_memory


@pytest.mark.parametrize(
    ("setting", "on_tpu", "gpus", "expected"),
    [
        (None, False, 0, False),  # CPU: oneDNN's kernels beat XLA's
        (None, False, 1, True),  # GPU: XLA by default
        (None, False, 8, True),
        (None, True, 0, True),  # TPU: compiled anyway
        (False, False, 4, False),  # the opt-out
        (True, False, 0, True),  # asked for on CPU
    ],
)
def test_trainer_xla_is_the_default_on_accelerators_only(setting, on_tpu, gpus, expected):
    assert default_jit_compile(setting, on_tpu, gpus) is expected


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_trainer_release_free_memory_returns_freed_heap_to_the_os():
    # 1 KiB objects come from glibc's heap (Python's own allocator stops at 512 bytes). Keeping
    # every 64th pins the heap, so freeing the rest leaves ~150 MiB of free pages that glibc
    # would keep resident: what building a step's graph leaves behind, in small.
    blocks = [bytes(1024) + bytes([i % 256]) for i in range(160_000)]
    keep = blocks[::64]
    del blocks
    before = _rss_bytes()
    assert release_free_memory()
    assert before - _rss_bytes() > 100 * 2**20
    assert len(keep) == 2500
