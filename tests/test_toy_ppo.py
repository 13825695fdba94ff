"""examples/toy_ppo.py on a tiny setting: PPO steps run, rollouts follow the standard, the critic learns."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sae_core import ESTIMATORS, compute_advantages, estimator_params, registry  # noqa: E402
from sae_core import trajectory as tj  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


toy = _load("toy_ppo")

def _flat(table, name) -> np.ndarray:
    """A per-token column's values, all rows concatenated."""
    return pc.list_flatten(table.column(name)).to_numpy()


TINY = dict(n_terms=3, n_layers=1, d_model=32, n_heads=2, sft_steps=2, sft_batch=8, steps=2, batch=4,
            minibatch=2, ppo_epochs=2, eval_every=1, eval_prompts=8, save_every=1, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """gae and sae for two PPO steps from one warm start, as compare_estimators runs them."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy")
    cfg = toy.Config(**TINY)
    state = toy.warm_start(cfg)
    out = {}
    for estimator in ("gae", "sae"):
        run = dataclasses.replace(cfg, estimator=estimator, out=str(root / estimator))
        out[estimator] = (run, toy.train(run, state))
    return out


@pytest.mark.parametrize("estimator", ["gae", "sae"])
def test_ppo_steps_log_finite_losses(runs, estimator):
    cfg, history = runs[estimator]
    assert [r["step"] for r in history] == [0, 1, 2]
    for row in history[1:]:
        for key in ("pass_rate", "policy_loss", "critic_loss", "boundary_fraction", "mean_segment_length"):
            assert np.isfinite(row[key]), (key, row)
        assert 0 <= row["pass_rate"] <= 1 and 0 <= row["eval_pass_rate"] <= 1
        assert 0 <= row["boundary_fraction"] <= 1
        assert 1 <= row["mean_segment_length"] <= row["response_length"]
    logged = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert logged == history


@pytest.mark.parametrize("estimator", ["gae", "sae"])
def test_rollouts_follow_the_standard(runs, estimator):
    cfg, _ = runs[estimator]
    files = sorted((Path(cfg.out) / "rollouts").glob("step-*.parquet"))
    assert [f.name for f in files] == ["step-00000001.parquet", "step-00000002.parquet"]
    for path in files:
        summary = tj.validate_file(path, estimator=estimator)
        assert summary.rows == cfg.batch
        assert summary.info.estimators["advantages"]["estimator"] == estimator
        # the stored outputs are what `sae recompute` gets from the stored inputs and parameters
        table = tj.read_table(path)
        params = tj.estimator_kwargs(summary.info.estimators["advantages"])
        again = tj.compute(table.drop_columns(["advantages", "returns", "boundaries"]), **params)
        for name in ("advantages", "returns", "boundaries"):
            np.testing.assert_allclose(_flat(again, name), _flat(table, name), atol=1e-6)
        assert set(table.column("finish_reason").to_pylist()) <= {"stop", "length"}


def test_runs_of_one_seed_share_the_first_rollout(runs):
    """compare_estimators relies on it: same weights, prompts and sampler, whatever the estimator."""
    first = [tj.read_table(Path(runs[e][0].out) / "rollouts" / "step-00000001.parquet")
             for e in ("gae", "sae")]
    for name in ("prompt_ids", "response_ids", "reward"):
        assert first[0].column(name).equals(first[1].column(name)), name
    for name in ("logprobs", "values"):  # the same up to float rounding (CPU kernels vary in the last bit)
        np.testing.assert_allclose(_flat(first[0], name), _flat(first[1], name), rtol=1e-5, atol=1e-6)
    assert runs["gae"][1][0]["eval_pass_rate"] == runs["sae"][1][0]["eval_pass_rate"]


def test_critic_loss_falls_on_a_fixed_batch():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = toy.Config(**TINY)
    policy, critic = toy.make_models(cfg)
    prompts, _, _ = toy.make_problems(np.random.default_rng(0), 8, cfg.n_terms)
    gen = torch.Generator().manual_seed(0)
    responses, logprobs, mask, finished = toy.sample(policy, prompts, toy.max_response_len(cfg.n_terms), gen)
    seq = torch.cat([prompts, responses], 1)
    P = prompts.shape[1]
    # a target with structure along the response, so that falling means fitting, not just a mean
    lengths = mask.sum(1).long()
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(8), lengths - 1] = torch.tensor([1.0, 0.0] * 4)
    with torch.no_grad():
        values = toy.critic_values(critic, seq, P)
    returns = compute_advantages(rewards, values, mask, estimator="mc").returns
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    losses = [toy.critic_update(critic, opt, seq, P, returns, mask, cfg.max_grad_norm) for _ in range(40)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0], losses


def test_command_line_sets_every_field():
    cfg = toy.parse_config(["--estimator", "sae", "--threshold", "0.1", "--steps", "7", "--out", "x"])
    assert (cfg.estimator, cfg.threshold, cfg.steps, cfg.out) == ("sae", 0.1, 7, "x")
    assert toy.parse_config([]) == toy.Config()
    with pytest.raises(SystemExit):
        toy.parse_config(["--estimator", "ppo"])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_estimator_gets_only_its_own_options(estimator):
    kwargs = toy.estimator_kwargs(dataclasses.replace(toy.Config(), estimator=estimator))
    assert set(kwargs) - {"estimator", "gamma"} <= set(registry.ESTIMATORS[estimator].options)
    assert estimator_params(**kwargs)["estimator"] == estimator  # compute_advantages' checks accept them
