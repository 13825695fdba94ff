"""Bad input gets a ValueError (TypeError for unknown options) naming the argument and the row."""

import re

import numpy as np
import pytest

from helpers import backends
from sae_core import compute_advantages, compute_advantages_ragged

BACKENDS = backends()


def batch(B=3, T=5):
    rng = np.random.default_rng(0)
    return rng.normal(size=(B, T)), rng.normal(size=(B, T)), np.ones((B, T)), -rng.exponential(size=(B, T)) - 0.01


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(rewards=a["rewards"][0]), "rewards must be 2-D"),
        (lambda a: a.update(values=a["values"][:, :4]), r"values has shape \(3, 4\) but rewards has shape \(3, 5\)"),
        (lambda a: a.update(response_mask=a["response_mask"][:2]), "response_mask has shape"),
        (lambda a: a.update(logprobs=a["logprobs"].T), "logprobs has shape"),
        (lambda a: a.update(response_mask=a["response_mask"].astype(complex)), "response_mask must be bool"),
        (lambda a: a.update(gamma=1.5), r"gamma must be in \[0, 1\]; got 1.5"),
        (lambda a: a.update(gamma=-0.1), "gamma must be in"),
        (lambda a: a.update(gamma=float("nan")), "gamma must be finite"),
        (lambda a: a.update(gamma="0.9"), "gamma must be a real number"),
        (lambda a: a.update(lam=2.0), "lam must be in"),
        (lambda a: a.update(critic_lam=-1.0), "critic_lam must be in"),
        (lambda a: a.update(threshold=0.0), r"threshold is a probability in \(0, 1\]"),
        (lambda a: a.update(threshold=1.5), "threshold is a probability"),
        (lambda a: a.update(logprobs=None), "needs logprobs"),
        (lambda a: a.update(estimator="ppo"), "estimator must be one of"),
        (lambda a: a.update(mask_mode="drop"), "mask_mode must be one of"),
        (lambda a: a.update(backend="cuda"), "backend must be one of"),
        (lambda a: a.update(segment_length=0), "segment_length must be an integer from 1"),
        (lambda a: a.update(segment_length=2**70), "segment_length must be an integer from 1 to 2"),
        (lambda a: a.update(delimiter_ids=[2**70], response_ids=np.zeros((3, 5), int)), "must be int64 token ids"),
        (lambda a: a.update(entropy=np.ones((3, 5))), "entropy is read only by boundary='entropy'"),
        (lambda a: a.update(response_ids=np.ones((3, 5), int)), "response_ids is read only by boundary='delimiter'"),
        (lambda a: a.update(values=None), "values is required"),
        (lambda a: a.update(rewards=a["rewards"] * 1j), "rewards and values must be real numbers"),
        (lambda a: a.update(segment_length=2.5), "segment_length must be an integer"),
        (lambda a: a.update(quantile=1.5), r"quantile must be in \[0, 1\]"),
        (lambda a: a.update(delimiter_ids=[], response_ids=np.zeros((3, 5), int)), "delimiter_ids must be a non-empty"),
        (lambda a: a.update(delimiter_ids=[1]), "needs response_ids"),
        (lambda a: a.update(delimiter_ids=[1], response_ids=np.zeros((3, 5))), "response_ids must hold integer"),
        (lambda a: a.update(entropy_threshold=1.0), "needs entropy"),
        (lambda a: a.update(entropy_threshold=float("inf"), entropy=np.ones((3, 5))), "entropy_threshold must be finite"),
        (lambda a: a.update(boundary="fixed"), "boundary='fixed' needs the option segment_length"),
        (lambda a: a.update(boundary="random"), "boundary must be one of"),
        (lambda a: a.update(segment_length=4, quantile=0.5), "select different boundary rules"),
        (lambda a: a.update(boundary="quantile", quantile=0.5, segment_length=4), "do not apply to boundary='quantile'"),
        (lambda a: a.update(boundary="given", given_boundaries=np.full((3, 5), 2)), "given_boundaries must hold 0/1"),
        (lambda a: a.update(boundary="given"), "needs given_boundaries"),
        (lambda a: a.update(estimator="vapo", alpha=0.0, logprobs=None), "alpha must be > 0"),
    ],
)
def test_bad_arguments(change, match):
    r, v, m, lp = batch()
    args = {"rewards": r, "values": v, "response_mask": m, "logprobs": lp, "estimator": "sae"}
    change(args)
    with pytest.raises(ValueError, match=match):
        compute_advantages(args.pop("rewards"), args.pop("values"), args.pop("response_mask"), **args)


