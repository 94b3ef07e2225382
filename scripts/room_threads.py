#!/usr/bin/env python3
"""Per-thread CPU of a loaded MCU room: which thread of the server and its video process costs what.

Runs `bench_room.py --peers N --modes shared` and, once its peers are in, samples
utime + stime of every thread of the server and its child processes from /proc
over a window. Python does not name its threads for the kernel, so each row is a
process and a thread id; the main thread of the server is its event loop, the
main thread of a video process its reader, and the busiest other threads are
the room's audio thread (server) and the picture clock and decoders (picture).

    .venv/bin/python scripts/room_threads.py [--peers 16] [--window 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_room import command, process_tree, thread_ticks  # noqa: E402  (a sibling script, not a package)

TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=16, help="load peers in the room (default 16)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds sampled (default 10)")
    args = parser.parse_args()
    bench = subprocess.Popen(
        [
            sys.executable,
            "scripts/bench_room.py",
            "--peers",
            str(args.peers),
            "--modes",
            "shared",
            "--seconds",
            str(args.window + 15),
            "--warmup",
            "5",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        server = None
        deadline = time.monotonic() + 60
        while server is None and time.monotonic() < deadline:
            server = next((p for p in process_tree(bench.pid) if "mcu.server.cli serve" in command(p)), None)
            time.sleep(0.2)
        if server is None:
            sys.exit("the benchmark's server did not start")
        time.sleep(10 + 0.6 * args.peers)  # the peers join, then the room settles
        pids = process_tree(server)
        names = {pid: "picture" if "mcu.media.video_process" in command(pid) else str(pid) for pid in pids}
        names[server] = "server"
        before, started = thread_ticks(pids), time.monotonic()
        time.sleep(args.window)
        after, elapsed = thread_ticks(process_tree(server)), time.monotonic() - started
        report = bench.communicate(timeout=120)[0]
    finally:
        if bench.poll() is None:
            bench.terminate()
    shares = {key: (after[key] - before[key]) / TICKS / elapsed * 100 for key in after if key in before}
    print(f"server and video processes: {sum(shares.values()):.1f} % of one core over {elapsed:.1f} s")
    print("| process | thread | % of one core |")
    print("|---|---|---|")
    for (pid, tid), share in sorted(shares.items(), key=lambda item: -item[1]):
        if share < 0.5:
            continue
        process = names.get(pid, str(pid))
        thread = "main" if tid == pid else str(tid)
        print(f"| {process} | {thread} | {share:.1f} |")
    print(next((line for line in report.splitlines() if line.startswith("| shared")), report[-500:]))


if __name__ == "__main__":
    main()
