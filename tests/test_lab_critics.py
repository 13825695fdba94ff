"""The lab's critics: hand-made ones do what they claim, learned ones are judged out of sample, and the
closed loop's PPO gradient and learning work."""

import numpy as np
import pytest

from sae_core.api import compute_advantages_ragged
from sae_core.lab import closed_loop, critics, gradient, learned, process

SMALL = process.ProcessConfig(kind="absorbing", min_length=40, max_length=60, decision_rate=0.05, fork_rate=0.05,
                              slip_rate=0.02, harmful_slip_share=0.3)


@pytest.fixture(scope="module")
def small():
    return process.rollout(process.make_tasks(SMALL, 4, seed=3), 16, np.random.default_rng(0))


def test_exact_and_late_zero(small):
    np.testing.assert_array_equal(critics.exact(small), small.true_values.astype(np.float32))
    np.testing.assert_array_equal(critics.late(small, 0), critics.exact(small))
    assert (small.state == 0).any(), "the fixture must contain broken answers"


def test_late_reads_the_state_k_tokens_back(small):
    k = 5
    got = critics.late(small, k)
    tables = [process.solve(t).values for t in small.tasks]
    row = small.row_of_token
    for i in range(small.positions.shape[0]):  # the definition, token by token
        t = int(small.positions[i])
        z = small.state[i - min(t, k)]
        assert got[i] == np.float32(tables[small.task[row[i]]][t, z])
    assert (got != critics.exact(small)).any(), "a late critic must differ somewhere on this fixture"


def test_blind_is_the_prompt_constant(small):
    got = critics.blind(small)
    row = small.row_of_token
    for j, task in enumerate(small.tasks):
        m = small.task[row] == j
        assert np.all(got[m] == np.float32(process.solve(task).values[0, 1]))


def test_exact_at_decisions_and_boundaries(small):
    exact, blind = critics.exact(small), critics.blind(small)
    for got, mask in ((critics.exact_at_decisions(small), small.decision),
                      (critics.exact_at_boundaries(small, 0.2), np.exp(small.logprobs.astype(np.float64)) < 0.2)):
        assert mask.any() and (~mask).any()
        np.testing.assert_array_equal(got[mask], exact[mask])
        np.testing.assert_array_equal(got[~mask], blind[~mask])


