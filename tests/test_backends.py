"""Every backend agrees with the reference backend (the executable spec) on generated inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from helpers import batches, estimator_kwargs, ragged_kwargs, to_ragged, tolerance
from sae_core import compute_advantages, compute_advantages_ragged
from sae_core.kernels.numba_scan import CHUNK as C
from sae_core.kernels.numba_scan import STAGGER

FAST_BACKENDS = ["numba"]


def assert_same(a, b, dtype):
    assert_allclose(a.advantages, b.advantages, **tolerance(dtype))
    assert_allclose(a.returns, b.returns, **tolerance(dtype))
    assert_array_equal(a.boundaries, b.boundaries)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@given(data=st.data())
def test_padded_matches_reference(backend, data):
    batch = data.draw(batches())
    kw = data.draw(estimator_kwargs(batch))
    ref = compute_advantages(batch.rewards, batch.values, batch.mask, backend="reference", **kw)
    out = compute_advantages(batch.rewards, batch.values, batch.mask, backend=backend, **kw)
    assert out.advantages.dtype == batch.rewards.dtype
    assert_same(out, ref, batch.rewards.dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@given(data=st.data())
def test_ragged_matches_reference(backend, data):
    """Rows of different lengths (including empty ones), with and without a mask."""
    lengths = data.draw(st.lists(st.integers(0, 30), min_size=0, max_size=9))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    batch = data.draw(batches(max_b=1, t_values=[n]).filter(lambda b: b.shape[0] == 1))
    kw = ragged_kwargs(data.draw(estimator_kwargs(batch)))
    mask = to_ragged(batch.mask) if data.draw(st.booleans()) else None
    r, v = to_ragged(batch.rewards), to_ragged(batch.values)
    ref = compute_advantages_ragged(r, v, offsets, response_mask=mask, backend="reference", **kw)
    out = compute_advantages_ragged(r, v, offsets, response_mask=mask, backend=backend, **kw)
    assert_same(out, ref, r.dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=12)
@given(data=st.data())
def test_long_rows_across_chunks(backend, data):
    """Rows longer than the numba kernel's chunk, of unequal lengths, in one lockstep block."""
    lengths = data.draw(st.lists(st.sampled_from([1, C - 1, C, C + 1, 2 * C + 1, 2 * C + C // 2]), min_size=1,
                                 max_size=6))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    kind = data.draw(st.sampled_from(["full", "right_padded", "gaps"]))
    batch = data.draw(batches(max_b=1, t_values=[n], mask_kind=kind).filter(lambda b: b.shape[0] == 1))
    kw = ragged_kwargs(data.draw(estimator_kwargs(batch)))
    r, v, m = to_ragged(batch.rewards), to_ragged(batch.values), to_ragged(batch.mask)
    ref = compute_advantages_ragged(r, v, offsets, response_mask=m, backend="reference", **kw)
    out = compute_advantages_ragged(r, v, offsets, response_mask=m, backend=backend, **kw)
    assert_same(out, ref, r.dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64])
def test_mask_dtypes(backend, mask_dtype):
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    mask = rng.random((3, 50)) < 0.7
    lp = -rng.exponential(size=(3, 50))
    ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="reference")
    out = compute_advantages(r, v, mask.astype(mask_dtype), estimator="sae", logprobs=lp, backend=backend)
    assert_same(out, ref, np.float64)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_right_padded_rows_longer_than_a_chunk(backend):
    """Chunks that are valid tokens followed by padding take the kernel's dense path."""
    rng = np.random.default_rng(1)
    # the edges of the kernel's chunks: lane j's row ends STAGGER * j tokens before a chunk's end
    lengths = np.array([0, 1, C - 1, C, C + 1, C - STAGGER, C - 2 * STAGGER + 1, 2 * C - 3 * STAGGER, 2 * C + 5])
    B, T = len(lengths), int(lengths.max())
    mask = np.arange(T)[None, :] < lengths[:, None]
    r, v = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    lp = -rng.exponential(size=(B, T))
    for mode in ("skip", "zero"):
        ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, mask_mode=mode, critic_lam=1.0,
                                 backend="reference")
        out = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, mask_mode=mode, critic_lam=1.0,
                                 backend=backend)
        assert_same(out, ref, np.float64)


