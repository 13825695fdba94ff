"""sae_verl against the installed veRL 0.9.1, on the CPU, with no mock of veRL.

The dev environment installs verl (and TransferQueue, which veRL's v1 trainer imports), and
`./dev test` sets SAE_REQUIRE_FRAMEWORKS=1 so that a missing verl fails here instead of skipping.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if os.environ.get("SAE_REQUIRE_FRAMEWORKS"):
    import verl  # noqa: F401
else:
    pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos, ray_trainer  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402

from sae_core import compute_advantages  # noqa: E402
from sae_core import trajectory as tj  # noqa: E402

SITE = Path(verl.__file__).resolve().parent.parent if (verl := sys.modules.get("verl")) else None


def batch(B=6, T=24, seed=0, logprob_keys=("old_log_probs",), values=True, gaps=True):
    """A veRL batch after the reward and the critic: right-padded responses, an interior gap (tool
    output) in one row, an outcome reward on each row's last valid token, uids in groups of 2."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    if gaps:
        mask[0, 3:6] = 0
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = torch.randint(0, 2, (B,), generator=g).float()
    tensors = {"responses": torch.randint(0, 100, (B, T), generator=g), "response_mask": mask,
               "token_level_rewards": rewards, "token_level_scores": rewards.clone(),
               "prompts": torch.randint(0, 100, (B, 5), generator=g),
               "attention_mask": torch.cat([torch.ones(B, 5), mask], dim=1)}
    tensors["attention_mask"][:, :2] = 0  # left padding of the prompts
    if values:
        tensors["values"] = torch.rand(B, T, generator=g)
    for key in logprob_keys:
        tensors[key] = -torch.rand(B, T, generator=g) * 3
    uid = np.array([f"p{i // 2}" for i in range(B)], dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uid}, meta_info={"global_steps": 7})


def algorithm(estimator="sae", **sae):
    cfg = {"gamma": 1.0, "lam": 1.0, "adv_estimator": estimator, "use_pf_ppo": False,
           "norm_adv_by_std_in_grpo": True}
    if sae:
        cfg["sae"] = sae
    return OmegaConf.create(cfg)


def run(data, estimator="sae", gamma=1.0, verl_lam=1.0, **sae):
    """veRL's compute_advantage as its trainers call it; `sae` are the algorithm.sae options."""
    return ray_trainer.compute_advantage(data, adv_estimator=estimator, gamma=gamma, lam=verl_lam, num_repeat=2,
                                         config=algorithm(estimator, **sae))


def python_c(code: str, env: dict | None = None) -> str:
    """Run `python -c code` in a fresh interpreter (so veRL's imports happen from scratch); its stdout,
    after asserting it exited 0."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_fresh_process_finds_sae_without_importing_sae_verl():
    code = (
        "import sys\n"
        "from verl.trainer.ppo import core_algos\n"
        "import verl.trainer.ppo.ray_trainer as rt\n"
        "import verl.trainer.ppo.v1.utils as v1\n"
        "from verl.trainer.ppo.v1 import trainer_base\n"
        "assert 'sae' in core_algos.ADV_ESTIMATOR_REGISTRY and 'vapo' in core_algos.ADV_ESTIMATOR_REGISTRY\n"
        "assert hasattr(rt.compute_advantage, '__sae_rl_original__')\n"
        "assert hasattr(v1.compute_advantage, '__sae_rl_original__')\n"
        "assert hasattr(trainer_base.PPOTrainer._compute_advantage, '__sae_rl_original__')\n"
        "assert hasattr(rt.compute_data_metrics, '__sae_rl_original__')\n"
        "print('plugin loaded by veRL:', 'sae_verl' in sys.modules)\n")
    assert "plugin loaded by veRL: True" in python_c(code)


def test_plugins_off_means_no_sae():
    """VERL_USE_EXTERNAL_PLUGINS=none is veRL's switch: then nothing of ours is installed."""
    code = ("from verl.trainer.ppo import core_algos\n"
            "print('sae' in core_algos.ADV_ESTIMATOR_REGISTRY)\n")
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    assert python_c(code, env).strip() == "False"


