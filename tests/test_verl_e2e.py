"""veRL 0.9.1's real trainer (`python -m verl.trainer.main_ppo`) with sae_verl, end to end on the CPU.

Each run is examples/verl/run_cpu.sh in a subprocess: a private Ray instance, veRL's workers
(FSDP2 actor, critic, reference), the harness's transformers rollout, 2 training steps of 4
prompts with a random tiny Qwen2. One asset build (model, tokenizer, prompts) serves every run.
Four runs, about 1 to 1.5 minutes each on 2 CPU cores:

- legacy trainer, sae, with rollout.n=2, KL in the reward (a reference policy), remove-padding,
  the sampler's log-probs (top-p 0.8) and a trajectory dump;
- legacy trainer, gae, on the same data;
- v1 trainer (TransferQueue), sae, with a trajectory dump;
- v1 trainer, gae.

The dumps are checked against sae_core: the files validate, are named by the trainer's step, and
their boundaries and advantages are what sae_core computes from their own columns.
"""

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("SAE_REQUIRE_FRAMEWORKS"):
    import verl  # noqa: F401
else:
    pytest.importorskip("verl")

from sae_core import compute_advantages  # noqa: E402
from sae_core import trajectory as tj  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "verl" / "run_cpu.sh"
ASSETS = ROOT / "examples" / "verl" / "cpu" / "verl_cpu_assets.py"
TIMEOUT = 420  # seconds per run; a run takes 60-100 s here
THRESHOLD, LAM = 0.3, 0.9  # not the defaults, so that the dump's parameters are the ones set
SAE = [f"+algorithm.sae.threshold={THRESHOLD}", f"+algorithm.sae.lam={LAM}"]
STEP_LINE = re.compile(r"\bstep:(\d+) - (.*)$")


def parse_metrics(output: str) -> dict[int, dict[str, float]]:
    """veRL's console lines `step:N - key:value - key:value ...` as {N: {key: value}} (values that
    are not numbers are left out)."""
    steps = {}
    for line in output.splitlines():
        match = STEP_LINE.search(line)
        if not match:
            continue
        metrics = {}
        for item in match.group(2).split(" - "):
            key, _, value = item.partition(":")
            value = re.sub(r"^np\.\w+\((.*)\)$", r"\1", value.strip())
            try:
                metrics[key.strip()] = float(value)
            except ValueError:
                pass
        steps[int(match.group(1))] = metrics
    return steps


class Run:
    def __init__(self, output: str, dump: Path | None):
        self.output, self.dump = output, dump
        self.metrics = parse_metrics(output)


@pytest.fixture(scope="module")
def cpu_home(tmp_path_factory):
    """The shared assets: built once here, reused by every run (the script finds them by hash)."""
    home = tmp_path_factory.mktemp("verl-cpu-home")
    subprocess.run([sys.executable, str(ASSETS), str(home)], check=True, capture_output=True, timeout=300)
    return home


