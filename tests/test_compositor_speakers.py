import numpy as np
from media_checks import tone

from compositor.speakers import SILENCE_DB, TalkerSelector, levels


def test_levels_in_dbfs():
    frames = np.stack([tone(440.0, 960, 1.0), tone(440.0, 960, 0.1), np.zeros(960, np.int16)])
    db = levels(frames)
    # A full-scale sine is -3 dBFS RMS; a tenth of it 20 dB lower; silence at the floor.
    assert abs(db[0] + 3.01) < 0.1
    assert abs(db[1] - db[0] + 20) < 0.1
    assert db[2] == SILENCE_DB


def run(selector: TalkerSelector, ids, level_rows):
    result = None
    for row in level_rows:
        result = selector.update(ids, row)
    return result


def test_picks_the_loudest_up_to_count():
    selector = TalkerSelector(2)
    chosen = run(selector, ["a", "b", "c", "d"], [[-20, -30, -60, -10]] * 10)
    # 'c' is under the gate; of the others, the first two to cross it keep their places.
    assert len(chosen) == 2 and "c" not in chosen


def test_silent_room_has_no_talkers():
    assert run(TalkerSelector(1), ["a", "b", "c"], [[SILENCE_DB, -70, -60]] * 50) == set()


def test_everyone_is_a_talker_in_a_room_of_count_plus_one():
    # Four voices at one level, the fourth a second late: with count 3 it is heard all the same,
    # and so is a silent peer (a personal mix for each costs no more than 3 talkers and a shared one).
    selector = TalkerSelector(3)
    run(selector, ["a", "b", "c"], [[-20, -20, -20]] * 50)
    assert run(selector, ["a", "b", "c", "d"], [[-20, -20, -20, -20]]) == {"a", "b", "c", "d"}
    assert run(selector, ["a", "b", "c", "d"], [[-20, -20, -20, SILENCE_DB]] * 50) == {"a", "b", "c", "d"}


def test_a_cough_does_not_take_the_floor():
    selector = TalkerSelector(1, hold_ticks=25)
    ids = ["speaker", "cougher", "listener"]
    run(selector, ids, [[-20, -80, SILENCE_DB]] * 30)
    # A loud cough of a few ticks does not last long enough to take the floor.
    assert run(selector, ids, [[-20, -5, SILENCE_DB]] * 4) == {"speaker"}
    assert run(selector, ids, [[-20, -80, SILENCE_DB]] * 5) == {"speaker"}


def test_a_clearly_louder_talker_takes_over_after_the_hold():
    selector = TalkerSelector(1, hold_ticks=25)
    ids = ["a", "b", "listener"]
    run(selector, ids, [[-30, -80, SILENCE_DB]] * 10)
    assert selector.talkers == {"a"}
    run(selector, ids, [[-30, -10, SILENCE_DB]] * 5)
    assert selector.talkers == {"a"}  # b has been louder for 5 ticks only
    run(selector, ids, [[-30, -10, SILENCE_DB]] * 15)
    # b has the place; a, still speaking, is not cut: it is on overtime until it pauses.
    assert selector.talkers == {"a", "b"} and selector.on_overtime == {"a"}
    run(selector, ids, [[SILENCE_DB, -10, SILENCE_DB]] * 30)
    assert selector.talkers == {"b"}


def test_a_displaced_talker_stays_until_its_first_pause():
    selector = TalkerSelector(1, pause_ticks=5)
    ids = ["a", "b", "listener"]
    run(selector, ids, [[-30, SILENCE_DB, SILENCE_DB]] * 30)
    run(selector, ids, [[-30, -10, SILENCE_DB]] * 11)
    assert selector.on_overtime == {"a"}
    # A few ticks of silence are smoothed over (the level decays ~1.5 dB a tick): still mixed.
    assert run(selector, ids, [[SILENCE_DB, -10, SILENCE_DB]] * 6) == {"a", "b"}
    # Its level under the gate for pause_ticks: the pause ends its overtime; it is not cut before.
    assert run(selector, ids, [[SILENCE_DB, -10, SILENCE_DB]] * 30) == {"b"}
    # Speaking again at its old level, it is a newcomer quieter than the talker: not mixed.
    assert run(selector, ids, [[-30, -10, SILENCE_DB]] * 100) == {"b"}


