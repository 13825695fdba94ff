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


GIVEN_NAMES = ("logprobs", "response_ids", "entropy", "given_boundaries")


def _general(r, v, mask, backend="auto", estimator="sae", **kw):
    """compute_advantages through the general path only (api._compute), for comparison."""
    from sae_core import api

    given = {name: kw.pop(name, None) for name in GIVEN_NAMES}
    spec, data = api._checked_spec_and_data(estimator, kw.pop("gamma", 1.0), kw.pop("mask_mode", "skip"),
                                            kw.pop("critic_lam", None), kw, given)
    return api._compute(spec, data, api._padded_layout, r, v, mask, backend)


def _count_general(monkeypatch):
    from sae_core import api

    calls = []
    real = api._compute
    monkeypatch.setattr(api, "_compute", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def _same(a, b):
    for x, y in zip(a, b):
        assert type(x) is type(y) and x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape)
        xs = x.numpy() if hasattr(x, "numpy") else x
        ys = y.numpy() if hasattr(y, "numpy") else y
        np.testing.assert_array_equal(xs, ys)


FAST_CASES = [  # (rewards dtype, values dtype, mask dtype or None, estimator kwargs, score dtype)
    ("float32", "float32", "int64", {}, "float32"),
    ("float32", "float32", "bool", {"mask_mode": "zero"}, "float32"),
    ("float64", "float64", "float32", {"critic_lam": 1.0}, "float64"),
    ("float32", "float64", "uint8", {"threshold": 0.5, "lam": 0.9}, "float16"),
    ("float32", "float32", None, {"gamma": 0.99}, "float32"),
    ("float32", "float32", "float16", {"boundary": "entropy", "entropy_threshold": 0.5}, "float32"),
    ("float32", "float32", "int32", {"estimator": "gae", "lam": 0.97}, None),
    ("float64", "float32", "int8", {"estimator": "mc", "mask_mode": "zero"}, None),
]


@pytest.mark.parametrize("tensors", [False, True])
@pytest.mark.parametrize("rdt, vdt, mdt, kw, sdt", FAST_CASES)
def test_the_fast_path_gives_the_general_paths_results_to_the_bit(tensors, rdt, vdt, mdt, kw, sdt, monkeypatch):
    """compute_advantages takes `api._fast_padded` for the numba backend on contiguous CPU arrays
    (the general path is not called) and returns exactly what the general path returns: the same
    array types, dtypes, shapes and bits, for numpy arrays and CPU tensors (bfloat16 log-probs too)."""
    from sae_core.kernels import numba_scan

    B, T = 5, numba_scan.CHUNK + 77  # rows across a chunk edge
    rng = np.random.default_rng(7)
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, size=(B, 1))
    mask[2, 10:20] = False  # an interior gap
    r = rng.normal(size=(B, T)).astype(rdt)
    v = rng.normal(size=(B, T)).astype(vdt)
    score = (-rng.exponential(size=(B, T))).astype(sdt or "float32")
    kw = dict(kw)
    estimator = kw.pop("estimator", "sae")
    if kw.get("boundary") == "entropy":
        kw["entropy"] = -score
    elif estimator == "sae":
        kw["logprobs"] = score
    m = None if mdt is None else mask.astype(mdt)
    args = [r, v, m]
    if tensors:
        args = [None if x is None else torch.from_numpy(x) for x in args]
        kw = {k: torch.from_numpy(x) if isinstance(x, np.ndarray) else x for k, x in kw.items()}
        if sdt == "float32" and "logprobs" in kw:
            kw["logprobs"] = kw["logprobs"].bfloat16()  # veRL's layout
    expected = _general(*args, estimator=estimator, **dict(kw))
    calls = _count_general(monkeypatch)
    got = compute_advantages(*args, estimator=estimator, **kw)
    assert not calls
    _same(got, expected)


def _fast_case():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(4, 50)).astype(np.float32)
    v = rng.normal(size=(4, 50)).astype(np.float32)
    mask = np.ones((4, 50), dtype=np.int64)
    mask[:, 40:] = 0
    lp = (-rng.exponential(size=(4, 50))).astype(np.float32)
    return r, v, mask, lp


@pytest.mark.parametrize("change", ["fortran rewards", "strided mask", "int rewards", "bfloat16 values", "vapo",
                                    "quantile", "given", "reference backend", "torch backend", "1-D", "empty",
                                    "big-endian mask", "mixed array types", "int64 log-probs"])
