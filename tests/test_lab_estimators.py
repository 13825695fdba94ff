"""The lab's estimators, controls, metrics and statistics.

With the exact critic, every estimator whose lambdas do not depend on the sampled actions has a
pooled gradient that converges to the exact one (and the test fails on advantages shifted by one
token); sae's lambda depends on the next action, so its pooled gradient converges instead to the
biased expectation `expected_gradient` computes. The controls are checked on hand-built cases and
against independent computations; the t-interval on a hand-computed example."""

import math

import numpy as np
import pytest

from sae_core.lab import estimators as E
from sae_core.lab import gradient, metrics, process, stats

SMALL = process.ProcessConfig(kind="absorbing", min_length=24, max_length=32, decision_rate=0.15, fork_rate=0.15,
                              slip_rate=0.06, harmful_slip_share=0.5)
BY_LABEL = {e.label: e for e in E.default_estimators()}
UNBIASED = ("mc", "gae 0.9", "gae 0.99", "gae matched", "vapo", "random", "fixed", "sae entropy", "oracle")


def test_labels_are_unique_and_quick_is_a_subset():
    labels = [e.label for e in E.default_estimators()]
    assert len(labels) == len(set(labels)) == 21
    assert [e.label for e in E.quick_estimators()] == [x for x in labels if x in E.QUICK]
    assert set(E.QUICK) <= set(labels)
    with pytest.raises(ValueError, match="control"):
        E.Estimator("x", "sae", control="nope")


@pytest.fixture(scope="module")
def pooled():
    """R = 10 batches of 4 tasks x 1000 responses with the exact critic, and each estimator's [R, D] gradients."""
    tasks = process.make_tasks(SMALL, 4, seed=3)
    sols = [process.solve(t) for t in tasks]
    rng = np.random.default_rng(0)
    batches = [process.rollout(tasks, 1000, rng, solutions=sols) for _ in range(10)]
    match = E.matched(batches[0])

    def grads(advantage_fn):
        return np.stack([gradient.batch(b, advantage_fn(b)) for b in batches])

    return batches, gradient.exact(batches[0]), match, grads, rng


def _noise_ratio(G, target, truth):
    """|mean(G) - target|^2 over its expected size for an unbiased mean, tr(Cov) / R (about 1 if unbiased)."""
    R = G.shape[0]
    err = G.mean(0) - target
    spread = ((G - G.mean(0)) ** 2).sum(1).mean() / (R - 1)
    return float(err @ err) / spread, gradient.cosine(G.mean(0), truth)


@pytest.mark.parametrize("label", UNBIASED)
def test_pooled_gradient_of_action_independent_estimators_converges_to_the_exact_one(pooled, label):
    batches, truth, match, grads, rng = pooled
    est = BY_LABEL[label]
    assert not E.action_dependent(est) or label == "oracle"
    G = grads(lambda b: E.advantages(est, b, b.true_values, rng, match))
    ratio, cos = _noise_ratio(G, truth, truth)
    assert ratio < 2.0  # measured 0.75-1.2 over 8 seeds
    assert cos > 0.99  # measured >= 0.997

    def shifted(b):  # token t gets token t+1's advantage: a wrong time index
        a = E.advantages(est, b, b.true_values, rng, match)
        return np.append(a[1:], 0.0)

    ratio, cos = _noise_ratio(grads(shifted), truth, truth)
    assert ratio > 50 and cos < 0.9  # measured 1300 and -0.04 for gae 0.9


def test_expected_gradient_is_exact_for_action_independent_lambdas_and_not_for_sae(pooled):
    batches, truth, match, _, _ = pooled
    nt = float(truth @ truth)
    for label in UNBIASED:
        g = E.expected_gradient(BY_LABEL[label], batches[0], match)
        assert float((g - truth) @ (g - truth)) / nt < 1e-20, label
    for label in ("sae p0.05", "sae p0.2", "sae p0.2 lam0", "sae p0.2 lam0.5"):
        g = E.expected_gradient(BY_LABEL[label], batches[0], match)
        assert float((g - truth) @ (g - truth)) / nt > 1e-6, label
    with pytest.raises(ValueError, match="whole response"):
        E.expected_gradient(BY_LABEL["sae quantile"], batches[0], match)


def test_sae_converges_to_its_biased_expectation_not_to_the_exact_gradient(pooled):
    """sae's lambda_t depends on the next action: with the exact critic and lam 0 its pooled gradient
    stays away from the exact one (far beyond sampling noise) and converges to `expected_gradient`."""
    batches, truth, match, grads, rng = pooled
    est = BY_LABEL["sae p0.2 lam0"]
    assert E.action_dependent(est)
    G = grads(lambda b: E.advantages(est, b, b.true_values, rng, match))
    ratio_exact, _ = _noise_ratio(G, truth, truth)
    ratio_dp, _ = _noise_ratio(G, E.expected_gradient(est, batches[0], match), truth)
    assert ratio_exact > 8  # measured 20-45 over 8 seeds
    assert ratio_dp < 2.0  # measured 0.8-1.05
    bias = metrics.expected_bias(batches[0], [est])[est.label]
    assert bias["bias2_exact"] > 0.01 and bias["cos_expected"] < 0.999  # 0.059 and 0.992 here


