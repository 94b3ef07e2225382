"""Active speaker: speaking start/stop with hysteresis, and a floor that follows the loudest after a hold."""

from __future__ import annotations

import asyncio

import numpy as np
from media_checks import tone

from client.peer import Peer
from client.sources import ToneTrack
from compositor.speakers import SILENCE_DB, SpeakerDetector, levels


def feed(detector: SpeakerDetector, ids, rows, ticks: int):
    """Feed the same levels for `ticks` ticks; returns every tick's events."""
    return [detector.update(ids, rows) for _ in range(ticks)]


def test_floor_follows_the_loudest_after_the_hold_and_not_before():
    detector = SpeakerDetector(floor_ticks=50)
    ids = ["a", "b"]
    feed(detector, ids, [-30, SILENCE_DB], 60)
    assert detector.active == "a"
    # b is 12 dB louder: it takes the floor once it has been the loudest for 50 ticks, not before.
    events = feed(detector, ids, [-30, -18], 45)
    assert detector.active == "a" and not any(e.floor_changed for e in events)
    events = feed(detector, ids, [-30, -18], 15)
    changes = [i for i, e in enumerate(events) if e.floor_changed]
    assert len(changes) == 1 and detector.active == "b"
    assert events[changes[0]].active == "b"


def test_a_cough_does_not_take_the_floor():
    detector = SpeakerDetector()
    ids = ["speaker", "cougher"]
    feed(detector, ids, [-30, SILENCE_DB], 60)
    assert detector.active == "speaker"
    # A cough: 300 ms, 25 dB louder than the speaker.
    events = feed(detector, ids, [-30, -5], 15) + feed(detector, ids, [-30, SILENCE_DB], 100)
    assert detector.active == "speaker"
    assert not any(e.floor_changed for e in events)


def test_speaking_starts_fast_and_survives_pauses_between_words():
    detector = SpeakerDetector(start_ticks=3, stop_ticks=40)
    events = feed(detector, ["a"], [-30], 3)
    assert [e.started for e in events] == [[], [], ["a"]]
    # A 300 ms pause between words does not stop it; 0.8 s of silence does, once.
    events = feed(detector, ["a"], [SILENCE_DB], 15) + feed(detector, ["a"], [-30], 5)
    assert not any(e.stopped for e in events) and "a" in detector.speaking
    events = feed(detector, ["a"], [SILENCE_DB], 60)
    assert sum(e.stopped == ["a"] for e in events) == 1 and detector.speaking == set()
    # The floor stays with its last holder while nobody else speaks.
    assert detector.active == "a"


def test_hysteresis_between_start_and_stop_levels():
    detector = SpeakerDetector(start_db=-45, stop_db=-52)
    feed(detector, ["a"], [-40], 10)
    assert detector.speaking == {"a"}
    # -48 dBFS is under the start level but above the stop level: still speaking.
    feed(detector, ["a"], [-48], 100)
    assert detector.speaking == {"a"}
    fresh = SpeakerDetector(start_db=-45, stop_db=-52)
    feed(fresh, ["a"], [-48], 100)
    assert fresh.speaking == set()


def test_order_is_most_recent_speaker_first_and_leavers_are_dropped():
    detector = SpeakerDetector()
    ids = ["a", "b", "c"]
    feed(detector, ids, [-30, SILENCE_DB, SILENCE_DB], 10)
    feed(detector, ids, [-30, -30, SILENCE_DB], 10)
    feed(detector, ids, [-30, -30, -30], 40)
    assert detector.order == ["c", "b", "a"]
    assert detector.active == "a"
    events = detector.update(["b", "c"], [-30, -30])
    assert events.stopped == ["a"] and events.floor_changed and events.active is None
    assert detector.order == ["c", "b"]


def test_levels_of_real_frames_drive_it():
    detector = SpeakerDetector()
    loud, quiet = tone(440.0, 960, 0.3), tone(660.0, 960, 0.001)
    for _ in range(60):
        detector.update(["loud", "quiet"], levels(np.stack([loud, quiet])))
    assert detector.speaking == {"loud"} and detector.active == "loud"


def events_of(peer: Peer, kind: str) -> list[dict]:
    return [e for e in peer.events if e["type"] == kind]


async def test_peers_get_speaking_and_active_speaker_events(server):
    """End to end (aiortc peers send the RFC 6464 header): the floor moves after the hold, a cough does not take it."""
    tones = {"ana": ToneTrack(440.0, 0.1), "bo": ToneTrack(660.0, 0.0), "cy": ToneTrack(880.0, 0.0)}
    peers = {name: Peer(server.url, "floor", name, audio=track) for name, track in tones.items()}
    try:
        for peer in peers.values():
            await peer.join()
        ana, bo, cy = (peers[name].peer_id for name in ("ana", "bo", "cy"))
        audio = server.conference.rooms["floor"].audio
        everyone = list(peers.values())

        def all_got(kind: str, **fields) -> bool:
            return all(any(all(e.get(k) == v for k, v in fields.items()) for e in events_of(p, kind)) for p in everyone)

        await everyone[0].wait_for(lambda: all_got("activeSpeaker", peerId=ana), timeout=15)
        assert all_got("speaking", peerId=ana, speaking=True)
        assert audio.active_speaker == ana and audio.speaking == {ana} and audio.speaker_order[0] == ana

        # A cough from cy: 0.3 s, 20 dB louder than ana. It may count as speaking, never as the floor.
        tones["cy"].amplitude = 1.0
        await asyncio.sleep(0.3)
        tones["cy"].amplitude = 0.0
        await asyncio.sleep(2.5)
        assert not any(e["peerId"] == cy for p in everyone for e in events_of(p, "activeSpeaker"))
        assert audio.active_speaker == ana

        # bo speaks 12 dB louder than ana: the floor moves after the hold (1 s), not before.
        tones["bo"].amplitude = 0.4
        await asyncio.sleep(0.6)
        assert not any(e["peerId"] == bo for p in everyone for e in events_of(p, "activeSpeaker"))
        await everyone[0].wait_for(lambda: all_got("activeSpeaker", peerId=bo), timeout=5)
        assert audio.speaker_order == [bo, cy, ana]  # the cough counted as speaking

        # A late joiner learns at once who speaks and who holds the floor.
        late = peers["dee"] = Peer(server.url, "floor", "dee", audio=ToneTrack(990.0, 0.0))
        await late.join()
        told = [e for e in late.events if e["type"] in ("speaking", "activeSpeaker")]
        assert {e["peerId"] for e in told if e["type"] == "speaking"} == set(audio.speaking) >= {ana, bo}
        assert told[-1] == {"type": "activeSpeaker", "peerId": bo}

        # ana stops: everyone is told, after the stop hold.
        tones["ana"].amplitude = 0.0
        await everyone[0].wait_for(lambda: all_got("speaking", peerId=ana, speaking=False), timeout=5)
        assert audio.active_speaker == bo
    finally:
        await asyncio.gather(*(p.close() for p in peers.values()), return_exceptions=True)
