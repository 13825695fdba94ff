"""sae_openrlhf against the real OpenRLHF 0.11.2 code, in its own environment (.venv-openrlhf).

OpenRLHF is installed with --no-deps plus what its modules import. Stubbed, because they cannot
be installed on a machine without CUDA (conftest.py puts `stubs/` on sys.path):
- flash_attn: builds only against CUDA; OpenRLHF imports it at module level (models/ring_attn_utils);
- vllm: its wheels are CUDA builds that would replace the CPU torch; OpenRLHF's PPO command imports
  it at module level (trainer/ray/vllm_engine).
Everything else is the real package: openrlhf, deepspeed (it installs on the CPU), ray, transformers.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sae_openrlhf
from openrlhf.models.utils import compute_reward
from openrlhf.trainer.ppo_utils import experience_maker
from openrlhf.trainer.ppo_utils.experience import Experience
from sae_core import compute_advantages
from sae_openrlhf import train_ppo_ray

STUBS = str(Path(__file__).resolve().parent / "stubs")
Maker = experience_maker.RemoteExperienceMaker
UPSTREAM = Maker.compute_advantages_and_returns.__sae_rl_original__


def experiences(n_samples=4, A=12, seed=0, rollout_log_probs=False, gaps=True):
    """Two experiences of n_samples responses of A action tokens: right padding, a masked run in
    the middle of one response (tool output; gaps=False leaves it out), per-sample outcome rewards
    and a KL term."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(2):
        lengths = torch.randint(A // 2, A + 1, (n_samples,), generator=g)
        mask = torch.arange(A)[None, :] < lengths[:, None]
        if gaps:
            mask[0, 2:4] = False
        exp = Experience(
            index=list(range(k * n_samples, (k + 1) * n_samples)),
            rewards=torch.randint(0, 2, (n_samples,), generator=g).float(),
            action_mask=mask,
            kl=torch.rand(n_samples, A, generator=g) * 0.1,
            values=torch.rand(n_samples, A, generator=g),
            action_log_probs=-torch.rand(n_samples, A, generator=g) * 3,
            info={},
        )
        if rollout_log_probs:
            exp.rollout_log_probs = -torch.rand(n_samples, A, generator=g) * 3
        out.append(exp)
    return out


def maker(estimator="gae", lambd=0.95, gamma=1.0, sae=None, no_std_norm=False, kl_coef=0.01):
    """A RemoteExperienceMaker with only what compute_advantages_and_returns reads (as OpenRLHF's
    own tests build it: the real class, without its Ray actor groups)."""
    m = Maker.__new__(Maker)
    m.advantage_estimator = estimator
    m.kl_ctl = SimpleNamespace(value=kl_coef)
    advantage = SimpleNamespace(estimator=estimator, gamma=gamma, lambd=lambd, no_std_norm=no_std_norm,
                                sae=SimpleNamespace(**(sae or {"estimator": None})))
    m.strategy = SimpleNamespace(args=SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=4), reward=SimpleNamespace(clip_range=None),
        algo=SimpleNamespace(advantage=advantage)))
    return m


def test_the_patch_is_installed_on_the_real_class():
    assert Maker.compute_advantages_and_returns.__sae_rl_original__ is vars(Maker)["compute_advantages_and_returns"] \
        .__wrapped__


