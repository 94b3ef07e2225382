"""Freed heap goes back to the system (mcu/media/allocator.py): glibc's malloc keeps it otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from mcu.media.allocator import ARENAS, Trimmer

REPO = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


#: Eight threads alive at once, each allocating through malloc, then glibc's count of its arenas.
ARENA_PROBE = """
import ctypes, sys, threading
from mcu.media.allocator import limit_arenas
if sys.argv[1] == "cap":
    assert limit_arenas()
barrier, kept = threading.Barrier(8), []
def work():
    kept.append([bytearray(4000) for _ in range(100)])
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def arenas(mode: str) -> int:
    """The arenas of a fresh interpreter after eight threads allocated (malloc_stats prints one block each)."""
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def test_capped_arenas_are_shared_by_every_thread():
    assert arenas("cap") == ARENAS
    assert arenas("free") > ARENAS  # without the cap, each thread gets one of its own


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
