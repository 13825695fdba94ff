"""Array types, dtypes and devices go back as they came; options behave as documented."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from sae_core import compute_advantages, compute_advantages_ragged

torch = pytest.importorskip("torch")


def data(B=3, T=7, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, size=(B, 1))
    return rng.normal(size=(B, T)), rng.normal(size=(B, T)), mask, -rng.exponential(size=(B, T)) - 0.01


@pytest.mark.parametrize("dtype, out", [(np.float32, np.float32), (np.float64, np.float64),
                                        (np.float16, np.float16), (np.int64, np.float64), (np.bool_, np.float64)])
def test_numpy_dtypes(dtype, out):
    r, v, m, lp = data()
    res = compute_advantages(r.astype(dtype), v.astype(dtype), m, estimator="sae", logprobs=lp)
    assert isinstance(res.advantages, np.ndarray)
    assert res.advantages.dtype == out and res.returns.dtype == out
    assert res.boundaries.dtype == np.bool_ and res.boundaries.shape == r.shape


def test_mixed_float_dtypes_promote():
    r, v, m, lp = data()
    res = compute_advantages(r.astype(np.float32), v, m, estimator="sae", logprobs=lp)
    assert res.advantages.dtype == np.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_torch_dtypes_and_values(dtype):
    r, v, m, lp = data()
    tr, tv = torch.tensor(r, dtype=dtype), torch.tensor(v, dtype=dtype)
    res = compute_advantages(tr, tv, torch.from_numpy(m), estimator="sae", logprobs=torch.from_numpy(lp))
    assert isinstance(res.advantages, torch.Tensor) and res.advantages.dtype == dtype
    assert res.returns.dtype == dtype and res.boundaries.dtype == torch.bool
    assert res.advantages.device == tr.device
    # half precision inputs are computed in float32 from their (rounded) values, then cast back
    compute = tr.float() if dtype in (torch.bfloat16, torch.float16) else tr
    expected = compute_advantages(compute.numpy(), tv.to(compute.dtype).numpy(), m, estimator="sae", logprobs=lp)
    assert torch.equal(res.advantages, torch.from_numpy(expected.advantages).to(dtype))


def test_torch_matches_numpy_exactly():
    r, v, m, lp = data(B=4, T=3000)
    a = compute_advantages(r, v, m, estimator="sae", logprobs=lp, critic_lam=1.0)
    b = compute_advantages(torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m).long(), estimator="sae",
                           logprobs=torch.from_numpy(lp), critic_lam=1.0)
    assert_array_equal(b.advantages.numpy(), a.advantages)
    assert_array_equal(b.returns.numpy(), a.returns)
    assert_array_equal(b.boundaries.numpy(), a.boundaries)


def test_no_autograd_graph_and_non_contiguous_inputs():
    r, v, m, lp = data(B=5, T=6)
    tv = torch.tensor(v.T.copy(), requires_grad=True).T  # a non-contiguous view that requires grad
    res = compute_advantages(torch.from_numpy(r), tv, torch.from_numpy(m), estimator="sae", logprobs=torch.from_numpy(lp))
    assert not res.advantages.requires_grad and res.advantages.grad_fn is None
    assert_allclose(res.advantages.numpy(), compute_advantages(r, v, m, estimator="sae", logprobs=lp).advantages)


def test_scalar_parameters_may_be_tensors():
    r, v, m, lp = data()
    a = compute_advantages(r, v, m, estimator="sae", logprobs=lp, gamma=torch.tensor(0.9), lam=np.float32(0.5),
                           threshold=torch.tensor(0.3, dtype=torch.float64))
    b = compute_advantages(r, v, m, estimator="sae", logprobs=lp, gamma=float(torch.tensor(0.9)), lam=0.5, threshold=0.3)
    assert_array_equal(a.advantages, b.advantages)


def test_rewards_and_values_must_share_array_type_and_device():
    r, v, m, lp = data()
    with pytest.raises(ValueError, match="both be numpy arrays or both torch tensors"):
        compute_advantages(torch.from_numpy(r), v, m, estimator="sae", logprobs=lp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_come_back_on_their_device():
    r, v, m, lp = data()
    dev = torch.device("cuda")
    res = compute_advantages(torch.tensor(r, device=dev), torch.tensor(v, device=dev), torch.tensor(m, device=dev), estimator="sae",
                             logprobs=torch.tensor(lp, device=dev))
    assert res.advantages.device.type == "cuda" and res.boundaries.device.type == "cuda"
    assert_allclose(res.advantages.cpu().numpy(), compute_advantages(r, v, m, estimator="sae", logprobs=lp).advantages)


def test_mask_may_be_none_meaning_every_token_valid():
    r, v, _, lp = data()
    a = compute_advantages(r, v, None, estimator="sae", logprobs=lp)
    b = compute_advantages(r, v, np.ones(r.shape, dtype=bool), estimator="sae", logprobs=lp)
    assert_array_equal(a.advantages, b.advantages)


def test_boundary_rule_is_chosen_by_its_option_or_by_name():
    r, v, m, lp = data()
    a = compute_advantages(r, v, m, estimator="sae", segment_length=3)
    b = compute_advantages(r, v, m, estimator="sae", boundary="fixed", segment_length=3, logprobs=lp)  # logprobs unused here
    assert_array_equal(a.boundaries, b.boundaries)
    assert a.boundaries[:, 0].all() == m[:, 0].all()


def test_boundary_rule_names_the_rule_compute_advantages_applies():
    from sae_core.registry import boundary_rule
    from sae_core.trajectory import boundary_rule as table_rule

    assert boundary_rule("gae", {"segment_length": 3}) is None
    assert boundary_rule("sae", {}) == "logprob"
    assert boundary_rule("sae", {"segment_length": 3}) == "fixed"
    # the given rule's per-token data comes with the call, or from a file's column
    assert boundary_rule("sae", {"boundary": "given"}) == "given"
    with pytest.raises(ValueError, match="select different boundary rules"):
        boundary_rule("sae", {"segment_length": 3, "quantile": 0.5})
    assert table_rule("sae", {"boundary": "given"}) == "given"
    with pytest.raises(ValueError, match="needs the option segment_length"):  # a parameter, not data
        boundary_rule("sae", {"boundary": "fixed"})
    with pytest.raises(ValueError, match="do not apply"):
        table_rule("sae", {"boundary": "fixed", "segment_length": 2, "quantile": 0.5})


def test_given_boundaries_select_the_given_rule():
    r, v, m, _ = data()
    given = np.zeros(r.shape, dtype=bool)
    given[:, 2] = True
    a = compute_advantages(r, v, m, estimator="sae", given_boundaries=given)
    b = compute_advantages(r, v, m, estimator="sae", boundary="given", given_boundaries=given)
    assert_array_equal(a.boundaries, given & m)
    assert_array_equal(a.advantages, b.advantages)
    with pytest.raises(ValueError, match="needs given_boundaries"):
        compute_advantages(r, v, m, estimator="sae", boundary="given")
    with pytest.raises(ValueError, match="do not apply"):
        compute_advantages(r, v, m, estimator="sae", given_boundaries=given, segment_length=2)


def test_delimiter_ids_may_be_one_int_or_a_tensor_of_ids():
    r, v, m, _ = data()
    ids = np.random.default_rng(3).integers(0, 4, size=r.shape)
    a = compute_advantages(r, v, m, estimator="sae", delimiter_ids=2, response_ids=ids)
    b = compute_advantages(r, v, m, estimator="sae", delimiter_ids=[2, 2], response_ids=torch.from_numpy(ids))
    assert_array_equal(a.boundaries, b.boundaries)


def test_ragged_accepts_tensors_and_returns_tensors():
    r, v, _, lp = data()
    offsets = torch.tensor([0, 5, 12, 21])
    res = compute_advantages_ragged(torch.from_numpy(r.reshape(-1)), torch.from_numpy(v.reshape(-1)), offsets, estimator="sae",
                                    logprobs=torch.from_numpy(lp.reshape(-1)))
    assert isinstance(res.advantages, torch.Tensor) and res.advantages.shape == (21,)


def test_estimator_params_describe_the_estimator():
    from sae_core import estimator_params
    from sae_core.registry import make_spec, recorded_params

    expected = {"estimator": "sae", "gamma": 1.0, "mask_mode": "skip", "critic_lam": None,
                "lam": 0.95, "boundary": "logprob", "threshold": 0.2}
    assert recorded_params(make_spec("sae")) == expected
    assert estimator_params("sae") == expected
    assert estimator_params("gae", lam=0.9) == {"estimator": "gae", "gamma": 1.0, "mask_mode": "skip",
                                                "critic_lam": None, "lam": 0.9}
    assert estimator_params("sae", segment_length=4) == {"estimator": "sae", "gamma": 1.0, "mask_mode": "skip",
                                                         "critic_lam": None, "lam": 0.95, "boundary": "fixed",
                                                         "segment_length": 4}
    assert estimator_params("vapo")["alpha"] == 0.05


@pytest.mark.parametrize("estimator, option", [("gae", "threshold"), ("mc", "lam"), ("vapo", "lam"),
                                               ("mc", "threshold")])
def test_each_estimator_takes_exactly_its_own_options(estimator, option):
    r, v, m, _ = data()
    with pytest.raises(TypeError, match=f"estimator '{estimator}'.*unexpected option.*{option}"):
        compute_advantages(r, v, m, estimator=estimator, **{option: 0.5})


def test_estimator_is_required():
    r, v, m, _ = data()
    with pytest.raises(TypeError, match="estimator"):
        compute_advantages(r, v, m)


def _outcome(fn, *args):
    """fn(*args) as ("ok", spec, data names) or ("error", exception type, message)."""
    try:
        spec, data = fn(*args)
    except (TypeError, ValueError) as err:
        return "error", type(err), str(err)
    return "ok", spec, tuple(data)


# (estimator, gamma, mask_mode, critic_lam, options, names of the data given): values that are
# equal as Python keys (1, 1.0, True; 0.0, -0.0; [3], (3,)) but not to the checks
SPEC_CASES = [
    ("sae", 1, "skip", None, {}, ("logprobs",)),
    ("sae", 1.0, "skip", None, {}, ("logprobs",)),
    ("sae", True, "skip", None, {}, ("logprobs",)),
    ("sae", 0.0, "skip", None, {}, ("logprobs",)),
    ("sae", -0.0, "skip", None, {}, ("logprobs",)),
    ("sae", 1.0, "zero", 1, {"lam": 0.9}, ("logprobs",)),
    ("sae", 1.0, "zero", True, {"lam": 0.9}, ("logprobs",)),
    ("sae", 1.0, "skip", None, {"threshold": 0.5}, ("logprobs",)),
    ("sae", 1.0, "skip", None, {"threshold": 2.0}, ("logprobs",)),
    ("sae", 1.0, "skip", None, {}, ("logprobs", "given_boundaries")),
    ("sae", 1.0, "skip", None, {}, ("given_boundaries",)),
    ("sae", 1.0, "skip", None, {}, ()),
    ("sae", 1.0, "skip", None, {"delimiter_ids": [3]}, ("response_ids",)),
    ("sae", 1.0, "skip", None, {"delimiter_ids": (3,)}, ("response_ids",)),
    ("sae", 1.0, "skip", None, {"delimiter_ids": [True]}, ("response_ids",)),
    ("sae", 1.0, "skip", None, {"segment_length": 4}, ()),
    ("sae", 1.0, "skip", None, {"segment_length": 4.0}, ()),
    ("gae", 1.0, "skip", None, {"lam": 1}, ()),
    ("gae", 1.0, "skip", None, {"threshold": 0.5}, ()),
    ("gae", 1.0, "skip", None, {}, ("logprobs",)),
    ("vapo", 0.99, "skip", None, {"alpha": 0.05}, ()),
    ("mc", float("nan"), "skip", None, {}, ()),
    ("nope", 1.0, "skip", None, {}, ()),
    ("sae", 1.0, "both", None, {}, ("logprobs",)),
    ("sae", np.float64(1.0), "skip", None, {}, ("logprobs",)),
    ("sae", torch.tensor(0.5), "skip", None, {}, ("logprobs",)),
]


def test_remembered_specs_give_the_outcome_every_check_gives():
    """api._spec_and_data remembers checked specs by their arguments: with the memo full of every
    case (each called twice, in two orders), each call still gives exactly what the checks give
    afresh (the same spec, or the same error), whatever was seen before."""
    from sae_core import api

    names = ("logprobs", "response_ids", "entropy", "given_boundaries")
    marker = np.zeros((1, 1))

    def args(case):
        estimator, gamma, mask_mode, critic_lam, options, given = case
        return estimator, gamma, mask_mode, critic_lam, dict(options), {n: marker if n in given else None for n in names}

    api._SPECS.clear()
    for cases in (SPEC_CASES, SPEC_CASES[::-1], SPEC_CASES):
        for case in cases:
            fresh = _outcome(api._checked_spec_and_data, *args(case))
            got = _outcome(api._spec_and_data, *args(case))
            assert got == fresh, case
            if got[0] == "ok":  # 0.0 == -0.0 in the comparison above; the sign must be kept too
                assert math.copysign(1.0, got[1].gamma) == math.copysign(1.0, float(case[1])), case
    assert 0 < len(api._SPECS) < len(SPEC_CASES)  # some cases were remembered, the refused and non-plain ones not
    assert _outcome(api._spec_and_data, *args(SPEC_CASES[0]))[0] == "ok"


def test_the_spec_memo_is_bounded():
    from sae_core import api

    api._SPECS.clear()
    for k in range(api._SPECS_MAX + 10):
        api._spec_and_data("gae", 1.0, "skip", None, {"lam": k / (api._SPECS_MAX + 10)}, {})
        assert len(api._SPECS) <= api._SPECS_MAX
