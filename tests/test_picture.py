"""The room's video process: decoding, composing and encoding away from the server's event loop."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
import time

import av
import numpy as np
from media_checks import cell_colours, close_to
from test_room_media import PEOPLE, PLACEHOLDER, expected, make_peer

from mcu.media.encoders import Output, Tier, VideoEncoder
from mcu.media.video_channel import (
    TO_SERVER,
    Forget,
    KeyframeRequest,
    MessageReader,
    Outputs,
    PliRequest,
    Scenes,
    Tick,
    ToServer,
    UpstreamFrame,
    encode,
)
from mcu.media.video_process import SceneSpec, Settings, TileSpec, VideoMixer

TIERS = {"high": Tier(320, 180, 30, 300_000)}
HIGH = Output("vp8", "high")


def colour_frame(yuv: tuple[int, int, int], width: int = 160, height: int = 120) -> av.VideoFrame:
    planes = np.empty((height * 3 // 2, width), np.uint8)
    planes[:height] = yuv[0]
    planes[height : height + height // 4] = yuv[1]
    planes[height + height // 4 :] = yuv[2]
    return av.VideoFrame.from_numpy_buffer(planes, format="yuv420p")


class Upstream:
    """A publisher's VP8 stream: what a browser would send, as encoded frames."""

    def __init__(self, colour: str) -> None:
        self.encoder = VideoEncoder(160, 120, 15, 200_000)
        self.yuv = expected(colour)
        self.pts = 0

    def next(self) -> tuple[bytes, int]:
        self.pts += 6000
        packets = self.encoder.encode(colour_frame(self.yuv), self.pts)
        return b"".join(data for data, _ in packets), self.pts


class Parent:
    """What the server would see: the mixer's messages, decoded pictures of one output."""

    def __init__(self) -> None:
        self.messages: queue.Queue[ToServer] = queue.Queue()
        self.decoder = av.CodecContext.create("libvpx", "r")
        self.picture: av.VideoFrame | None = None
        self.keyframes = 0

    def send(self, message: ToServer) -> None:
        # Through the wire format, as the real socket carries it.
        (decoded,) = MessageReader(TO_SERVER).feed(encode(message))
        self.messages.put(decoded)

    def drain(self, until: float) -> list[ToServer]:
        seen = []
        while time.monotonic() < until:
            try:
                message = self.messages.get(timeout=0.05)
            except queue.Empty:
                continue
            seen.append(message)
            if isinstance(message, Tick):
                for data, keyframe in message.packets.get(HIGH, []):
                    self.keyframes += keyframe
                    for frame in self.decoder.decode(av.Packet(data)):
                        self.picture = frame
        return seen


def mixer_with(parent: Parent, stale: float = 2.0) -> VideoMixer:
    mixer = VideoMixer(Settings(TIERS, stale, time.monotonic()), parent.send)
    mixer.start()
    return mixer


def test_the_mixer_composes_what_the_scene_says_from_the_upstreams_it_decodes():
    parent = Parent()
    mixer = mixer_with(parent)
    red, green = Upstream("red"), Upstream("green")
    try:
        mixer.handle(Scenes({None: SceneSpec((TileSpec("a", "alice"), TileSpec("b", "bob")))}))
        mixer.handle(Outputs(frozenset({HIGH})))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for peer, upstream in (("a", red), ("b", green)):
                mixer.handle(UpstreamFrame(peer, "vp8", *upstream.next()))
            parent.drain(time.monotonic() + 1 / 15)
            if parent.picture is not None and all(
                close_to(c, expected(n)) for c, n in zip(cell_colours(parent.picture, 2), ("red", "green"))
            ):
                break
        assert parent.picture is not None and (parent.picture.width, parent.picture.height) == (320, 180)
        cells = cell_colours(parent.picture, 2)
        assert close_to(cells[0], expected("red")) and close_to(cells[1], expected("green")), cells
        assert parent.keyframes >= 1  # a new output starts on a keyframe
        assert mixer.counters.decodes > 0 and mixer.counters.encoders_created == 1

        # Bob turns his camera off: his tile shows the placeholder at once.
        mixer.handle(Scenes({None: SceneSpec((TileSpec("a", "alice"), TileSpec("b", "bob", video=False)))}))
        parent.drain(time.monotonic() + 0.3)
        assert close_to(cell_colours(parent.picture, 2, at=(0.5, 0.3))[1], PLACEHOLDER)

        # No output in use: the encoder is released.
        mixer.handle(Outputs(frozenset()))
        parent.drain(time.monotonic() + 0.3)
        assert mixer.counters.encoders_released == 1 and not mixer.encoders
    finally:
        mixer.stop()
        mixer.wait()


