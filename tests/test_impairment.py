"""The seeded impaired network (client/impairment.py): its model, its UDP relay, and real peers behind it."""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import sys

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from browser_checks import CHROMIUM, chromium_args, chromium_playwright, write_wav, write_y4m
from conftest import BIN, within
from media_checks import cell_colours, close_to, contains_colour
from test_turn import SECRET, coturn  # noqa: F401  (coturn is a fixture)

from client.impairment import (
    LOST,
    TAIL_DROPPED,
    Counters,
    Impairment,
    Impairments,
    Link,
    Model,
    Relay,
    parse_spec,
)
from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from signaling.ice import IceServers


def decisions(impairment: Impairment, count: int, spacing: float = 0.01, size: int = 1000) -> list[float | str]:
    model = Model(impairment, "up")
    return [model.decide(size, n * spacing) for n in range(count)]


def bursts(lost: list[bool]) -> list[int]:
    """The lengths of the runs of losses."""
    runs, run = [], 0
    for flag in lost + [False]:
        if flag:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs


# --- the model ----------------------------------------------------------------------------------


def test_random_loss_is_the_configured_share_and_independent():
    made = decisions(Impairment(loss=5, seed=1), 40_000)
    lost = [d == LOST for d in made]
    assert 0.045 < sum(lost) / len(lost) < 0.055
    # Independent losses: runs of two or more are about 5 % of runs (geometric), not bursts.
    runs = bursts(lost)
    assert statistics.mean(runs) < 1.1
    assert decisions(Impairment(seed=1), 1000) == [n * 0.01 for n in range(1000)]  # nothing set: nothing done


def test_burst_loss_keeps_the_share_and_makes_runs_as_long_as_asked():
    lost = [d == LOST for d in decisions(Impairment(loss=5, burst=4, seed=2), 100_000)]
    assert 0.04 < sum(lost) / len(lost) < 0.06
    assert 3.5 < statistics.mean(bursts(lost)) < 4.5
    assert all(d == LOST for d in decisions(Impairment(loss=100, burst=4), 500))


def test_delay_and_jitter_stay_in_their_bounds_and_fill_them():
    made = decisions(Impairment(delay=20, jitter=30, seed=3), 10_000)
    delays = [d - n * 0.01 for n, d in enumerate(made)]
    assert all(0.020 <= d <= 0.050 + 1e-9 for d in delays)
    assert min(delays) < 0.0205 and max(delays) > 0.0495
    assert 0.034 < statistics.mean(delays) < 0.036  # uniform over [20, 50] ms


def test_reorder_sends_that_share_at_once():
    made = decisions(Impairment(delay=50, reorder=10, seed=4), 20_000)
    early = sum(1 for n, d in enumerate(made) if d == n * 0.01)
    assert 0.09 < early / len(made) < 0.11


def test_the_same_seed_gives_the_same_decisions_and_another_seed_or_direction_others():
    impairment = Impairment(loss=10, burst=2, jitter=40, reorder=5, seed=7)
    assert decisions(impairment, 2000) == decisions(impairment, 2000)
    assert decisions(impairment, 2000) != decisions(Impairment(loss=10, burst=2, jitter=40, reorder=5, seed=8), 2000)
    up, down = Model(impairment, "up"), Model(impairment, "down")
    assert [up.decide(100, 0) for _ in range(200)] != [down.decide(100, 0) for _ in range(200)]