def _hand_rollouts(logprobs_rows, rewards, probs=None):
    """A Rollouts of the given rows, enough for the estimators (one task per row, options 0)."""
    lengths = [len(x) for x in logprobs_rows]
    N = sum(lengths)
    T = max(lengths)
    positions = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    task_probs = [np.tile([1.0, 0, 0, 0], (T, 1)) if probs is None else probs for _ in lengths]
    return process.Rollouts(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), positions=positions,
        options=np.zeros(N, np.int8), response_ids=(positions * process.K).astype(np.int32),
        logprobs=np.concatenate(logprobs_rows).astype(np.float32), state=np.ones(N, np.int8),
        true_values=np.full(N, 0.5), true_advantages=np.zeros(N), decision=np.zeros(N, bool),
        reward=np.array(rewards, np.float32), task=np.arange(len(lengths)),
        tasks=[process.Task(np.log(np.maximum(p, 1e-300)), np.zeros((T, 4, 2)), np.zeros(T, bool), np.zeros(2))
               for p in task_probs], probs=task_probs)


LOW, HIGH = math.log(0.1), math.log(0.9)


def test_matched_controls_on_a_hand_built_case():
    # p=0.2 boundaries: row 0 at t = 0 (a first token: not counted) and 2; row 1 at t = 3 and 4
    r = _hand_rollouts([[LOW, HIGH, LOW, HIGH, HIGH], [HIGH, HIGH, HIGH, LOW, LOW]], [1.0, 0.0])
    m = E.matched(r)
    assert m.rate == 3 / 8  # 3 boundaries among the 8 tokens with t >= 1
    assert m.mean_length == 2.0  # 10 tokens, segments [0,1] [2,3,4] | [0,1,2] [3] [4]
    assert m.lam == 0.5 and m.segment_length == 2
    V = np.full(10, 0.5)
    # gae lam 0.5, delta = 0 but on the last token (+0.5 / -0.5): A_t = 0.5 * 0.5^(4 - t)
    want = 0.5 * 0.5 ** np.array([4, 3, 2, 1, 0])
    np.testing.assert_allclose(E.advantages(BY_LABEL["gae matched"], r, V), np.concatenate([want, -want]))
    # fixed M = 2, lam 0.95: boundaries at t = 0, 2, 4, so lambda_1 = lambda_3 = 0.95
    want = np.array([0.45125, 0.45125, 0.475, 0.475, 0.5])
    np.testing.assert_allclose(E.advantages(BY_LABEL["fixed"], r, V), np.concatenate([want, -want]))
    # sae p0.2 on row 0: boundary at t = 2, so lambda_1 = 0.95
    np.testing.assert_allclose(E.advantages(BY_LABEL["sae p0.2"], r, V)[:5], [0.475, 0.475, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="values"):
        E.advantages(BY_LABEL["mc"], r, V[:3])
    with pytest.raises(ValueError, match="rng"):
        E.advantages(BY_LABEL["random"], r, V)


def test_entropy_is_exact_at_each_tokens_position():
    probs = np.array([[0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]])
    r = _hand_rollouts([[HIGH, HIGH, HIGH]], [1.0], probs=probs)
    np.testing.assert_allclose(E.entropy(r), [math.log(2), math.log(4), 0.0], atol=1e-12)


def test_random_boundaries_have_the_rate_and_ignore_the_tokens():
    r = process.rollout(process.make_tasks(SMALL, 8, seed=1), 400, np.random.default_rng(1))
    m = E.matched(r)
    rng = np.random.default_rng(5)
    b = E.call_options(BY_LABEL["random"], r, rng, m)["given_boundaries"]
    n = b.size
    assert 0.02 < m.rate < 0.2
    assert abs(b.mean() - m.rate) < 4 * math.sqrt(m.rate * (1 - m.rate) / n)
    low = E.logprob_boundaries(r)  # the share among sae's boundaries is the same rate: independent
    assert abs(b[low].mean() - m.rate) < 4 * math.sqrt(m.rate * (1 - m.rate) / low.sum())


def test_oracle_boundaries_are_exactly_the_value_change_tokens():
    tasks = process.make_tasks(SMALL, 3, seed=2)
    r = process.rollout(tasks, 50, np.random.default_rng(2))
    row = r.row_of_token
    adv = np.empty(r.positions.size)  # from the dynamic programme, not from the rollouts' own column
    for j, task in enumerate(tasks):
        s = process.solve(task)
        mine = r.task[row] == j
        t, a, z = r.positions[mine], r.options[mine], r.state[mine]
        adv[mine] = s.q[t, a, z] - s.values[t, z]
    for est, tol in ((BY_LABEL["oracle"], 1e-9), (BY_LABEL[f"oracle {E.MATERIAL_TOL:g}"], 1e-3)):
        b = E.call_options(est, r)["given_boundaries"]
        np.testing.assert_array_equal(b, np.abs(adv) > tol)
        assert 0 < b.mean() < 1


def test_segment_ground_truth_agrees_with_the_exact_value_difference():
    tasks = process.make_tasks(SMALL, 4, seed=4)
    r = process.rollout(tasks, 16, np.random.default_rng(4))
    seg = metrics.SegmentTruth(r, np.random.default_rng(6), samples=32, max_segments=200)
    assert seg.starts.size == 200 and seg.check > 0.8
    diff = seg.truth - seg.exact  # Monte Carlo noise: mean 0, sd <= sqrt(2 * 0.25 / 32) each
    assert abs(diff.mean()) < 4 * 0.125 / math.sqrt(diff.size)


def test_pearson_weights_and_score_weights():
    # weights [2, 1, 1] equal repeating the first point
    assert metrics.pearson([1, 2, 3], [1, 2, 4], [2, 1, 1]) == pytest.approx(
        np.corrcoef([1, 1, 2, 3], [1, 1, 2, 4])[0, 1])
    assert math.isnan(metrics.pearson([1, 1], [1, 2]))
    probs = np.array([[0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]])
    r = _hand_rollouts([[HIGH, HIGH, HIGH]], [1.0], probs=probs)
    # |e_0 - p|^2 by hand: 0.25 + 0.25; 0.5625 + 3 * 0.0625; 0 (one response per task: n = 1)
    np.testing.assert_allclose(metrics.score_weights(r), [0.5, 0.75, 0.0])


def test_evaluate_agrees_with_the_gradient_module():
    tasks = process.make_tasks(SMALL, 3, seed=5)
    rng = np.random.default_rng(5)
    batches = [process.rollout(tasks, 8, rng) for _ in range(3)]
    values = [b.true_values + 0.05 for b in batches]
    chosen = [BY_LABEL[x] for x in ("gae 0.95", "sae p0.2", "random")]
    out = metrics.evaluate(batches, values, chosen, np.random.default_rng(0), segment_rollouts=4, max_segments=40)
    assert list(out) == [e.label for e in chosen]
    truth = gradient.exact(batches[0])
    G = np.stack([gradient.batch(b, E.advantages(chosen[0], b, v)) for b, v in zip(batches, values)])
    row = out["gae 0.95"]
    assert set(row) == set(metrics.METRICS)
    assert row["cos_batch"] == pytest.approx(np.mean([gradient.cosine(g, truth) for g in G]))
    for key, value in gradient.bias_variance(G, truth).items():
        assert row["cos_pooled" if key == "pooled_cosine" else key] == pytest.approx(value)
    assert row["bias2_debiased"] == pytest.approx(row["bias2"] - row["variance"] / 2)
    with pytest.raises(ValueError, match="values"):
        metrics.evaluate(batches, values[:2], chosen, rng)


def test_t_interval_on_a_hand_computed_example():
    mean, hw, n = stats.contrast([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (mean, n) == (2.0, 3) and hw == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert stats.contrast({0: 3.0, 1: 5.0, 7: 1.0}, {0: 2.0, 1: 3.0})[:1] == (1.5,)  # paired on seeds 0, 1
    for df, t in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)):  # tables
        assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    with pytest.raises(ValueError, match="paired"):
        stats.contrast([1.0, 2.0], [1.0])


def test_preregistered_contrasts_pick_the_best_gae_per_metric():
    seeds = {"sae p0.2": [0.5, 0.6, 0.7], "gae 0.9": [0.4, 0.4, 0.4], "gae 0.95": [0.6, 0.6, 0.9],
             "mc": [0.1, 0.2, 0.3], "random": [0.5, 0.6, 0.7]}
    by_seed = {k: {"cos_batch": v} for k, v in seeds.items()}
    res = {c.name: c for c in stats.preregistered(by_seed, metrics=("cos_batch",))}
    assert set(res) == {"sae - best gae", "sae - random", "sae - mc"}  # missing estimators left out
    best = res["sae - best gae"]
    assert best.b == "gae 0.95"  # mean 0.7 beats 0.4
    assert best.mean == pytest.approx(-0.1) and best.n == 3  # differences -0.1, 0, -0.2
    assert best.half_width == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert res["sae - random"].half_width == 0.0 and res["sae - mc"].mean == pytest.approx(0.4)
    assert "0.400 ± 0.000" in res["sae - mc"].text()
    table = stats.format_table(by_seed, ("cos_batch",))
    assert "0.400 ± 0.000" in table and table.count("\n") == len(seeds) + 1
