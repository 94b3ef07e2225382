"""Who is talking: frame levels and a choice of the loudest talkers that does not flicker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

#: dBFS of digital silence (the floor of `levels`).
SILENCE_DB = -127.0


def levels(frames: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each row of int16 frames (N, S); silence gives SILENCE_DB."""
    if frames.size == 0:
        return np.zeros(len(frames))
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(power / 32768.0**2)
    return np.maximum(db, SILENCE_DB)


@dataclass
class _Talker:
    level: float
    #: Ticks since the level was last above the gate.
    quiet_for: int = 0
    #: Ticks in the talker set (a newcomer cannot be displaced at once).
    held_for: int = 0
    #: Ticks since a louder voice took this talker's place while it was speaking; None: it holds one.
    overtime: int | None = None


class TalkerSelector:
    """Picks the talkers that get a personal mix: everyone in a small room, else the loudest `count`.

    With at most `count` + 1 voices a personal mix for each costs no more than
    `count` talkers and one shared mix, so everyone is a talker. Above that,
    levels are smoothed over a few ticks (in power); a talker keeps its place
    while it was above the gate within the last `hold_ticks`, and a louder
    newcomer takes the place of the quietest talker only when louder by
    `margin_db` for `switch_ticks` in a row, and only once that talker has held
    its place for `hold_ticks`: a cough does not take the floor, and the set does
    not flicker between two similar voices.

    A talker whose place is taken while it speaks is not cut mid-sentence: it
    stays mixed, on overtime, until its first pause (`pause_ticks` under the
    gate) or for `overtime_ticks` at most, and takes a place again if one frees
    up meanwhile. At most `count` talkers are on overtime at once (the oldest
    goes first), so the set never exceeds 2 x `count`.
    """

    def __init__(
        self,
        count: int,
        gate_db: float = -50.0,
        hold_ticks: int = 25,
        margin_db: float = 6.0,
        smoothing: float = 0.3,
        switch_ticks: int = 10,
        pause_ticks: int = 5,
        overtime_ticks: int = 250,
    ) -> None:
        self.count = count
        self.gate_db = gate_db
        self.hold_ticks = hold_ticks
        self.margin_db = margin_db
        self.smoothing = smoothing
        self.switch_ticks = switch_ticks
        self.pause_ticks = pause_ticks
        self.overtime_ticks = overtime_ticks
        self._smoothed: dict[Hashable, float] = {}
        self._talkers: dict[Hashable, _Talker] = {}
        #: Consecutive ticks each non-talker has been clearly louder than the weakest talker.
        self._challenging: dict[Hashable, int] = {}
        #: The level of the weakest talker holding a place, when every place is taken (else None).
        self._weakest: float | None = None

    @property
    def talkers(self) -> set[Hashable]:
        """Who gets a personal mix now, those on overtime included."""
        return set(self._talkers)

    @property
    def on_overtime(self) -> set[Hashable]:
        """The talkers kept only until they pause: a louder voice took their place."""
        return {key for key, talker in self._talkers.items() if talker.overtime is not None}

    def _placed(self) -> dict[Hashable, _Talker]:
        return {key: talker for key, talker in self._talkers.items() if talker.overtime is None}

    def may_talk(self, level_db: float) -> bool:
        """Whether a non-talker at this level could join the talkers soon.

        True above the gate while a place is free (it joins at the next update),
        or when it is within half the margin of challenging the weakest talker
        (a challenge takes `switch_ticks`). The room need not decode the others.
        """
        if level_db <= self.gate_db:
            return False
        return self._weakest is None or level_db > self._weakest + self.margin_db / 2

    def update(self, ids: Sequence[Hashable], frame_levels: Sequence[float] | np.ndarray) -> set[Hashable]:
        """Feed one tick's levels (dBFS, one per id: everyone who sends audio); returns the talker set."""
        for gone in self._smoothed.keys() - set(ids):
            del self._smoothed[gone]
            self._talkers.pop(gone, None)
        for key, level in zip(ids, frame_levels):
            # Smooth the power, not the dB: one lost frame (silence) must not
            # look like a 30 dB drop.
            previous = 10 ** (self._smoothed.get(key, SILENCE_DB) / 10)
            power = previous + self.smoothing * (10 ** (float(level) / 10) - previous)
            self._smoothed[key] = max(10 * math.log10(max(power, 1e-300)), SILENCE_DB)

        if len(ids) <= self.count + 1:
            # A small room: everyone is a talker, whatever their level.
            for key in ids:
                talker = self._talkers.setdefault(key, _Talker(self._smoothed[key]))
                talker.level, talker.overtime = self._smoothed[key], None
                talker.held_for += 1
                talker.quiet_for = 0 if talker.level > self.gate_db else talker.quiet_for + 1
            self._challenging = {}
            self._weakest = self._weakest_of(self._talkers)
            return set(self._talkers)

        for key, talker in list(self._talkers.items()):
            talker.level = self._smoothed[key]
            talker.held_for += 1
            talker.quiet_for = 0 if talker.level > self.gate_db else talker.quiet_for + 1
            if talker.overtime is None:
                if talker.quiet_for >= self.hold_ticks:
                    del self._talkers[key]
                continue
            talker.overtime += 1
            if talker.quiet_for >= self.pause_ticks or talker.overtime >= self.overtime_ticks:
                del self._talkers[key]

        placed = self._placed()
        # More placed talkers than places (the room just grew past count + 1): the quietest
        # go on overtime, or leave if they are not speaking.
        for key in sorted(placed, key=lambda k: placed[k].level)[: max(len(placed) - self.count, 0)]:
            self._displace(key)
            del placed[key]
        # A free place goes back to a talker on overtime first, the loudest.
        for key in sorted(self.on_overtime, key=lambda k: self._talkers[k].level, reverse=True):
            if len(placed) >= self.count:
                break
            placed[key] = self._talkers[key]
            placed[key].overtime = None

        candidates = sorted(
            (key for key in ids if key not in self._talkers and self._smoothed[key] > self.gate_db),
            key=lambda key: self._smoothed[key],
            reverse=True,
        )
        challenging: dict[Hashable, int] = {}
        for key in candidates:
            level = self._smoothed[key]
            if len(placed) < self.count:
                self._talkers[key] = placed[key] = _Talker(level)
                continue
            quietest = min(placed, key=lambda k: placed[k].level)
            weakest = placed[quietest]
            if level <= weakest.level + self.margin_db:
                continue
            challenging[key] = self._challenging.get(key, 0) + 1
            if challenging[key] >= self.switch_ticks and weakest.held_for >= self.hold_ticks:
                self._displace(quietest)
                del placed[quietest]
                del challenging[key]
                self._talkers[key] = placed[key] = _Talker(level)
        self._challenging = challenging
        self._weakest = self._weakest_of(placed)
        return set(self._talkers)

    def _weakest_of(self, placed: dict[Hashable, _Talker]) -> float | None:
        """The level of the weakest of `placed` when they take every place, else None (one is free)."""
        return min(t.level for t in placed.values()) if len(placed) >= self.count else None

    def _displace(self, key: Hashable) -> None:
        """`key` loses its place: on overtime if it is speaking, else out."""
        talker = self._talkers[key]
        if talker.quiet_for > 0:
            del self._talkers[key]
            return
        talker.overtime = 0
        overtime = sorted(self.on_overtime, key=lambda k: self._talkers[k].overtime or 0, reverse=True)
        for oldest in overtime[: max(len(overtime) - self.count, 0)]:
            del self._talkers[oldest]