def test_a_rate_limit_passes_the_rate_and_drops_the_tail_of_a_full_queue():
    # 1000-byte datagrams offered at 2 Mbit/s for 10 s to a 1 Mbit/s bottleneck with 20 datagrams of queue.
    rate, size, spacing = 1_000_000, 1000, 0.004
    model = Model(Impairment(rate=rate, queue=20, seed=5), "down")
    made = [(n * spacing, model.decide(size, n * spacing)) for n in range(2500)]
    arrived = [(sent, when) for sent, when in made if not isinstance(when, str)]
    assert {when for _, when in made if isinstance(when, str)} == {TAIL_DROPPED}
    throughput = len(arrived) * size * 8 / (arrived[-1][1] - arrived[0][0])
    assert 0.97 * rate < throughput <= 1.001 * rate
    assert 0.45 < (len(made) - len(arrived)) / len(made) < 0.55
    # A full queue is 20 datagrams of 8 ms each: no datagram waits longer than that and its own.
    waits = [when - sent for sent, when in arrived]
    assert max(waits) <= 21 * 0.008 + 1e-9 and max(waits) > 19 * 0.008
    # Under the rate, nothing is dropped and nothing waits more than its own serialization.
    calm = Model(Impairment(rate=rate, queue=20), "up")
    assert all(calm.decide(size, n * 0.01) == pytest.approx(n * 0.01 + 0.008) for n in range(500))


async def test_a_link_that_changes_its_rate_carries_the_new_rate_from_then_on():
    """A link whose bottleneck drops from 2 Mbit/s to 500 kbit/s (a phone moving) and back: the datagrams
    offered at 1 Mbit/s all pass before, half of them during, and after it only those that find the queue
    the slow phase left full are dropped."""
    link = Link(Impairment(rate=2_000_000, queue=10, seed=3), "down")
    rates = [2_000_000, 500_000, 2_000_000]
    delivered = []
    for phase, rate in enumerate(rates):
        if phase:
            link.change(Impairment(rate=rate, queue=10, seed=3))
        before = link.counters.tail_dropped
        offered_at = asyncio.get_running_loop().time()
        for n in range(250):  # 1000-byte datagrams every 8 ms: 1 Mbit/s for 2 s
            link.send(b"x" * 1000, delivered.append)
            await asyncio.sleep(max(offered_at + (n + 1) * 0.008 - asyncio.get_running_loop().time(), 0))
        dropped = link.counters.tail_dropped - before
        if phase == 0:
            assert dropped == 0, dropped
        elif phase == 2:
            assert dropped <= 10, dropped  # the 10 datagrams of queue still leave at the old rate
        else:
            assert 0.4 < dropped / 250 < 0.6, dropped
    await asyncio.sleep(0.1)
    assert len(delivered) == link.counters.offered - link.counters.tail_dropped
    link.close()


def test_parse_spec_reads_both_directions_and_one_way_keys():
    both = parse_spec("loss=5,jitter=30,seed=1")
    assert both.up == both.down == Impairment(loss=5, jitter=30, seed=1)
    split = parse_spec("loss=2, down.loss=10, up.delay=15, rate=1.5m, queue=30, order=1, burst=3")
    assert split.up == Impairment(loss=2, delay=15, rate=1_500_000, queue=30, order=True, burst=3)
    assert split.down == Impairment(loss=10, rate=1_500_000, queue=30, order=True, burst=3)
    assert parse_spec("") == Impairments()
    for bad in ("loss", "lost=5", "sideways.loss=5", "loss=five", "loss=150", "burst=0.5", "queue=0"):
        with pytest.raises(ValueError):
            parse_spec(bad)


# --- a link on the event loop -------------------------------------------------------------------


async def through_link(impairment: Impairment, count: int = 300, spacing: float = 0.002) -> tuple[Link, list[int]]:
    """Datagrams numbered 0.. through a link; returns it and the numbers in the order they came out."""
    link = Link(impairment, "up")
    out: list[int] = []
    for n in range(count):
        link.send(n.to_bytes(4, "big"), lambda data: out.append(int.from_bytes(data, "big")))
        if n % 10 == 9:
            await asyncio.sleep(spacing * 10)
    await within(5, lambda: link.counters.delivered + link.counters.lost == count)
    return link, out


async def test_jitter_reorders_datagrams_unless_told_to_keep_order():
    link, out = await through_link(Impairment(jitter=30, seed=1))
    assert link.counters.reordered > 20 and out != sorted(out) and sorted(out) == list(range(300))
    link, out = await through_link(Impairment(delay=20, seed=1))
    assert link.counters.reordered == 0 and out == list(range(300))
    link, out = await through_link(Impairment(jitter=30, order=True, loss=10, seed=1))
    assert link.counters.reordered == 0 and out == sorted(out) and 240 < len(out) < 300
    assert link.counters.lost == 300 - len(out)


