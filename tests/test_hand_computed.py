"""Small cases worked out by hand (the arithmetic is in the comments), run on every backend."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from helpers import backends
from sae_core import compute_advantages

BACKENDS = backends()

# Three valid tokens, gamma = 0.5, lam = 0.5, an outcome reward on the last token.
R3 = np.array([[0.0, 0.0, 1.0]])
V3 = np.array([[0.5, 0.1, 0.3]])
# delta_2 = 1 - 0.3 = 0.7                      A_2 = 0.7
# delta_1 = 0 + 0.5 * 0.3 - 0.1 = 0.05          A_1 = 0.05 + 0.25 * 0.7 = 0.225
# delta_0 = 0 + 0.5 * 0.1 - 0.5 = -0.45         A_0 = -0.45 + 0.25 * 0.225 = -0.39375
GAE3 = np.array([[-0.39375, 0.225, 0.7]])
# lambda = 1: A_1 = 0.05 + 0.5 * 0.7 = 0.4, A_0 = -0.45 + 0.5 * 0.4 = -0.25
# (the discounted reward-to-go minus V: 0.25 - 0.5, 0.5 - 0.1, 1 - 0.3)
MC3 = np.array([[-0.25, 0.4, 0.7]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gae(backend):
    out = compute_advantages(R3, V3, np.ones((1, 3)), estimator="gae", gamma=0.5, lam=0.5, backend=backend)
    assert_allclose(out.advantages, GAE3, atol=1e-12)
    assert_allclose(out.returns, GAE3 + V3, atol=1e-12)
    assert not out.boundaries.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mc(backend):
    out = compute_advantages(R3, V3, np.ones((1, 3)), estimator="mc", gamma=0.5, backend=backend)
    assert_allclose(out.advantages, MC3, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoupled_critic_target(backend):
    # actor at lam = 0.5, critic target at lambda 1: R = MC advantages + V
    out = compute_advantages(R3, V3, np.ones((1, 3)), estimator="gae", gamma=0.5, lam=0.5, critic_lam=1.0,
                             backend=backend)
    assert_allclose(out.advantages, GAE3, atol=1e-12)
    assert_allclose(out.returns, MC3 + V3, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sae_bootstraps_only_at_the_boundary(backend):
    # gamma = 1, lam = 0.5; token 2 has p = e^-3 < 0.2, so segments are [0, 1] and [2, 3].
    # lambda_t = lam only where next(t) = 2 starts a segment, i.e. lambda_1 = 0.5, else 1.
    rewards = np.array([[0.0, 0.0, 0.0, 1.0]])
    values = np.array([[0.5, 0.7, 0.2, 0.4]])
    logprobs = np.array([[-0.1, -0.1, -3.0, -0.1]])
    # A_3 = 1 - 0.4 = 0.6
    # A_2 = (0 + 0.4 - 0.2) + 1 * 0.6 = 0.8
    # A_1 = (0 + 0.2 - 0.7) + 0.5 * 0.8 = -0.1
    # A_0 = (0 + 0.7 - 0.5) + 1 * (-0.1) = 0.1
    out = compute_advantages(rewards, values, np.ones((1, 4)), estimator="sae", logprobs=logprobs, gamma=1.0,
                             lam=0.5, threshold=0.2, backend=backend)
    assert_allclose(out.advantages, [[0.1, -0.1, 0.8, 0.6]], atol=1e-12)
    assert_array_equal(out.boundaries, [[False, False, True, False]])


# The three tokens of R3/V3 with an interior gap at position 1 holding garbage.
RG = np.array([[0.0, 9.0, 0.0, 1.0]])
VG = np.array([[0.5, 9.0, 0.1, 0.3]])
MG = np.array([[1, 0, 1, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_mode_jumps_over_the_gap(backend):
    # veRL: the masked token is transparent, so the valid tokens see exactly the R3/V3 problem.
    out = compute_advantages(RG, VG, MG, estimator="gae", gamma=0.5, lam=0.5, mask_mode="skip", backend=backend)
    assert_allclose(out.advantages, [[-0.39375, 0.0, 0.225, 0.7]], atol=1e-12)
    assert_allclose(out.returns, [[-0.39375 + 0.5, 0.0, 0.325, 1.0]], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_mode_steps_through_the_gap(backend):
    # OpenRLHF: the masked token takes part with r = V = 0.
    # A_3 = 0.7, A_2 = 0.225 (as before)
    # A_1 = (0 + 0.5 * 0.1 - 0) + 0.25 * 0.225 = 0.10625
    # A_0 = (0 + 0.5 * 0 - 0.5) + 0.25 * 0.10625 = -0.4734375
    out = compute_advantages(RG, VG, MG, estimator="gae", gamma=0.5, lam=0.5, mask_mode="zero", backend=backend)
    expected = np.array([[-0.4734375, 0.10625, 0.225, 0.7]])
    assert_allclose(out.advantages, expected, atol=1e-12)
    assert_allclose(out.returns, expected + [[0.5, 0.0, 0.1, 0.3]], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vapo_length_adaptive_lambda(backend):
    # L = 3 valid tokens, alpha = 2/3: lambda = 1 - 1 / (alpha * L) = 0.5, i.e. GAE3.
    out = compute_advantages(R3, V3, np.ones((1, 3)), estimator="vapo", alpha=2.0 / 3.0, gamma=0.5,
                             backend=backend)
    assert_allclose(out.advantages, GAE3, atol=1e-12)
    # alpha * L < 1 clamps lambda to 0: A_t = delta_t
    out = compute_advantages(R3, V3, np.ones((1, 3)), estimator="vapo", alpha=0.05, gamma=0.5, backend=backend)
    assert_allclose(out.advantages, [[-0.45, 0.05, 0.7]], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_boundary_rules(backend):
    z = np.zeros((1, 6))
    m = np.array([[1, 1, 0, 1, 1, 1]])

    def bnd(**kw):
        return compute_advantages(z, z, kw.pop("mask", m), estimator="sae", backend=backend, **kw).boundaries

    # fixed M = 2 counts valid tokens: k = 0, 1, -, 2, 3, 4 -> boundaries where k is even
    assert_array_equal(bnd(segment_length=2), [[1, 0, 0, 1, 0, 1]])
    # delimiter 10: the valid token after a delimiter starts a segment (position 2 is masked)
    ids = np.array([[5, 10, 99, 7, 10, 3]])
    assert_array_equal(bnd(delimiter_ids=[10], response_ids=ids), [[0, 0, 0, 1, 0, 1]])
    # quantile 0.5 of the valid log-probs (-1, -2, -4, -5, -6) is -4: below it are -5, -6
    lp = np.array([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]])
    assert_array_equal(bnd(quantile=0.5, logprobs=lp), [[0, 0, 0, 0, 1, 1]])
    # probability threshold: l_t < log(0.2) = -1.609...
    assert_array_equal(bnd(logprobs=lp, threshold=0.2), [[0, 1, 0, 1, 1, 1]])
    assert_array_equal(bnd(logprobs=lp, threshold=math.exp(-4.0) * 1.0000001), [[0, 0, 0, 1, 1, 1]])
    assert_array_equal(bnd(logprobs=lp, threshold=math.exp(-4.0) * 0.9999999), [[0, 0, 0, 0, 1, 1]])
    # entropy above 1.0
    ent = np.array([[0.5, 1.5, 9.0, 1.0, 2.0, 0.0]])
    assert_array_equal(bnd(entropy=ent, entropy_threshold=1.0), [[0, 1, 0, 0, 1, 0]])
    # boundaries given by the caller, never on a masked token
    given = np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)
    assert_array_equal(bnd(given_boundaries=given), [[1, 0, 0, 0, 0, 1]])
