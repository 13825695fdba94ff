"""The estimator lab's processes: exact values and occupancies from dynamic programming agree with
sampling; the exact policy gradient agrees with finite differences of the exact expected reward and
with a Monte Carlo (REINFORCE) estimate that never reads the dynamic programme; with the exact
critic the estimators theory calls unbiased are; seeds reproduce."""

import math

import numpy as np
import pytest

from sae_core import compute_advantages_ragged
from sae_core.lab import gradient, process

SMALL = {kind: process.ProcessConfig(kind=kind, min_length=30, max_length=40, decision_rate=0.15, fork_rate=0.2,
                                     slip_rate=0.05, harmful_slip_share=0.5, recovery=0.3, label_noise=0.1)
         for kind in process.KINDS}


@pytest.mark.parametrize("kind", process.KINDS)
def test_dp_values_and_occupancy_match_sampling(kind):
    tasks = process.make_tasks(SMALL[kind], 1, seed=7)
    n = 20000
    r = process.rollout(tasks, n, np.random.default_rng(0))
    s = process.solve(tasks[0])
    J = s.expected_reward
    assert abs(r.reward.mean() - J) < 4 * math.sqrt(J * (1 - J) / n)
    z = r.state.reshape(n, -1).astype(float)  # [n, T]: z before each token
    occ = s.occupancy[:-1, 1]
    se = np.sqrt(np.maximum(occ * (1 - occ), 1e-4) / n)
    assert (np.abs(z.mean(0) - occ) < 4.5 * se).all()
    # responses in the same hidden state at t have the reward rate V[t, z]
    t = tasks[0].length // 2
    for state in (0, 1):
        group = r.reward[r.state.reshape(n, -1)[:, t] == state]
        if group.size > 500:
            v = s.values[t, state]
            assert abs(group.mean() - v) < 4 * math.sqrt(max(v * (1 - v), 1e-4) / group.size)


@pytest.mark.parametrize("kind", process.KINDS)
def test_exact_gradient_matches_finite_differences(kind):
    task = process.make_tasks(SMALL[kind], 1, seed=3)[0]
    g = process.exact_gradient(task)
    J0 = process.solve(task).expected_reward
    eps = 1e-6
    for t in range(0, task.length, 3):
        for k in range(process.K):
            if not np.isfinite(task.logits[t, k]):
                assert g[t, k] == 0
                continue
            logits = task.logits.copy()
            logits[t, k] += eps
            fd = (process.solve(task, process.softmax(logits)).expected_reward - J0) / eps
            assert abs(fd - g[t, k]) < 1e-6 * max(1.0, abs(g[t, k])) + 1e-7, (t, k)


@pytest.mark.parametrize("kind", process.KINDS)
def test_exact_gradient_matches_a_monte_carlo_estimate_within_its_interval(kind):
    """REINFORCE from sampled rewards alone, g_hat = mean_i R_i sum_t (1[a_it = k] - p[t, k]), is unbiased
    and reads nothing of the dynamic programme; its per-response terms give the interval."""
    tasks = process.make_tasks(SMALL[kind], 1, seed=5)
    n = 40000
    r = process.rollout(tasks, n, np.random.default_rng(1))
    T = tasks[0].length
    p = tasks[0].probs
    onehot = np.zeros((n, T, process.K))
    np.put_along_axis(onehot, r.options.reshape(n, T, 1).astype(np.int64), 1.0, axis=2)
    terms = (r.reward - r.reward.mean())[:, None, None] * (onehot - p[None])  # a baseline keeps it unbiased
    est, se = terms.mean(0), terms.std(0, ddof=1) / math.sqrt(n)
    g = process.exact_gradient(tasks[0])
    # the projections on the exact direction and on a fixed random one, each within its interval
    rng = np.random.default_rng(0)
    for d in (g / np.linalg.norm(g), rng.normal(size=g.shape)):
        proj = (terms * d[None]).sum((1, 2))
        assert abs(proj.mean() - float((g * d).sum())) < 4 * proj.std(ddof=1) / math.sqrt(n)
    big = np.abs(g) > 5 * se
    assert big.sum() >= 5  # the check below is about components the estimate resolves
    z = (est - g)[se > 0] / se[se > 0]
    assert np.abs(z).max() < 5.5 and 0.6 < z.std() < 1.4


@pytest.mark.parametrize("kind", process.KINDS)
def test_batch_gradient_with_exact_advantages_is_unbiased(kind):
    r = process.rollout(process.make_tasks(SMALL[kind], 3, seed=2), 4000, np.random.default_rng(4))
    exact = gradient.exact(r)
    est = gradient.batch(r, r.true_advantages)
    assert gradient.cosine(est, exact) > 0.995
    # a one-token shift of the advantages breaks it
    shifted = np.roll(r.true_advantages, 1)
    assert gradient.cosine(gradient.batch(r, shifted), exact) < 0.9


