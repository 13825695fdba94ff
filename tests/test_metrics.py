"""Segment statistics: hand-counted cases, numpy and torch alike."""

import math

import numpy as np
import pytest

from sae_core.metrics import segment_counts, segment_stats

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