def test_everything_else_goes_the_general_way(change, monkeypatch):
    """What `_fast_padded` does not take goes to the general path (called once), with its results."""
    r, v, mask, lp = _fast_case()
    kw = {"estimator": "sae", "logprobs": lp}
    if change == "fortran rewards":
        r = np.asfortranarray(r)
    elif change == "strided mask":
        mask = np.repeat(mask, 2, axis=1)[:, ::2]
    elif change == "int rewards":
        r = np.round(r).astype(np.int64)
    elif change == "bfloat16 values":
        r, v, mask = torch.from_numpy(r).bfloat16(), torch.from_numpy(v).bfloat16(), torch.from_numpy(mask)
    elif change == "vapo":
        kw = {"estimator": "vapo"}
    elif change == "quantile":
        kw["quantile"] = 0.1
    elif change == "given":
        kw = {"estimator": "sae", "given_boundaries": lp < -1}
    elif change in ("reference backend", "torch backend"):
        kw["backend"] = change.split()[0]
    elif change == "1-D":
        r, v, mask, kw["logprobs"] = r[0], v[0], mask[0], lp[0]
    elif change == "empty":
        r, v, mask, lp = r[:0], v[:0], mask[:0], lp[:0]
        kw["logprobs"] = lp
    elif change == "big-endian mask":
        mask = mask.astype(">i8")
    elif change == "mixed array types":
        v = torch.from_numpy(v)
    elif change == "int64 log-probs":
        kw["logprobs"] = np.round(lp).astype(np.int64)
    calls = _count_general(monkeypatch)
    refusals = {"mixed array types": "numpy arrays or both torch tensors", "1-D": "must be 2-D"}
    if change in refusals:
        with pytest.raises(ValueError, match=refusals[change]):
            compute_advantages(r, v, mask, **kw)
    else:
        compute_advantages(r, v, mask, **kw)
    assert len(calls) == 1


@pytest.mark.parametrize("bad", ["nan reward", "inf value", "mask 2", "nan log-prob", "overflow"])
def test_bad_data_on_the_fast_path_gets_the_general_paths_error(bad, monkeypatch):
    """The kernel finds bad data on the fast path; the general path then scans again and raises
    its error, naming the argument, row and token, and no input changes."""
    r, v, mask, lp = _fast_case()
    if bad == "nan reward":
        r[2, 7] = np.nan
    elif bad == "inf value":
        v[1, 39] = np.inf
    elif bad == "mask 2":
        mask[3, 5] = 2
    elif bad == "nan log-prob":
        lp[0, 0] = np.nan
    else:
        r, v = r.astype(np.float64), v.astype(np.float64)
        r[:, 30:40] = 1e308
    before = [x.copy() for x in (r, v, mask, lp)]
    with pytest.raises(ValueError) as general:
        _general(r, v, mask, logprobs=lp)
    calls = _count_general(monkeypatch)
    with pytest.raises(ValueError) as fast:
        compute_advantages(r, v, mask, estimator="sae", logprobs=lp)
    assert str(fast.value) == str(general.value) and len(calls) == 1
    for x, y in zip(before, (r, v, mask, lp)):
        np.testing.assert_array_equal(x, y)


def test_concurrent_calls_from_threads_get_their_own_results(monkeypatch):
    """Threads calling compute_advantages at once, with different specs, shapes and dtypes (so the
    remembered specs and plans fill, and start over, while others read them), each get what a call
    alone gets."""
    from concurrent.futures import ThreadPoolExecutor

    from sae_core import api

    rng = np.random.default_rng(11)
    cases = []
    for k in range(24):
        B, T = 2 + k % 3, 40 + 7 * k
        r = rng.normal(size=(B, T)).astype(np.float32 if k % 2 else np.float64)
        v = rng.normal(size=(B, T)).astype(r.dtype)
        mask = (np.arange(T)[None, :] < rng.integers(1, T + 1, size=(B, 1))).astype([np.int64, np.bool_][k % 2])
        kw = {"estimator": ["sae", "gae", "mc"][k % 3], "gamma": 1.0 - 0.01 * (k % 4)}
        if kw["estimator"] == "sae":
            kw.update(logprobs=(-rng.exponential(size=(B, T))).astype(np.float32), threshold=0.1 + 0.05 * (k % 5))
        cases.append((r, v, mask, kw))
    alone = [compute_advantages(r, v, mask, **kw) for r, v, mask, kw in cases]
    monkeypatch.setattr(api, "_SPECS_MAX", 5)  # small memos: they start over while other threads use them
    monkeypatch.setattr(api, "_PLANS_MAX", 3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: compute_advantages(*cases[i][:3], **cases[i][3]),
                                 [i for _ in range(4) for i in range(len(cases))]))
    for i, got in enumerate(together):
        _same(got, alone[i % len(cases)])
