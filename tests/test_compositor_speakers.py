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
    assert run(TalkerSelector(3), ["a", "b"], [[SILENCE_DB, -70]] * 50) == set()


def test_a_cough_does_not_take_the_floor():
    selector = TalkerSelector(1, hold_ticks=25)
    ids = ["speaker", "cougher"]
    run(selector, ids, [[-20, -80]] * 30)
    # A loud cough of a few ticks does not last long enough to take the floor.
    assert run(selector, ids, [[-20, -5]] * 4) == {"speaker"}
    assert run(selector, ids, [[-20, -80]] * 5) == {"speaker"}


def test_a_clearly_louder_talker_takes_over_after_the_hold():
    selector = TalkerSelector(1, hold_ticks=25)
    ids = ["a", "b"]
    run(selector, ids, [[-30, -80]] * 10)
    assert selector.talkers == {"a"}
    run(selector, ids, [[-30, -10]] * 5)
    assert selector.talkers == {"a"}  # b has been louder for 5 ticks only
    run(selector, ids, [[-30, -10]] * 15)
    assert selector.talkers == {"b"}


def test_a_talker_who_stops_leaves_after_the_hold():
    selector = TalkerSelector(3, hold_ticks=10)
    run(selector, ["a"], [[-20]] * 10)
    assert run(selector, ["a"], [[SILENCE_DB]] * 5) == {"a"}  # a pause between words
    assert run(selector, ["a"], [[SILENCE_DB]] * 50) == set()


def test_a_participant_who_leaves_is_forgotten():
    selector = TalkerSelector(3)
    run(selector, ["a", "b"], [[-20, -20]] * 10)
    assert run(selector, ["b"], [[-20]]) == {"b"}


def test_may_talk_says_who_could_join_the_talkers_soon():
    selector = TalkerSelector(2, gate_db=-50, margin_db=6)
    assert selector.may_talk(-40) and not selector.may_talk(-55)  # a place is free: anyone above the gate
    run(selector, ["a", "b"], [[-20, -30]] * 10)
    # Full: only a voice within half the margin of beating the weakest talker (-30 dB) may get in.
    assert selector.may_talk(-26) and not selector.may_talk(-28) and not selector.may_talk(-45)
