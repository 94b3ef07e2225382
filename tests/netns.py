"""A network namespace behind a veth pair, with a real bandwidth bottleneck (tc tbf) on demand.

For tests and benchmarks that need a link slower than loopback: the server
listens on the host end (`Veth.host`), a client runs in the namespace
(`Veth.run`), and `Veth.limit` puts a token bucket on the host end's egress,
i.e. the client's downstream. tbf is what this kernel has (no netem). Works as
root, also inside the loopback-only namespace scripts/test runs the suite in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


class Unavailable(Exception):
    """This machine cannot make the namespace, the veth pair or the qdisc (the message says why)."""


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


@dataclass(frozen=True)
class Veth:
    """A namespace `name` reached through a veth pair: `host` on this side, `peer` inside."""

    name: str
    host_if: str
    peer_if: str
    host: str
    peer: str

    def command(self, *argv: str) -> list[str]:
        """`argv` to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def limit(self, rate: str, burst: str = "16kb", latency: str = "200ms") -> None:
        """Shape the namespace's downstream (the host end's egress) to `rate` (tc's units: 700kbit, 50mbit)."""
        done = _run("tc", "qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", rate, "burst", burst,
                    "latency", latency)  # fmt: skip
        if done.returncode:
            raise Unavailable(f"tc tbf: {done.stderr.strip()}")

    def unlimit(self) -> None:
        """Lift the bottleneck: back to the veth's default queue."""
        _run("tc", "qdisc", "del", "dev", self.host_if, "root")

    def qdisc_stats(self) -> str:
        """What tc says of the host end's qdisc (sent, dropped, overlimits)."""
        return _run("tc", "-s", "qdisc", "show", "dev", self.host_if).stdout


@contextlib.contextmanager
def veth_namespace(tag: str = "mcu") -> Iterator[Veth]:
    """A fresh namespace and veth pair (addresses in 10.214.x.0/24), removed afterwards whatever happens.

    :raises Unavailable: no ip/tc, or no right to make them here.
    """
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise Unavailable("iproute2 (ip, tc) is not installed")
    pid = os.getpid()
    subnet = f"10.214.{pid % 250}"
    veth = Veth(f"{tag}-{pid}", f"{tag[:4]}h{pid % 100000}", f"{tag[:4]}p{pid % 100000}", f"{subnet}.1", f"{subnet}.2")
    made = _run("ip", "netns", "add", veth.name)
    if made.returncode:
        raise Unavailable(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        for step in (
            ["link", "add", veth.host_if, "type", "veth", "peer", "name", veth.peer_if, "netns", veth.name],
            ["addr", "add", f"{veth.host}/24", "dev", veth.host_if],
            ["link", "set", veth.host_if, "up"],
            ["-n", veth.name, "addr", "add", f"{veth.peer}/24", "dev", veth.peer_if],
            ["-n", veth.name, "link", "set", veth.peer_if, "up"],
            ["-n", veth.name, "link", "set", "lo", "up"],
        ):
            done = _run("ip", *step)
            if done.returncode:
                raise Unavailable(f"ip {' '.join(step)}: {done.stderr.strip()}")
        yield veth
    finally:
        _run("ip", "link", "del", veth.host_if)
        _run("ip", "netns", "del", veth.name)