async def test_a_link_delivers_at_the_delay_it_was_given():
    link = Link(Impairment(delay=80), "up")
    loop = asyncio.get_running_loop()
    sent = loop.time()
    arrived: list[float] = []
    for _ in range(5):
        link.send(b"x", lambda data: arrived.append(loop.time()))
    await asyncio.sleep(0.04)
    assert arrived == []  # the loop ran meanwhile: nothing blocked, nothing early
    await within(2, lambda: len(arrived) == 5)
    assert all(0.079 <= t - sent < 0.2 for t in arrived)


# --- the relay, on real sockets -----------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """A UDP echo server that remembers where datagrams came from."""

    def __init__(self) -> None:
        self.sources: list[tuple] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.sources.append(addr)
        self.transport.sendto(data, addr)


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, float]] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, asyncio.get_running_loop().time()))


async def test_the_relay_forwards_both_ways_each_with_its_loss_and_delay():
    loop = asyncio.get_running_loop()
    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    impairments = parse_spec("up.loss=10,down.loss=20,delay=15,seed=3")
    relay = await Relay.start(echo_transport.get_extra_info("sockname"), impairments)
    clients = [await loop.create_datagram_endpoint(Collect, remote_addr=relay.address) for _ in range(2)]
    count = 1500
    sent: dict[bytes, float] = {}
    try:
        for n in range(count):
            for index, (transport, _) in enumerate(clients):
                payload = f"{index}:{n}".encode()
                sent[payload] = loop.time()
                transport.sendto(payload)
            if n % 20 == 19:
                await asyncio.sleep(0.005)
        up, down = relay.totals("up"), relay.totals("down")
        await within(5, lambda: (u := relay.totals("up")).lost + u.delivered == 2 * count)
        await within(5, lambda: (d := relay.totals("down")).lost + d.delivered == len(echo.sources))
        up, down = relay.totals("up"), relay.totals("down")
        await asyncio.sleep(0.1)
        # Each client had its own socket towards the target, and got back only its own datagrams.
        assert len(relay.clients) == 2 and len(set(echo.sources)) == 2
        for index, (_, collect) in enumerate(clients):
            assert all(data.startswith(f"{index}:".encode()) for data, _ in collect.received)
        received = sum(len(c.received) for _, c in clients)
        print(f"\nrelay: up {up}, down {down}, {received} of {2 * count} echoed back")
        assert up.offered == 2 * count and 0.08 < up.lost / up.offered < 0.12
        assert len(echo.sources) == up.delivered
        assert down.offered == up.delivered and 0.17 < down.lost / down.offered < 0.23
        assert received == down.delivered
        # 15 ms each way, and the loop's own latency on top.
        round_trips = [when - sent[data] for _, c in clients for data, when in c.received]
        assert min(round_trips) >= 0.030 and statistics.median(round_trips) < 0.1
    finally:
        for transport, _ in clients:
            transport.close()
        relay.close()
        echo_transport.close()


async def test_the_relay_holds_a_flow_to_its_rate_with_a_bounded_queue():
    """Real timers: 1000-byte datagrams at 800 kbit/s for 2 s into a 400 kbit/s downstream, queue of 10."""
    loop = asyncio.get_running_loop()
    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    relay = await Relay.start(echo_transport.get_extra_info("sockname"), parse_spec("down.rate=400k,down.queue=10"))
    client, collect = await loop.create_datagram_endpoint(Collect, remote_addr=relay.address)
    try:
        start = loop.time()
        for n in range(200):  # one every 10 ms
            client.sendto(n.to_bytes(2, "big") * 500)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.01 - loop.time()))
        await within(2, lambda: relay.totals("down").delivered + relay.totals("down").tail_dropped == 200)
        down = relay.totals("down")
        times = [when for _, when in collect.received]
        throughput = (len(times) - 1) * 1000 * 8 / (times[-1] - times[0])
        print(f"\nrate 400k: {down}, {throughput / 1000:.0f} kbit/s")
        assert 360_000 < throughput < 420_000
        assert down.tail_dropped > 70 and down.delivered == len(collect.received) > 90
        # Never more than the queue and the datagram on the bottleneck behind: 11 x 20 ms, plus the loop's lateness.
        numbers = [int.from_bytes(data[:2], "big") for data, _ in collect.received]
        waits = [when - (start + n * 0.01) for n, (_, when) in zip(numbers, collect.received)]
        assert max(waits) < 11 * 0.02 + 0.05
    finally:
        client.close()
        relay.close()
        echo_transport.close()