def test_importing_where_verl_trainer_cannot_import_is_harmless():
    code = ("import sys\n"
            "sys.modules['verl.trainer.ppo.ray_trainer'] = None  # as if its imports failed\n"
            "import verl, sae_verl\n"
            "from verl.trainer.ppo import core_algos\n"
            "assert 'sae' in core_algos.ADV_ESTIMATOR_REGISTRY\n"
            "try:\n"
            "    import verl.trainer.ppo.ray_trainer\n"
            "except ImportError:\n"
            "    print('ok')\n")
    assert python_c(code).strip().endswith("ok")


def test_sae_equals_sae_core_then_verl_whitening():
    data = run(batch(), threshold=0.3, lam=0.9)
    b = batch()
    want = compute_advantages(b.batch["token_level_rewards"], b.batch["values"], b.batch["response_mask"],
                              estimator="sae", logprobs=b.batch["old_log_probs"], threshold=0.3, lam=0.9)
    assert torch.equal(data.batch["advantages"], verl_F.masked_whiten(want.advantages, b.batch["response_mask"]))
    assert torch.equal(data.batch["returns"], want.returns)


def test_rollout_log_probs_are_preferred():
    both = batch(logprob_keys=("old_log_probs", "rollout_log_probs"))
    got = run(both, threshold=0.3).batch["advantages"]
    only_rollout = batch(logprob_keys=("rollout_log_probs",))
    only_rollout.batch["rollout_log_probs"] = both.batch["rollout_log_probs"]
    assert torch.equal(got, run(only_rollout, threshold=0.3).batch["advantages"])
    old = run(batch(logprob_keys=("old_log_probs", "rollout_log_probs")), threshold=0.3, logprobs="old_log_probs")
    assert not torch.equal(got, old.batch["advantages"])


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_every_token_a_boundary_is_verls_own_gae(gamma, lam):
    """threshold 1: every valid token (log-prob < 0) is a boundary, so sae is GAE at lam; veRL
    computes that GAE with its own loop and whitening."""
    ours = run(batch(), gamma=gamma, threshold=1.0, lam=lam)
    theirs = run(batch(), estimator="gae", gamma=gamma, verl_lam=lam)
    mask = batch().batch["response_mask"].bool()
    torch.testing.assert_close(ours.batch["advantages"][mask], theirs.batch["advantages"][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.batch["returns"][mask], theirs.batch["returns"][mask], rtol=1e-5, atol=1e-5)


def test_other_estimators_pass_through_untouched():
    original = ray_trainer.compute_advantage.__sae_rl_original__
    for estimator in ("gae", "grpo", "reinforce_plus_plus"):
        ours, theirs = run(batch(), estimator=estimator), original(batch(), estimator, 1.0, 1.0, 2, True,
                                                                   algorithm(estimator))
        assert torch.equal(ours.batch["advantages"], theirs.batch["advantages"]), estimator


def test_vapo():
    data = run(batch(), estimator="vapo", alpha=0.1)
    b = batch()
    want = compute_advantages(b.batch["token_level_rewards"], b.batch["values"], b.batch["response_mask"],
                              estimator="vapo", alpha=0.1)
    assert torch.equal(data.batch["returns"], want.returns)


def test_v1_trainer_path():
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    b = batch()
    keys = [f"{u}_0_{i}" for i, u in enumerate(b.non_tensor_batch["uid"])]
    v1 = compute_advantage_for_multi_trajectories(b, keys, "sae", gamma=1.0, lam=1.0, num_repeat=2,
                                                  config=algorithm(threshold=0.3))
    legacy = run(batch(), threshold=0.3)
    assert torch.equal(v1.batch["advantages"], legacy.batch["advantages"])


def test_step_metrics_reach_veRLs_data_metrics():
    data = run(batch(), threshold=0.3)
    metrics = ray_trainer.compute_data_metrics(batch=data, use_critic=True)
    b = batch()
    mask = b.batch["response_mask"].bool()
    boundary = (b.batch["old_log_probs"] < np.log(0.3)) & mask
    assert metrics["sae/boundary_fraction"] == pytest.approx(boundary.sum().item() / mask.sum().item())
    segments = 0
    for row, valid in zip(boundary, mask, strict=True):  # a segment starts at a boundary or the first valid token
        idx = valid.nonzero().flatten()
        segments += int(row.sum()) + int(len(idx) > 0 and not row[idx[0]])
    assert metrics["sae/mean_segment_length"] == pytest.approx(mask.sum().item() / segments)
    assert "critic/advantages/mean" in metrics  # veRL's own metrics are still there
    assert "sae/boundary_fraction" not in ray_trainer.compute_data_metrics(batch=data, use_critic=True)  # once


@pytest.mark.parametrize("change, flag", [
    (lambda d: d.batch.pop("values"), "critic.enable=True"),
    (lambda d: d.batch.pop("old_log_probs"), "calculate_log_probs=True"),
])
def test_missing_inputs_name_the_flag(change, flag):
    data = batch()
    change(data)
    with pytest.raises(ValueError, match=flag.replace(".", r"\.")):
        run(data)


def test_rules_the_batch_cannot_feed_are_named():
    with pytest.raises(ValueError, match="needs per-token entropies"):
        run(batch(), entropy_threshold=1.0)  # veRL 0.9.1 stores no 'entropys' in the batch
    with pytest.raises(ValueError, match=r"algorithm\.sae\.boundary=given: .*given_boundaries.*cannot"):
        run(batch(), boundary="given")


def test_entropy_rule_reads_the_batchs_entropys(tmp_path):
    data = batch()
    g = torch.Generator().manual_seed(3)
    data.batch["entropys"] = torch.rand(*data.batch["values"].shape, generator=g) * 2
    entropys = data.batch["entropys"].clone()
    got = run(data, entropy_threshold=1.0, dump_dir=str(tmp_path))
    b = batch()
    want = compute_advantages(b.batch["token_level_rewards"], b.batch["values"], b.batch["response_mask"],
                              estimator="sae", entropy=entropys, entropy_threshold=1.0)
    assert torch.equal(got.batch["returns"], want.returns)
    table = tj.read_table(tmp_path / "step-00000007.parquet")  # the dump carries what the rule read
    params = tj.read_info(table.schema).estimators["advantages"]
    inputs = table.drop_columns(["advantages", "returns", "boundaries"])
    again = tj.compute(inputs, **tj.estimator_kwargs(params))
    np.testing.assert_allclose(np.concatenate(again.column("advantages").to_pylist()),
                               np.concatenate(table.column("advantages").to_pylist()), rtol=1e-6, atol=1e-6)


def test_one_section_serves_sae_and_vapo():
    """algorithm.sae holds the options of both; each estimator reads its own (vapo takes no threshold)."""
    both = run(batch(), estimator="vapo", alpha=0.1, threshold=0.3, lam=0.9)
    alone = run(batch(), estimator="vapo", alpha=0.1)
    assert torch.equal(both.batch["advantages"], alone.batch["advantages"])
    sae = run(batch(), threshold=0.3, alpha=0.1)
    assert torch.equal(sae.batch["advantages"], run(batch(), threshold=0.3).batch["advantages"])


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="algorithm.sae.threshhold"):
        run(batch(), threshhold=0.3)


