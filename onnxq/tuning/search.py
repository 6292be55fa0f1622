"""Which units to keep in float so that the output noise meets a limit (pure; no onnx).

``measure(active)`` returns, for each model output, the noise-to-signal power ratio
(``Σ(ref - out)² / Σ ref²``) over the check data with exactly the units in ``active``
quantized. Quantization noise from different places adds up at the outputs roughly as
powers add, so the noise of a set of units is about the sum of its parts. The search uses
that to find the costly units without measuring each one (adaptive group testing):

1. measure all units together; done if under the limit;
2. keep a list of disjoint groups (at first: all units) and their measured noise; the
   predicted noise is their sum. While it is over the limit, take the group that adds the
   most noise to the worst output: a single unit is kept float, a larger group is split in
   two halves (neighbours in graph order stay together) and each half is measured alone;
3. when the prediction is under the limit, measure the remaining units together; if the
   measurement is over (the parts interact), scale the predictions by the ratio seen and go
   on at step 2.

The number of measurements grows with (costly units) × log2(units), not with the units:
two per level of the split when a single unit is costly.

4. give up early when the noise is spread out. Each split shows how unevenly a group's
   noise falls on its halves (the noisier half's share ``c``, 0.5 to 1; the largest of the
   last few splits is taken). Were every further split of the groups measured so far that
   uneven, the costliest units allowed float would hold a share of the noise that
   :func:`removable_share` computes; when, after ``SPLITS_BEFORE_JUDGING`` splits, that
   share is under half of what must go, no choice of floats meets the limit and the search
   stops (MiniLM at 17.6 dB against 35: halves of about 60/40, the 31
   costliest of 159 units would hold about 45 % of the noise where 98 % must go, and the
   search used to spend its whole budget to gain 0.4 dB). A single costly unit shows as
   uneven splits (c near 1), so it is still found.

5. measure the units of a group one by one when the split that made it was even (its
   noisier half held under ``SPREAD`` of the noise), step 4 has judged, they fit the
   budget with one measurement to spare, and that costs no more than halving would to
   find the floats still allowed. With the noise spread, halving localises little: each
   level costs two runs and the halves' sums hide which units are costly. Every unit
   measured alone gives each one its exact share, and step 2 then keeps float the
   costliest first (MiniLM weights-only, 36 units, first split 59/41: 48 runs reached six
   floats and 33.0 dB, the seven costliest of the 36 singles hold 60 % of the noise; now
   40 runs, seven floats, 33.4 dB). A unit holding most of a group's noise makes uneven
   splits and is still found by halving. Units an earlier round measured alone are free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Measurements", "SearchResult", "removable_share", "search_fallback"]

SPLITS_BEFORE_JUDGING = 3
# a split whose noisier half holds less than this share is even: the noise is spread
SPREAD = 0.75
# the give-up is judged only on this many units or more: on fewer, a search costs little
# and the cascade is too shallow to say much (the test encoder's recipe setting, 22 units:
# judged hopeless at 27.6 dB, yet three floats reached 34.9 dB against a 35 dB target)
JUDGED_UNITS = 64

Measure = Callable[[frozenset[int]], np.ndarray]


@dataclass(frozen=True)
class SearchResult:
    floated: frozenset[int]  # units to keep in float
    noise: np.ndarray  # measured noise ratio per output with the other units quantized
    passes: int  # measurements made (cached ones not counted)
    met: bool


@dataclass
class Measurements:
    measure: Measure
    outputs: int | None = None
    cache: dict[frozenset[int], np.ndarray] = field(default_factory=dict)
    passes: int = 0

    def __call__(self, units: frozenset[int]) -> np.ndarray:
        if units not in self.cache:
            value = np.asarray(self.measure(units), np.float64).reshape(-1)
            self.cache[units] = value
            self.passes += 1
        return self.cache[units]


def search_fallback(
    n_units: int,
    measure: Measure | Measurements,
    limit: float,
    *,
    budget: int = 32,
    keep_float: frozenset[int] = frozenset(),
    max_float: int | None = None,
) -> SearchResult:
    """Units to keep in float so that every output's noise ratio is at most ``limit``.

    ``measure`` may be a previous search's ``Measurements`` (its cache is reused);
    ``keep_float`` are units already chosen to stay float. At most ``budget`` new
    measurements are made; if the limit is not reached by then, or even with every unit
    float, ``met`` is False and the best set found is returned. At most ``max_float``
    units (``keep_float`` included) are kept float.
    """
    cap = n_units if max_float is None else max_float
    m = measure if isinstance(measure, Measurements) else Measurements(measure)
    start = m.passes
    floated = set(keep_float)
    everything = frozenset(range(n_units)) - floated
    current = m(everything)
    if float(np.max(current, initial=0.0)) <= limit:
        return SearchResult(frozenset(floated), current, m.passes - start, True)
    groups: list[tuple[int, ...]] = [tuple(sorted(everything))] if everything else []
    noise = {g: current for g in groups}
    scale = 1.0
    splits = _Splits(judged=n_units < JUDGED_UNITS)
    while groups and m.passes - start < budget:
        predicted = np.sum([noise[g] for g in groups], axis=0) * scale
        if float(np.max(predicted)) <= limit:
            active = frozenset(everything - floated)
            current = m(active)
            if float(np.max(current, initial=0.0)) <= limit:
                return SearchResult(frozenset(floated), current, m.passes - start, True)
            raw = predicted / scale
            if float(np.max(raw)) <= 0:  # nothing left to predict from: give up
                break
            ratio = current / np.maximum(raw, 1e-30)
            scale = max(float(np.max(ratio[raw > 0], initial=1.0)), scale * 1.25)
            continue
        worst = int(np.argmax(predicted))
        g = max(groups, key=lambda grp: float(noise[grp][worst]))
        groups.remove(g)
        if len(g) == 1:
            if len(floated) >= cap:
                break
            floated.add(g[0])
            continue
        if m.passes - start + 2 > budget:
            break
        left, floats = budget - (m.passes - start), cap - len(floated)
        groups += splits.measure(g, m, noise, worst, left, floats)
        spread = [(len(grp), float(noise[grp][worst])) for grp in groups]
        if _hopeless(splits.shares, spread, float(predicted[worst]), limit, floats):
            break  # spread out: no allowed set of floats removes enough
    active = frozenset(everything - floated)
    current = m(active)
    met = float(np.max(current, initial=0.0)) <= limit
    return SearchResult(frozenset(floated), current, m.passes - start, met)


@dataclass
class _Splits:
    """What the search learnt from its splits: the noisier half's share of each, on the
    worst output, in order (step 4 judges the last few), and the share of the split that
    made each group (step 5 reads it). ``judged``: step 4 has had its say (or never will:
    too few units), so step 5 may measure units alone."""

    judged: bool
    shares: list[float] = field(default_factory=list)
    made_by: dict[tuple[int, ...], float] = field(default_factory=dict)

    def measure(
        self,
        group: tuple[int, ...],
        m: Measurements,
        noise: dict[tuple[int, ...], np.ndarray],
        worst: int,
        left: int,
        floats: int,
    ) -> list[tuple[int, ...]]:
        """The parts of ``group``, each measured into ``noise`` (they need not add up
        exactly): its two halves (neighbours in graph order together), or each unit alone
        (:meth:`one_by_one`); ``left`` measurements and ``floats`` floats still allowed."""
        alone = self.one_by_one(group, m, left, floats)
        half = len(group) // 2
        parts: list[tuple[int, ...]] = (
            [(u,) for u in group] if alone else [group[:half], group[half:]]
        )
        for part in parts:
            noise[part] = m(frozenset(part))
        if alone:
            return parts
        a, b = (float(noise[part][worst]) for part in parts)
        if a + b > 0:
            share = max(a, b) / (a + b)
            self.shares.append(share)
            self.made_by.update(dict.fromkeys(parts, share))
        self.judged = self.judged or len(self.shares) >= SPLITS_BEFORE_JUDGING
        return parts

    def one_by_one(self, group: tuple[int, ...], m: Measurements, left: int, floats: int) -> bool:
        """Step 5: measure ``group``'s units alone when each was measured alone already
        (an earlier round's: free), or when the split that made it was even, step 4 has
        judged, the units not measured yet fit the ``left`` measurements with one to
        spare, and that costs no more than halving would to find the ``floats`` units
        still allowed (about ``2 f log2 s`` for ``f`` of ``s``)."""
        size = len(group)
        new = sum(frozenset((u,)) not in m.cache for u in group)
        if new == 0:
            return True
        if not self.judged or self.made_by.get(group, 1.0) >= SPREAD or floats <= 0:
            return False
        return new + 1 <= left and new <= 2 * min(floats, size) * math.log2(size)


def _hopeless(
    shares: Sequence[float],
    groups: Sequence[tuple[int, float]],
    total: float,
    limit: float,
    floats: int,
) -> bool:
    """Step 4 of the module docstring: after enough splits, whether the ``floats`` units
    still allowed float could not hold half of the noise that must go."""
    if len(shares) < SPLITS_BEFORE_JUDGING or total <= 0:
        return False
    if sum(size for size, _ in groups) < JUDGED_UNITS:
        return False
    must_go = (total - limit) / total
    return removable_share(max(shares[-SPLITS_BEFORE_JUDGING:]), groups, floats) < 0.5 * must_go


def removable_share(c: float, groups: Sequence[tuple[int, float]], floats: int) -> float:
    """The share of the noise the ``floats`` costliest units hold, the units lying in
    ``groups`` of (size, measured noise), when every split of a group into halves gives
    the noisier half the share ``c``: in a group of ``d = ceil(log2 size)`` levels, a unit
    reached by ``a`` noisier and ``d - a`` quieter halves holds ``c^a (1 - c)^(d - a)`` of
    the group's noise, and ``comb(d, a)`` units are reached so (a single unit: all of it).
    """
    total = sum(noise for _, noise in groups)
    if floats <= 0 or total <= 0:
        return 0.0
    c = min(max(c, 0.5), 1.0)
    levels: list[tuple[float, int]] = []  # (noise of one unit, how many units)
    for size, noise in groups:
        depth = max(0, math.ceil(math.log2(max(size, 1))))
        left = size
        for a in range(depth, -1, -1):
            count = min(math.comb(depth, a), left)
            if count > 0:
                levels.append((noise * c**a * (1.0 - c) ** (depth - a), count))
            left -= count
    held, left = 0.0, floats
    for value, count in sorted(levels, reverse=True):
        take = min(count, left)
        held += take * value
        left -= take
        if left <= 0:
            break
    return min(held / total, 1.0)