def test_a_stale_upstream_shows_the_placeholder_and_a_keyframe_request_is_served():
    parent = Parent()
    mixer = mixer_with(parent, stale=0.3)
    red = Upstream("red")
    try:
        mixer.handle(Scenes({None: SceneSpec((TileSpec("a", "alice"),))}))
        mixer.handle(Outputs(frozenset({HIGH})))
        for _ in range(5):
            mixer.handle(UpstreamFrame("a", "vp8", *red.next()))
        parent.drain(time.monotonic() + 0.2)
        assert close_to(cell_colours(parent.picture, 1)[0], expected("red"))
        parent.drain(time.monotonic() + 0.5)  # no frame for longer than stale_seconds
        assert close_to(cell_colours(parent.picture, 1, at=(0.5, 0.3))[0], PLACEHOLDER)

        time.sleep(0.4)  # past the keyframe rate limit
        before = parent.keyframes
        mixer.handle(KeyframeRequest(HIGH))
        parent.drain(time.monotonic() + 0.2)
        assert parent.keyframes == before + 1
    finally:
        mixer.stop()
        mixer.wait()


def test_an_undecodable_upstream_asks_its_publisher_for_a_keyframe_rate_limited():
    parent = Parent()
    mixer = mixer_with(parent)
    try:
        for _ in range(20):
            mixer.handle(UpstreamFrame("a", "vp8", os.urandom(500), 0))
        messages = parent.drain(time.monotonic() + 0.3)
        plis = [m for m in messages if isinstance(m, PliRequest)]
        assert plis and plis[0] == PliRequest("a") and len(plis) <= 2, plis
        assert mixer.counters.decode_errors > 0
    finally:
        mixer.stop()
        mixer.wait()


def test_the_composite_is_stamped_with_when_its_pictures_arrived_not_when_it_was_composed():
    """A publisher whose frames come 150 ms before each tick: the picture's pts says when it came."""
    parent = Parent()
    epoch = time.monotonic()
    mixer = VideoMixer(Settings({"high": Tier(320, 180, 5, 300_000)}, 2.0, epoch), parent.send)
    mixer.start()
    red = Upstream("red")
    offsets, stamps = [], []
    try:
        mixer.handle(Scenes({None: SceneSpec((TileSpec("a", "alice"),))}))
        mixer.handle(Outputs(frozenset({HIGH})))
        arrived = None
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            message = parent.messages.get(timeout=2)
            if not isinstance(message, Tick):
                continue
            stamp = epoch + message.pts / 90000
            stamps.append(stamp)
            if arrived is not None:
                offsets.append(stamp - arrived)
            time.sleep(0.05)  # the next frame comes 50 ms after this tick: 150 ms before the next
            arrived = time.monotonic()
            mixer.handle(UpstreamFrame("a", "vp8", *red.next()))
    finally:
        mixer.stop()
        mixer.wait()
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # still strictly increasing
    late = offsets[-8:]
    # Stamped at the tick, each would read about +150 ms.
    assert len(late) == 8 and max(abs(o) for o in late) < 0.03, np.round(offsets, 3)


async def test_a_picture_process_that_dies_is_replaced_and_the_picture_comes_back(server):
    peer = make_peer(server, "alice", "red", 440.0)
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frame is not None and peer.video_frames > 10, timeout=10)
        video = server.conference.rooms["room1"].video
        composed = video.stats.frames
        os.kill(video._process.pid, signal.SIGKILL)
        await peer.wait_for(lambda: video.stats.restarts == 1, timeout=5)
        frames = peer.video_frames
        await peer.wait_for(lambda: peer.video_frames > frames + 15, timeout=5)
        assert close_to(cell_colours(peer.video_frame, 1)[0], expected("red"))
        # The room's counters go on from where the dead process left them.
        assert video.stats.frames > composed + 15
    finally:
        await asyncio.wait_for(peer.close(), 10)


def test_publishers_spread_over_the_decoder_threads_as_they_come_and_go():
    parent = Parent()
    mixer = mixer_with(parent)
    red = Upstream("red")
    try:
        data, timestamp = red.next()
        for peer in ("a", "b"):
            mixer.handle(UpstreamFrame(peer, "vp8", data, timestamp))
        mixer.handle(Forget("a"))
        mixer.handle(UpstreamFrame("c", "vp8", data, timestamp))
        upstreams = mixer._upstreams
        assert upstreams["b"].executor is not upstreams["c"].executor
    finally:
        mixer.stop()
        mixer.wait()


