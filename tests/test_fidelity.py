"""The evaluation's metrics do not depend on how feeds are pooled before they are taken."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxq.report.fidelity import _Pooled
from onnxq.report.metrics import OutputStats, binomial_tail, binomial_upper

feeds = st.lists(
    st.tuples(st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans()), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(feeds=feeds, width=st.integers(2, 6), labelled=st.booleans())
def test_pooled_feeds_give_the_metrics_of_feeds_taken_one_by_one(feeds, width, labelled):
    """Every metric is a sum, a count, a minimum or a maximum over rows, so pooling rows
    of consecutive feeds changes nothing but float rounding (a broken pool that drops,
    repeats or misaligns a feed or its labels changes the counts or the agreement)."""
    plain, pooled = OutputStats("y"), _Pooled(OutputStats("y"))
    for rows, seed, noisy in feeds:
        rng = np.random.default_rng(seed)
        ref = rng.normal(size=(rows, width)).astype(np.float32)
        cand = ref + (rng.normal(size=ref.shape) * (0.5 if noisy else 0.01)).astype(np.float32)
        labels = rng.integers(0, width, rows) if labelled else None
        plain.update(ref, cand, labels)
        pooled.add(ref, cand, labels)
    a, b = plain.result(), pooled.result()
    assert a.samples == b.samples
    assert a.top1_agreement == b.top1_agreement
    assert a.reference_accuracy == b.reference_accuracy
    assert a.candidate_accuracy == b.candidate_accuracy
    assert a.max_abs_error == b.max_abs_error
    assert a.cosine_min == b.cosine_min
    assert math.isclose(a.cosine_mean, b.cosine_mean, rel_tol=1e-12)
    assert math.isclose(a.sqnr_db, b.sqnr_db, rel_tol=1e-9, abs_tol=1e-9)


def test_outputs_of_another_shape_are_not_pooled_with_the_rest():
    """A feed whose output has other trailing dimensions (or no rows) is taken on its
    own: the rows before it are not joined with it."""
    plain, pooled = OutputStats("y"), _Pooled(OutputStats("y"))
    rng = np.random.default_rng(0)
    for shape in [(2, 3), (1, 3), (2, 4), (0, 4), (3, 4), (2, 3)]:
        ref = rng.normal(size=shape)
        cand = ref + 0.1
        plain.update(ref, cand)
        pooled.add(ref, cand, None)
    a, b = plain.result(), pooled.result()
    assert (a.samples, a.top1_agreement, a.max_abs_error) == (
        b.samples,
        b.top1_agreement,
        b.max_abs_error,
    )
    assert math.isclose(a.cosine_mean, b.cosine_mean, rel_tol=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.data(), st.floats(0.0, 1.0))
def test_binomial_tail_is_the_exact_sum(n, data, p):
    k = data.draw(st.integers(0, n + 1))
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    assert binomial_tail(k, n, p) == pytest.approx(exact, abs=1e-9)


def test_binomial_tail_of_magikas_check():
    """2 disagreements in 128 at 99 %: 1 - P(0) - P(1), about 0.37."""
    assert binomial_tail(2, 128, 0.01) == pytest.approx(0.3666, abs=1e-3)
    assert binomial_tail(6, 128, 0.01) < 0.01


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.data())
def test_binomial_upper_is_the_clopper_pearson_bound(n, data):
    """At the bound, k or fewer events have probability 5 %; below it, more."""
    k = data.draw(st.integers(0, n - 1))
    upper = binomial_upper(k, n)
    assert k / n <= upper <= 1.0
    assert 1.0 - binomial_tail(k + 1, n, upper) == pytest.approx(0.05, abs=1e-6)
    assert binomial_upper(0, n) == pytest.approx(1.0 - 0.05 ** (1.0 / n), rel=1e-6)
    assert binomial_upper(n, n) == 1.0
