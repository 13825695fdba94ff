"""The torch and Triton backends agree with the reference on the same strategies as numba.

Without a GPU (CI), tensors are on the CPU and Triton runs in its interpreter (conftest sets
TRITON_INTERPRET=1), with a 16-token chunk so that short rows still span several chunks. With a GPU
(benchmarks/gpu_check.sh), the same tests run on CUDA tensors.
"""

import dataclasses
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from helpers import batches, estimator_kwargs, ragged_kwargs, to_ragged
from sae_core import compute_advantages, compute_advantages_ragged

torch = pytest.importorskip("torch")
from sae_core import kernels  # noqa: E402
from sae_core.arrays import result_form  # noqa: E402
from sae_core.kernels import torch_affine, torch_scan, torch_schedule, triton_scan  # noqa: E402
from sae_core.registry import make_spec  # noqa: E402
from sae_core.types import GIVEN_LAMBDAS, EstimatorSpec, Rows  # noqa: E402

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TRITON = ["triton"] if triton_scan.available(DEVICE) else []
INTERPRETED = triton_scan.interpreted()


def on_device(kw: dict) -> dict:
    return {k: torch.from_numpy(v).to(DEVICE) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def assert_close(out, ref, dtype):
    """rtol 1e-5 in float32 (1e-10 in float64), with an absolute floor scaled by the outputs' size."""
    adv, ret = out.advantages.cpu().numpy(), out.returns.cpu().numpy()
    assert adv.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    scale = 1.0 + max(np.abs(ref.advantages).max(initial=0), np.abs(ref.returns).max(initial=0))
    np.testing.assert_allclose(adv, ref.advantages, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(ret, ref.returns, rtol=rtol, atol=rtol * scale)
    assert_array_equal(out.boundaries.cpu().numpy(), ref.boundaries)


@pytest.mark.parametrize("backend", ["torch", *TRITON])
@given(data=st.data())
def test_padded_matches_reference(backend, data):
    small = backend == "triton" and INTERPRETED
    batch = data.draw(batches(max_b=3 if small else 5, max_t=40))
    kw = data.draw(estimator_kwargs(batch))
    ref = compute_advantages(batch.rewards, batch.values, batch.mask, backend="reference", **kw)
    tensors = on_device({"r": batch.rewards, "v": batch.values, "m": batch.mask, **kw})
    out = compute_advantages(tensors.pop("r"), tensors.pop("v"), tensors.pop("m"), backend=backend, **tensors)
    assert out.advantages.device.type == DEVICE.type
    assert_close(out, ref, batch.rewards.dtype)


@pytest.mark.parametrize("backend", ["torch", *TRITON])
@given(data=st.data())
def test_ragged_matches_reference(backend, data):
    lengths = data.draw(st.lists(st.integers(0, 30), min_size=0, max_size=6))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    batch = data.draw(batches(max_b=1, t_values=[int(offsets[-1])]).filter(lambda b: b.shape[0] == 1))
    kw = ragged_kwargs(data.draw(estimator_kwargs(batch)))
    mask = to_ragged(batch.mask) if data.draw(st.booleans()) else None
    r, v = to_ragged(batch.rewards), to_ragged(batch.values)
    ref = compute_advantages_ragged(r, v, offsets, response_mask=mask, backend="reference", **kw)
    tensors = on_device({"r": r, "v": v, "m": mask, **kw})
    out = compute_advantages_ragged(tensors.pop("r"), tensors.pop("v"), offsets, response_mask=tensors.pop("m"),
                                    backend=backend, **tensors)
    assert_close(out, ref, r.dtype)


@pytest.mark.parametrize("backend", ["torch"] + (TRITON if not INTERPRETED else []))
@settings(max_examples=8)
@given(data=st.data())
def test_rows_up_to_40k_tokens(backend, data):
    """Long rows in float32, with interior gaps, lambda = 0 spots, gamma * lambda = 0.95, factors at
    and above the float32 limit F32_MAX_FACTOR (0.98), and large values (cancellation in A = u + S)."""
    B, T = 3, data.draw(st.sampled_from([4097, 17000, 40000]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    lengths = np.array([T, rng.integers(1, T + 1), rng.integers(1, T + 1)])
    mask = np.arange(T)[None, :] < lengths[:, None]
    mask &= rng.random((B, T)) < data.draw(st.sampled_from([1.0, 0.9]))  # tool-output gaps
    rewards = np.zeros((B, T), dtype=np.float32)
    rewards[np.arange(B), lengths - 1] = rng.integers(0, 2, size=B)
    rewards += rng.normal(0, 0.01, size=(B, T)).astype(np.float32)  # per-token KL terms
    values = (rng.uniform(0, 1, size=(B, T)) * data.draw(st.sampled_from([1.0, 1000.0]))).astype(np.float32)
    logprobs = np.log(rng.uniform(0.01, 1.0, size=(B, T))).astype(np.float32)
    kw = data.draw(st.sampled_from([
        {"estimator": "gae", "gamma": 1.0, "lam": 0.95},
        {"estimator": "gae", "gamma": 1.0, "lam": 0.98},  # float32 at its limit
        {"estimator": "gae", "gamma": 1.0, "lam": 0.99},  # float64
        {"estimator": "sae", "gamma": 0.98, "lam": 0.95, "logprobs": logprobs},
        {"estimator": "gae", "gamma": 0.95, "lam": 1.0, "critic_lam": 1.0},
        {"estimator": "sae", "gamma": 1.0, "lam": 0.0, "logprobs": logprobs, "threshold": 0.2},  # lambda = 0 spots
        {"estimator": "sae", "gamma": 1.0, "lam": 0.95, "logprobs": logprobs, "mask_mode": "zero"},
        {"estimator": "vapo", "gamma": 1.0, "alpha": 0.05},
        {"estimator": "mc", "gamma": 1.0},
    ]))
    ref = compute_advantages(rewards, values, mask, backend="reference", **kw)
    tensors = on_device({"r": rewards, "v": values, "m": mask, **kw})
    out = compute_advantages(tensors.pop("r"), tensors.pop("v"), tensors.pop("m"), backend=backend, **tensors)
    assert_close(out, ref, np.float32)


def test_scan_dtype_is_float32_only_where_it_is_close_enough():
    def dtype(out=torch.float32, lengths=(10,), **kw):
        spec = make_spec(kw.pop("estimator", "sae"), **kw)
        rows = Rows(rewards=torch.zeros(sum(lengths)), values=torch.zeros(sum(lengths)), mask=None,
                    starts=np.cumsum([0, *lengths[:-1]]), lengths=np.array(lengths), logprobs=None,
                    response_ids=None, entropy=None, given=None)
        sched = torch_schedule.schedule(spec, rows) if spec.estimator == "vapo" else None
        return torch_scan.scan_dtype(spec, [sched] if sched else [], out)

    assert dtype() == torch.float32  # sae: factors 1 and 0.95
    assert dtype(estimator="gae", lam=0.98) == torch.float32
    assert dtype(estimator="mc") == torch.float32  # factor 1: exact
    assert dtype(estimator="gae", lam=0.99) == torch.float64
    assert dtype(gamma=0.999) == torch.float64  # every token's factor is 0.999
    assert dtype(critic_lam=0.995) == torch.float64
    assert dtype(out=torch.float64) == torch.float64
    assert dtype(estimator="vapo", alpha=0.05, lengths=(10, 500)) == torch.float32  # lambda 1 - 1/25 = 0.96
    assert dtype(estimator="vapo", alpha=0.05, lengths=(10, 2000)) == torch.float64  # lambda 0.99
    lambdas = EstimatorSpec(estimator=GIVEN_LAMBDAS, gamma=0.5, lam=1.0, critic_lam=None, mask_mode="skip")
    assert torch_scan.scan_dtype(lambdas, [], torch.float32) == torch.float64  # the caller's lambdas: any factor


@pytest.mark.parametrize("backend", ["torch", *TRITON])
def test_float32_inputs_whose_scan_overflows_float32_get_the_float64_answer(backend):
    """u_0 = r_0 - V_0 = 6e38 is past float32's range, A_0 = r_0 + r_1 - V_0 = 3e38 is not."""
    r = np.array([[3e38, -3e38]], dtype=np.float32)
    v = np.array([[-3e38, 0.0]], dtype=np.float32)
    ref = compute_advantages(r, v, None, estimator="mc", backend="reference")
    out = compute_advantages(*on_device({"r": r, "v": v}).values(), None, estimator="mc", backend=backend)
    assert np.isfinite(ref.advantages).all()
    assert_close(out, ref, np.float32)


def loop_scan(f, e) -> np.ndarray:
    """S_t = e_t + f_t * S_{t+1}, S_N = 0, as a float64 loop over Python floats: [N] float64."""
    expected = np.zeros(f.shape[0])
    acc = 0.0
    for t in range(f.shape[0] - 1, -1, -1):
        acc = float(e[t]) + float(f[t]) * acc
        expected[t] = acc
    return expected


def test_scan_is_safe_in_float32_where_rescaling_tricks_fail():
    """(gamma * lambda)^-t rescaling overflows float32 past ~1,700 tokens at 0.95; ours only shrinks."""
    n = 40000
    f = torch.full((n,), 0.95)
    f[::997] = 0.0  # lambda_t = 0 spots
    e = torch.ones(n)
    s = torch_affine.reverse_affine_scan(f.clone(), e.clone())
    assert torch.isfinite(s).all()
    expected = loop_scan(f, e)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 5, 8, 9, 128, 129, 200, 513, 8192, 9000])
def test_cpu_scans_agree_with_a_float64_loop_and_with_the_doubling(n, monkeypatch):
    """The CPU scan (`_blocked_scan`: blocks of BLOCK tokens, totals scanned recursively, columns of
    at most SEQUENTIAL_MAX tokens as a Python loop) against a float64 loop written here: the same
    numbers within float32 rounding, with inf and NaN in the same places; also with every level
    scanned as blocks (SEQUENTIAL_MAX = 0), and the GPU's doubling scan run on the CPU."""
    rng = np.random.default_rng(n)
    f = torch.tensor(rng.choice([0.0, 0.95, 1.0, 0.5], size=n), dtype=torch.float32)
    e = torch.tensor(rng.normal(size=n), dtype=torch.float32)
    if n >= 200:
        e[n // 2] = float("inf")  # reaches back to the last f = 0 before it, NaN where inf * 0 meets it
    expected = loop_scan(f, e)
    short = n <= torch_affine.SEQUENTIAL_MAX
    loop = torch_affine.reverse_affine_scan(f.clone(), e.clone())
    doubling = torch_affine._doubling_scan(f.clone(), e.clone())
    monkeypatch.setattr(torch_affine, "SEQUENTIAL_MAX", 0)
    blocks = torch_affine.reverse_affine_scan(f.clone(), e.clone())
    for got in (loop, blocks, doubling):
        assert got.dtype == torch.float32 and got.shape == (n,)
        np.testing.assert_array_equal(np.isfinite(got.numpy()), np.isfinite(expected))
        np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(expected))
        ok = np.isfinite(expected)
        np.testing.assert_allclose(got.numpy()[ok], expected[ok], rtol=1e-5, atol=1e-5)
    if short:  # the loop itself: float64 arithmetic, rounded once
        np.testing.assert_array_equal(loop.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_scan_writes_into_e_and_hands_a_tail_state_to_the_blocks(dtype):
    """The blocked scan works in place: its result is e itself, with no padding copy, also when N is
    not a multiple of BLOCK (the last N mod BLOCK tokens go through the loop first and their state
    reaches the blocks). Against a float64 loop, 2^16 + 8, + 3 and + 7 tokens (four levels of
    blocks, then the loop), with f = 0 spots at and around the tail's edge."""
    for n in (65536 + 8, 65536 + 3, 65536 + 7):
        rng = np.random.default_rng(n)
        f = torch.tensor(rng.choice([0.0, 0.9, 0.97, 1.0], size=n, p=[0.01, 0.1, 0.79, 0.1]), dtype=dtype)
        f[n - n % torch_affine.BLOCK - 2:] = torch.tensor([0.97, 1.0, 0.5, 0.9, 1.0, 0.97, 0.9, 1.0, 0.8])[:2 + n % 8]
        e = torch.tensor(rng.normal(size=n), dtype=dtype)
        expected = loop_scan(f, e)
        s = torch_affine.reverse_affine_scan(f, e)
        assert s.data_ptr() == e.data_ptr() and s.shape == (n,) and s.dtype == dtype
        np.testing.assert_allclose(s.numpy(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_boundary_comparison_matches_torch_at_the_cut_and_off_the_numbers(dtype):
    """`torch_schedule._compare` (numpy for float32 / float64 CPU scores) gives what torch's own
    comparison gives: at the cut itself, one spacing either side, at +-inf and NaN (never a
    boundary), into a given bool tensor or a new one."""
    cut = torch_schedule.exact_cut(math.log(0.2), dtype, "below")
    at = torch.tensor([cut], dtype=dtype)
    near = [float(torch.nextafter(at, torch.tensor([x], dtype=dtype))) for x in (-math.inf, math.inf)]
    score = torch.tensor([cut, *near, -math.inf, math.inf, math.nan, 0.0, -5.0], dtype=dtype)
    for op, expected in (("lt", score < cut), ("gt", score > cut)):
        given = torch.ones(score.shape[0], dtype=torch.bool)
        got = torch_schedule._compare(op, score, cut, given)
        assert got.data_ptr() == given.data_ptr() and torch.equal(got, expected)
        assert torch.equal(torch_schedule._compare(op, score, cut, None), expected)
    assert torch.equal(score < cut, torch.tensor([False, True, False, True, False, False, False, True]))


@pytest.mark.parametrize("backend", ["torch", *TRITON])
def test_outputs_on_the_input_device_without_autograd(backend):
    rng = np.random.default_rng(0)
    r = torch.tensor(rng.normal(size=(2, 37)), dtype=torch.bfloat16, device=DEVICE)
    v = torch.tensor(rng.normal(size=(2, 37)), dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    lp = torch.tensor(-rng.exponential(size=(2, 37)), device=DEVICE)
    out = compute_advantages(r, v, torch.ones(2, 37, dtype=torch.bool, device=DEVICE), estimator="sae", logprobs=lp,
                             backend=backend)
    for x in out:
        assert x.device == r.device and not x.requires_grad
    assert out.advantages.dtype == torch.bfloat16 and out.boundaries.dtype == torch.bool


@pytest.mark.parametrize("backend", ["torch", *TRITON])
@pytest.mark.parametrize("name", ["rewards", "values"])
def test_non_finite_inputs_are_named(backend, name):
    r, v = np.zeros((3, 20)), np.zeros((3, 20))
    (r if name == "rewards" else v)[2, 7] = np.nan
    tensors = on_device({"r": r, "v": v})
    with pytest.raises(ValueError, match=f"{name} has a non-finite value .* at row 2, token 7"):
        compute_advantages(tensors["r"], tensors["v"], None, estimator="gae", backend=backend)


def test_triton_without_a_gpu_says_what_it_needs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if triton_scan.triton is None:
        pytest.skip("triton does not import here")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        compute_advantages(np.zeros((1, 3)), np.zeros((1, 3)), None, estimator="gae", backend="triton")


def test_auto_takes_numba_for_cpu_tensors():
    x = torch.zeros(2, 3)
    run, tensors = kernels.select("auto", result_form(x, x))
    assert run.__module__.endswith("numba_scan") and not tensors
    if DEVICE.type == "cuda":
        x = x.to(DEVICE)
        run, tensors = kernels.select("auto", result_form(x, x))
        assert run.__module__.endswith("triton_scan") and tensors


def cuda_form():
    """The result form of CUDA float32 tensors (select reads only the device's type: no GPU needed)."""
    x = torch.zeros(2, 3)
    return dataclasses.replace(result_form(x, x), device=torch.device("cuda"))


LAMBDAS = EstimatorSpec(estimator=GIVEN_LAMBDAS, gamma=1.0, lam=1.0, critic_lam=None, mask_mode="skip")


def test_given_lambdas_go_to_torch_on_cuda_and_never_to_triton():
    run, tensors = kernels.select("auto", cuda_form(), LAMBDAS)
    assert run.__module__.endswith("torch_scan") and tensors
    x = torch.zeros(2, 3, device=DEVICE)
    for form in (result_form(x, x), cuda_form()):
        with pytest.raises(ValueError, match="backend='triton' does not support the caller's own lambdas"):
            kernels.select("triton", form, LAMBDAS)
    run, _ = kernels.select("auto", result_form(x.cpu(), x.cpu()), LAMBDAS)
    assert run.__module__.endswith("numba_scan")


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_cpu_backends_with_cuda_tensors_warn_of_the_round_trip(backend):
    with pytest.warns(UserWarning, match=f"backend='{backend}' computes on the CPU: the cuda tensors go to host"):
        run, tensors = kernels.select(backend, cuda_form())
    assert not tensors
    x = torch.zeros(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.select(backend, result_form(x, x))  # CPU tensors: no warning


def test_unknown_backend_is_named():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.select("cuda", result_form(x, x))


@given(data=st.data())
@settings(max_examples=20)
def test_cpu_row_groups_change_nothing(data):
    """On the CPU the torch backend scans rows in groups; any grouping gives the same numbers."""
    batch = data.draw(batches(max_b=6, max_t=30))
    kw = data.draw(estimator_kwargs(batch))
    whole = compute_advantages(batch.rewards, batch.values, batch.mask, backend="torch", **kw)
    saved = torch_scan.CPU_GROUP_TOKENS
    torch_scan.CPU_GROUP_TOKENS = data.draw(st.integers(1, 40))
    try:
        grouped = compute_advantages(batch.rewards, batch.values, batch.mask, backend="torch", **kw)
    finally:
        torch_scan.CPU_GROUP_TOKENS = saved
    # the groups move chunk edges, so float rounding may differ in the last bits
    tol = 1e-6 if batch.rewards.dtype == np.float32 else 1e-12
    for a, b in zip(grouped[:2], whole[:2]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * (1 + np.abs(b).max(initial=0)))
    assert_array_equal(grouped.boundaries, whole.boundaries)


@pytest.mark.parametrize("backend", ["torch", *TRITON])
@pytest.mark.parametrize("threshold", [0.2, 0.1, 0.3, 0.05, 0.5])
def test_float32_logprobs_at_the_threshold_compare_like_float64(backend, threshold):
    """The float32 values either side of log(threshold) fall where the reference puts them."""
    cut = np.float32(np.log(threshold))
    near = np.array([[np.nextafter(cut, np.float32(-1)), cut, np.nextafter(cut, np.float32(1))]], dtype=np.float32)
    entropy = -near
    z = np.zeros((1, 3), dtype=np.float32)
    for kw in ({"logprobs": near, "threshold": threshold},
               {"entropy": entropy, "entropy_threshold": float(-np.log(threshold))}):
        ref = compute_advantages(z, z, None, estimator="sae", backend="reference", **kw)
        out = compute_advantages(*on_device({"r": z, "v": z}).values(), None, estimator="sae", backend=backend,
                                 **on_device(kw))
        assert_array_equal(out.boundaries.cpu().numpy(), ref.boundaries)


@pytest.mark.parametrize("mask_mode", ["skip", "zero"])
def test_given_lambdas_on_the_device_match_the_reference(mask_mode):
    from sae_core import compute_advantages_from_lambdas

    rng = np.random.default_rng(2)
    B, T = 4, 300
    r, v = rng.normal(size=(B, T)).astype(np.float32), rng.normal(size=(B, T)).astype(np.float32)
    mask = rng.random((B, T)) < 0.8
    lam = np.where(mask, rng.uniform(size=(B, T)), np.nan)
    kw = {"gamma": 0.99, "mask_mode": mask_mode, "critic_lam": 0.95}
    ref = compute_advantages_from_lambdas(r, v, mask, lam, backend="reference", **kw)
    tensors = on_device({"r": r, "v": v, "m": mask, "lam": lam})
    for backend in ("auto", "torch"):
        out = compute_advantages_from_lambdas(tensors["r"], tensors["v"], tensors["m"], tensors["lam"],
                                              backend=backend, **kw)
        assert out.advantages.device.type == DEVICE.type
        assert_close(out, ref, np.float32)


@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_sae_with_every_token_a_boundary_scans_as_gae_does(mode):
    """gamma 0.984375 > 0.98 with lam 0: gae's only factor is 0 (float32); sae at threshold 1 has gamma
    only after each row's last valid token, where it multiplies 0, so it must scan in the same dtype
    and equal gae to the bit (hypothesis found it scanning in float64 and differing in the last bit).
    Right padding: in zero mode a trailing pad takes part but has A = 0."""
    rng = np.random.default_rng(0)
    B, T = 6, 40
    lengths = rng.integers(5, T + 1, B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = rng.normal(size=(B, T)).astype(np.float32) * mask
    values = rng.normal(size=(B, T)).astype(np.float32) * mask
    logprobs = -rng.uniform(0.01, 5.0, size=(B, T)).astype(np.float32)
    kw = dict(gamma=0.984375, lam=0.0, mask_mode=mode, backend="torch")
    t = {k: torch.from_numpy(v) for k, v in dict(rewards=rewards, values=values, mask=mask, logprobs=logprobs).items()}
    sae = compute_advantages(t["rewards"], t["values"], t["mask"], estimator="sae", logprobs=t["logprobs"],
                             threshold=1.0, **kw)
    gae = compute_advantages(t["rewards"], t["values"], t["mask"], estimator="gae", **kw)
    assert_array_equal(sae.advantages.numpy(), gae.advantages.numpy())
    assert_array_equal(sae.returns.numpy(), gae.returns.numpy())


# the CPU path's fast mask checks (`torch_schedule._all_zero_one`) and its numpy-backed outputs
MB, MT = 3, 700  # the mask-check tests: 2100 tokens on CPU tensors


def mask_batch():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(MB, MT)).astype(np.float32)
    v = rng.normal(size=(MB, MT)).astype(np.float32)
    lp = np.log(rng.uniform(0.01, 1.0, (MB, MT))).astype(np.float32)
    mask = np.ones((MB, MT), dtype=bool)
    mask[1, 600:] = False
    return r, v, mask, lp


BAD_MASK = {np.float32: [0.5, 2.0, -1.0, np.nan, np.inf, 1e-45, np.float32(1) - np.float32(2.0 ** -24), -1e-45],
       np.float64: [0.5, 1.0 + 2.0 ** -52, 1e-300, np.nan], np.int64: [2, -1, 2 ** 40], np.uint8: [2, 255],
       np.int32: [-2, 7]}


@pytest.mark.parametrize("dtype", list(BAD_MASK), ids=lambda d: np.dtype(d).name)
def test_torch_reports_a_mask_entry_other_than_0_1(dtype):
    r, v, mask, lp = mask_batch()
    for value in BAD_MASK[dtype]:
        for row, token in [(0, 0), (1, 650), (2, MT - 1)]:
            m = mask.astype(dtype)
            m[row, token] = value
            args = [torch.from_numpy(x) for x in (r, v, m, lp)]
            with pytest.raises(ValueError, match=rf"response_mask must hold only 0 and 1; row {row}, token {token}"):
                compute_advantages(args[0], args[1], args[2], estimator="sae", logprobs=args[3], backend="torch")


@pytest.mark.parametrize("dtype", list(BAD_MASK), ids=lambda d: np.dtype(d).name)
def test_torch_accepts_0_1_masks_and_matches_reference(dtype):
    r, v, mask, lp = mask_batch()
    m = mask.astype(dtype)
    got = compute_advantages(*(torch.from_numpy(x) for x in (r, v)), torch.from_numpy(m), estimator="sae",
                             logprobs=torch.from_numpy(lp), backend="torch")
    want = compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend="reference")
    np.testing.assert_allclose(got.advantages.numpy(), want.advantages, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.returns.numpy(), want.returns, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.boundaries.numpy(), want.boundaries)
    got.advantages.add_(1.0)  # the outputs are ordinary writable tensors, each with storage of its own
    assert got.advantages.is_contiguous() and got.advantages.shape == (MB, MT)
    for x in got:
        assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