def test_the_registry_entry_explains_itself():
    with pytest.raises(RuntimeError, match="wrapper of veRL's compute_advantage"):
        core_algos.get_adv_estimator_fn("sae")(token_level_rewards=None, response_mask=None, config=None)


def test_importing_twice_wraps_once():
    import sae_verl

    before = ray_trainer.compute_advantage
    importlib.reload(sae_verl)
    sae_verl.install()
    assert ray_trainer.compute_advantage is before
    assert not hasattr(before.__sae_rl_original__, "__sae_rl_original__")
    assert sum(type(f).__name__ == "PatchingFinder" for f in sys.meta_path) == 1


def test_dump_dir_writes_the_standard(tmp_path):
    data = run(batch(), threshold=0.3, lam=0.9, dump_dir=str(tmp_path))
    run(batch(), threshold=0.3, lam=0.9, dump_dir=str(tmp_path))  # the same step again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000007-1.parquet", "step-00000007.parquet"]
    path = tmp_path / "step-00000007.parquet"
    summary = tj.validate_file(path)
    assert summary.rows == 6
    table = tj.read_table(path)
    mask = batch().batch["response_mask"]
    lengths = [int(m.nonzero().max()) + 1 for m in mask]
    assert [len(x) for x in table.column("response_ids").to_pylist()] == lengths
    assert table.column("group_id").to_pylist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert table.column("prompt_ids").to_pylist()[0] == batch().batch["prompts"][0, 2:].tolist()
    params = tj.read_info(table.schema).estimators["advantages"]
    assert params["threshold"] == 0.3 and params["lam"] == 0.9 and params["estimator"] == "sae"
    # what `sae recompute` would compute from the dump equals the (unwhitened) advantages veRL had
    again = tj.compute(table.drop_columns(["advantages", "returns", "boundaries"]), **tj.estimator_kwargs(params))
    np.testing.assert_allclose(np.concatenate(again.column("advantages").to_pylist()),
                               np.concatenate(table.column("advantages").to_pylist()), rtol=1e-6, atol=1e-6)
    returns = np.concatenate(table.column("returns").to_pylist())
    np.testing.assert_allclose(returns, np.concatenate([r[:n] for r, n in zip(data.batch["returns"].numpy(), lengths,
                                                                               strict=True)]), rtol=1e-6)


