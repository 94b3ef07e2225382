"""Sender control: in a room larger than its tiles, only the publishers shown send video, and only they are decoded.

A 20-peer room with 4 tiles (3 publishers and a "+17" tile): 3 decoding observers
joined first (the tiles while nobody has spoken), 17 cheap pre-encoded peers
(no decoding), one of which ignores the server's word. All send the same kind of
pre-encoded VP8 clip (320x240, 15 fps).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from media_checks import cell_colours, close_to

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack, audio_clip_levels, encode_audio_clip
from client.pausable import PausableVideoTrack
from client.peer import Peer
from client.sources import ColorTrack, rgb_to_yuv
from mcu.config import Config
from mcu.media.keyframes import is_keyframe
from mcu.rooms.visibility import HIDE_HOLD, Visibility
from signaling import protocol

ROOM = "lastn"
FPS = 15
#: Where in a tile to read its colour: above the clip's moving block.
AT = (0.5, 0.12)
OBSERVERS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
SPEAKER_COLOUR = (220, 40, 220)
GREY = (128, 128, 128)
#: The server's `visibility` to a publisher in a canvas, and to one in none (it may stop sending).
SHOWN = protocol.Visibility(on_screen=True, send_video=True)
HIDDEN = protocol.Visibility(on_screen=False, send_video=False)


@pytest.fixture
def config() -> Config:
    return Config(width=320, height=240, fps=FPS, video_bitrate=300_000, tiers={}, adapt=False, max_tiles=4)


def test_a_hidden_publisher_is_paused_after_the_hold_and_resumed_at_once():
    state = Visibility()
    assert state.update(True, 0.0, control=True) == (True, False)  # first word: on screen
    assert state.update(False, 1.0, control=True) == (True, False)  # off screen, still wanted
    assert state.update(True, 1.5, control=True) == (True, False)  # back within the hold: never paused
    assert state.update(False, 2.0, control=True) == (True, False) and state.hold_ends == 2.0 + HIDE_HOLD
    assert state.update(False, 2.0 + HIDE_HOLD - 0.01, control=True) == (False, False) and state.send_video
    assert state.update(False, 2.0 + HIDE_HOLD, control=True) == (True, False) and not state.send_video
    assert state.hold_ends is None
    assert state.update(True, 9.0, control=True) == (True, True) and state.send_video
    assert (state.pauses, state.resumes) == (1, 1)
    off = Visibility()  # without sender control: told whether it is shown, never paused
    off.update(False, 0.0, control=False)
    assert off.update(False, 10.0, control=False) == (False, False) and off.send_video and off.on_screen is False


def test_frames_are_decoded_from_the_first_keyframe_after_a_pause():
    key, delta = bytes([0x10, 0, 0]), bytes([0x11, 0, 0])  # VP8: bit 0 of the first byte clear on key frames
    state = Visibility()
    assert state.admit("vp8", delta, wanted=True)
    assert not state.admit("vp8", key, wanted=False)
    assert not state.admit("vp8", delta, wanted=True) and state.waiting_keyframe
    assert state.admit("vp8", key, wanted=True) and state.admit("vp8", delta, wanted=True)
    assert (state.frames, state.frames_ignored, state.bytes_ignored) == (5, 2, 6)
    # H.264 as the receiver hands it over (Annex B): an IDR slice, type 5, after SPS and PPS.
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x00\x01\x65\x88"
    assert is_keyframe("h264", idr) and not is_keyframe("h264", b"\x00\x00\x00\x01\x41\x9a")


async def test_a_paused_track_drops_its_source_and_a_clip_resumes_on_its_keyframe():
    source = PreEncodedVideoTrack(GREY, fps=50, seconds=0.4)
    track = PausableVideoTrack(source)
    for _ in range(3):
        await track.recv()
    track.pause()
    reading = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.1)  # about five frames read from the source and dropped
    assert not reading.done() and track.frames_dropped >= 3
    track.resume()
    packet = await asyncio.wait_for(reading, 1)
    assert is_keyframe("vp8", bytes(packet)) and packet.pts > 3 * 90000 // 50
    assert not is_keyframe("vp8", bytes(await track.recv()))
    track.stop()
    assert source.readyState == "ended"


class Voice(PreEncodedAudioTrack):
    """A pre-encoded voice, silent until `speak()`: then a tone, with its levels, loud enough to take the floor."""

    def __init__(self, frequency: float) -> None:
        super().__init__(frequency, amplitude=0.0)
        self.frequency = frequency

    def speak(self) -> None:
        self._payloads = encode_audio_clip(self.frequency)
        self._levels = audio_clip_levels(self.frequency)


def member(
    server, name: str, colour: tuple[int, int, int], decode: bool, honour: bool = True, voice: Voice | None = None
) -> Peer:
    return Peer(
        server.url,
        ROOM,
        name,
        video=PreEncodedVideoTrack(colour, fps=FPS),
        audio=voice or Voice(300.0 + 7 * len(name)),
        decode=decode,
        chat=False,
        honour_visibility=honour,
    )


def publishers(server) -> dict[str, dict]:
    return server.conference.rooms[ROOM].stats()["publishers"]


async def test_only_shown_publishers_send_and_are_decoded_and_a_new_speaker_shows_within_a_second(server):
    started = time.monotonic()
    observers = [member(server, name, colour, decode=True) for name, colour in OBSERVERS.items()]
    voice = Voice(440.0)
    speaker = member(server, "speaker", SPEAKER_COLOUR, decode=False, voice=voice)
    ignorer = member(server, "ignorer", GREY, decode=False, honour=False)
    cheap = [member(server, f"cheap{i}", GREY, decode=False) for i in range(15)]
    everyone = [*observers, speaker, ignorer, *cheap]
    try:
        for observer in observers:  # in this order: the first three joiners are the tiles until someone speaks
            await observer.join(timeout=20)
        for batch in range(0, 17, 6):
            await asyncio.gather(*(p.join(timeout=30) for p in [speaker, ignorer, *cheap][batch : batch + 6]))
        joined = time.monotonic()
        room = server.conference.rooms[ROOM]
        shown = {p.peer_id for p in observers}
        hidden = [speaker, ignorer, *cheap]

        # Every publisher is told; the hidden ones are asked to pause once their hold has run out.
        def settled() -> bool:
            return all(p.visibility == SHOWN for p in observers) and all(p.visibility == HIDDEN for p in hidden)

        await observers[0].wait_for(settled, timeout=HIDE_HOLD + 8)
        assert all(p.outgoing_video is not None and p.outgoing_video.paused for p in [speaker, *cheap])
        await asyncio.sleep(0.5)  # what was in flight when they paused has come

        # Over a window: the shown send and are decoded; the hidden that honour it send nothing;
        # the one that ignores it sends, and nothing of it is decoded.
        before, decodes_before = publishers(server), room.stats()["videoDecodes"]
        window = time.monotonic()
        await asyncio.sleep(2.0)
        after, decodes_after = publishers(server), room.stats()["videoDecodes"]
        window = time.monotonic() - window

        def delta(peer: Peer, key: str) -> int:
            return after[peer.peer_id][key] - before[peer.peer_id][key]

        for observer in observers:
            assert delta(observer, "videoFrames") >= FPS * window / 2 and delta(observer, "videoFramesIgnored") == 0
        for paused in [speaker, *cheap]:
            assert delta(paused, "videoBytes") == 0, (paused.name, after[paused.peer_id])
        assert delta(ignorer, "videoFrames") >= FPS * window / 2
        assert delta(ignorer, "videoFramesIgnored") == delta(ignorer, "videoFrames")
        passed = sum(delta(p, "videoFrames") - delta(p, "videoFramesIgnored") for p in everyone)
        decoded = decodes_after - decodes_before
        # Three publishers at 15 fps: all the video process decoded (17 more would be 5 times that).
        assert decoded <= passed + FPS // 2 and decoded <= 3 * FPS * window * 1.3, (decoded, passed)
        assert {i for i, d in after.items() if d["onScreen"]} == shown
        assert room.stats()["publishersPaused"] == 17
        print(
            f"\njoined 20 peers in {joined - started:.1f} s; in {window:.1f} s the server decoded {decoded} "
            f"frames, all of the 3 shown; the ignoring peer's {delta(ignorer, 'videoFrames')} frames were not"
        )

        # Nothing the ignoring peer sends shows: the observers see the three of them and the "+17" tile.
        def observed(cell: int, colour: tuple[int, int, int]) -> bool:
            return all(
                o.video_frame is not None and close_to(cell_colours(o.video_frame, 4, at=AT)[cell], rgb_to_yuv(colour))
                for o in observers
            )

        assert all(observed(i, colour) for i, colour in enumerate(OBSERVERS.values()))

        # The speaker, hidden and paused, speaks: it takes the floor and its tile (the third, as it
        # joined after red and green) shows its colour within a second, in every observer's picture.
        voice.speak()
        spoke = time.monotonic()
        moments: dict[str, float] = {}

        def watch() -> bool:
            now = time.monotonic()
            if speaker.visibility and speaker.visibility.send_video:
                moments.setdefault("resumed", now)
            if all(any(e == {"type": "activeSpeaker", "peerId": speaker.peer_id} for e in o.events) for o in observers):
                moments.setdefault("floor", now)
            if observed(2, SPEAKER_COLOUR):
                moments.setdefault("shown", now)
            return "floor" in moments and "shown" in moments

        await observers[0].wait_for(watch, timeout=10)
        print(
            "after it started speaking: told to resume {resumed:.2f} s, its tile in every picture {shown:.2f} s, "
            "the floor {floor:.2f} s".format(
                **{k: moments.get(k, float("nan")) - spoke for k in ("resumed", "shown", "floor")}
            )
        )
        assert moments["shown"] <= moments["floor"] + 1.0
        assert speaker.visibility == SHOWN
        assert not speaker.outgoing_video.paused
        state = publishers(server)[speaker.peer_id]
        assert state["resumes"] == 1 and state["keyframesAsked"] >= 1
        # Blue left the tiles for it; after its hold it is paused in turn.
        await observers[0].wait_for(lambda: observers[2].visibility.send_video is False, timeout=HIDE_HOLD + 3)
        assert observers[2].visibility.on_screen is False
    finally:
        await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)


async def test_a_camera_toggle_storm_and_a_peer_that_claims_to_be_off_while_sending_are_counted_never_a_stall(server):
    observer = member(server, "observer", OBSERVERS["red"], decode=True)
    flooder = member(server, "flooder", OBSERVERS["green"], decode=False)
    try:
        for peer in (observer, flooder):
            await peer.join(timeout=20)
        room = server.conference.rooms[ROOM]
        red, green = rgb_to_yuv(OBSERVERS["red"]), rgb_to_yuv(OBSERVERS["green"])

        def cells() -> list[tuple[int, int, int]]:
            # Two tiles side by side, each picture letterboxed: near its top, above the moving block.
            return cell_colours(observer.video_frame, 2, at=(0.5, 0.3)) if observer.video_frame is not None else []

        await observer.wait_for(lambda: len(cells()) == 2 and close_to(cells()[1], green), timeout=10)

        # A storm: setMedia video off and on as fast as the socket takes it, for 3 s (the server lets 20 a
        # second through, 40 at once). The room's picture goes on at its rate, and the observer's with it.
        composed, received = room.stats()["videoFrames"], observer.video_frames
        storm = time.monotonic()
        sent = 0
        while time.monotonic() - storm < 3.0:
            await flooder.set_media(video=sent % 2 == 1, audio=True)
            sent += 1
            await asyncio.sleep(0.005)
        storm = time.monotonic() - storm
        composed = room.stats()["videoFrames"] - composed
        received = observer.video_frames - received
        assert composed >= FPS * storm * 0.6 and received >= FPS * storm * 0.5, (composed, received, storm)
        state = publishers(server)[flooder.peer_id]
        # Counted: the toggles that got through, the frames not decoded meanwhile; PLIs paced.
        assert 20 <= state["cameraToggles"] < sent
        assert state["videoFramesIgnored"] > 0
        assert state["keyframesAsked"] <= storm / 0.5 + 3, state
        assert any(e.code == "rate_limited" for e in flooder.errors)
        # Its camera on again, once the server takes its messages again: its tile shows its video from its
        # next keyframe (its clip's lap: 2 s at most).
        flooding = room.participants[flooder.peer_id]
        await asyncio.sleep(1.0)
        await flooder.set_media(video=True, audio=True)
        await observer.wait_for(lambda: flooding.sending_video, timeout=3)
        await observer.wait_for(lambda: close_to(cells()[1], green), timeout=5)

        # It says its camera is off but goes on sending: nothing of it is decoded, its tile is the placeholder.
        await flooder.set_media(video=False, audio=True)
        await observer.wait_for(lambda: not flooding.sending_video, timeout=3)
        await observer.wait_for(lambda: not close_to(cells()[1], green), timeout=3)
        await asyncio.sleep(0.3)
        before = publishers(server)[flooder.peer_id]
        await asyncio.sleep(1.0)
        after = publishers(server)[flooder.peer_id]
        frames = after["videoFrames"] - before["videoFrames"]
        assert frames >= FPS / 2 and after["videoFramesIgnored"] - before["videoFramesIgnored"] == frames
        assert close_to(cells()[0], red)
        print(
            f"\n{sent} setMedia in {storm:.1f} s, {state['cameraToggles']} let through: the room composed "
            f"{composed} frames, the observer received {received}; {state['keyframesAsked']} PLIs"
        )
    finally:
        await asyncio.gather(observer.close(), flooder.close(), return_exceptions=True)


@pytest.mark.parametrize("mode", ["sfu", "mesh"])
async def test_sfu_and_mesh_rooms_send_no_visibility_and_pause_nothing(server, mode):
    peers = [
        Peer(server.url, f"{mode}-room", name, video=PreEncodedVideoTrack(colour, fps=FPS), mode=mode, chat=False)
        for name, colour in list(OBSERVERS.items())[:2]
    ]
    try:
        for peer in peers:
            await peer.join(timeout=20)
        await peers[0].wait_for(
            lambda: all(p.remote and all(r.video_frames > 5 for r in p.remote.values()) for p in peers), 15
        )
        await asyncio.sleep(HIDE_HOLD + 0.5)
        assert all(p.visibility is None and not p.outgoing_video.paused for p in peers)
        assert not any(e["type"] == "visibility" for p in peers for e in p.events)
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_publishers_encoded_by_aiortc_resume_on_the_servers_keyframe_request_when_a_layout_shows_them(
    server, codec
):
    """Peers sending raw frames (aiortc encodes them): paused under a 2-region layout, shown by the grid again."""
    colours = list(OBSERVERS.values())
    peers = [
        Peer(server.url, ROOM, name, video=ColorTrack(colour), decode=index == 0, chat=False, video_codec=codec)
        for index, (name, colour) in enumerate(OBSERVERS.items())
    ]
    try:
        for peer in peers:
            await peer.join(timeout=20)
        await peers[0].set_layout({"regions": [{"x": 0, "y": 0, "width": 0.5, "height": 1},
                                               {"x": 0.5, "y": 0, "width": 0.5, "height": 1}]})  # fmt: skip
        # One tile and "+2": the other two are paused once their hold has run out.
        await peers[0].wait_for(lambda: all(p.visibility and not p.visibility.send_video for p in peers[1:]), 10)
        assert all(p.outgoing_video.paused for p in peers[1:]) and peers[0].visibility.on_screen
        await asyncio.sleep(0.5)
        before = publishers(server)
        await asyncio.sleep(1.0)
        after = publishers(server)
        assert all(after[p.peer_id]["videoBytes"] == before[p.peer_id]["videoBytes"] for p in peers[1:])

        def grid_shown() -> bool:
            frame = peers[0].video_frame
            return frame is not None and all(
                close_to(cell, rgb_to_yuv(colour)) for cell, colour in zip(cell_colours(frame, 3, at=AT), colours)
            )

        changed = time.monotonic()
        await peers[0].set_layout("grid")
        await peers[0].wait_for(grid_shown, timeout=5)
        shown = time.monotonic() - changed
        print(f"\nresumed {codec} publishers (aiortc's encoder) shown {shown:.2f} s after the layout change")
        assert shown <= 1.0
        assert all(publishers(server)[p.peer_id]["resumes"] == 1 for p in peers[1:])
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
