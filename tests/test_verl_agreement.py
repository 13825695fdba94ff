"""mask_mode="skip" reproduces veRL 0.9.1's own GAE (the installed package), and masked_whiten
reproduces veRL's whitening.

The dev environment installs verl, and `./dev test` sets SAE_REQUIRE_FRAMEWORKS=1 so that a
missing verl fails here instead of skipping.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from helpers import batches, unit
from sae_core import compute_advantages, masked_whiten

torch = pytest.importorskip("torch")
if os.environ.get("SAE_REQUIRE_FRAMEWORKS"):
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional as verl_F
else:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    verl_F = pytest.importorskip("verl.utils.torch_functional")


def verl_gae(rewards, values, mask, gamma, lam, whiten=True):
    """veRL's compute_gae_advantage_return; whiten=False swaps its final masked_whiten for identity."""
    args = (torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(mask.astype(np.int64)),
            gamma, lam)
    if whiten:
        return core_algos.compute_gae_advantage_return(*args)
    original = verl_F.masked_whiten
    verl_F.masked_whiten = lambda values, mask, shift_mean=True: values
    try:
        return core_algos.compute_gae_advantage_return(*args)
    finally:
        verl_F.masked_whiten = original


@given(batch=batches(dtype=np.float32, max_b=6, max_t=60, min_t=1), gamma=unit, lam=unit)
def test_gae_before_whitening_matches_verl(batch, gamma, lam):
    """Right padding, interior gaps, full and all-masked rows (the strategy draws each)."""
    adv, ret = verl_gae(batch.rewards, batch.values, batch.mask, gamma, lam, whiten=False)
    ours = compute_advantages(batch.rewards, batch.values, batch.mask, estimator="gae", gamma=gamma, lam=lam,
                              mask_mode="skip")
    m = batch.mask
    assert_allclose(ours.advantages[m], adv.numpy()[m], rtol=1e-5, atol=1e-5)
    assert_allclose(ours.returns[m], ret.numpy()[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["right_padded", "gaps"])
@settings(max_examples=25)
@given(data=st.data())
def test_gae_with_whitening_matches_verl(kind, data):
    batch = data.draw(batches(dtype=np.float32, max_b=6, max_t=60, mask_kind=kind, min_t=1).filter(
        lambda b: b.mask.sum() >= 2))
    gamma, lam = data.draw(unit), data.draw(unit)
    adv, ret = verl_gae(batch.rewards, batch.values, batch.mask, gamma, lam)
    mask = torch.from_numpy(batch.mask.astype(np.int64))
    ours = compute_advantages(torch.from_numpy(batch.rewards), torch.from_numpy(batch.values), mask,
                              estimator="gae", gamma=gamma, lam=lam)
    whitened = masked_whiten(ours.advantages, mask)
    m = batch.mask
    assert_allclose(whitened.numpy()[m], adv.numpy()[m], rtol=1e-4, atol=1e-4)
    assert_allclose(ours.returns.numpy()[m], ret.numpy()[m], rtol=1e-5, atol=1e-5)


def test_long_rows_match_verl():
    rng = np.random.default_rng(0)
    B, T = 4, 3000
    lengths = np.array([3000, 2500, 1, 2049])
    mask = np.arange(T)[None, :] < lengths[:, None]
    mask[0, 100:400] = False  # a tool-output gap
    rewards = np.zeros((B, T), dtype=np.float32)
    rewards[np.arange(B), lengths - 1] = 1.0
    values = rng.uniform(0, 1, size=(B, T)).astype(np.float32)
    adv, ret = verl_gae(rewards, values, mask, 1.0, 0.95, whiten=False)
    ours = compute_advantages(rewards, values, mask, estimator="gae", gamma=1.0, lam=0.95)
    # veRL accumulates in float32 over thousands of steps, we in float64
    assert_allclose(ours.advantages[mask], adv.numpy()[mask], rtol=1e-4, atol=1e-4)
    assert_allclose(ours.returns[mask], ret.numpy()[mask], rtol=1e-4, atol=1e-4)


@given(batch=batches(dtype=np.float32, max_b=6, max_t=50, min_t=1))
def test_masked_whiten_is_verls(batch):
    values = torch.from_numpy(batch.values)
    mask = torch.from_numpy(batch.mask.astype(np.int64))
    if batch.mask.sum() < 2:
        with pytest.raises(ValueError):
            verl_F.masked_whiten(values, mask)
        with pytest.raises(ValueError, match="at least two"):
            masked_whiten(values, mask)
        return
    for shift_mean in (True, False):
        expected = verl_F.masked_whiten(values, mask, shift_mean=shift_mean)
        # same ops in the same order: bitwise equal on torch tensors
        assert torch.equal(masked_whiten(values, mask, shift_mean=shift_mean), expected)
        # numpy path: statistics in float64
        got = masked_whiten(batch.values, batch.mask, shift_mean=shift_mean)
        assert got.dtype == np.float32
        assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_masked_whiten_takes_lists():
    assert masked_whiten([1.0, 2.0, 3.0], [1, 1, 0]).tolist() == masked_whiten(np.array([1.0, 2.0, 3.0]),
                                                                                np.array([1, 1, 0])).tolist()
