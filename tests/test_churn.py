"""Churn: 8 steady peers while 100 others join and leave, against `mcu serve` as a process of its own.

The server runs apart from the peers so that its /proc counts (threads, file
descriptors, RSS) are its own; its asyncio tasks come from its /metrics
(`mcu_asyncio_tasks`). Every peer is a cheap load peer (pre-encoded clip sent,
composite counted without decoding), so that this 2-core machine spends its
CPU on the server. The room is 640x360@15: a composite this machine holds with
18 peers in it while its other core runs the peers and the joins.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
from conftest import free_port, start_mcu, stop_process
from prometheus_client.parser import text_string_to_metric_families

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.peer import Peer

FPS = 15
#: The steady peers' composite holds 90 % of its rate in every window, as the issue asks. It did
#: not while the room's video shared the server's GIL: each wave of joins (ICE, DTLS, SCTP on the
#: event loop) stalled the room's clock for 0.3-1 s (12.6-13.3 fps over 3 s); with the video in its
#: video process, the slowest window of a quiet run was 14.3.
MIN_MEAN_FPS = MIN_FPS = 0.9 * FPS
#: Frames are counted every second over the last WINDOW seconds. At 15 fps a count moves by a frame
#: with arrival jitter alone: 7 % of a 1-s window, 2 % of a 3-s one, where a stall of 0.3 s still fails.
WINDOW = 3
STEADY, CHURNERS, WAVE = 8, 100, 10
#: Seconds between two joins of a wave, and between the end of a wave and the next: 100 peers come and
#: go in about 40 s, each wave's ten at the same instant. (Before the video process, ten joins at once
#: held the server's event loop, ICE, DTLS and SCTP of each, long enough to cost the composite 2-3
#: frames, and the waves were spread 0.1 s apart; now the slowest 3-s window of two runs was 14.0 fps.)
ARRIVAL, PAUSE = 0.0, 2.5
#: RSS bounds, MiB, of the server and its video processes (threads and fds are counted over them too).
#: It grows to the high-water mark of many peers at once (codec contexts and buffers, malloc arenas) in
#: the first waves, then slowly: measured in 5 runs on the shared machine, +41..+57 MiB over the whole
#: churn and (4 of them) +3.6..+12.3 MiB over the last 50 (70-250 KiB a peer); with the video process,
#: two quiet runs gave +35.9 / +35.8 in all and +4.2 / +3.5 over the last 50.
#: The second bound (400 KiB a peer) catches a leak of a peer's buffers; the first, a high-water mark
#: gone wrong. The slow remainder is not explained yet (see the soak in docs/benchmarks.md).
RSS_GROWTH_MIB = 80
RSS_GROWTH_LAST_HALF_MIB = 20


def colour(index: int) -> tuple[int, int, int]:
    return (40 + 37 * index % 200, 200 - 23 * index % 160, 60 + 53 * index % 180)


def load_peer(url: str, name: str, index: int, chat: bool = False) -> Peer:
    return Peer(
        url,
        "churn",
        name,
        video=PreEncodedVideoTrack(colour(index)),
        audio=PreEncodedAudioTrack(300.0 + 20 * index),
        decode=False,
        chat=chat,
    )


def proc_counts(pid: int) -> tuple[int, int, int]:
    """(threads, open file descriptors, RSS in KiB) of a server and its video processes, from /proc."""
    threads = fds = rss = 0
    members = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            members.extend(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    for member in members:
        threads += len(os.listdir(f"/proc/{member}/task"))
        fds += len(os.listdir(f"/proc/{member}/fd"))
        status = Path(f"/proc/{member}/status").read_text()
        rss += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return threads, fds, rss


async def server_tasks(port: int) -> int:
    """The server's own count of its asyncio tasks (the /metrics request's handler among them)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            text = await reply.text()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "mcu_asyncio_tasks")
    return int(family.samples[0].value)


async def resources(pid: int, port: int) -> tuple[int, int, int]:
    """(tasks, threads, fds): /proc first, so that the scrape's own connection is not among the fds."""
    threads, fds, _ = proc_counts(pid)
    return await server_tasks(port), threads, fds


async def sample_frames(peers: list[Peer], samples: list[tuple[float, list[int]]]) -> None:
    """Once a second: the time and each peer's count of composite frames received."""
    while True:
        samples.append((time.monotonic(), [p.video_frames for p in peers]))
        await asyncio.sleep(1)


async def settle(steady: list[Peer], others: int, timeout: float) -> None:
    """Wait until the steady peers see `others` other peers; fail at once if the server dropped one of them."""
    deadline = time.monotonic() + timeout
    while len(steady[0].participants) != others:
        dropped = [(p.name, p.errors) for p in steady if p.errors]
        assert not dropped, f"the server dropped steady peers: {dropped}"
        assert time.monotonic() < deadline, f"{len(steady[0].participants)} other peers, not {others}"
        await asyncio.sleep(0.05)


