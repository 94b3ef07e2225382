"""Active speaker: speaking start/stop with hysteresis, and a floor that follows the loudest after a hold."""

from __future__ import annotations

import numpy as np
from media_checks import tone

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