# --- real peers through a real MCU --------------------------------------------------------------

RED = rgb_to_yuv(COLORS["red"])


class NoisyRed(ColorTrack):
    """Red with a band of fresh noise on top: a few hundred video packets in seconds, each one loss can hit."""

    def __init__(self) -> None:
        super().__init__(COLORS["red"])
        self._noise = np.random.default_rng(0)

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        planes = frame.to_ndarray().copy()
        planes[:96] = self._noise.integers(0, 256, planes[:96].shape, np.uint8)
        noisy = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        noisy.pts, noisy.time_base = frame.pts, frame.time_base
        return noisy


async def inbound_lost(pc: RTCPeerConnection) -> dict[str, int]:
    """packetsLost of each kind's inbound RTP streams (getStats, RFC 3550 cumulative loss)."""
    lost: dict[str, int] = {}
    for stats in (await pc.getStats()).values():
        if stats.type == "inbound-rtp":
            lost[stats.kind] = lost.get(stats.kind, 0) + stats.packetsLost
    return lost


@pytest.fixture
def relay_spec() -> str:
    """What the relay does to its clients' datagrams (a test module may say otherwise)."""
    return "loss=5,jitter=20,seed=11"


@pytest.fixture
async def relay(coturn, relay_spec: str) -> Relay:  # noqa: F811  (the fixture imported above)
    """The impaired relay in front of coturn."""
    relay = await Relay.start(("127.0.0.1", coturn.port), parse_spec(relay_spec))
    try:
        yield relay
    finally:
        relay.close()


def through(relay: Relay) -> IceServers:
    """The relay as the TURN server the server hands out (and reaches coturn through, too)."""
    return IceServers(urls=(f"turn:127.0.0.1:{relay.address[1]}",), secret=SECRET, ttl=600)


@pytest.fixture
def config(relay: Relay) -> Config:
    return Config(width=640, height=360, fps=15, ice_servers=through(relay))


async def check_impaired(
    server, room: str, peer: Peer, frames: int, up: Counters, down: Counters, most_down_lost: float
) -> None:
    """`peer`, 4 s after it had `frames` pictures, through a path that lost about 5 % each way (at most
    `most_down_lost` down) and reordered: its composite went on (30 more pictures within 10 s of `frames`),
    and both ends saw the losses."""
    server_pc = server.conference.rooms[room].participants[peer.peer_id].pc
    client_lost, server_lost = await inbound_lost(peer.pc), await inbound_lost(server_pc)
    print(
        f"\n{room}: up {up}, down {down}; client inbound packetsLost {client_lost}, "
        f"server inbound packetsLost {server_lost}, {peer.video_frames - frames} frames in 4 s"
    )
    # 15 fps, recovered from the losses: half of the 4 s's pictures, a little later on a loaded machine.
    await peer.wait_for(lambda: peer.video_frames - frames > 30, 6)
    assert 0.02 < up.lost / up.offered < 0.085 and 0.02 < down.lost / down.offered < most_down_lost
    assert up.reordered > 0 and down.reordered > 0
    # Audio has no retransmission: its losses show at the client. The composite's lost packets are asked
    # for again (NACK) and may all be repaired (retransmitted packets count as received).
    link = server.conference.rooms[room].links()[peer.peer_id]
    assert client_lost["audio"] > 0 and (client_lost["video"] > 0 or link["nackedPackets"] > 0), link
    assert server_lost["audio"] > 0 and server_lost["video"] > 0


