"""The estimator lab: exact values from dynamic programming agree with sampling; with the exact
critic the estimators theory calls unbiased are; seeds reproduce; `sae demo` and `sae lab` run."""

import json
import math

import numpy as np
import pytest

from sae_core import compute_advantages_ragged, lab
from sae_core.tools.cli import main

SMALL = lab.TaskConfig(min_length=40, max_length=60, decision_rate=0.1, slip_rate=0.05, label_noise=0.1)


def test_dp_values_match_monte_carlo():
    r = lab.sample(SMALL, tasks=1, samples=20000, seed=7)
    L = int(r.offsets[1])
    V = r.true_values.reshape(-1, L)
    reward = r.reward
    # before the first token every response is in the same state: V is the chance of reward 1
    assert np.ptp(V[:, 0]) == 0
    se = math.sqrt(V[0, 0] * (1 - V[0, 0]) / reward.size)
    assert abs(reward.mean() - V[0, 0]) < 4 * se
    # later, responses split by the hidden state; each group's reward rate is its exact value
    t = L // 2
    for value in np.unique(V[:, t]):
        group = reward[V[:, t] == value]
        if group.size > 200:
            assert abs(group.mean() - value) < 4 * math.sqrt(max(value * (1 - value), 1e-4) / group.size)


def test_exact_advantages_telescope_to_the_expected_reward():
    r = lab.sample(SMALL, tasks=3, samples=50, seed=1)
    sums = np.add.reduceat(r.true_advantages, r.offsets[:-1])
    first = r.true_values[r.offsets[:-1]]
    last_value = r.true_values[r.offsets[1:] - 1] + r.true_advantages[r.offsets[1:] - 1]  # V after the last token
    np.testing.assert_allclose(sums, last_value - first, atol=1e-12)
    # after the last token V is the verifier's expected reward given the hidden bit
    assert set(np.round(last_value, 12)) <= {SMALL.label_noise, 1 - SMALL.label_noise}


@pytest.mark.parametrize("kwargs", [{"estimator": "mc"}, {"estimator": "gae", "lam": 0.9},
                                    {"estimator": "gae", "lam": 0.95}, {"estimator": "vapo"}])
def test_with_the_exact_critic_gae_mc_vapo_are_unbiased(kwargs):
    """E[A_hat_t - A_t] = 0 when V is exact: A_hat is A_t plus a weighted sum of later advantages
    (and the reward's noise), each with mean 0 given the past. Per-response mean errors are
    independent across responses; their mean must be within 4 standard errors of 0."""
    r = lab.sample(SMALL, tasks=20, samples=200, seed=3)
    out = compute_advantages_ragged(r.rewards, r.true_values.astype(np.float32), r.offsets, **kwargs)
    err = np.add.reduceat(out.advantages - r.true_advantages, r.offsets[:-1]) / np.diff(r.offsets)
    assert abs(err.mean()) < 4 * err.std(ddof=1) / math.sqrt(err.size)


def test_gae_with_lambda_0_and_the_exact_critic_is_exact():
    r = lab.sample(SMALL, tasks=2, samples=20, seed=0)
    # the verifier's noise enters only at the last token: compare with the expected reward there
    last = r.offsets[1:] - 1
    rewards = np.zeros_like(r.true_values)
    rewards[last] = r.true_values[last] + r.true_advantages[last]
    out = compute_advantages_ragged(rewards, r.true_values, r.offsets, estimator="gae", lam=0.0)
    np.testing.assert_allclose(out.advantages, r.true_advantages, atol=1e-12)


def test_seeds_reproduce():
    a, b = lab.sample(SMALL, 2, 5, seed=11), lab.sample(SMALL, 2, 5, seed=11)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("offsets", "logprobs", "true_advantages",
                                                                      "reward"))
    assert not np.array_equal(a.logprobs, lab.sample(SMALL, 2, 5, seed=12).logprobs)
    critic = lab.Critic(noise=0.1, drift=0.2, shrink=0.5)
    np.testing.assert_array_equal(lab.critic_values(a, critic, 3), lab.critic_values(a, critic, 3))


def test_critic_error_models():
    r = lab.sample(SMALL, 4, 10, seed=0)
    exact = lab.critic_values(r, lab.Critic())
    np.testing.assert_allclose(exact, r.true_values, atol=1e-7)
    flat = lab.critic_values(r, lab.Critic(shrink=1.0))
    assert np.ptp(flat) < 1e-6  # a critic that has learned only the mean
    noisy = lab.critic_values(r, lab.Critic(noise=0.3), seed=1) - r.true_values
    assert 0.25 < noisy.std() < 0.35
    drift = lab.critic_values(r, lab.Critic(drift=0.5), seed=1) - r.true_values
    starts = r.offsets[:-1]
    assert np.abs(drift[starts]).max() < 0.5 * 5 / math.sqrt(40)  # one step of the walk: 5 sd at most
    assert np.abs(drift[r.offsets[1:] - 1]).mean() > 0.1  # at the end: about the drift's size


def test_lab_sweep_and_config(tmp_path, capsys):
    config = {"task": {"min_length": 30, "max_length": 40}, "critics": [{}, {"noise": 0.2}], "tasks": 2,
              "samples": 3, "seeds": 2}
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["lab", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "critic: exact" in out and "critic: noise 0.2" in out and "sae p 0.2" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["results"]["exact"]["seeds"] == 2
    (tmp_path / "bad.json").write_text(json.dumps({"critcs": []}))
    assert main(["lab", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown lab config key(s) critcs" in capsys.readouterr().err


def test_demo_runs_through_the_user_code_path(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--tasks", "3", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("rollouts.parquet", "recomputed.parquet", "report.html"):
        assert (tmp_path / name).exists(), name
    for label in ("gae", "mc", "vapo", "sae", "sae_threshold0.5"):
        assert f"\n{label} " in out
    from sae_core import trajectory as tj

    table = tj.read_table(tmp_path / "recomputed.parquet")
    assert {"true_advantages", "advantages_sae", "advantages_gae"} <= set(table.schema.names)