def test_verls_own_core_algos_tests_pass_with_the_plugin_installed():
    tests = SITE / "tests" / "trainer" / "ppo" / "test_core_algos_on_cpu.py"
    if not tests.exists():
        pytest.skip(f"veRL's wheel ships no {tests}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                          capture_output=True, text=True, timeout=600, cwd=tests.parent)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("script", ["run_gae.sh", "run_sae.sh"])
def test_example_scripts_are_valid_verl_configs(script, tmp_path):
    """Every setting of examples/verl/ composes into veRL 0.9.1's own ppo_trainer config (the runs
    themselves need GPUs and the hub), and the SAE run's options are ones sae_verl knows."""
    from hydra import compose, initialize_config_dir

    from sae_verl.estimator import options

    here = Path(__file__).resolve().parent.parent / "examples" / "verl"
    shell = f'python3() {{ printf "%s\\n" "$@"; }}; source "{here / script}"'
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DATA": str(tmp_path), "DUMP": str(tmp_path / "dump")})
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    config_dir = Path(verl.__file__).resolve().parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=args[2:])
    if script == "run_sae.sh":
        assert cfg.algorithm.adv_estimator == "sae" and cfg.critic.enable is True
        assert options(cfg.algorithm) == {"threshold": 0.2, "lam": 0.95, "dump_dir": str(tmp_path / "dump")}
    else:
        assert cfg.algorithm.adv_estimator == "gae" and cfg.algorithm.lam == 0.95


# ----------------------------------------------------------------------------------------------
# what the trainers tell the adapter: their step, and on v1 the TransferQueue fields