async def churn(url: str) -> None:
    """The churners, in a process of their own (`python tests/test_churn.py _churn URL`).

    Apart from the steady peers, so that the joins' ICE and DTLS work in the peers' own
    process does not slow the steady peers' counting: what they measure is the server. Wave
    after wave, WAVE peers join ARRIVAL s apart and receive the composite ("in" on stdout, then a
    line on stdin when the test has measured), and leave: half say `leave`, half just drop
    ("out", then a line on stdin when the steady peers have seen them go).
    """
    loop = asyncio.get_running_loop()
    for wave in range(CHURNERS // WAVE):
        peers = [load_peer(url, f"churn{wave}-{i}", STEADY + i, chat=i % 2 == 0) for i in range(WAVE)]
        try:
            joins = []
            for peer in peers:
                joins.append(asyncio.ensure_future(peer.join(timeout=20)))
                await asyncio.sleep(ARRIVAL)
            await asyncio.gather(*joins)
            await peers[0].wait_for(lambda: all(p.video_frames >= 3 and p.audio_frames >= 3 for p in peers), 20)
            print("in", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
        finally:
            for index, peer in enumerate(peers):
                if index % 2 and peer._ws is not None:
                    await peer._ws.close()  # gone without a word: the server sees its socket close
            await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
        print("out", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)


async def churner_says(churner: asyncio.subprocess.Process, expected: str, timeout: float) -> None:
    assert churner.stdout is not None
    line = (await asyncio.wait_for(churner.stdout.readline(), timeout)).decode().strip()
    assert line == expected, f"the churners said {line!r} (exit status {churner.returncode})"


async def go_on(churner: asyncio.subprocess.Process) -> None:
    assert churner.stdin is not None
    churner.stdin.write(b"\n")
    await churner.stdin.drain()


async def test_100_peers_come_and_go_without_leaks_or_a_slower_composite(tmp_path):
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    log = (tmp_path / "server.log").open("w")
    churn_log = (tmp_path / "churn.log").open("w")
    churner: asyncio.subprocess.Process | None = None
    server = start_mcu(
        port, "--size", "640x360", "--fps", str(FPS), "--video-bitrate", "600000", "--log-level", "WARNING",
        stdout=log,
    )  # fmt: skip
    steady = [load_peer(url, f"steady{i}", i) for i in range(STEADY)]
    samples: list[tuple[float, list[int]]] = []
    sampler: asyncio.Task[None] | None = None
    try:
        for peer in steady:
            await peer.join(timeout=20)
        await steady[0].wait_for(lambda: all(p.video_frames > 2 * FPS for p in steady), 30)
        await asyncio.sleep(2)
        before = await resources(server.pid, port)
        rss_before = proc_counts(server.pid)[2]

        sampler = asyncio.ensure_future(sample_frames(steady, samples))
        started = time.monotonic()
        peak = before
        rss_waves = []
        churner = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "_churn", url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=churn_log,
        )  # fmt: skip
        for _ in range(CHURNERS // WAVE):
            await churner_says(churner, "in", 60)
            await settle(steady, STEADY - 1 + WAVE, 10)
            during = await resources(server.pid, port)
            peak = tuple(max(a, b) for a, b in zip(peak, during))
            await go_on(churner)
            await churner_says(churner, "out", 30)
            await settle(steady, STEADY - 1, 15)
            rss_waves.append(proc_counts(server.pid)[2] / 1024)
            await asyncio.sleep(PAUSE)
            await go_on(churner)
        assert await asyncio.wait_for(churner.wait(), 10) == 0, (tmp_path / "churn.log").read_text()[-3000:]
        churn_seconds = time.monotonic() - started
        await asyncio.sleep(1)
        sampler.cancel()

        # Everything the 100 held goes back: tasks, threads (decoders), sockets, within a bounded wait.
        deadline = time.monotonic() + 20
        after = await resources(server.pid, port)
        while any(a > b for a, b in zip(after, before)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            after = await resources(server.pid, port)
        rss_after = proc_counts(server.pid)[2]
        growth = (rss_after - rss_before) / 1024
        last_half = rss_after / 1024 - rss_waves[len(rss_waves) // 2 - 1]
        rates = [[(b - a) / (t1 - t0) for a, b in zip(f0, f1)] for (t0, f0), (t1, f1) in zip(samples, samples[WINDOW:])]
        mean = min(b - a for a, b in zip(samples[0][1], samples[-1][1])) / (samples[-1][0] - samples[0][0])
        print(
            f"\nchurn: {CHURNERS} peers in {churn_seconds:.1f} s; (tasks, threads, fds) before {before}, "
            f"peak {peak}, after {after}; RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB "
            f"(+{growth:.1f}, +{last_half:.1f} over the last {CHURNERS // 2} peers; after each wave "
            f"{[round(r) for r in rss_waves]}); steady fps, slowest peer per {WINDOW}-s window: "
            f"{[round(min(r), 1) for r in rates]}, mean {mean:.1f}"
        )
        assert peak[0] > before[0] + WAVE and peak[2] > before[2] + WAVE, (before, peak)  # they were there
        assert after[0] <= before[0], ("asyncio tasks", before, after)
        assert after[1] <= before[1], ("threads", before, after)
        assert after[2] <= before[2], ("file descriptors", before, after)
        assert growth < RSS_GROWTH_MIB, (growth, rss_waves)
        assert last_half < RSS_GROWTH_LAST_HALF_MIB, (last_half, rss_waves)
        assert len(rates) >= churn_seconds - WINDOW - 1
        assert mean >= MIN_MEAN_FPS, mean
        for index, window in enumerate(rates):
            assert min(window) >= MIN_FPS, (f"window {index} s after churn began", window)
        for peer in steady:
            assert not peer.errors, peer.errors
    finally:
        if sampler is not None:
            sampler.cancel()
        if churner is not None and churner.returncode is None:
            churner.kill()
            await churner.wait()
        await asyncio.gather(*(peer.close() for peer in steady), return_exceptions=True)
        stop_process(server)
        log.close()
        churn_log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]


if __name__ == "__main__" and sys.argv[1:2] == ["_churn"]:
    asyncio.run(churn(sys.argv[2]))
