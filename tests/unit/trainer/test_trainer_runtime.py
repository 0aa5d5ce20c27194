"""Process-level helpers of `runtime.py`."""

from __future__ import annotations

import os

from berth_trainer.runtime import release_free_memory


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