def test_sae_is_sae_core_plus_openrlhfs_normalisation():
    m = maker(sae={"estimator": "sae", "threshold": 0.3, "lam": 0.9})
    got = m.compute_advantages_and_returns(experiences())
    # by hand: OpenRLHF's shaped rewards, sae_core in zero mode, then OpenRLHF's normalisation
    exps = experiences()
    advs, rets, bnds = [], [], []
    for exp in exps:
        shaped = compute_reward(exp.rewards, 0.01, exp.kl, action_mask=exp.action_mask)
        out = compute_advantages(shaped, exp.values, exp.action_mask, estimator="sae", logprobs=exp.action_log_probs,
                                 threshold=0.3, lam=0.9, gamma=1.0, mask_mode="zero")
        advs.append(out.advantages)
        rets.append(out.returns)
        bnds.append(out.boundaries)
    mask = torch.cat([e.action_mask.flatten() for e in exps]).float()
    flat = torch.cat([a.flatten() for a in advs])
    mean = (flat * mask).sum() / mask.sum()
    rstd = (((flat - mean) ** 2 * mask).sum() / mask.sum()).clamp(min=1e-8).rsqrt()
    for exp, adv, ret in zip(got, advs, rets, strict=True):
        torch.testing.assert_close(exp.advantages, (adv - mean) * rstd)
        torch.testing.assert_close(exp.returns, ret)
    for exp, b in zip(got, bnds, strict=True):  # right-padded rows: each row's first valid token is 0
        valid = exp.action_mask.bool()
        b = b & valid
        n_valid, n_b = valid.sum(-1).float(), b.sum(-1).float()
        segments = n_b + (valid[:, 0] & ~b[:, 0]).float()
        assert exp.info["sae_boundary_fraction"].shape == (4,)
        torch.testing.assert_close(exp.info["sae_boundary_fraction"], n_b / n_valid)
        torch.testing.assert_close(exp.info["sae_mean_segment_length"], n_valid / segments)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9)])
