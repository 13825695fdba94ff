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
study = _load("toy_ppo_study")  # loads toy_ppo again under the same name: use study.toy in its tests

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
    assert set(kwargs) - {"estimator", "gamma", "critic_lam"} <= set(registry.ESTIMATORS[estimator].options)
    assert kwargs["critic_lam"] == 1.0
    assert estimator_params(**kwargs)["estimator"] == estimator  # compute_advantages' checks accept them


def test_sae_rule_fields_select_one_rule():
    base = dataclasses.replace(toy.Config(), estimator="sae")
    assert toy.estimator_kwargs(base)["threshold"] == registry.PAPER_THRESHOLD
    fixed = toy.estimator_kwargs(dataclasses.replace(base, segment_length=7))
    assert fixed["segment_length"] == 7 and "threshold" not in fixed
    given = toy.estimator_kwargs(dataclasses.replace(base, random_boundaries=0.1))
    assert given["boundary"] == "given" and "threshold" not in given and "segment_length" not in given
    assert toy.estimator_kwargs(dataclasses.replace(base, critic_lam=-1.0))["critic_lam"] is None


def test_critic_targets_are_monte_carlo_returns_for_every_estimator(runs):
    """critic_lam = 1 with gamma = 1 and one outcome reward: every valid token's target is the reward."""
    for estimator in ("gae", "sae"):
        table = tj.read_table(Path(runs[estimator][0].out) / "rollouts" / "step-00000001.parquet")
        per_token = np.repeat(table.column("reward").to_numpy(), pc.list_value_length(table.column("returns")))
        np.testing.assert_allclose(_flat(table, "returns"), per_token, atol=1e-6)


def test_scratchpad_responses_are_300_to_500_tokens_and_score_the_answer():
    variant = toy.VARIANTS["scratchpad"]
    prompts, answers, solutions = toy.make_problems(np.random.default_rng(0), 64, variant["n_terms"],
                                                    variant["scratchpad"])
    lengths = [len(s) + 1 for s in solutions]  # with <eos>
    assert 300 <= min(lengths) and max(lengths) <= 500, (min(lengths), max(lengths))
    assert max(lengths) <= toy.max_response_len(variant["n_terms"], variant["scratchpad"])
    # the routine part copies the prompt's digits: "3+5+...=" -> "35...,"
    digits = toy.decode(prompts[0].tolist()).replace("+", "").rstrip("=")
    assert solutions[0].startswith((digits + ",") * variant["scratchpad"])
    T = max(lengths)
    right = torch.tensor([toy.encode(s) + [toy.EOS] + [toy.PAD] * (T - len(s) - 1) for s in solutions])
    finished = torch.ones(64, dtype=torch.bool)
    assert toy.score(right, finished, answers).tolist() == [1.0] * 64
    assert toy.score(right, finished, answers + 1).tolist() == [0.0] * 64
    assert toy.score(right, torch.zeros(64, dtype=torch.bool), answers).tolist() == [0.0] * 64


def test_first_departures_and_where_boundaries_fall():
    ref = [[5, 6, 7, 8, toy.EOS], [5, 6, 7, 8, toy.EOS], [5, 6, toy.EOS], [5, 6, 7, 8, toy.EOS]]
    responses = torch.tensor([[5, 6, 9, 8, toy.EOS, 0],  # departs at 2
                              [5, 6, 7, 8, toy.EOS, 0],  # the solution: none
                              [5, 6, 7, 7, 7, 7],  # runs on past the reference's <eos>: departs at 2
                              [5, 6, 7, 8, 8, toy.EOS]])  # departs at 4 (<eos> expected)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).float()
    d = toy.first_departures(responses, mask, ref)
    assert d.tolist() == [2, -1, 2, 4]
    boundaries = torch.zeros(4, 6, dtype=torch.bool)
    boundaries[0, [0, 5]] = True  # 5 is padding: does not count; nearest is 0, distance 2
    boundaries[1, 3] = True  # no departure: not counted
    boundaries[3, 0] = True  # distance 4, beyond the window
    stats = toy.departure_stats(boundaries, mask, d, window=2)
    assert stats["departed"] == 0.75
    assert stats["boundary_near_departure"] == pytest.approx(1 / 3)  # row 0 only; row 2 has no boundary
    assert stats["departure_to_boundary"] == pytest.approx((2 + 4) / 2)
    assert stats["boundaries_before_departure"] == 1.0  # rows 0 and 3: both boundaries lie before d
    with pytest.raises(ValueError, match="references"):
        toy.first_departures(responses, mask, ref[:2])


def test_pass_rate_auc_is_the_trapezoid_mean():
    history = [{"step": 0, "eval_pass_rate": 0.2}, {"step": 5}, {"step": 10, "eval_pass_rate": 0.4},
               {"step": 20, "eval_pass_rate": 0.4}]
    assert toy.pass_rate_auc(history) == pytest.approx((10 * 0.3 + 10 * 0.4) / 20)


WARM = dict(TINY, value_warmup=2, eval_every=2, save_every=0)


