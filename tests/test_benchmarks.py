"""The benchmark's stand-in for veRL's loop computes what veRL does (GAE in skip mode)."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import estimators as bench  # noqa: E402

from sae_core import compute_advantages  # noqa: E402


def test_loop_gae_is_skip_mode_gae():
    r, v, m, _ = bench.make_inputs(5, 300)
    m[1, 50:80] = False  # an interior gap
    adv, ret = bench.loop_gae(torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m), 0.99, 0.95)
    ours = compute_advantages(r, v, m, estimator="gae", gamma=0.99, lam=0.95)
    np.testing.assert_allclose(adv.numpy()[m], ours.advantages[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret.numpy()[m], ours.returns[m], rtol=1e-5, atol=1e-5)


def test_inputs_are_rlvr_like():
    r, v, m, lp = bench.make_inputs(8, 1000)
    assert (r[~m] == 0).all() and (np.count_nonzero(r, axis=1) <= 1).all()
    assert (lp < 0).all() and 0.01 < (lp < np.log(0.2)).mean() < 0.2


def test_recompute_benchmark_runs(tmp_path):
    """A small run of benchmarks/recompute.py: it makes its dataset, times all three and prints the ratio."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "recompute.py"
    proc = subprocess.run([sys.executable, str(script), "--tokens", "3e5", "--shards", "2", "--rounds", "1",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "recompute / floor =" in proc.stdout and "dataset: 2 shards" in proc.stdout