async def test_a_relay_only_peer_behind_the_impaired_relay_gets_the_composite_and_loses_packets(server, relay):
    peer = Peer(server.url, "relay", "alice", video=NoisyRed(), audio=ToneTrack(440), ice_transport_policy="relay")
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 0 and close_to(cell_colours(peer.video_frame, 1)[0], RED), 20)
        frames = peer.video_frames
        await asyncio.sleep(4)
        connection = peer.pc.getTransceivers()[0].sender.transport.transport._connection
        assert connection._nominated[1].local_candidate.type == "relay"
        await check_impaired(server, "relay", peer, frames, relay.totals("up"), relay.totals("down"), 0.085)
    finally:
        await peer.close()


@pytest.mark.parametrize("config", [Config(width=640, height=360, fps=15)])  # no TURN: the wrapper alone
async def test_a_peer_with_impaired_datagrams_gets_the_composite_and_both_ends_see_the_losses(server):
    peer = Peer(
        server.url, "wrapped", "bob", video=NoisyRed(), audio=ToneTrack(440),
        impairment=parse_spec("loss=5,jitter=20,seed=1,down.loss=8"),
    )  # fmt: skip
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 0 and close_to(cell_colours(peer.video_frame, 1)[0], RED), 20)
        frames = peer.video_frames
        await asyncio.sleep(4)
        up, down = peer.impaired.up.counters, peer.impaired.down.counters
        assert 0.05 < down.lost / down.offered  # down.loss=8: more than up's 5
        await check_impaired(server, "wrapped", peer, frames, up, down, 0.11)
    finally:
        await peer.close()


# --- the two commands ---------------------------------------------------------------------------


async def test_the_relay_command_relays_impaired_and_reports_its_counters_when_stopped():
    loop = asyncio.get_running_loop()
    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    target = echo_transport.get_extra_info("sockname")
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.impairment", "relay", "--listen", "127.0.0.1:0",
        "--target", f"127.0.0.1:{target[1]}", "--loss", "30", "--delay", "5", "--seed", "2", "--spec", "down.loss=0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    client: asyncio.DatagramTransport | None = None
    try:
        first = (await asyncio.wait_for(relay.stdout.readline(), 20)).decode()
        port = int(re.match(r"relay 127\.0\.0\.1:(\d+) -> ", first).group(1))
        client, collect = await loop.create_datagram_endpoint(Collect, remote_addr=("127.0.0.1", port))
        for n in range(1000):
            client.sendto(str(n).encode())
            if n % 20 == 19:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        relay.send_signal(signal.SIGTERM)
        output = first + (await asyncio.wait_for(relay.stdout.read(), 10)).decode()
        assert await relay.wait() == 0, output
    finally:
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
        if client is not None:
            client.close()
        echo_transport.close()
    up = re.search(r"up: Counters\(offered=(\d+), lost=(\d+), tail_dropped=0, delivered=(\d+)", output)
    down = re.search(r"down: Counters\(offered=(\d+), lost=(\d+), tail_dropped=0, delivered=(\d+)", output)
    assert up and down, output
    assert int(up.group(1)) == 1000 and 0.26 < int(up.group(2)) / 1000 < 0.34
    assert len(echo.sources) == int(up.group(3)) == int(down.group(1)) == int(down.group(3)) == len(collect.received)
    assert int(down.group(2)) == 0