def nested_fields(data):
    """A stand-in for the v1 trainer's TransferQueue read: the fields its advantage step does not
    fetch, as veRL stores them (nested: one tensor per row, responses as long as the response,
    prompts without padding). Returns fetch(names) -> {name: nested tensor}."""
    b = data.batch
    mask = b["response_mask"].bool()
    lengths = [int(m.nonzero().max()) + 1 for m in mask]
    attn = b["attention_mask"][:, : b["prompts"].shape[1]].bool()
    stored = {
        "responses": torch.nested.nested_tensor([r[:n] for r, n in zip(b["responses"], lengths, strict=True)],
                                                layout=torch.jagged),
        "prompts": torch.nested.nested_tensor([p[a] for p, a in zip(b["prompts"], attn, strict=True)],
                                              layout=torch.jagged),
    }
    asked = []

    def fetch(names):
        asked.extend(names)
        missing = [n for n in names if n not in stored]
        if missing:
            raise KeyError(f"fields {missing} not found")
        return {n: stored[n] for n in names}

    fetch.asked = asked
    return fetch


def v1_view(data):
    """The batch as the v1 advantage step builds it: only the fields it fetches."""
    keep = ("response_mask", "rm_scores", "old_log_probs", "values", "token_level_rewards", "token_level_scores")
    tensors = {k: v for k, v in data.batch.items() if k in keep}
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": data.non_tensor_batch["uid"]})