def test_every_token_a_boundary_is_openrlhfs_own_gae(gamma, lam):
    """On right-padded responses. (An interior masked run is a zero-reward, zero-value stretch in
    OpenRLHF's GAE, discounted by lambda at each of its steps; masked tokens are never boundaries
    in sae_core, so sae keeps such a run inside a segment: see the README's mask modes.)"""
    ours = maker(gamma=gamma, sae={"estimator": "sae", "threshold": 1.0, "lam": lam})
    theirs = maker(gamma=gamma, lambd=lam)
    for a, b in zip(ours.compute_advantages_and_returns(experiences(gaps=False)),
                    theirs.compute_advantages_and_returns(experiences(gaps=False)), strict=True):
        mask = a.action_mask
        torch.testing.assert_close(a.advantages[mask], b.advantages[mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.returns[mask], b.returns[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo"])
def test_flag_off_is_upstream(estimator):
    ours = maker(estimator).compute_advantages_and_returns(experiences())
    theirs = UPSTREAM(maker(estimator), experiences())
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.advantages, b.advantages) and torch.equal(a.returns, b.returns)


def test_rollout_log_probs_are_preferred():
    sae = {"estimator": "sae", "threshold": 0.3}
    with_rollout = maker(sae=sae).compute_advantages_and_returns(experiences(rollout_log_probs=True))
    swapped = experiences(rollout_log_probs=True)
    for e in swapped:
        e.action_log_probs = e.rollout_log_probs
        e.rollout_log_probs = None
    plain = maker(sae=sae).compute_advantages_and_returns(swapped)
    for a, b in zip(with_rollout, plain, strict=True):
        assert torch.equal(a.advantages, b.advantages)


def test_vapo():
    got = maker(sae={"estimator": "vapo", "alpha": 0.1}).compute_advantages_and_returns(experiences())
    exp = experiences()[0]
    shaped = compute_reward(exp.rewards, 0.01, exp.kl, action_mask=exp.action_mask)
    want = compute_advantages(shaped, exp.values, exp.action_mask, estimator="vapo", alpha=0.1, mask_mode="zero")
    torch.testing.assert_close(got[0].returns, want.returns)


# ----------------------------------------------------------------------------------------------
# the command line wrapper


def wrapper(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "sae_openrlhf.train_ppo_ray", *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": STUBS, **(env or {})})


def test_help_lists_upstream_and_sae_flags():
    proc = wrapper("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--algo.advantage.sae.threshold" in proc.stdout and "--actor.model_name_or_path" in proc.stdout
    assert "--algo.advantage.sae.entropy_threshold" in proc.stdout  # every registry option of sae has a flag
    assert "sae" in proc.stdout.split("--algo.advantage.estimator", 1)[1].split("--", 1)[0]  # in the choices


@pytest.mark.parametrize("argv, message", [
    (["--algo.advantage.estimator", "sae", "--algo.advantage.sae.threshold", "1.5"], "probability in (0, 1]"),
    (["--algo.advantage.estimator", "sae", "--algo.advantage.sae.lam", "x"], "a number is needed"),
    (["--algo.advantage.estimator", "gae", "--algo.advantage.sae.threshold", "0.2"], "take effect only with"),
    (["--algo.advantage.estimator", "sae", "--algo.advantage.sae.segment_length", "4",
      "--algo.advantage.sae.quantile", "0.1"], "select different boundary rules"),
    (["--algo.advantage.estimator", "ppo"], "invalid choice"),
])
def test_bad_flags_are_refused_with_a_clear_message(argv, message):
    proc = wrapper(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


class Started(Exception):
    pass


def parse_in_process(argv, monkeypatch, capsys):
    """main(argv) in this process up to the parser's verdict: (exit code, stderr); 0 when the run
    got as far as OpenRLHF's ray.init."""
    import ray

    monkeypatch.setattr(sys, "argv", sys.argv[:1])

    def fake_init(*args, **kwargs):
        raise Started

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    try:
        train_ppo_ray.main(["--actor.model_name_or_path", "m", "--reward.model_name_or_path", "rm", *argv])
    except Started:
        return 0, capsys.readouterr().err
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    raise AssertionError("the run neither started nor exited")


@pytest.mark.parametrize("argv, message", [
    (["--algo.advantage.sae.boundary", "given"], "cannot provide"),  # no framework stores given boundaries
    (["--algo.advantage.sae.delimiter_ids", "13", "x"], "integer token ids"),
    (["--algo.advantage.sae.segment_length", "0"], "segment_length must be an integer"),
])
def test_flags_checked_as_the_registry_checks_the_options(argv, message, monkeypatch, capsys):
    code, err = parse_in_process(["--algo.advantage.estimator", "sae", *argv], monkeypatch, capsys)
    assert code == 2 and message in err


def test_flags_of_another_estimator_are_refused(monkeypatch, capsys):
    """One flag group serves sae and vapo; a flag the chosen estimator does not take is an error."""
    argv = ["--algo.advantage.estimator", "vapo", "--algo.advantage.sae.threshold", "0.2"]
    code, err = parse_in_process(argv, monkeypatch, capsys)
    assert code == 2 and "estimator 'vapo' takes only alpha; got unexpected option(s) threshold" in err


@pytest.mark.parametrize("ids", [["13", "14"], ["13,14"], ["[13, 14]"]])
def test_delimiter_ids_flag_forms(ids, monkeypatch, capsys):
    argv = ["--algo.advantage.estimator", "sae", "--algo.advantage.sae.delimiter_ids", *ids]
    code, err = parse_in_process(argv, monkeypatch, capsys)
    assert code == 0, err
    assert getattr(train_ppo_ray.last_args, "algo.advantage.sae.delimiter_ids") == (13, 14)


def test_entropy_rule_without_entropies_fails_at_the_first_step():
    """The flags accept the entropy rule (a registry rule), but OpenRLHF 0.11.2's experiences carry
    no per-token entropy: the first advantage computation says so."""
    m = maker(sae={"estimator": "sae", "entropy_threshold": 1.0})
    with pytest.raises(ValueError, match="needs per-token entropies"):
        m.compute_advantages_and_returns(experiences())


def test_an_sae_run_reaches_train_as_gae_with_a_critic_and_the_worker_hook(monkeypatch):
    """In-process up to OpenRLHF's ray.init (the first thing `train` does), which stops the run."""
    import ray

    import openrlhf.utils.config as config

    seen = {}

    def fake_init(*args, **kwargs):
        seen["runtime_env"] = kwargs.get("runtime_env")
        raise Started

    real_hierarchize = config.hierarchize
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(config, "hierarchize", lambda a: seen.setdefault("args", real_hierarchize(a)))
    with pytest.raises(Started):
        train_ppo_ray.main(["--actor.model_name_or_path", "m", "--reward.model_name_or_path", "rm",
                            "--algo.advantage.estimator", "sae", "--algo.advantage.sae.threshold", "0.1"])
    args = seen["args"]
    assert args.algo.advantage.estimator == "gae"  # OpenRLHF builds the critic and its GAE pipeline
    assert args.critic.model_name_or_path == "rm"
    assert vars(args.algo.advantage.sae)["estimator"] == "sae" and args.algo.advantage.sae.threshold == 0.1
    env = seen["runtime_env"]
    assert env["worker_process_setup_hook"] == "sae_openrlhf.worker_setup"
    assert env["env_vars"]["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] == "1"  # OpenRLHF's own runtime_env is kept


def test_an_earlier_setup_hook_is_chained(monkeypatch):
    env = train_ppo_ray.with_setup_hook({"worker_process_setup_hook": "mypkg.setup", "env_vars": {"A": "1"}})
    assert env["worker_process_setup_hook"] == "sae_openrlhf.worker_setup"
    assert env["env_vars"] == {"A": "1", "SAE_OPENRLHF_NEXT_SETUP_HOOK": "mypkg.setup"}
    called = []
    module = type(sys)("chained_hook_for_test")
    module.setup = lambda: called.append(True)
    monkeypatch.setitem(sys.modules, "chained_hook_for_test", module)
    monkeypatch.setenv("SAE_OPENRLHF_NEXT_SETUP_HOOK", "chained_hook_for_test.setup")
    sae_openrlhf.worker_setup()
    assert called == [True]


@pytest.mark.slow
def test_ray_workers_get_the_patch(tmp_path):
    """A real local Ray instance with the runtime_env the wrapper builds: a worker that imports
    OpenRLHF's experience maker finds it patched without importing sae_openrlhf itself."""
    code = (
        "import ray\n"
        "from sae_openrlhf.train_ppo_ray import with_setup_hook\n"
        f"ray.init(address='local', num_cpus=1, include_dashboard=False, runtime_env=with_setup_hook({{'env_vars': "
        f"{{'PYTHONPATH': {STUBS!r}}}}}))\n"
        "@ray.remote\n"
        "def probe():\n"
        "    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker as M\n"
        "    return hasattr(M.compute_advantages_and_returns, '__sae_rl_original__')\n"
        "print('worker:', ray.get(probe.remote()))\n"
        "ray.shutdown()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": STUBS}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worker: True" in proc.stdout


def test_openrlhfs_own_reward_shaping_tests_pass_with_the_patch_installed():
    """OpenRLHF's tests/test_reward_shaping.py (in its wheel) in a process where the patch is
    installed first. (That test loads its own copy of experience_maker.py by path; the patched
    class itself is compared with upstream in test_flag_off_is_upstream.)"""
    site = Path(experience_maker.__file__).resolve().parents[3]
    tests = site / "tests" / "test_reward_shaping.py"
    if not tests.exists():
        pytest.skip(f"OpenRLHF's wheel ships no {tests}")
    code = "import sys, sae_openrlhf, pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tests)], capture_output=True, text=True, timeout=600,
                          cwd=site, env={**os.environ, "PYTHONPATH": os.pathsep.join([STUBS, str(site)])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("script", ["run_gae.sh", "run_sae.sh"])
def test_example_scripts_reach_train(script, monkeypatch):
    """Every flag of examples/openrlhf/ goes through OpenRLHF 0.11.2's own parser and checks (through
    our wrapper, which for run_gae.sh must change nothing) up to `train`'s ray.init: the runs
    themselves need GPUs and the hub."""
    import ray

    import openrlhf.utils.config as config

    here = Path(__file__).resolve().parent.parent / "examples" / "openrlhf"
    proc = subprocess.run(["bash", "-c", f'python3() {{ printf "%s\\n" "$@"; }}; source "{here / script}"'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()
    module = "sae_openrlhf.train_ppo_ray" if script == "run_sae.sh" else "openrlhf.cli.train_ppo_ray"
    assert argv[:2] == ["-m", module]
    seen = {}
    real_hierarchize = config.hierarchize

    def fake_init(*args, **kwargs):
        raise Started

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(config, "hierarchize", lambda a: seen.setdefault("args", real_hierarchize(a)))
    with pytest.raises(Started):
        train_ppo_ray.main(argv[2:])
    args = seen["args"]
    assert args.algo.advantage.estimator == "gae" and args.critic.model_name_or_path  # a critic either way
    expected = "sae" if script == "run_sae.sh" else None
    assert vars(args.algo.advantage.sae)["estimator"] == expected
