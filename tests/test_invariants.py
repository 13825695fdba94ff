"""Properties every estimator must have, checked on every backend."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from helpers import backends, batches, estimator_kwargs, tolerance, unit
from sae_core import compute_advantages, compute_advantages_ragged

BACKENDS = backends(triton_too=False)


def has_interior_gaps(mask):
    """Whether any row has a masked token before a valid one."""
    later_valid = np.flip(np.logical_or.accumulate(np.flip(mask, axis=1), axis=1), axis=1)
    return bool((~mask[:, :-1] & later_valid[:, 1:]).any()) if mask.shape[1] > 1 else False


def run(batch, backend, **kw):
    return compute_advantages(batch.rewards, batch.values, batch.mask, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@given(batch=batches(), gamma=unit, lam=unit, mode=st.sampled_from(["skip", "zero"]))
def test_sae_with_every_token_a_boundary_is_gae(backend, batch, gamma, lam, mode):
    # threshold 1: l_t < log(1) = 0 holds for every (strictly negative) log-prob. Masked tokens are
    # never boundaries, so in zero mode an interior gap sits inside a segment (lambda 1 through
    # it, and its V = 0 steps cancel) where GAE applies lam at each of its steps: no equality there.
    if mode == "zero":
        assume(not has_interior_gaps(batch.mask))
    sae = run(batch, backend, estimator="sae", logprobs=batch.logprobs, threshold=1.0, gamma=gamma, lam=lam,
              mask_mode=mode)
    gae = run(batch, backend, estimator="gae", gamma=gamma, lam=lam, mask_mode=mode)
    assert_array_equal(sae.advantages, gae.advantages)
    assert_array_equal(sae.returns, gae.returns)
    assert_array_equal(sae.boundaries, batch.mask)


@pytest.mark.parametrize("backend", BACKENDS)
@given(batch=batches(), gamma=unit, lam=unit, mode=st.sampled_from(["skip", "zero"]))
def test_sae_with_no_boundary_is_mc(backend, batch, gamma, lam, mode):
    assume(np.all(batch.logprobs > -600))
    sae = run(batch, backend, estimator="sae", logprobs=batch.logprobs, threshold=1e-300, gamma=gamma, lam=lam,
              mask_mode=mode)
    mc = run(batch, backend, estimator="mc", gamma=gamma, mask_mode=mode)
    assert_array_equal(sae.advantages, mc.advantages)
    assert not sae.boundaries.any()


@pytest.mark.parametrize("backend", BACKENDS)
@given(batch=batches(dtype=np.float64), gamma=unit)
def test_mc_is_discounted_reward_to_go_minus_value(backend, batch, gamma):
    out = run(batch, backend, estimator="mc", gamma=gamma)
    for i in range(batch.shape[0]):
        valid = np.flatnonzero(batch.mask[i])
        r, v = batch.rewards[i, valid], batch.values[i, valid]
        to_go = np.zeros(len(valid))
        acc = 0.0
        for k in range(len(valid) - 1, -1, -1):  # one discount per valid step: masked tokens are transparent
            acc = r[k] + gamma * acc
            to_go[k] = acc
        assert_allclose(out.advantages[i, valid], to_go - v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_returns_are_advantages_plus_values(backend, data):
    batch = data.draw(batches())
    kw = data.draw(estimator_kwargs(batch))
    kw["critic_lam"] = None
    out = run(batch, backend, **kw)
    m = batch.mask
    expected = out.advantages.astype(np.float64) + batch.values
    assert_allclose(out.returns[m], expected[m], **tolerance(batch.rewards.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_decoupled_returns_are_gae_at_critic_lambda_plus_values(backend, data):
    batch = data.draw(batches())
    kw = data.draw(estimator_kwargs(batch))
    kw["critic_lam"] = critic_lam = data.draw(unit)
    out = run(batch, backend, **kw)
    critic = run(batch, backend, estimator="gae", gamma=kw["gamma"], lam=critic_lam, mask_mode=kw["mask_mode"])
    assert_allclose(out.returns, critic.returns, **tolerance(batch.rewards.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_masked_inputs_do_not_matter(backend, data):
    """Whatever sits at masked positions (NaN included) changes no output, in both mask modes."""
    batch = data.draw(batches())
    kw = data.draw(estimator_kwargs(batch))
    out = run(batch, backend, **kw)
    hidden = ~batch.mask
    garbage = data.draw(st.sampled_from([np.nan, np.inf, -1e30, 7.0]))
    batch.rewards[hidden] = garbage
    batch.values[hidden] = garbage
    for name in ("logprobs", "entropy"):
        if name in kw:
            kw[name] = kw[name].copy()
            kw[name][hidden] = garbage
    if "response_ids" in kw:
        kw["response_ids"] = np.where(hidden, 0, kw["response_ids"])
    again = run(batch, backend, **kw)
    assert_array_equal(again.advantages, out.advantages)
    assert_array_equal(again.returns, out.returns)
    assert_array_equal(again.boundaries, out.boundaries)
    if kw["mask_mode"] == "skip":
        assert not out.advantages[hidden].any() and not out.returns[hidden].any()
    assert not out.boundaries[hidden].any()


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_skip_mode_equals_dropping_the_masked_tokens(backend, data):
    """Transparency: removing masked tokens (ragged rows of valid tokens only) changes nothing."""
    batch = data.draw(batches(dtype=np.float64))
    kw = data.draw(estimator_kwargs(batch))
    kw["mask_mode"] = "skip"
    out = run(batch, backend, **kw)
    m = batch.mask
    offsets = np.concatenate([[0], np.cumsum(m.sum(axis=1))]).astype(np.int64)
    flat = {k: v[m] if isinstance(v, np.ndarray) and v.ndim == 2 else v for k, v in kw.items()}
    compact = compute_advantages_ragged(batch.rewards[m], batch.values[m], offsets, backend=backend, **flat)
    assert_allclose(compact.advantages, out.advantages[m], rtol=1e-12, atol=1e-12)
    assert_allclose(compact.returns, out.returns[m], rtol=1e-12, atol=1e-12)
    assert_array_equal(compact.boundaries, out.boundaries[m])


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_mask_modes_agree_on_right_padded_data(backend, data):
    batch = data.draw(batches(mask_kind="right_padded"))
    kw = data.draw(estimator_kwargs(batch))
    kw["mask_mode"] = "skip"
    skip = run(batch, backend, **kw)
    kw["mask_mode"] = "zero"
    zero = run(batch, backend, **kw)
    assert_allclose(zero.advantages, skip.advantages, **tolerance(batch.rewards.dtype))
    assert_allclose(zero.returns, skip.returns, **tolerance(batch.rewards.dtype))
    assert_array_equal(zero.boundaries, skip.boundaries)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data(), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_linear_in_rewards_and_values(backend, data, a, b):
    """Boundaries do not depend on r or V, so A and R are linear in (r, V) jointly."""
    one = data.draw(batches(dtype=np.float64))
    kw = data.draw(estimator_kwargs(one))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    r2, v2 = rng.normal(size=one.shape), rng.normal(size=one.shape)
    x = compute_advantages(one.rewards, one.values, one.mask, backend=backend, **kw)
    y = compute_advantages(r2, v2, one.mask, backend=backend, **kw)
    z = compute_advantages(a * one.rewards + b * r2, a * one.values + b * v2, one.mask, backend=backend, **kw)
    scale = 1.0 + np.abs(x.advantages).max(initial=0) + np.abs(y.advantages).max(initial=0)
    assert_allclose(z.advantages, a * x.advantages + b * y.advantages, rtol=1e-9, atol=1e-9 * scale)
    assert_allclose(z.returns, a * x.returns + b * y.returns, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_padded_and_ragged_layouts_agree(backend, data):
    batch = data.draw(batches())
    kw = data.draw(estimator_kwargs(batch))
    out = run(batch, backend, **kw)
    B, T = batch.shape
    offsets = np.arange(B + 1, dtype=np.int64) * T
    flat = {k: v.reshape(-1) if isinstance(v, np.ndarray) and v.ndim == 2 else v for k, v in kw.items()}
    rag = compute_advantages_ragged(batch.rewards.reshape(-1), batch.values.reshape(-1), offsets,
                                    response_mask=batch.mask.reshape(-1), backend=backend, **flat)
    assert_array_equal(rag.advantages, out.advantages.reshape(-1))
    assert_array_equal(rag.returns, out.returns.reshape(-1))
    assert_array_equal(rag.boundaries, out.boundaries.reshape(-1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["gae", "mc", "sae", "vapo"])
@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_empty_and_all_masked_rows(backend, estimator, mode):
    opts = {"logprobs": np.full((3, 4), -1.0)} if estimator == "sae" else {}
    r = np.ones((3, 4))
    out = compute_advantages(r, r, np.zeros((3, 4)), estimator=estimator, mask_mode=mode, backend=backend, **opts)
    assert not out.advantages.any() and not out.returns.any() and not out.boundaries.any()
    for shape in [(0, 4), (3, 0), (0, 0)]:
        z = np.zeros(shape)
        out = compute_advantages(z, z, z, estimator=estimator, mask_mode=mode, backend=backend,
                                 **({"logprobs": z} if estimator == "sae" else {}))
        assert out.advantages.shape == out.returns.shape == out.boundaries.shape == shape
    # ragged: zero-length rows between others, and no rows at all
    offsets = np.array([0, 0, 3, 3, 5], dtype=np.int64)
    flat = np.ones(5)
    lp = {"logprobs": np.full(5, -1.0)} if estimator == "sae" else {}
    out = compute_advantages_ragged(flat, flat * 0.5, offsets, estimator=estimator, mask_mode=mode,
                                    backend=backend, **lp)
    ref = compute_advantages_ragged(flat[[0, 1, 2]], flat[[0, 1, 2]] * 0.5, np.array([0, 3]), estimator=estimator,
                                    mask_mode=mode, backend="reference", **({"logprobs": lp["logprobs"][:3]} if lp else {}))
    assert_allclose(out.advantages[:3], ref.advantages)
    none = compute_advantages_ragged(np.zeros(0), np.zeros(0), np.array([0]), estimator=estimator,
                                     backend=backend, **({"logprobs": np.zeros(0)} if lp else {}))
    assert none.advantages.shape == (0,)
