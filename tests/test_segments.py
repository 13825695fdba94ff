"""Segment statistics: hand-counted cases, numpy and torch alike."""

import math

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from sae_core import segment_counts, segment_stats
from sae_core.segments import segment_ids, segment_lengths, segment_starts

B = np.array([
    [1, 0, 0, 1, 0, 0],  # boundaries at 0 and 3: two segments
    [0, 0, 1, 0, 0, 0],  # a start without a boundary, then one at 2: two
    [0, 1, 0, 0, 1, 0],  # left-padded: first valid token 2 (no boundary); the one at 1 is masked
    [0, 0, 0, 0, 0, 0],  # nothing valid
], dtype=bool)
M = np.array([
    [1, 1, 1, 1, 1, 0],
    [1, 1, 1, 0, 1, 1],  # an interior gap
    [0, 0, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0],
])


def kinds():
    yield lambda x: x
    torch = pytest.importorskip("torch")
    yield torch.from_numpy


@pytest.mark.parametrize("kind", range(2))
def test_counts_by_hand(kind):
    convert = list(kinds())[kind]
    n_valid, n_b, n_seg = segment_counts(convert(B), convert(M))
    assert list(np.asarray(n_valid)) == [5, 5, 4, 0]
    assert list(np.asarray(n_b)) == [2, 1, 1, 0]
    assert list(np.asarray(n_seg)) == [2, 2, 2, 0]
    fraction, length = segment_stats(convert(B), convert(M))
    assert fraction == pytest.approx(4 / 14) and length == pytest.approx(14 / 6)


def test_no_mask_and_no_boundaries():
    # without segments: one per row, so the mean segment length is the mean response length
    assert segment_stats(np.zeros((3, 4), bool)) == (0.0, 4.0)
    assert all(math.isnan(x) for x in segment_stats(B[3:], M[3:]))


def test_ragged_segments_by_hand():
    # rows: [b . b b] (. masked), [], [x x b], [. x]: starts are boundaries or a row's first valid token
    offsets = np.array([0, 4, 4, 7, 9])
    boundaries = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    valid = np.array([1, 0, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    assert_array_equal(segment_starts(offsets, boundaries, valid), [1, 0, 1, 1, 1, 0, 1, 0, 1])
    lengths, row_boundaries = segment_lengths(offsets, boundaries, valid)
    assert_array_equal(lengths, [1, 1, 1, 2, 1, 1])
    assert_array_equal(row_boundaries, [3, 0, 1, 0])  # the masked token 7 is no boundary
    assert_array_equal(segment_ids(offsets, boundaries, valid), [0, 0, 1, 2, 3, 3, 4, -1, 5])


def test_ragged_segments_agree_with_padded_counts():
    rng = np.random.default_rng(1)
    b = rng.random((6, 9)) < 0.3
    m = rng.random((6, 9)) < 0.7
    offsets = np.arange(7) * 9
    lengths, row_boundaries = segment_lengths(offsets, b.reshape(-1), m.reshape(-1))
    n_valid, n_boundaries, n_segments = segment_counts(b, m)
    assert_array_equal(row_boundaries, n_boundaries)
    assert lengths.sum() == n_valid.sum() and len(lengths) == n_segments.sum()
