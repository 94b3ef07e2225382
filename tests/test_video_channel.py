"""The messages between the server and the room's video process: every one through the codec, and what is not one."""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import sys
import time

import pytest

from compositor.layout import SPEAKER
from mcu.media.encoders import Output, Tier
from mcu.media.video_channel import (
    MAX_MESSAGE,
    MESSAGES,
    TO_PROCESS,
    TO_SERVER,
    ChannelError,
    Counters,
    EncoderReport,
    Forget,
    KeyframeRequest,
    Message,
    MessageReader,
    Outputs,
    PliRequest,
    Scenes,
    Start,
    Stop,
    Tick,
    UpstreamFrame,
    encode,
)
from mcu.media.video_process import SceneSpec, Settings, TileSpec

HIGH, LOW, MINE = Output("vp8", "high"), Output("h264", "low"), Output("vp8", "high", "alice")
TIERS = {"high": Tier(320, 180, 30, 300_000), "low": Tier(160, 90, 15, 100_000)}
SCENE = SceneSpec(
    (TileSpec("alice", "Alice", speaking=True), TileSpec("bob", "Bob", video=False), TileSpec(None, "+3"))
)
COUNTERS = Counters(
    ticks=90, frames=88, skipped=2, compose_seconds=0.25, tier_frames={"high": 88, "low": 44}, decodes=7
)

#: One of each message, its fields as the server and the process fill them in.
TO_PROCESS_MESSAGES: list[Message] = [
    Start(Settings(TIERS, 2.0, 12345.5, encode_per_peer=True)),
    UpstreamFrame("alice", "vp8", bytes(range(256)) * 5, 3_000_000_000),
    Scenes({None: SCENE, "alice": SceneSpec(SCENE.tiles[1:], SPEAKER, speaker=0)}),
    Outputs(frozenset({HIGH, LOW, MINE})),
    KeyframeRequest(HIGH),
    KeyframeRequest(None),
    Forget("bob"),
    Stop(),
]
TO_SERVER_MESSAGES: list[Message] = [
    Tick(
        123_456,
        {HIGH: [(b"\x90" * 1200, True), (b"\x10" * 300, False)], MINE: [(b"\x11" * 800, False)]},
        COUNTERS,
        {HIGH: EncoderReport("libvpx", 88, 3), LOW: EncoderReport("libx264", 44, 1)},
    ),
    Tick(123_457, {}, Counters(), {}),
    PliRequest("alice"),
]


def test_every_message_class_has_an_example_here():
    assert {type(m) for m in TO_PROCESS_MESSAGES} == set(TO_PROCESS)
    assert {type(m) for m in TO_SERVER_MESSAGES} == set(TO_SERVER)
    assert set(MESSAGES) == set(TO_PROCESS) | set(TO_SERVER) and len(MESSAGES) == len(set(MESSAGES))


@pytest.mark.parametrize(
    "accepts, message",
    [(TO_PROCESS, m) for m in TO_PROCESS_MESSAGES] + [(TO_SERVER, m) for m in TO_SERVER_MESSAGES],
    ids=[type(m).__name__ for m in TO_PROCESS_MESSAGES + TO_SERVER_MESSAGES],
)
def test_each_message_comes_out_as_it_went_in(accepts, message):
    (decoded,) = MessageReader(accepts).feed(encode(message))
    assert type(decoded) is type(message) and decoded == message
    # A frozen dataclass with slots: what the reader gets cannot be changed under the sender's feet.
    assert type(decoded).__dataclass_params__.frozen and not hasattr(decoded, "__dict__")  # type: ignore[union-attr]