@pytest.mark.parametrize("config", [Config(width=320, height=240, fps=15)])
async def test_mcu_client_join_impair_loses_its_own_datagrams(server):
    client = await asyncio.create_subprocess_exec(
        str(BIN / "mcu-client"), "join", server.url, "--room", "cli", "--name", "carol", "--video", "color:red",
        "--audio", "tone:440", "--duration", "4", "--impair", "loss=10,jitter=10,seed=3,down.loss=0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output = (await asyncio.wait_for(client.communicate(), 40))[0].decode()
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert client.returncode == 0, output
    up = re.search(r"impaired up: Counters\(offered=(\d+), lost=(\d+)", output)
    down = re.search(r"down: Counters\(offered=(\d+), lost=(\d+)", output)
    assert up and down, output
    assert int(up.group(1)) > 100 and 0.05 < int(up.group(2)) / int(up.group(1)) < 0.15
    assert int(down.group(1)) > 100 and int(down.group(2)) == 0
    frames = re.search(r"received (\d+) video frames", output)
    assert frames and int(frames.group(1)) > 15, output
    bad = await asyncio.create_subprocess_exec(
        str(BIN / "mcu-client"), "join", server.url, "--room", "cli", "--name", "dave", "--impair", "loss=lots",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    message = (await asyncio.wait_for(bad.communicate(), 30))[0].decode()
    assert bad.returncode == 2 and "'loss=lots' is not a number" in message


# --- a browser ----------------------------------------------------------------------------------

BROWSER_STATS_JS = """
async () => {
  const stats = await window.meeting.pc.getStats();
  const out = { lost: {}, received: {}, local: null };
  stats.forEach((s) => {
    if (s.type === "inbound-rtp") {
      out.lost[s.kind] = (out.lost[s.kind] ?? 0) + s.packetsLost;
      out.received[s.kind] = (out.received[s.kind] ?? 0) + s.packetsReceived;
    }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      out.local = stats.get(pair.localCandidateId).candidateType;
    }
  });
  return out;
}
"""


async def test_a_browser_with_relay_1_sends_and_receives_through_the_impaired_relay(server, relay, tmp_path):
    playwright_api = chromium_playwright()
    video, audio = tmp_path / "red.y4m", tmp_path / "500.wav"
    write_y4m(video, COLORS["red"])
    write_wav(audio, 500.0)
    py = Peer(server.url, "browser", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(900.0))
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/?room=browser&name=anna&relay=1")
            await py.join()
            await py.wait_for(
                lambda: py.video_frame is not None and contains_colour(cell_colours(py.video_frame, 2), RED), 20
            )
            await asyncio.sleep(5)
            seen = await page.evaluate(BROWSER_STATS_JS)
            room = server.conference.rooms["browser"]
            anna = next(p for p in room.participants.values() if p.name == "anna")
            server_lost = await inbound_lost(anna.pc)
            up, down = relay.totals("up"), relay.totals("down")
            print(f"\nbrowser behind the relay: up {up}, down {down}; browser {seen}, server lost {server_lost}")
        finally:
            await browser.close()
            await py.close()
    # Chromium used its TURN relay (on the impaired relay), and lost packets both ways.
    assert seen["local"] == "relay", seen
    assert 0.02 < up.lost / up.offered < 0.085 and 0.02 < down.lost / down.offered < 0.085
    assert seen["received"]["audio"] > 200 and seen["lost"]["audio"] > 0
    assert server_lost["audio"] > 0


@pytest.mark.parametrize("config", [Config(width=320, height=240, fps=15)])
@pytest.mark.parametrize("impaired", [0, 1], ids=["the-answerer", "the-newcomer"])
async def test_a_mesh_peers_links_to_the_others_are_impaired_too(server, impaired):
    peers = [
        Peer(server.url, "mesh", colour, video=ColorTrack(COLORS[colour]), audio=ToneTrack(tone), mode="mesh",
             impairment=parse_spec("loss=10,seed=4") if index == impaired else None)
        for index, (colour, tone) in enumerate([("red", 440.0), ("blue", 660.0)])
    ]  # fmt: skip
    try:
        for peer in peers:
            await peer.join()
        first, second = peers
        for peer, other in ((first, second), (second, first)):
            await peer.wait_for(lambda: (r := peer.remote.get(other.peer_id)) is not None and r.audio_frames > 150, 15)
        links = peers[impaired].impaired
        lost = [await inbound_lost(peer.mesh.pcs[other.peer_id]) for peer, other in ((first, second), (second, first))]
        assert links.up.counters.lost > 0 and links.down.counters.lost > 0
        assert all(kinds["audio"] > 0 for kinds in lost), lost
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))
