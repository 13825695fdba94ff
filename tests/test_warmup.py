"""Compiling the numba kernels ahead of time (`warmup`, `sae warmup`), the disk cache, and the one-line
notice when numba compiles."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from sae_core import compute_advantages
from sae_core.kernels import numba_compile, numba_scan, warmup

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "compiling kernels, first use only"


def kernel_signatures():
    return {name: set(getattr(numba_scan, name).signatures) for name in ("_scan", "_diagnose")}


@pytest.mark.parametrize("kw, call", [
    # combinations the other tests compile too, so that this test adds no compilation of its own
    ({"dtype": "float64", "mask_dtype": "int16"},
     {"dtype": np.float64, "mask": np.int16, "data": np.float64}),
    ({"dtype": np.float32, "mask_dtype": "int64", "mask_mode": "zero", "critic_lam": 1.0},
     {"dtype": np.float32, "mask": np.int64, "data": np.float32, "mask_mode": "zero", "critic_lam": 1.0}),
])
def test_warmup_compiles_what_the_api_then_runs(kw, call):
    """After warmup, a compute_advantages call on arrays of those dtypes finds every kernel it runs
    compiled, including the search for a bad input."""
    warmup("sae", **kw)
    before = kernel_signatures()
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 20)).astype(call["dtype"]), rng.normal(size=(3, 20)).astype(call["dtype"])
    mask = (rng.random((3, 20)) < 0.8).astype(call["mask"])
    lp = -rng.exponential(size=(3, 20)).astype(call["data"])
    extra = {k: call[k] for k in ("mask_mode", "critic_lam") if k in call}
    compute_advantages(r, v, mask, estimator="sae", logprobs=lp, threshold=0.3, backend="numba", **extra)
    r[1, 3], mask[1, 3] = np.nan, 1
    with pytest.raises(ValueError, match="rewards has a non-finite value"):
        compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="numba", **extra)
    assert kernel_signatures() == before


def test_warmup_for_bfloat16_logprobs_compiles_what_verl_then_runs():
    """veRL may pass bfloat16 log-probs: they are read as bits by a kernel of their own."""
    torch = pytest.importorskip("torch")
    warmup("sae", dtype="float32", mask_dtype="int64", data_dtype=torch.bfloat16)
    before = kernel_signatures()
    rng = np.random.default_rng(1)
    r, v = (torch.from_numpy(rng.normal(size=(3, 20)).astype(np.float32)) for _ in range(2))
    lp = torch.from_numpy(-rng.exponential(size=(3, 20))).to(torch.bfloat16)
    mask = torch.ones(3, 20, dtype=torch.int64)
    compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="numba")
    lp[1, 3] = float("nan")
    with pytest.raises(ValueError, match="logprobs has a non-finite value"):
        compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="numba")
    assert kernel_signatures() == before


def test_warmup_takes_torch_dtypes_and_half_precision():
    torch = pytest.importorskip("torch")
    warmup("sae", dtype=torch.float64, mask_dtype=torch.int16, data_dtype=torch.float64)
    before = kernel_signatures()
    warmup("sae", dtype="float64", mask_dtype=np.dtype("int16"), data_dtype="float64")
    assert kernel_signatures() == before
    with pytest.raises(ValueError, match="mask_dtype must be"):
        warmup("sae", mask_dtype="complex64")
    with pytest.raises(ValueError, match="mask_dtype must be a numpy or torch dtype"):
        warmup("sae", mask_dtype=object())
    with pytest.raises(ValueError, match="estimator"):
        warmup("nope")


@pytest.fixture
def tiny_kernels(monkeypatch, tmp_path):
    """Kernels of this module count as sae_core's, cached in a fresh directory; the notice's state reset."""
    monkeypatch.setattr(numba_compile, "OURS", (__name__,))
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_compile, "NOTICE", numba_compile.NOTICE)
    monkeypatch.setattr(numba_compile.NOTICE, "compiled", 0)
    monkeypatch.setattr(numba_compile.NOTICE, "seconds", 0.0)


def test_one_notice_per_process_when_numba_compiles(tiny_kernels, caplog):
    @numba_compile.jit()
    def inner(x):
        return x + 1

    @numba_compile.jit()
    def outer(x):
        return inner(x) * 2

    with caplog.at_level(logging.INFO, logger="sae_core"):
        assert outer(1) == 4  # compiles outer, and inner inside it: one line
        assert outer(2.5) == 7.0  # another dtype: compiles again, said at INFO only
        assert outer(3) == 8  # compiled already: nothing
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if NOTICE in r.getMessage()]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert numba_compile.NOTICE.compiled == 2


def test_no_writable_cache_directory_compiles_without_cache(tiny_kernels, monkeypatch):
    """numba raises at decoration when no cache directory is writable; jit compiles without one."""
    monkeypatch.setattr(numba.config, "CACHE_LOCATOR_CLASSES", "IPythonCacheLocator")  # none applies here
    monkeypatch.setattr(numba_compile, "uncached", [])
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(lambda x: x)

    def twice(x):
        return 2 * x

    assert numba_compile.jit()(twice)(3) == 6
    assert numba_compile.uncached == ["test_no_writable_cache_directory_compiles_without_cache.<locals>.twice"]


def test_sae_warmup_compiles_once_then_loads_from_the_user_cache(tmp_path):
    """`sae warmup` in a fresh process with an empty cache outside the package (as for a read-only
    site-packages): one notice, one compilation; a second process loads it from that cache."""
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "UserWideCacheLocator", "XDG_CACHE_HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "sae_core.tools.cli", "warmup", "--estimator", "mc", "--mask-dtype", "uint8"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(NOTICE) == 1
    assert "mc float32 values, uint8 mask, skip mode" in first.stdout
    assert f"2 compiled, the rest loaded; numba cache: {tmp_path}" in first.stdout  # the scan and its search
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    assert NOTICE not in second.stderr and "0 compiled" in second.stdout