@pytest.mark.parametrize("estimator, option", [("gae", "alpha"), ("vapo", "threshold_typo"), ("mc", "segment_length")])
def test_unknown_option_is_a_type_error(estimator, option):
    r, v, m, _ = batch()
    with pytest.raises(TypeError, match=f"estimator '{estimator}'.*unexpected option.*{option}"):
        compute_advantages(r, v, m, estimator=estimator, **{option: 1})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["rewards", "values", "logprobs"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("token", [0, 2, 4])
def test_non_finite_on_a_valid_token_names_argument_row_and_token(backend, name, bad, token):
    r, v, m, lp = batch()
    arrays = {"rewards": r, "values": v, "logprobs": lp}
    arrays[name][1, token] = bad
    arrays[name][2, 0] = bad
    with pytest.raises(ValueError, match=rf"^{name} has a non-finite value \({bad}\) at row 1, token {token}, "
                                         r"a valid token .*1 more row"):
        compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_non_finite_on_a_masked_token_is_fine(backend, mode):
    r, v, m, lp = batch()
    m[1, 2] = 0
    for x in (r, v, lp):
        x[1, 2] = np.nan
    out = compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend=backend, mask_mode=mode)
    assert np.isfinite(out.advantages).all() and np.isfinite(out.returns).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_not_finite(backend):
    r, v, m, _ = batch()
    ent = np.ones((3, 5))
    ent[0, 3] = np.nan
    with pytest.raises(ValueError, match="entropy has a non-finite value .* at row 0, token 3"):
        compute_advantages(r, v, m, estimator="sae", entropy=ent, entropy_threshold=1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [2, -1, 0.5, np.nan])
def test_mask_other_than_zero_one(backend, value):
    r, v, m, lp = batch()
    m[2, 1] = value
    with pytest.raises(ValueError, match=rf"response_mask must hold only 0 and 1; row 2, token 1 holds {value}"):
        compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflow_is_reported_not_returned(backend):
    r, v, m, _ = batch()
    v[0] = 1e308
    r[0] = -1e308
    with pytest.raises(ValueError, match="overflow to a non-finite value in row 0"):
        compute_advantages(r, v, m, estimator="gae", gamma=1.0, backend=backend)


@pytest.mark.parametrize(
    "offsets, match",
    [
        ([0, 3, 2, 5], r"offsets decrease at row 1: offsets\[1\] = 3 > offsets\[2\] = 2"),
        ([1, 5], r"offsets\[0\] must be 0"),
        ([0, 4], r"offsets\[-1\] must equal the number of tokens in rewards \(5\)"),
        ([0.0, 5.0], "offsets must be integers"),
        ([[0, 5]], "offsets must be 1-D"),
        ([], "offsets must be 1-D"),
    ],
)
def test_bad_offsets(offsets, match):
    x = np.zeros(5)
    with pytest.raises(ValueError, match=match):
        compute_advantages_ragged(x, x, np.array(offsets), estimator="gae")


def test_ragged_shape_errors():
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        compute_advantages_ragged(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0, 4]), estimator="gae")
    with pytest.raises(ValueError, match=r"values has shape \(4,\) but rewards has shape \(5,\)"):
        compute_advantages_ragged(np.zeros(5), np.zeros(4), np.array([0, 5]), estimator="gae")
    with pytest.raises(ValueError, match="response_mask has shape"):
        compute_advantages_ragged(np.zeros(5), np.zeros(5), np.array([0, 5]), response_mask=np.ones(4),
                                  estimator="gae")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_mask", [True, False])
def test_inputs_are_never_modified(backend, with_mask):
    r, v, m, lp = batch()
    m[0, 3:] = 0
    m = m.astype(bool) if with_mask else None
    arrays = [x for x in (r, v, m, lp) if x is not None]
    before = [x.copy() for x in arrays]
    for mode in ("skip", "zero"):
        for critic_lam in (None, 1.0):
            compute_advantages(r, v, m, estimator="sae", logprobs=lp, mask_mode=mode, critic_lam=critic_lam, backend=backend)
    for x, y in zip(arrays, before):
        assert np.array_equal(x, y)


def test_messages_are_single_sentences_without_internal_names():
    r, v, m, lp = batch()
    r[0, 0] = np.nan
    with pytest.raises(ValueError) as err:
        compute_advantages(r, v, m, estimator="sae", logprobs=lp)
    assert not re.search(r"_P_|problems|kernel", str(err.value))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [5, 16, 17, 40])
def test_huge_finite_inputs_that_do_not_overflow_raise_nothing(backend, length):
    r = np.zeros((1, length))
    r[0, 0] = 1e308
    out = compute_advantages(r, np.zeros((1, length)), None, estimator="mc", backend=backend)
    assert out.advantages[0, 0] == 1e308


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflow_names_its_own_row(backend):
    r = np.zeros((4, 6))
    r[2, :2] = 1e308  # A_0 = 2e308 in row 2 only
    with pytest.raises(ValueError, match=r"overflow to a non-finite value in row 2(?!;)"):
        compute_advantages(r, np.zeros((4, 6)), None, estimator="mc", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_results_that_overflow_float16_raise(backend):
    r = np.zeros((1, 4), dtype=np.float16)
    r[0, 2:] = 60000
    with pytest.raises(ValueError, match="advantages overflow float16"):
        compute_advantages(r, np.zeros((1, 4), dtype=np.float16), None, estimator="mc", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_float16_columns_are_read_as_float32(backend):
    r, v, m, lp = batch()
    a = compute_advantages(r, v, m.astype(np.float16), estimator="sae", logprobs=lp.astype(np.float16), backend=backend)
    b = compute_advantages(r, v, m, estimator="sae", logprobs=lp.astype(np.float16).astype(np.float32), backend=backend)
    np.testing.assert_array_equal(a.advantages, b.advantages)