def test_batch_gradient_rejects_a_wrong_shape():
    r = process.sample(SMALL["absorbing"], 1, 2, seed=0)
    with pytest.raises(ValueError, match="advantages: shape"):
        gradient.batch(r, r.true_advantages[:-1])


@pytest.mark.parametrize("kind", process.KINDS)
def test_exact_advantages_telescope_to_the_terminal_value(kind):
    # with recoveries the transitions are random and the sum telescopes only in expectation; without
    # them every option's effect is deterministic and it telescopes exactly
    cfg = process.ProcessConfig(kind=kind, min_length=30, max_length=40, decision_rate=0.15, slip_rate=0.05)
    r = process.sample(cfg, 3, 50, seed=1)
    sums = np.add.reduceat(r.true_advantages, r.offsets[:-1])
    first = r.true_values[r.offsets[:-1]]
    last = r.true_values[r.offsets[1:] - 1] + r.true_advantages[r.offsets[1:] - 1]
    np.testing.assert_allclose(sums, last - first, atol=1e-12)
    assert set(np.round(last, 12)) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs", [{"estimator": "mc"}, {"estimator": "gae", "lam": 0.9},
                                    {"estimator": "gae", "lam": 0.95}, {"estimator": "vapo"}])
def test_with_the_exact_critic_gae_mc_vapo_are_unbiased(kwargs):
    """E[A_hat_t - A_t] = 0 when V is exact and lambda does not depend on the actions. Per-response mean
    errors are independent across responses; their mean must be within 4 standard errors of 0."""
    r = process.sample(SMALL["absorbing"], tasks=20, samples=200, seed=3)
    out = compute_advantages_ragged(r.rewards, r.true_values.astype(np.float32), r.offsets, **kwargs)
    err = np.add.reduceat(out.advantages - r.true_advantages, r.offsets[:-1]) / np.diff(r.offsets)
    assert abs(err.mean()) < 4 * err.std(ddof=1) / math.sqrt(err.size)


def test_seeds_reproduce():
    cfg = SMALL["overwrite"]
    a, b = process.sample(cfg, 2, 5, seed=11), process.sample(cfg, 2, 5, seed=11)
    for f in ("offsets", "logprobs", "true_advantages", "reward", "state"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert not np.array_equal(a.logprobs, process.sample(cfg, 2, 5, seed=12).logprobs)


def test_knobs_do_what_they_say():
    base = dict(min_length=400, max_length=400, decision_rate=0.05)
    rare = process.sample(process.ProcessConfig(**base, alignment=1.0, fork_rate=0.0), 8, 4, seed=0)
    common = process.sample(process.ProcessConfig(**base, alignment=0.0, fork_rate=0.0), 8, 4, seed=0)
    wrong = lambda r: (r.true_advantages < -1e-9) & r.decision  # noqa: E731 - a wrong option at a decision
    assert (rare.logprobs[wrong(rare)] < math.log(0.2)).all()
    assert (common.logprobs[wrong(common)] >= math.log(0.2)).all()
    # forks add harmless tokens of moderate probability: the threshold changes the boundary rate
    forks = process.sample(process.ProcessConfig(**base, fork_rate=0.3), 8, 4, seed=0)
    rates = [(forks.logprobs < math.log(p)).mean() for p in (0.05, 0.2, 0.5)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > 2 * rates[0]
    # routine options are above 0.98 or below 0.0072 here: between lie only the forks' harmless options
    fork = ~forks.decision & (forks.logprobs > math.log(0.02)) & (forks.logprobs < math.log(0.98))
    assert fork.mean() > 0.05 and np.all(np.abs(forks.true_advantages[fork]) < 1e-12)
    # shuffling moves the routine option away from index 0 without changing the solution's values
    plain = process.make_tasks(process.ProcessConfig(**base), 1, seed=4)[0]
    shuffled = process.make_tasks(process.ProcessConfig(**base, shuffle=True), 1, seed=4)[0]
    assert (shuffled.probs.argmax(1) != 0).mean() > 0.5 and (plain.probs.argmax(1) == 0).mean() > 0.9
    np.testing.assert_allclose(process.solve(shuffled).values, process.solve(plain).values, atol=1e-12)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="kind"):
        process.ProcessConfig(kind="sticky")
    with pytest.raises(ValueError, match="alignment"):
        process.ProcessConfig(alignment=1.5)
    with pytest.raises(ValueError, match="unknown process key"):
        process.ProcessConfig.from_dict({"lenght": 3})
