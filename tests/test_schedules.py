"""sae_core.schedules (lambda_t and boundaries of one row) and the caller's own lambdas on every
CPU backend, checked at the kernel level (types.Rows in, the backends' run functions)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from sae_core import kernels, schedules
from sae_core.arrays import result_form
from sae_core.registry import make_spec
from sae_core.types import GIVEN_LAMBDAS, PROBLEM_COLUMNS, EstimatorSpec, Rows

F64 = np.dtype(np.float64)


def lambdas_spec(gamma=1.0, mask_mode="skip", critic_lam=None) -> EstimatorSpec:
    return EstimatorSpec(estimator=GIVEN_LAMBDAS, gamma=gamma, lam=1.0, critic_lam=critic_lam,
                         mask_mode=mask_mode)


def padded_rows(rewards, values, mask, **columns) -> Rows:
    """Rows of a padded [B, T] batch (numpy), per-token columns flattened."""
    B, T = rewards.shape
    return Rows(rewards=rewards.reshape(-1), values=values.reshape(-1),
                mask=None if mask is None else mask.reshape(-1), starts=np.arange(B, dtype=np.int64) * T,
                lengths=np.full(B, T, dtype=np.int64), **{k: v.reshape(-1) for k, v in columns.items()})


def ragged_rows(lengths, rng, masked=True, **columns) -> Rows:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return Rows(rewards=rng.normal(size=n), values=rng.normal(size=n),
                mask=(rng.random(n) < 0.7) if masked else None, starts=offsets[:-1].copy(),
                lengths=np.diff(offsets), **columns)


def cpu_run(backend, spec, rows):
    run, tensors = kernels.select(backend, result_form(rows.rewards, rows.values), spec)
    assert not tensors
    adv, ret, bnd, problems = run(spec, rows, F64)
    assert (problems < 0).all()
    return adv, ret, bnd


def torch_run(spec, rows):
    torch = pytest.importorskip("torch")

    def t(x):
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x))

    trows = Rows(rewards=t(rows.rewards), values=t(rows.values), mask=t(rows.mask), starts=rows.starts,
                 lengths=rows.lengths, logprobs=t(rows.logprobs), response_ids=t(rows.response_ids),
                 entropy=t(rows.entropy), given=t(rows.given), lambdas=t(rows.lambdas))
    run, tensors = kernels.select("torch", result_form(trows.rewards, trows.values), spec)
    assert tensors
    adv, ret, bnd, problems = run(spec, trows, F64)
    assert (problems < 0).all()
    return adv.numpy(), ret.numpy(), bnd.numpy()


# ----------------------------------------------------------------------------------------------
# one row, by hand

VALID = np.array([True, False, True, True, False, False, True])  # interior gaps of one and two tokens


def test_next_positions_per_mask_mode():
    skip = make_spec("gae", mask_mode="skip")
    zero = make_spec("gae", mask_mode="zero")
    assert schedules.next_positions(skip, VALID).tolist() == [2, 2, 3, 6, 6, 6, -1]
    assert schedules.next_positions(zero, VALID).tolist() == [1, 2, 3, 4, 5, 6, -1]


def test_lambda_table():
    boundaries = np.array([False, False, False, True, False, False, True])
    for mode in ("skip", "zero"):
        assert_array_equal(schedules.row_lambdas(make_spec("gae", lam=0.9, mask_mode=mode), VALID, boundaries),
                           np.full(7, 0.9))
        assert_array_equal(schedules.row_lambdas(make_spec("mc", mask_mode=mode), VALID, boundaries), np.ones(7))
        vapo = schedules.row_lambdas(make_spec("vapo", alpha=0.5, mask_mode=mode), VALID, boundaries)
        assert_allclose(vapo, np.full(7, 1.0 - 1.0 / (0.5 * 4)))  # L = 4 valid tokens
    # sae: lam where token next(t) is a boundary (1 where t has no next)
    sae = schedules.row_lambdas(make_spec("sae", lam=0.5, mask_mode="skip"), VALID, boundaries)
    assert sae.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0]
    sae = schedules.row_lambdas(make_spec("sae", lam=0.5, mask_mode="zero"), VALID, boundaries)
    assert sae.tolist() == [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0]
    # vapo on a row without valid tokens: lambda 0
    assert schedules.row_lambdas(make_spec("vapo"), np.zeros(3, bool), np.zeros(3, bool)).tolist() == [0.0] * 3
    # the caller's lambdas: read at valid tokens only, 1 at masked ones
    given_lam = np.array([0.1, np.nan, 0.3, 0.4, np.nan, np.nan, 0.7])
    assert schedules.row_lambdas(lambdas_spec(), VALID, boundaries, given_lam).tolist() == [
        0.1, 1.0, 0.3, 0.4, 1.0, 1.0, 0.7]


def test_boundary_rules_by_hand():
    valid = np.array([True, True, False, True, True, True])
    logprobs = np.log([0.5, 0.1, np.nan, 0.05, 0.9, 0.15])
    ids = np.array([7, 13, 13, 5, 13, 2])
    entropy = np.array([0.1, 2.0, np.nan, 0.5, 3.0, 0.2])
    data = {"logprobs": logprobs, "response_ids": ids, "entropy": entropy,
            "given_boundaries": np.array([True, False, True, False, False, True])}

    def b(**options):
        return schedules.row_boundaries(make_spec("sae", **options), valid, data).tolist()

    assert b(threshold=0.2) == [False, True, False, True, False, True]
    assert b(segment_length=2) == [True, False, False, True, False, True]  # valid tokens k = 0, 2, 4
    assert b(delimiter_ids=[13]) == [False, False, False, True, False, True]  # after a valid 13
    assert b(entropy_threshold=1.0) == [False, True, False, False, True, False]
    assert b(boundary="given") == [True, False, False, False, False, True]
    cut = np.quantile(logprobs[valid], 0.4)
    assert b(quantile=0.4) == [bool(v and x < cut) for v, x in zip(valid, logprobs)]
    assert not schedules.row_boundaries(make_spec("gae"), valid, data).any()


def test_row_advantages_by_hand():
    """gamma 0.5, lam 0.5, skip mode over a gap: delta_t = r_t + 0.5 V_next(t) - V_t."""
    spec = make_spec("gae", gamma=0.5, lam=0.5)
    valid = np.array([True, False, True])
    r, v = np.array([1.0, np.nan, 2.0]), np.array([1.0, np.nan, 4.0])
    adv, ret = schedules.row_advantages(spec, valid, r, v, schedules.row_lambdas(spec, valid, None))
    a2 = 2.0 - 4.0
    a0 = (1.0 + 0.5 * 4.0 - 1.0) + 0.25 * a2
    assert adv.tolist() == [a0, 0.0, a2] and ret.tolist() == [a0 + 1.0, 0.0, a2 + 4.0]


@settings(max_examples=40)
@given(data=st.data())
def test_affine_form_reproduces_the_recursion(data):
    """The kernels' form S_t = e_t + f_t S_{t+1} with f_t = gamma c_t (c from affine_factors) and
    A_t = u_t + S_{t+1} gives row_advantages' A_t, in both mask modes."""
    T = data.draw(st.integers(0, 12))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    valid = rng.random(T) < 0.7
    mode = data.draw(st.sampled_from(["skip", "zero"]))
    spec = lambdas_spec(gamma=float(rng.uniform()), mask_mode=mode)
    lam = schedules.row_lambdas(spec, valid, None, rng.uniform(size=T))
    r, v = rng.normal(size=T), rng.normal(size=T)
    adv, _ = schedules.row_advantages(spec, valid, r, v, lam)
    c = schedules.affine_factors(spec, valid, lam)
    keep = valid | (mode == "zero")
    r0, v0 = np.where(valid, r, 0.0), np.where(valid, v, 0.0)
    u = r0 - v0
    s_next, out = 0.0, np.zeros(T)
    for t in range(T - 1, -1, -1):
        out[t] = (u[t] + s_next) if keep[t] else 0.0
        f = spec.gamma * c[t] if keep[t] else 1.0
        e = spec.gamma * v0[t] + f * u[t] if keep[t] else 0.0
        s_next = e + f * s_next
    assert_allclose(out, adv, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# the caller's lambdas on every backend


def backends_for_lambdas():
    names = ["reference", "numba"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    return [*names, "torch"]


def run_backend(backend, spec, rows):
    return torch_run(spec, rows) if backend == "torch" else cpu_run(backend, spec, rows)


@pytest.mark.parametrize("mode", ["skip", "zero"])
@pytest.mark.parametrize("critic_lam", [None, 0.9])
def test_random_lambdas_agree_across_backends(mode, critic_lam):
    rng = np.random.default_rng(7)
    lengths = [0, 1, 5, 40, 3000, 17]  # empty rows, gaps, one row past numba's 2048-token chunk
    n = sum(lengths)
    lam = rng.uniform(size=n)
    lam[rng.random(n) < 0.1] = rng.choice([0.0, 1.0])  # lambda 0 and 1 spots
    rows = ragged_rows(lengths, rng, lambdas=lam)
    rows.lambdas = np.where(rows.mask, lam, np.nan)  # masked lambdas are never read as numbers
    spec = lambdas_spec(gamma=0.97, mask_mode=mode, critic_lam=critic_lam)
    ref = cpu_run("reference", spec, rows)
    assert np.isfinite(ref[0]).all()
    for backend in backends_for_lambdas()[1:]:
        out = run_backend(backend, spec, rows)
        assert_allclose(out[0], ref[0], rtol=1e-10, atol=1e-10)
        assert_allclose(out[1], ref[1], rtol=1e-10, atol=1e-10)
        assert not out[2].any()


def gapped_mask(rng, B, T, mode):
    """Interior gaps in skip mode; right padding in zero mode, where the caller's lambdas differ
    from the estimators' at gap steps (lambda 1 there: masked lambdas are not read)."""
    if mode == "skip":
        mask = rng.random((B, T)) < 0.75
    else:
        mask = np.arange(T)[None, :] < rng.integers(0, T + 1, size=B)[:, None]
    mask[1] = False
    return mask


@pytest.mark.parametrize("backend", backends_for_lambdas())
@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_lambdas_all_lam_is_gae(backend, mode):
    rng = np.random.default_rng(3)
    B, T = 4, 30
    r, v = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    mask = gapped_mask(rng, B, T, mode)
    for gamma, lam, critic_lam in ((1.0, 0.95, None), (0.9, 0.3, 1.0), (0.99, 0.0, None)):
        gae = run_backend(backend, make_spec("gae", gamma=gamma, lam=lam, mask_mode=mode, critic_lam=critic_lam),
                          padded_rows(r, v, mask))
        out = run_backend(backend, lambdas_spec(gamma, mode, critic_lam),
                          padded_rows(r, v, mask, lambdas=np.full((B, T), lam)))
        assert_allclose(out[0], gae[0], rtol=1e-12, atol=1e-12)
        assert_allclose(out[1], gae[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", backends_for_lambdas())
def test_zero_mode_gap_steps_have_lambda_one(backend):
    """In zero mode a masked step takes part with r = V = 0 and lambda 1, whatever the caller's
    lambdas say there: the caller's lambdas with 1 at the gap are the same, and differ from gae."""
    r = np.array([[1.0, np.nan, np.nan, 2.0]])
    v = np.array([[0.5, np.nan, np.nan, 0.25]])
    mask = np.array([[True, False, False, True]])
    spec = lambdas_spec(0.9, "zero")
    ignored = run_backend(backend, spec, padded_rows(r, v, mask, lambdas=np.array([[0.5, np.nan, 0.0, 0.5]])))
    ones = run_backend(backend, spec, padded_rows(r, v, mask, lambdas=np.array([[0.5, 1.0, 1.0, 0.5]])))
    assert_array_equal(ignored[0], ones[0])
    # by hand: A_3 = 2 - 0.25; A_2 = 0.9 * 0.25 + 0.9 * A_3; A_1 = 0.9 * A_2; A_0 = 1 - 0.5 + 0.9 * 0.5 * A_1
    a3 = 1.75
    a2 = 0.9 * 0.25 + 0.9 * a3
    a1 = 0.9 * a2
    assert_allclose(ignored[0], [1 - 0.5 + 0.45 * a1, a1, a2, a3], rtol=1e-12)


@pytest.mark.parametrize("backend", backends_for_lambdas())
@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_lambdas_from_the_sae_schedule_are_sae(backend, mode):
    """schedules.row_lambdas of sae's boundaries, given back as the caller's lambdas, give sae."""
    rng = np.random.default_rng(11)
    B, T = 5, 60
    r, v = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    mask = gapped_mask(rng, B, T, mode)
    logprobs = -rng.exponential(size=(B, T))
    sae = make_spec("sae", gamma=0.95, lam=0.8, threshold=0.3, mask_mode=mode)
    ref = run_backend(backend, sae, padded_rows(r, v, mask, logprobs=logprobs))
    lam = np.stack([schedules.row_lambdas(sae, mask[i], ref[2].reshape(B, T)[i]) for i in range(B)])
    out = run_backend(backend, lambdas_spec(0.95, mode), padded_rows(r, v, mask, lambdas=lam))
    assert_allclose(out[0], ref[0], rtol=1e-12, atol=1e-12)
    assert_allclose(out[1], ref[1], rtol=1e-12, atol=1e-12)


def test_lambdas_without_a_mask():
    rng = np.random.default_rng(5)
    rows = ragged_rows([7, 0, 2100], rng, masked=False, lambdas=rng.uniform(size=2107))
    spec = lambdas_spec(gamma=1.0)
    ref = cpu_run("reference", spec, rows)
    for backend in backends_for_lambdas()[1:]:
        out = run_backend(backend, spec, rows)
        assert_allclose(out[0], ref[0], rtol=1e-10, atol=1e-10)
        assert_allclose(out[1], ref[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", backends_for_lambdas())
@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_lambdas_rows_with_a_bad_reward_are_found(backend, mode):
    """A non-finite reward on a valid token lands in the problem table (row 2, token 4), as for
    every estimator; NaN lambdas under the mask do not."""
    rng = np.random.default_rng(9)
    lengths = [3, 0, 9, 5]
    rows = ragged_rows(lengths, rng, masked=True, lambdas=rng.uniform(size=17))
    rows.mask[:] = True
    rows.mask[[1, 12]] = False
    rows.lambdas[[1, 12]] = np.nan
    rows.rewards[3 + 4] = np.inf
    spec = lambdas_spec(0.9, mode)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        rows = Rows(**{k: torch.from_numpy(x) if isinstance(x, np.ndarray) and k not in ("starts", "lengths") else x
                       for k, x in vars(rows).items()})
    run, _ = kernels.select(backend, result_form(rows.rewards, rows.values), spec)
    problems = run(spec, rows, F64)[3]
    expected = np.full_like(problems, -1)
    expected[2, PROBLEM_COLUMNS.index("rewards")] = 4
    assert_array_equal(problems, expected)