def test_dumps_are_named_by_the_trainers_step_and_a_resumed_step_replaces_its_file(tmp_path, caplog):
    from sae_verl import estimator

    trainer = SimpleNamespace(global_steps=12)
    with estimator.trainer_step(trainer):
        run(batch(), threshold=0.3, dump_dir=str(tmp_path))  # meta_info says 7; the trainer says 12
        trainer.global_steps = 13
        run(batch(seed=1), threshold=0.3, dump_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000012.parquet", "step-00000013.parquet"]
    assert set(tj.read_table(tmp_path / "step-00000013.parquet").column("step").to_pylist()) == {13}
    # a resumed run (a new process: nothing dumped yet) trains step 13 again: its file replaces the old one
    estimator._dumped.clear()
    with estimator.trainer_step(SimpleNamespace(global_steps=13)), caplog.at_level("WARNING", "sae_verl"):
        run(batch(seed=2), threshold=0.3, dump_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000012.parquet", "step-00000013.parquet"]
    assert "replacing" in caplog.text and "step-00000013.parquet" in caplog.text
    first = tj.read_table(tmp_path / "step-00000013.parquet").column("values").to_pylist()[0]
    np.testing.assert_allclose(first, batch(seed=2).batch["values"][0, : len(first)].numpy())  # the new run's


def test_v1_dump_and_delimiter_rule_read_transferqueue(tmp_path):
    from sae_verl import estimator

    full = batch()
    fetch = nested_fields(full)
    trainer = SimpleNamespace(global_steps=2)
    delimiters = [int(full.batch["responses"][0, 1]), int(full.batch["responses"][2, 4])]
    with estimator.trainer_step(trainer, fetch=fetch, v1=True):
        got = run(v1_view(full), boundary="delimiter", delimiter_ids=delimiters, dump_dir=str(tmp_path))
    assert "responses" in fetch.asked and "prompts" in fetch.asked
    want = run(batch(), boundary="delimiter", delimiter_ids=delimiters)  # legacy: responses in the batch
    assert torch.equal(got.batch["advantages"], want.batch["advantages"])
    table = tj.read_table(tmp_path / "step-00000002.parquet")
    assert table.column("prompt_ids").to_pylist()[0] == full.batch["prompts"][0, 2:].tolist()
    mask = full.batch["response_mask"]
    first = int(mask[0].nonzero().max()) + 1
    assert table.column("response_ids").to_pylist()[0] == full.batch["responses"][0, :first].tolist()


def test_v1_without_the_field_names_the_v1_trainer():
    from sae_verl import estimator

    def fetch(names):
        raise KeyError("no such field")

    with estimator.trainer_step(SimpleNamespace(global_steps=1), fetch=fetch, v1=True):
        with pytest.raises(ValueError, match="v1 trainer did not store 'responses'"):
            run(v1_view(batch()), boundary="delimiter", delimiter_ids=[1])
        with pytest.raises(ValueError, match="bypass_mode"):
            run(v1_view(batch()), entropy_threshold=1.0)


def test_entropy_rule_on_the_legacy_trainer_says_no_setting_keeps_entropies():
    with pytest.raises(ValueError, match=r"drops them before the advantage step.*trainer\.use_v1=True"):
        run(batch(), entropy_threshold=1.0)


def test_v1_entropy_rule_reads_the_entropy_field():
    from sae_verl import estimator

    full = batch()
    g = torch.Generator().manual_seed(5)
    entropy = torch.rand(*full.batch["values"].shape, generator=g)
    mask = full.batch["response_mask"]
    lengths = [int(m.nonzero().max()) + 1 for m in mask]
    nested = torch.nested.nested_tensor([e[:n] for e, n in zip(entropy, lengths, strict=True)], layout=torch.jagged)
    with estimator.trainer_step(SimpleNamespace(global_steps=1), fetch=lambda names: {"entropy": nested}, v1=True):
        got = run(v1_view(full), entropy_threshold=0.5)
    b = batch().batch
    padded = torch.nested.to_padded_tensor(nested, 0.0)
    padded = torch.cat([padded, padded.new_zeros(padded.shape[0], mask.shape[1] - padded.shape[1])], dim=1)
    want = compute_advantages(b["token_level_rewards"], b["values"], mask, estimator="sae", entropy=padded,
                              entropy_threshold=0.5)
    assert torch.equal(got.batch["returns"], want.returns)


def pf_ppo_config(estimator, **sae):
    cfg = algorithm(estimator, **sae)
    cfg.use_pf_ppo = True
    cfg.pf_ppo = {"reweight_method": "pow", "weight_pow": 2.0}
    return cfg


def test_pf_ppo_resamples_as_for_verls_gae():
    """veRL applies PF-PPO after its GAE; sae does the same: the same resampling of the same rows."""
    torch.manual_seed(11)
    got = ray_trainer.compute_advantage(batch(), adv_estimator="sae", gamma=1.0, lam=1.0,
                                        config=pf_ppo_config("sae", threshold=0.3))
    plain = run(batch(), threshold=0.3)
    torch.manual_seed(11)
    want = core_algos.compute_pf_ppo_reweight_data(plain, "pow", 2.0)
    assert torch.equal(got.batch["advantages"], want.batch["advantages"])
    assert not torch.equal(got.batch["advantages"], plain.batch["advantages"])  # rows were resampled


def test_pf_ppo_on_the_v1_trainer_is_refused():
    from sae_verl import estimator

    with estimator.trainer_step(SimpleNamespace(global_steps=1), fetch=nested_fields(batch()), v1=True):
        with pytest.raises(ValueError, match=r"use_pf_ppo=True .* v1 trainer"):
            ray_trainer.compute_advantage(v1_view(batch()), adv_estimator="sae", config=pf_ppo_config("sae"))


def test_fit_knows_the_trainer_and_warms_the_kernels_once():
    import sae_verl
    from sae_verl import estimator

    assert hasattr(ray_trainer.RayPPOTrainer.fit, "__sae_rl_original__")
    estimator._warmed.discard("sae")
    seen = []
    fit = sae_verl._fit_wrapper(lambda self: seen.append(estimator.current_step().step) or "done")
    trainer = SimpleNamespace(global_steps=4, config=OmegaConf.create({"algorithm": algorithm(threshold=0.3)}))
    assert fit(trainer) == "done" and seen == [4]
    assert "sae" in estimator._warmed
    assert estimator.warm_up(trainer.config) is None  # once per process
    gae = SimpleNamespace(global_steps=1, config=OmegaConf.create({"algorithm": algorithm("gae")}))
    assert estimator.warm_up(gae.config) is None