def test_the_counters_and_encoders_of_a_tick_keep_their_types():
    (tick,) = MessageReader(TO_SERVER).feed(encode(TO_SERVER_MESSAGES[0]))
    assert isinstance(tick, Tick) and isinstance(tick.counters, Counters)
    assert tick.counters.tier_frames == {"high": 88, "low": 44} and tick.counters.compose_seconds == 0.25
    assert tick.encoders[LOW] == EncoderReport("libx264", 44, 1) and type(tick.encoders[LOW]) is EncoderReport


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 777, 4096])
def test_messages_survive_any_split_of_the_stream(chunk):
    for accepts, messages in ((TO_PROCESS, TO_PROCESS_MESSAGES), (TO_SERVER, TO_SERVER_MESSAGES)):
        stream = b"".join(encode(message) for message in messages)
        reader = MessageReader(accepts)
        got = []
        for start in range(0, len(stream), chunk):
            got.extend(reader.feed(stream[start : start + chunk]))
        assert got == messages


def test_a_split_at_every_byte_of_a_frame_then_the_next_message():
    stream = encode(TO_PROCESS_MESSAGES[1]) + encode(Forget("alice"))
    for cut in range(len(stream) + 1):
        reader = MessageReader(TO_PROCESS)
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == [TO_PROCESS_MESSAGES[1], Forget("alice")]


def test_a_side_reads_only_the_messages_sent_its_way():
    with pytest.raises(ChannelError, match=r"not a message this side reads: tag \d+ \(Tick\)"):
        MessageReader(TO_PROCESS).feed(encode(TO_SERVER_MESSAGES[0]))
    with pytest.raises(ChannelError, match=r"\(UpstreamFrame\)"):
        MessageReader(TO_SERVER).feed(encode(TO_PROCESS_MESSAGES[1]))


def framed(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"\x00garbled, not a pickle", r"an unreadable message of 22 bytes: UnpicklingError"),
        (pickle.dumps(("frame", "alice", "vp8", b"", 0)), r"an unreadable message .* ValueError"),
        (pickle.dumps((len(MESSAGES), ())), rf"tag {len(MESSAGES)} \(no message\)"),
        (pickle.dumps(("7", ())), r"tag '7' \(no message\)"),
        (pickle.dumps((MESSAGES.index(Forget), ("alice", "bob"))), r"a Forget with the wrong fields"),
    ],
    ids=["garbled", "a string-tagged tuple", "an unknown tag", "a tag not a number", "wrong fields"],
)
def test_what_is_not_a_message_is_a_clear_error_and_the_stream_goes_on(payload, error):
    reader = MessageReader(TO_PROCESS)
    with pytest.raises(ChannelError, match=error):
        reader.feed(framed(payload) + encode(Stop())[:3])
    assert reader.feed(encode(Stop())[3:]) == [Stop()]


def test_a_length_past_the_limit_is_a_stream_out_of_step():
    reader = MessageReader(TO_SERVER)
    for _ in range(2):  # and stays so
        with pytest.raises(ChannelError, match="out of step"):
            reader.feed(struct.pack("!I", MAX_MESSAGE + 1) + b"\x80")


def test_a_real_picture_process_reads_the_servers_messages_and_the_server_reads_its_own():
    """The process runs as `__main__`: what it sends must unpickle in a process where it is not."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcu.media.video_process", str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        ours.settimeout(10)
        for message in (
            Start(Settings(TIERS, 2.0, time.monotonic())),
            Scenes({None: SCENE}),
            Outputs(frozenset({HIGH})),
        ):
            ours.sendall(encode(message))
        reader = MessageReader(TO_SERVER)
        ticks: list[Tick] = []
        while len(ticks) < 3:
            ticks.extend(m for m in reader.feed(ours.recv(1 << 20)) if isinstance(m, Tick))
        assert all(isinstance(t.counters, Counters) for t in ticks) and ticks[-1].counters.ticks >= 3
        assert set(ticks[-1].encoders) == {HIGH} and isinstance(ticks[-1].encoders[HIGH], EncoderReport)
        assert ticks[0].packets[HIGH][0][1]  # the first frame of an output is a keyframe
        ours.sendall(encode(Stop()))
        assert process.wait(10) == 0
    finally:
        ours.close()
        if process.poll() is None:
            process.kill()
            process.wait()
