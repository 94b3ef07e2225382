"""Who is talking: frame levels and a choice of the loudest talkers that does not flicker."""

from __future__ import annotations

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


class TalkerSelector:
    """Picks at most `count` talkers, the loudest, with hysteresis.

    Levels are smoothed over a few ticks (in power); a talker keeps its place
    while it was above the gate within the last `hold_ticks`, and a louder
    newcomer displaces the quietest talker only when louder by `margin_db` for
    `switch_ticks` in a row, and only once that talker has held its place for
    `hold_ticks`: a cough does not take the floor, and the set does not flicker
    between two similar voices.
    """

    def __init__(
        self,
        count: int,
        gate_db: float = -50.0,
        hold_ticks: int = 25,
        margin_db: float = 6.0,
        smoothing: float = 0.3,
        switch_ticks: int = 10,
    ) -> None:
        self.count = count
        self.gate_db = gate_db
        self.hold_ticks = hold_ticks
        self.margin_db = margin_db
        self.smoothing = smoothing
        self.switch_ticks = switch_ticks
        self._smoothed: dict[Hashable, float] = {}
        self._talkers: dict[Hashable, _Talker] = {}
        #: Consecutive ticks each non-talker has been clearly louder than the weakest talker.
        self._challenging: dict[Hashable, int] = {}

    @property
    def talkers(self) -> set[Hashable]:
        return set(self._talkers)

    def update(self, ids: Sequence[Hashable], frame_levels: Sequence[float]) -> set[Hashable]:
        """Feed one tick's levels (dBFS, one per id); returns the talker set."""
        for gone in self._smoothed.keys() - set(ids):
            del self._smoothed[gone]
            self._talkers.pop(gone, None)
        for key, level in zip(ids, frame_levels):
            # Smooth the power, not the dB: one lost frame (silence) must not
            # look like a 30 dB drop.
            previous = 10 ** (self._smoothed.get(key, SILENCE_DB) / 10)
            power = previous + self.smoothing * (10 ** (float(level) / 10) - previous)
            self._smoothed[key] = max(10 * np.log10(max(power, 1e-300)), SILENCE_DB)

        for key, talker in list(self._talkers.items()):
            talker.level = self._smoothed[key]
            talker.held_for += 1
            talker.quiet_for = 0 if talker.level > self.gate_db else talker.quiet_for + 1
            if talker.quiet_for >= self.hold_ticks:
                del self._talkers[key]

        candidates = sorted(
            (key for key in ids if key not in self._talkers and self._smoothed[key] > self.gate_db),
            key=lambda key: self._smoothed[key],
            reverse=True,
        )
        challenging: dict[Hashable, int] = {}
        for key in candidates:
            level = self._smoothed[key]
            if len(self._talkers) < self.count:
                self._talkers[key] = _Talker(level)
                continue
            quietest = min(self._talkers, key=lambda k: self._talkers[k].level)
            weakest = self._talkers[quietest]
            if level <= weakest.level + self.margin_db:
                continue
            challenging[key] = self._challenging.get(key, 0) + 1
            if challenging[key] >= self.switch_ticks and weakest.held_for >= self.hold_ticks:
                del self._talkers[quietest]
                del challenging[key]
                self._talkers[key] = _Talker(level)
        self._challenging = challenging
        return set(self._talkers)
