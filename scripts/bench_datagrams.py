"""CPU per RTP-sized datagram on loopback: one sendto a packet against one segmented sendmsg a frame.

What mcu/rtc/datagrams.py buys: a composite frame's packets (all of one size but
the last) sent in one system call with UDP GSO, against one call a packet as
aiortc does. Both ways are timed side by side, alternating, in this process's
CPU time, which includes receiving every datagram on the other socket.

    .venv/bin/python scripts/bench_datagrams.py [--packets 6] [--frames 4000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

from mcu.rtc.datagrams import send_segmented

#: aiortc's VP8 packets of a composite frame: 1300 bytes of payload, RTP header and SRTP tag.
SEGMENT = 1300 + 12 + 12 + 10
LAST = 700


def pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    return sender, receiver


def drain(receiver: socket.socket) -> int:
    count = 0
    while True:
        try:
            receiver.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def run(send: Callable[[], None], receiver: socket.socket, frames: int, packets: int) -> float:
    """CPU microseconds a packet, sent and received."""
    received = 0
    started = time.thread_time()
    for _ in range(frames // 20):
        for _ in range(20):
            send()
        received += drain(receiver)
    spent = time.thread_time() - started
    if received != frames // 20 * 20 * packets:
        raise SystemExit(f"{received} datagrams received of {frames // 20 * 20 * packets}")
    return 1e6 * spent / received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=6, help="packets a frame (default 6: 1.5 Mbit/s at 30 fps)")
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sender, receiver = pair()
    address = receiver.getsockname()
    datagrams = [os.urandom(SEGMENT) for _ in range(args.packets - 1)] + [os.urandom(LAST)]
    joined = b"".join(datagrams)

    def one_by_one() -> None:
        for datagram in datagrams:
            sender.sendto(datagram, address)

    def segmented() -> None:
        send_segmented(sender, joined, SEGMENT, address)

    results: dict[str, list[float]] = {"sendto a packet": [], "sendmsg with UDP_SEGMENT": []}
    for _ in range(args.rounds):
        results["sendto a packet"].append(run(one_by_one, receiver, args.frames, args.packets))
        results["sendmsg with UDP_SEGMENT"].append(run(segmented, receiver, args.frames, args.packets))
    print(f"{args.packets} packets a frame, {args.frames} frames a round, {args.rounds} rounds, median:")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"  {name:26s} {value:5.2f} µs of CPU a packet, sent and received")
    print(f"  ratio {medians['sendto a packet'] / medians['sendmsg with UDP_SEGMENT']:.2f}x")


if __name__ == "__main__":
    main()