@pytest.fixture(scope="module")
def run_harness(cpu_home, tmp_path_factory):
    """run_harness(name, *overrides, dump=False) -> Run: run_cpu.sh once per name (cached)."""
    done: dict[str, Run] = {}

    def run(name: str, *overrides: str, dump: bool = False) -> Run:
        if name in done:
            return done[name]
        work = tmp_path_factory.mktemp(f"run-{name}")
        dump_dir = work / "dump" if dump else None
        args = [*overrides, *([f"+algorithm.sae.dump_dir={dump_dir}"] if dump_dir else [])]
        env = dict(os.environ, SAE_CPU_HOME=str(cpu_home), SAE_CPU_RUN_DIR=str(work), PYTHON=sys.executable,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(["bash", str(SCRIPT), *args], env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            output, _ = proc.communicate()
            pytest.fail(f"run {name} took over {TIMEOUT} s; its output ends with:\n{output[-6000:]}")
        assert proc.returncode == 0, f"run {name} exited {proc.returncode}; its output ends with:\n{output[-6000:]}"
        done[name] = Run(output, dump_dir)
        return done[name]

    return run


def legacy_sae(run_harness):
    # calculate_log_probs: the sampler's processed log-probs reach the batch (rollout_log_probs), which
    # the adapter reads by default; top_p < 1 makes them recognisable (below)
    return run_harness("legacy-sae", *SAE, "actor_rollout_ref.rollout.n=2", "algorithm.use_kl_in_reward=True",
                       "actor_rollout_ref.model.use_remove_padding=True",
                       "actor_rollout_ref.rollout.calculate_log_probs=True", "actor_rollout_ref.rollout.top_p=0.8",
                       dump=True)


def v1_sae(run_harness):
    return run_harness("v1-sae", *SAE, "trainer.use_v1=True", "trainer.total_training_steps=2", dump=True)


def check_steps(run: Run, estimator: str) -> None:
    """Two steps logged, each with the advantage step's timing and the critic's metrics; the SAE
    metrics exactly when the estimator is sae."""
    assert sorted(run.metrics) == [1, 2], run.output[-4000:]
    for step, metrics in run.metrics.items():
        assert "timing_s/adv" in metrics, (step, sorted(metrics))
        for key in ("critic/values/mean", "critic/advantages/mean", "critic/vf_loss", "actor/pg_loss"):
            assert key in metrics and math.isfinite(metrics[key]), (step, key)
        if estimator == "sae":
            assert 0.0 < metrics["sae/boundary_fraction"] < 1.0, metrics["sae/boundary_fraction"]
            assert metrics["sae/mean_segment_length"] >= 1.0
        else:
            assert not any(key.startswith("sae/") for key in metrics), sorted(metrics)
    # the rollout ran in a Ray worker that imported the harness (examples/verl/cpu on PYTHONPATH)
    assert "hf_cpu rollout server" in run.output


def check_dump(run: Run, rows_per_step: int) -> None:
    """One file per trainer step, named by the step; each validates, and its boundaries and
    advantages are what sae_core computes from its own columns."""
    names = sorted(p.name for p in run.dump.iterdir())
    assert names == ["step-00000001.parquet", "step-00000002.parquet"], names
    for step, name in enumerate(names, start=1):
        path = run.dump / name
        summary = tj.validate_file(path)
        assert summary.rows == rows_per_step
        table = tj.read_table(path)
        assert set(table.column("step").to_pylist()) == {step}
        params = tj.read_info(table.schema).estimators["advantages"]
        assert (params["estimator"], params["threshold"], params["lam"]) == ("sae", THRESHOLD, LAM)

        padded = tj.to_padded(table)
        mask = padded["response_mask"]
        logprobs = padded["logprobs"]
        assert mask.any(axis=1).all()
        assert np.array_equal(padded["boundaries"].astype(bool)[mask], (logprobs < math.log(THRESHOLD))[mask])
        fraction = padded["boundaries"].astype(bool)[mask].mean()
        assert 0.0 < fraction < 1.0, fraction  # both kinds of tokens: the check above means something

        out = compute_advantages(padded["rewards"], padded["values"], mask, estimator="sae",
                                 gamma=params["gamma"], threshold=THRESHOLD, lam=LAM, logprobs=logprobs)
        np.testing.assert_allclose(out.advantages[mask], padded["advantages"][mask], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.returns[mask], padded["returns"][mask], rtol=1e-5, atol=1e-6)
        totals = (padded["rewards"] * mask).sum(axis=1)
        assert np.ptp(totals) > 0, totals  # the reward is not constant across responses


def test_legacy_trainer_sae_with_n2_kl_in_reward_remove_padding(run_harness):
    run = legacy_sae(run_harness)
    check_steps(run, "sae")
    for metrics in run.metrics.values():
        assert "actor/reward_kl_penalty" in metrics and "timing_s/ref" in metrics
    check_dump(run, rows_per_step=8)  # 4 prompts x n=2
    # the boundaries came from the rollout's log-probs: veRL compared them with the actor's (so the
    # batch had them), and a token alone in its top-p nucleus has processed log-prob exactly 0, which
    # the actor's recomputed log-probs (the full distribution) never give
    for metrics in run.metrics.values():
        assert metrics["training/rollout_probs_diff_mean"] > 0
    zeros = 0
    for path in sorted(run.dump.iterdir()):
        padded = tj.to_padded(tj.read_table(path))
        zeros += int((padded["logprobs"][padded["response_mask"]] == 0).sum())
    assert zeros > 0


def test_legacy_trainer_gae_on_the_same_data(run_harness):
    check_steps(run_harness("legacy-gae", "algorithm.adv_estimator=gae"), "gae")  # the assets of cpu_home


def test_v1_trainer_sae_dumps_one_file_per_step(run_harness):
    run = v1_sae(run_harness)
    check_steps(run, "sae")
    check_dump(run, rows_per_step=4)


def test_v1_trainer_gae(run_harness):
    check_steps(run_harness("v1-gae", "trainer.use_v1=True", "algorithm.adv_estimator=gae"), "gae")
