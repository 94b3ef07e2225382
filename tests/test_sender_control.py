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
from client.peer import Peer
from client.sources import rgb_to_yuv
from mcu.config import Config
from mcu.visibility import HIDE_HOLD

ROOM = "lastn"
FPS = 15
#: Where in a tile to read its colour: above the clip's moving block.
AT = (0.5, 0.12)
OBSERVERS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
SPEAKER_COLOUR = (220, 40, 220)
GREY = (128, 128, 128)


@pytest.fixture
def config() -> Config:
    return Config(width=320, height=240, fps=FPS, video_bitrate=300_000, tiers={}, adapt=False, max_tiles=4)


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
            return all(
                p.visibility == {"type": "visibility", "onScreen": True, "sendVideo": True} for p in observers
            ) and all(p.visibility == {"type": "visibility", "onScreen": False, "sendVideo": False} for p in hidden)

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
        # Three publishers at 15 fps: all the picture process decoded (17 more would be 5 times that).
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
            if speaker.visibility and speaker.visibility["sendVideo"]:
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
        assert speaker.visibility == {"type": "visibility", "onScreen": True, "sendVideo": True}
        assert not speaker.outgoing_video.paused
        state = publishers(server)[speaker.peer_id]
        assert state["resumes"] == 1 and state["keyframesAsked"] >= 1
        # Blue left the tiles for it; after its hold it is paused in turn.
        await observers[0].wait_for(lambda: observers[2].visibility["sendVideo"] is False, timeout=HIDE_HOLD + 3)
        assert observers[2].visibility["onScreen"] is False
    finally:
        await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)