def test_hand_critic_shapes_names_and_errors(small):
    rng = np.random.default_rng(1)
    for c in critics.DEFAULT_CRITICS:
        v = c.values(small, rng)
        assert v.shape == small.true_values.shape and v.dtype == np.float32
    assert critics.HandCritic("late", k=8).name == "late(8)"
    assert critics.HandCritic("exact", noise=0.1).name == "exact + noise 0.1"
    np.testing.assert_array_equal(critics.HandCritic("late", k=0).values(small), critics.exact(small))
    shrunk = critics.HandCritic("exact", shrink=1.0).values(small)
    np.testing.assert_allclose(shrunk, small.true_values.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        critics.HandCritic("psychic")
    with pytest.raises(ValueError, match="rng"):
        critics.HandCritic("exact", noise=0.1).values(small)


def test_lambda_returns_hand_computed():
    r = process.rollout(process.make_tasks(SMALL, 1, seed=0), 2, np.random.default_rng(0))
    v = np.linspace(0.1, 0.9, r.positions.shape[0])
    final = np.repeat(r.reward, r.lengths)
    np.testing.assert_allclose(learned.lambda_returns(r, v, 1.0), final)
    g0 = learned.lambda_returns(r, v, 0.0)
    last = r.offsets[1:] - 1
    inner = np.setdiff1d(np.arange(v.size), last)
    np.testing.assert_allclose(g0[inner], v[inner + 1])  # r_t = 0 before the last token
    np.testing.assert_allclose(g0[last], r.reward)


def test_sparse_normal_equations_match_dense(small):
    c = learned.LearnedCritic(buckets=16, max_tokens=300)
    f = c.fit(small)
    e = learned._events(small, 16, True, f.seen)
    picks = np.sort(np.random.default_rng(0).choice(small.positions.shape[0], 300, replace=False))
    X, which, col = learned._design(f, small, e, picks)
    dense = np.zeros((300, X.shape[1] + 16))
    dense[:, :X.shape[1]] = X
    for m, b in zip(which, col):
        dense[m, X.shape[1] + b] += 1.0
    gram, rhs = learned._normal_equations([(X, which, col)], dense.shape[1])
    y = np.random.default_rng(1).random(300)
    np.testing.assert_allclose(gram, dense.T @ dense, atol=1e-9)
    np.testing.assert_allclose(rhs([y]), dense.T @ y, atol=1e-9)
    # the O(N) prediction equals the design matrix times the weights, where nothing is clipped
    pred = dense @ f.weights
    inside = (pred > 0) & (pred < 1)
    np.testing.assert_allclose(f.values(small)[picks][inside], pred[inside], atol=1e-5)


INFERABLE = process.ProcessConfig(kind="absorbing", min_length=64, max_length=64, decision_rate=0.06, alignment=1.0,
                                  fork_rate=0.0, slip_rate=0.0)


def test_learned_critic_beats_the_constant_out_of_sample():
    seen = process.make_tasks(INFERABLE, 8, seed=0)
    unseen = process.make_tasks(INFERABLE, 8, seed=1)
    train = process.rollout(seen, 128, np.random.default_rng(0))
    fresh = process.rollout(seen, 32, np.random.default_rng(1))
    other = process.rollout(unseen, 32, np.random.default_rng(2))
    assert not set(map(learned.prompt_key, unseen)) & set(map(learned.prompt_key, seen))
    for target in ("mc", "td"):
        fitted = learned.LearnedCritic(target=target, lam=0.9, ridge=1.0).fit(train)
        assert set(fitted.seen) == set(map(learned.prompt_key, seen))
        out = learned.evaluate(fitted, fresh)
        assert out["rmse"] < 0.7 * out["rmse_constant"], (target, out)
        un = learned.evaluate(fitted, other)
        assert np.isfinite(un["rmse"]) and un["rmse_constant"] > 0
        v = fitted.values(other)
        assert v.dtype == np.float32 and v.min() >= 0 and v.max() <= 1


def test_td_with_lambda_one_is_monte_carlo(small):
    mc = learned.LearnedCritic(target="mc", buckets=32).fit(small)
    td = learned.LearnedCritic(target="td", lam=1.0, buckets=32).fit(small)
    np.testing.assert_allclose(td.weights, mc.weights, atol=1e-8)


def test_rollouts_per_prompt_uses_the_first_rows(small):
    sub = learned.first_rows(small, 3)
    assert np.all(np.bincount(sub.task) == 3)
    a = learned.LearnedCritic(rollouts_per_prompt=3, buckets=32).fit(small)
    b = learned.LearnedCritic(buckets=32).fit(sub)
    np.testing.assert_allclose(a.weights, b.weights)
    with pytest.raises(ValueError, match="target"):
        learned.LearnedCritic(target="sarsa")


def _perturbed(small, seed):
    rng = np.random.default_rng(seed)
    old = np.concatenate(small.probs)
    logits = np.log(np.where(old > 0, old, 1.0)) + rng.normal(0, 0.3, old.shape)
    logits[old == 0] = -np.inf
    return old, logits


def test_ppo_gradient_equals_finite_differences(small):
    adv = small.true_advantages + np.random.default_rng(2).normal(0, 0.3, small.positions.shape)
    old, logits = _perturbed(small, 0)
    cell, _ = closed_loop._cells(small)
    a = small.options.astype(np.int64)
    rho = process.softmax(logits)[cell, a] / old[cell, a]
    assert ((rho > 1.2) | (rho < 0.8)).any(), "some tokens must be clipped"
    grad = closed_loop.surrogate_gradient(process.softmax(logits), old, small, adv, 0.2)
    rng = np.random.default_rng(3)
    present = np.argwhere(old > 0)
    h = 1e-6
    for t, k in present[rng.choice(len(present), 60, replace=False)]:
        up, down = logits.copy(), logits.copy()
        up[t, k] += h
        down[t, k] -= h
        fd = (closed_loop.surrogate(process.softmax(up), old, small, adv, 0.2)
              - closed_loop.surrogate(process.softmax(down), old, small, adv, 0.2)) / (2 * h)
        assert abs(fd - grad[t, k]) < 1e-6 * max(1.0, abs(fd)), (t, k, fd, grad[t, k])
    # at the sampling policy the surrogate's gradient is the score-function policy gradient
    at_old = closed_loop.surrogate_gradient(old, old, small, adv, 0.2)
    np.testing.assert_allclose(at_old.reshape(-1), gradient.batch(small, adv), atol=1e-12)


def test_closed_loop_improves_with_exact_advantages():
    tasks = process.make_tasks(process.ProcessConfig(min_length=48, max_length=64, decision_rate=0.05), 6, seed=0)
    cfg = closed_loop.LoopConfig(iterations=25, samples=8, warmup_samples=8,
                                 critic=learned.LearnedCritic(buckets=32, max_tokens=2048))
    gains = []
    for seed in range(3):
        res = closed_loop.run(tasks, lambda r, v: r.true_advantages, cfg, seed=seed)
        assert res.curve.shape == (26,) and res.critic_rmse.shape == (25,)
        assert res.auc == pytest.approx(res.curve.mean())
        gains.append(res.curve[-1] - res.curve[0])
    assert min(gains) > 0.15, gains  # measured: 0.28 for each of 5 seeds
    with pytest.raises(ValueError, match="advantage_fn"):
        closed_loop.run(tasks, lambda r, v: v[:3], closed_loop.LoopConfig(iterations=1), seed=0)


@pytest.mark.parametrize("estimator,options", [("gae", {"lam": 0.95}), ("sae", {"lam": 0.95, "threshold": 0.2}),
                                               ("mc", {})])
def test_closed_loop_with_a_learned_critic_and_sae_core_estimators(estimator, options):
    def advantages(r, v):
        out = compute_advantages_ragged(r.rewards, v, r.offsets, estimator=estimator, critic_lam=1.0,
                                        logprobs=r.logprobs, backend="reference", **options)
        return np.asarray(out.advantages)

    tasks = process.make_tasks(process.ProcessConfig(min_length=48, max_length=64, decision_rate=0.05), 6, seed=0)
    cfg = closed_loop.LoopConfig(iterations=20, samples=8, warmup_samples=16, whiten=True,
                                 critic=learned.LearnedCritic(buckets=32, max_tokens=2048))
    res = closed_loop.run(tasks, advantages, cfg, seed=0)
    assert res.curve[-1] > res.curve[0] + 0.05, res.curve
    assert np.all(np.isfinite(res.critic_rmse))