@dataclass
class SpeakerEvents:
    """What changed in one tick: speaking starts and stops, and the floor."""

    started: list[Hashable]
    stopped: list[Hashable]
    #: The floor changed hands this tick (to `active`; None when its holder left).
    floor_changed: bool = False
    #: The state after the tick, a snapshot safe to hand to another thread.
    active: Hashable | None = None
    speaking: frozenset = frozenset()
    order: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.started or self.stopped or self.floor_changed)


class SpeakerDetector:
    """Who is speaking, and who holds the floor (the active speaker), with hysteresis.

    A participant starts speaking when its smoothed level stays above `start_db`
    for `start_ticks` and stops when it stays below `stop_db` (lower: hysteresis)
    for `stop_ticks`, so pauses between words do not toggle it. The floor goes
    to the loudest speaker once it has been the loudest, by `margin_db` over the
    holder (or the holder is silent), for `floor_ticks` in a row: a cough or a
    short interjection never takes it. The holder keeps the floor while nobody
    else takes it, even silent, like the last speaker shown large in a call.
    """

    def __init__(
        self,
        start_db: float = -45.0,
        stop_db: float = -52.0,
        start_ticks: int = 3,
        stop_ticks: int = 40,
        floor_ticks: int = 50,
        margin_db: float = 3.0,
        smoothing: float = 0.3,
    ) -> None:
        self.start_db = start_db
        self.stop_db = stop_db
        self.start_ticks = start_ticks
        self.stop_ticks = stop_ticks
        self.floor_ticks = floor_ticks
        self.margin_db = margin_db
        self.smoothing = smoothing
        self.active: Hashable | None = None
        self.speaking: set[Hashable] = set()
        #: Most recent speaker first (who started speaking last).
        self.order: list[Hashable] = []
        self._power: dict[Hashable, float] = {}
        #: Ticks a non-speaker has been above start_db, or a speaker below stop_db.
        self._run: dict[Hashable, int] = {}
        self._challenger: Hashable | None = None
        self._challenge = 0

    def level(self, key: Hashable) -> float:
        """The smoothed level of `key` in dBFS."""
        return max(10 * np.log10(max(self._power.get(key, 0.0), 1e-300)), SILENCE_DB)

    def update(self, ids: Sequence[Hashable], frame_levels: Sequence[float] | np.ndarray) -> SpeakerEvents:
        """Feed one tick's levels (dBFS, one per id); returns what changed."""
        events = SpeakerEvents([], [])
        present = set(ids)
        for gone in self._power.keys() - present:
            del self._power[gone]
            self._run.pop(gone, None)
            if gone in self.speaking:
                self.speaking.discard(gone)
                events.stopped.append(gone)
        self.order = [key for key in self.order if key in present]
        if self.active is not None and self.active not in present:
            self.active = None
            events.floor_changed = True

        powers = 10 ** (np.asarray(frame_levels, dtype=np.float64) / 10)
        for key, power in zip(ids, powers):
            previous = self._power.get(key, 0.0)
            self._power[key] = previous + self.smoothing * (float(power) - previous)
            level = self.level(key)
            if key in self.speaking:
                self._run[key] = self._run.get(key, 0) + 1 if level < self.stop_db else 0
                if self._run[key] >= self.stop_ticks:
                    self.speaking.discard(key)
                    self._run[key] = 0
                    events.stopped.append(key)
            else:
                self._run[key] = self._run.get(key, 0) + 1 if level > self.start_db else 0
                if self._run[key] >= self.start_ticks:
                    self.speaking.add(key)
                    self._run[key] = 0
                    events.started.append(key)
                    self.order = [key] + [k for k in self.order if k != key]

        self._update_floor(events)
        events.active, events.speaking, events.order = self.active, frozenset(self.speaking), tuple(self.order)
        return events

    def _update_floor(self, events: SpeakerEvents) -> None:
        if not self.speaking:
            self._challenger, self._challenge = None, 0
            return
        loudest = max(self.speaking, key=self.level)
        if self._challenger in self.speaking and self.level(self._challenger) >= self.level(loudest) - self.margin_db:
            loudest = self._challenger  # similar voices do not reset the count by turns
        holder_silent = self.active not in self.speaking
        if loudest == self.active or not (
            holder_silent or self.level(loudest) > self.level(self.active) + self.margin_db
        ):
            self._challenger, self._challenge = None, 0
            return
        self._challenge = self._challenge + 1 if loudest == self._challenger else 1
        self._challenger = loudest
        if self._challenge >= self.floor_ticks:
            self.active = loudest
            self._challenger, self._challenge = None, 0
            events.floor_changed = True