def test_overtime_is_bounded_in_time():
    selector = TalkerSelector(1, overtime_ticks=100)
    ids = ["a", "b", "listener"]
    run(selector, ids, [[-30, SILENCE_DB, SILENCE_DB]] * 30)
    run(selector, ids, [[-30, -10, SILENCE_DB]] * 11)
    assert run(selector, ids, [[-30, -10, SILENCE_DB]] * 98) == {"a", "b"}
    assert run(selector, ids, [[-30, -10, SILENCE_DB]] * 2) == {"b"}


def test_at_most_count_talkers_on_overtime():
    selector = TalkerSelector(2, hold_ticks=25)
    ids = ["a", "b", "c", "d", "e", "f"]
    run(selector, ids, [[-40, -40, SILENCE_DB, SILENCE_DB, SILENCE_DB, SILENCE_DB]] * 30)
    run(selector, ids, [[-40, -40, -20, -20, SILENCE_DB, SILENCE_DB]] * 40)
    assert selector.talkers == {"a", "b", "c", "d"} and selector.on_overtime == {"a", "b"}
    run(selector, ids, [[-40, -40, -20, -20, -5, -5]] * 40)
    # e and f took the places; c and d went on overtime, and the oldest on overtime (a, b) made room.
    assert selector.talkers == {"c", "d", "e", "f"} and selector.on_overtime == {"c", "d"}


def test_a_free_place_goes_back_to_a_talker_on_overtime():
    selector = TalkerSelector(1)
    ids = ["a", "b", "listener"]
    run(selector, ids, [[-30, SILENCE_DB, SILENCE_DB]] * 30)
    run(selector, ids, [[-30, -10, SILENCE_DB]] * 11)
    assert selector.on_overtime == {"a"}
    # b leaves the room: a gets its place back, for as long as it speaks.
    run(selector, ["a", "listener", "x"], [[-30, SILENCE_DB, SILENCE_DB]] * 300)
    assert selector.talkers == {"a"} and selector.on_overtime == set()


def test_a_room_growing_past_count_plus_one_keeps_who_speaks():
    selector = TalkerSelector(2)
    ids = ["a", "b", "c"]
    run(selector, ids, [[-20, -25, SILENCE_DB]] * 50)
    assert selector.talkers == {"a", "b", "c"}  # a small room: everyone
    # A fourth joins: two places, the silent peer leaves the talkers, nobody speaking is cut.
    assert run(selector, [*ids, "d"], [[-20, -25, SILENCE_DB, SILENCE_DB]]) == {"a", "b"}


def test_a_talker_who_stops_leaves_after_the_hold():
    selector = TalkerSelector(1, hold_ticks=10)
    ids = ["a", "x", "y"]
    run(selector, ids, [[-20, SILENCE_DB, SILENCE_DB]] * 10)
    assert run(selector, ids, [[SILENCE_DB] * 3] * 5) == {"a"}  # a pause between words
    assert run(selector, ids, [[SILENCE_DB] * 3] * 50) == set()


def test_a_participant_who_leaves_is_forgotten():
    selector = TalkerSelector(1)
    run(selector, ["a", "b", "c"], [[-20, -30, SILENCE_DB]] * 10)
    assert run(selector, ["b", "c", "d"], [[-30, SILENCE_DB, SILENCE_DB]] * 10) == {"b"}


def test_may_talk_says_who_could_join_the_talkers_soon():
    selector = TalkerSelector(2, gate_db=-50, margin_db=6)
    assert selector.may_talk(-40) and not selector.may_talk(-55)  # a place is free: anyone above the gate
    run(selector, ["a", "b"], [[-20, -30]] * 10)
    # Full: only a voice within half the margin of beating the weakest talker (-30 dB) may get in.
    assert selector.may_talk(-26) and not selector.may_talk(-28) and not selector.may_talk(-45)