def test_keyframe_requests_for_a_publisher_are_rate_limited(monkeypatch):
    """A stalled video process drops every frame it is sent, and each drop asks for a keyframe."""
    from types import SimpleNamespace

    from mcu.config import Config
    from mcu.media.video_process import PLI_INTERVAL
    from mcu.rooms import room as room_module
    from mcu.rooms.room import Room

    sent = []
    monkeypatch.setattr(room_module, "send_pli", sent.append)
    room = Room("plis", Config())
    receiver = object()
    room.participants["a"] = SimpleNamespace(video_receiver=receiver)
    for _ in range(50):
        room._ask_keyframe("a")
    assert sent == [receiver]
    time.sleep(PLI_INTERVAL + 0.05)
    room._ask_keyframe("a")
    assert sent == [receiver, receiver]


def arena_heaps(pid: int) -> int:
    """glibc's heaps in a process's maps: the arenas besides the main one, each read-write from a 64 MiB boundary.

    (HEAP_MAX_SIZE on 64-bit; another mapping may start on such a boundary by chance, so this may read one more.)
    """
    with open(f"/proc/{pid}/maps") as maps:
        return sum(
            1
            for line in maps
            if len(fields := line.split()) == 5
            and fields[1].startswith("rw")
            and int(fields[0].split("-")[0], 16) % (64 << 20) == 0
        )


async def test_a_picture_process_shares_two_arenas_between_its_decoder_and_clock_threads(server):
    peers = [make_peer(server, name, colour, tone) for name, colour, tone in PEOPLE]
    try:
        for peer in peers:
            await peer.join()
        await peers[0].wait_for(lambda: all(p.video_frames > 10 for p in peers), timeout=15)
        process = server.conference.rooms["room1"].video._process
        threads = len(os.listdir(f"/proc/{process.pid}/task"))
        assert threads >= 5  # its reader, clock, decoders and heap trimmer
        assert arena_heaps(process.pid) <= 2  # one arena besides the main one (and a chance mapping)
    finally:
        await asyncio.gather(*(asyncio.wait_for(peer.close(), 10) for peer in peers))


def test_a_frame_that_comes_alone_is_decoded_by_the_reader_without_waking_a_decoder_thread():
    parent = Parent()
    mixer = mixer_with(parent)
    red = Upstream("red")
    try:
        mixer.handle(UpstreamFrame("a", "vp8", *red.next()), alone=True)
        # Decoded before handle() returned, and no decoder thread was ever started.
        assert mixer._upstreams["a"].picture is not None and mixer.counters.decodes == 1
        assert all(not executor._threads for executor in mixer._decoders)
    finally:
        mixer.stop()
        mixer.wait()


def test_frames_that_come_together_go_to_the_decoder_threads_and_a_peers_frames_stay_in_order():
    parent = Parent()
    mixer = mixer_with(parent)
    red, blue = Upstream("red"), Upstream("blue")
    decoded: list[tuple[str, int, bool]] = []
    decode = mixer._decode

    def recording(peer_id, upstream, codec_name, data, timestamp):
        decoded.append((peer_id, timestamp, threading.current_thread() is threading.main_thread()))
        decode(peer_id, upstream, codec_name, data, timestamp)

    mixer._decode = recording
    try:
        mixer.handle(UpstreamFrame("a", "vp8", *red.next()), alone=True)
        mixer.handle(UpstreamFrame("b", "vp8", *blue.next()), alone=True)
        # Hold a's decoder thread: a's frames wait there.
        held = threading.Event()
        mixer._upstreams["a"].executor.submit(held.wait, 5)
        for _ in range(3):
            mixer.handle(UpstreamFrame("a", "vp8", *red.next()), alone=False)
        # Alone, but a has frames queued: it must queue behind them, not overtake them.
        mixer.handle(UpstreamFrame("a", "vp8", *red.next()), alone=True)
        # b has nothing queued: decoded at once.
        mixer.handle(UpstreamFrame("b", "vp8", *blue.next()), alone=True)
        assert [d for d in decoded if d[0] == "a"] == [("a", 6000, True)]
        assert [d for d in decoded if d[0] == "b"] == [("b", 6000, True), ("b", 12000, True)]
        held.set()
        deadline = time.monotonic() + 5
        while mixer.counters.decodes < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(t, inline) for peer, t, inline in decoded if peer == "a"] == [
            (6000, True),
            (12000, False),
            (18000, False),
            (24000, False),
            (30000, False),
        ]
        assert mixer.counters.decodes == 7 and mixer.counters.decode_errors == 0
        # With a's queue empty again, its next frame alone is the reader's.
        mixer.handle(UpstreamFrame("a", "vp8", *red.next()), alone=True)
        assert decoded[-1] == ("a", 36000, True)
    finally:
        mixer.stop()
        mixer.wait()