@pytest.mark.parametrize("kw", [
    {"estimator": "sae", "threshold": 0.3},
    {"estimator": "sae", "boundary": "entropy", "entropy_threshold": 0.8, "mask_mode": "zero"},
    {"estimator": "sae", "boundary": "given", "critic_lam": 1.0},
    {"estimator": "gae", "lam": 0.9, "critic_lam": 0.97, "mask_mode": "zero"},
    {"estimator": "vapo", "gamma": 0.99},
    {"estimator": "mc"},
])
@pytest.mark.parametrize("gaps", [False, True])
def test_a_batch_gives_each_row_what_the_row_alone_gives(kw, gaps):
    """The numba kernel scans a batch's rows four lanes at a time, their chunk ends staggered, and
    reads right-padded chunks unmasked and others with the mask; a row scanned alone is one lane,
    its chunks cut elsewhere. Both give the same bits, for every kind of optional input (rule data,
    given boundaries, a decoupled critic, zero mode), with right padding and with gaps."""
    rng = np.random.default_rng(5)
    B, T = 6, 2 * C + 700  # interior chunks of equal width, edges of unequal
    mask = np.arange(T)[None, :] < np.array([[T], [T], [T - 5], [T - 900], [C + 3], [T]])
    if gaps:
        mask &= rng.random((B, T)) > 0.1
    r, v = rng.normal(size=(B, T)).astype(np.float32), rng.normal(size=(B, T)).astype(np.float32)
    data = {"logprobs": -rng.exponential(size=(B, T)).astype(np.float32),
            "entropy": rng.exponential(size=(B, T)).astype(np.float32),
            "given_boundaries": rng.random((B, T)) < 0.05}
    kw = dict(kw)
    if kw["estimator"] == "sae":
        kw[{"entropy": "entropy", "given": "given_boundaries"}.get(kw.get("boundary"), "logprobs")] = \
            data[{"entropy": "entropy", "given": "given_boundaries"}.get(kw.get("boundary"), "logprobs")]
    batch = compute_advantages(r, v, mask, backend="numba", **kw)
    for i in range(B):
        alone = compute_advantages(r[i:i + 1], v[i:i + 1], mask[i:i + 1], backend="numba",
                                   **{k: x[i:i + 1] if isinstance(x, np.ndarray) else x for k, x in kw.items()})
        for got, want in zip(batch, alone):
            assert_array_equal(got[i], want[0])


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"])
@pytest.mark.parametrize("entries, k", [
    ([1, 1, 1], 3), ([1, 1, 0, 0], 2), ([0, 0], 0), ([1], 1), ([0], 0),  # valid tokens, then padding
    ([1, 0, 1], -1), ([0, 1], -1), ([1, 0, 0, 1], -1),  # a gap
    ([1, 2, 0], -1), ([2, 0], -1), ([1, 0, 3], -1), ([1, 1, 255], -1),  # an entry neither 0 nor 1
])
def test_dense_prefix_accepts_valid_tokens_then_padding_and_nothing_else(dtype, entries, k):
    """The numba kernel reads a chunk as unmasked (plus padding) only when its mask is k entries of
    exactly 1 and then zeros; anything else goes through the masked loop, which names a bad entry."""
    from sae_core.kernels.numba_prepare import dense_prefix
    from sae_core.kernels.numba_scan import mask_bits

    if dtype == "bool" and max(entries) > 1:
        pytest.skip("a bool mask holds only 0 and 1")
    mask = np.array(entries).astype(dtype)
    assert dense_prefix(*mask_bits(mask)) == k


@pytest.mark.parametrize("entries, k", [
    ([1.0, -0.0, 0.0], 1), ([-0.0], 0),  # -0.0 is 0
    ([1.0, 0.5], -1), ([-1.0, 0.0], -1), ([1.0, float("nan")], -1), ([float("inf")], -1),
])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dense_prefix_reads_float_masks_by_value(dtype, entries, k):
    from sae_core.kernels.numba_prepare import dense_prefix
    from sae_core.kernels.numba_scan import mask_bits

    assert dense_prefix(*mask_bits(np.array(entries, dtype=dtype))) == k


@pytest.mark.parametrize("rule", [None, "score", "given", "factors"])
@pytest.mark.parametrize("critic", [False, True])
@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("k", [0, 1, 37, 100])
def test_a_dense_chunk_read_unmasked_gives_the_masked_reads_bits(rule, critic, zero, k):
    """Pass 1 of a chunk of k valid tokens and then padding, as the kernel does it (`prepare` without
    the mask on the valid tokens, then `pad` in skip mode or the masked `prepare` on the padding in
    zero mode), writes the same e, f, boundaries (and the critic's e, f) to the bit as the masked
    `prepare` over the whole chunk, which finds the chunk right-padded."""
    from sae_core.kernels.numba_prepare import pad, prepare
    from sae_core.kernels.numba_scan import mask_bits

    rng = np.random.default_rng(k)
    w = 100
    r, v = rng.normal(size=w).astype(np.float32), rng.normal(size=w)  # float32 rewards, float64 values
    bits, keep, one = mask_bits(np.arange(w) < k)
    score = -rng.exponential(size=w).astype(np.float32) if rule == "score" else None
    given = rng.random(w) < 0.2 if rule == "given" else None
    factors = rng.uniform(0.5, 1.0, size=w) if rule == "factors" else None
    args = (np.log(0.2), 0.95, 0.99, 0.97 * 0.99 if critic else None, True if zero else None)  # cut, lam, gamma, ...

    def outputs():
        return [np.full(w, 7, dtype=np.bool_)] + [np.full(w, np.nan) for _ in range(4)]

    want = outputs()
    assert prepare(r, v, bits, keep, one, score, 1.0, args[0], given, factors, *args[1:], *want) == k
    got = outputs()

    def cut(x, a, b):
        return None if x is None else x[a:b]

    prepare(r[:k], v[:k], None, keep, one, cut(score, 0, k), 1.0, args[0], cut(given, 0, k), cut(factors, 0, k),
            *args[1:], *[x[:k] for x in got])
    if zero:
        prepare(r[k:], v[k:], bits[k:], keep, one, cut(score, k, w), 1.0, args[0], cut(given, k, w),
                cut(factors, k, w), *args[1:], *[x[k:] for x in got])
    else:
        pad(*[x[k:] for x in got], args[3])
    if rule in (None, "factors"):  # no boundary rule: `prepare` leaves the boundaries alone (all False in the
        # kernel), `pad` clears them
        got[0][:], want[0][:] = False, False
    if not critic:  # the critic's e and f are not written
        got[3][:], got[4][:], want[3][:], want[4][:] = 0.0, 0.0, 0.0, 0.0
    for g, x in zip(got, want):
        assert_array_equal(g, x)