def test_value_warmup_is_cached_and_shared_across_estimators(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    t = study.toy
    cfg = t.Config(**WARM, cache=str(tmp_path))
    policy, critic, info = t.warm_models(cfg)
    assert 0 < info["boundary_fraction"] <= 1 and info["mean_segment_length"] >= 1
    torch.manual_seed(cfg.seed)  # the critic's head as warm_models initialises it: the warm-up moved it
    fresh = t.make_models(cfg)[1].state_dict()
    assert not torch.equal(critic["classifier.weight"], fresh["classifier.weight"])

    def no_warm_start(_):
        raise AssertionError("a run of the same seed must load the cache")
    monkeypatch.setattr(t, "warm_start", no_warm_start)
    again = t.warm_models(dataclasses.replace(cfg, estimator="sae", critic_lr=3e-4, lr=1e-4, steps=99))
    assert len(list(tmp_path.glob("warm-*.pt"))) == 1
    for name in critic:
        assert torch.equal(again[1][name], critic[name]), name
    for name in policy:
        assert torch.equal(again[0][name], policy[name]), name
    with pytest.raises(AssertionError, match="cache"):  # another seed is another warm start
        t.warm_models(dataclasses.replace(cfg, seed=1))


def test_t_quantile_against_a_table():
    for df, q in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):  # Student's t table, 0.975
        assert study.t_quantile(0.975, df) == pytest.approx(q, abs=1e-3), df


def test_paired_interval_by_hand():
    out = study.paired_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # differences 1, 2, 3: sd 1
    assert out["mean"] == pytest.approx(2.0)
    assert out["half_width"] == pytest.approx(4.303 / np.sqrt(3), abs=1e-3)
    assert out["diffs"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="at least 2"):
        study.paired_interval([1.0], [0.0])


def test_study_pairs_seeds_and_skips_finished_runs(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    t = study.toy
    monkeypatch.setitem(t.VARIANTS, "tiny", {"n_terms": 3, "scratchpad": 0})
    toy_fields = {k: v for k, v in WARM.items() if k not in ("n_terms", "threads")}
    grid = study.Study(variants=("tiny",), seeds=2, critic_lrs=(1e-3,), estimators=("gae-0.95", "sae", "sae-fixed"),
                       toy=toy_fields)
    report = study.run_study(grid, tmp_path, threads=1)
    assert len(report["runs"]) == 6 and len(list(tmp_path.glob("cache/warm-*.pt"))) == 2
    first = {(r["seed"], r["estimator"]): r for r in report["runs"]}
    for seed in (0, 1):  # paired: every estimator of a seed starts from the same policy
        assert len({first[(seed, e)]["start"] for e in grid.estimators}) == 1
    contrasts = report["summary"]["tiny"]["contrasts"]
    c = next(c for c in contrasts if c["baseline"] == "gae-0.95" and c["measure"] == "auc"
             and c["critic_lr"] == "selected")
    assert c["diffs"] == pytest.approx([first[(s, "sae")]["auc"] - first[(s, "gae-0.95")]["auc"] for s in (0, 1)])
    # a rerun finds every result.json and trains nothing; a removed one is run again, alone
    calls = []
    train = t.train
    monkeypatch.setattr(t, "train", lambda cfg, *a: calls.append(cfg.out) or train(cfg, *a))
    assert study.run_study(grid, tmp_path, threads=1)["runs"] == report["runs"]
    assert calls == []
    (tmp_path / "runs" / study.run_name("tiny", 1, "sae", 1e-3) / "result.json").unlink()
    study.run_study(grid, tmp_path, threads=1)
    assert [Path(c).name for c in calls] == [study.run_name("tiny", 1, "sae", 1e-3)]


def test_value_warmup_counts_segments_per_response(monkeypatch):
    """Two responses of 4 and 3 tokens, one low-probability token: 1 boundary in 7 tokens and 3
    segments (each response starts one), so segments of 7/3 tokens, not 7/2."""
    torch.set_num_threads(1)
    cfg = toy.Config(**dict(WARM, batch=2, minibatch=2, value_warmup=1))
    prompts, _, _ = toy.make_problems(np.random.default_rng(0), 2, cfg.n_terms)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    batch = {"rewards": torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]]), "mask": mask, "reward": torch.tensor([1.0, 0]),
             "logprobs": torch.tensor([[-0.1, -0.1, -3.0, -0.1], [-0.1, -0.1, -0.1, 0.0]]),
             "seq": torch.cat([prompts, torch.tensor([[3, 4, 5, toy.EOS], [3, 4, toy.EOS, toy.PAD]])], 1)}
    monkeypatch.setattr(toy, "rollout", lambda *a: batch)
    _, critic = toy.make_models(cfg)
    info = toy.value_warmup(cfg, None, critic)
    assert info["boundary_fraction"] == pytest.approx(1 / 7)
    assert info["mean_segment_length"] == pytest.approx(7 / 3)
    assert info["pass_rate"] == 0.5
