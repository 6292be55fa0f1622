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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Measurements", "SearchResult", "search_fallback"]

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
        half = len(g) // 2
        for part in (g[:half], g[half:]):  # both measured: the parts need not add up exactly
            noise[part] = m(frozenset(part))
            groups.append(part)
    active = frozenset(everything - floated)
    current = m(active)
    met = float(np.max(current, initial=0.0)) <= limit
    return SearchResult(frozenset(floated), current, m.passes - start, met)
