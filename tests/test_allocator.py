"""Freed heap goes back to the system (mcu/allocator.py): glibc's malloc keeps it otherwise."""

from __future__ import annotations

import threading
import time

from mcu.allocator import Trimmer, limit_arenas


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_arenas_can_be_capped():
    assert limit_arenas()


def test_a_trim_returns_the_free_pages_in_the_middle_of_the_heap():
    # 150 MiB in malloc-sized blocks (over pymalloc's 512 bytes), then every block freed but one in
    # 64: glibc cannot shrink a heap whose top is in use, so the free pages stay resident.
    blocks = [bytearray(4000) for _ in range(40_000)]
    kept = blocks[::64]
    del blocks
    before = rss_mib()
    trimmer = Trimmer()
    trimmer.trim()
    after = rss_mib()
    assert trimmer.trims == 1
    assert before - after > 80, (before, after)
    assert len(kept) == 625


def test_the_trimmer_runs_every_interval_on_its_thread_until_stopped():
    trimmer = Trimmer(interval=0.05)
    trimmer.start()
    assert any(t.name == "malloc-trim" for t in threading.enumerate())
    time.sleep(0.5)
    trimmer.stop()
    assert 3 <= trimmer.trims <= 10 and trimmer.seconds < 0.5
    assert not any(t.name == "malloc-trim" for t in threading.enumerate())
