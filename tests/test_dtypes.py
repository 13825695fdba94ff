"""The numba backend reads masks and data in the dtypes frameworks pass, in place, with the same results
and the same errors as a bool mask on the reference backend (the executable spec)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from helpers import tolerance
from sae_core import compute_advantages
from sae_core.kernels import numba_scan

MASK_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
               np.float16, np.float32, np.float64]
FLOAT_MASKS = [np.float16, np.float32, np.float64]
T = 2 * numba_scan.CHUNK + 300  # rows span three of the kernel's chunks


def batch(seed=0, B=6):
    """float64 [B, T] rows of every mask shape the kernel tells apart: full, right-padded inside
    the first and the last chunk, empty, interior gaps (multi-turn), gaps only in the last chunk."""
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), dtype=bool)
    mask[1, 1000:] = False
    mask[2, 2 * numba_scan.CHUNK + 7:] = False
    mask[3] = False
    mask[4] = rng.random(T) < 0.7
    mask[5, -200:-100] = False
    r, v = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    lp = -rng.exponential(size=(B, T))
    return r, v, mask, lp


def same(out, ref, dtype=np.float64):
    assert_allclose(out.advantages, ref.advantages, **tolerance(dtype))
    assert_allclose(out.returns, ref.returns, **tolerance(dtype))
    assert_array_equal(out.boundaries, ref.boundaries)


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_mask_dtype_reads_like_bool(dtype):
    r, v, mask, lp = batch()
    ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="reference")
    out = compute_advantages(r, v, mask.astype(dtype), estimator="sae", logprobs=lp, backend="numba")
    same(out, ref)


@pytest.mark.parametrize("dtype", [np.int64, np.float32], ids=lambda d: np.dtype(d).name)
def test_zero_mode_and_decoupled_critic(dtype):
    """OpenRLHF's layout: zero mode, with a float or int mask; the critic's own lambda too."""
    r, v, mask, lp = batch(1)
    r, v, lp = r.astype(np.float32), v.astype(np.float32), lp.astype(np.float32)
    kw = dict(estimator="sae", logprobs=lp, mask_mode="zero", critic_lam=1.0)
    ref = compute_advantages(r, v, mask, backend="reference", **kw)
    same(compute_advantages(r, v, mask.astype(dtype), backend="numba", **kw), ref, np.float32)


@pytest.mark.parametrize("name", ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
                                  "float32", "float64"])
def test_torch_masks_of_every_dtype(name):
    torch = pytest.importorskip("torch")
    r, v, mask, lp = batch(2)
    ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="reference")
    tr, tv, tl = (torch.from_numpy(x) for x in (r, v, lp))
    tm = torch.from_numpy(mask).to(getattr(torch, name))
    out = compute_advantages(tr, tv, tm, estimator="sae", logprobs=tl, backend="numba")
    same(type(ref)(*(x.numpy() for x in out)), ref)


def test_negative_zero_is_a_masked_token():
    r, v, mask, lp = batch(3)
    ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="reference")
    for dtype in FLOAT_MASKS:
        m = np.where(mask, 1.0, -0.0).astype(dtype)
        assert np.signbit(m[~mask]).all()
        same(compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend="numba"), ref)


def bad_values(dtype):
    """Entries other than 0 and 1 that a mask of `dtype` can hold."""
    if dtype == np.bool_:
        return []
    kind = np.dtype(dtype).kind
    if kind == "f":
        return [0.5, 2.0, -1.0, np.nan, np.inf]
    if kind == "u":
        return [2, np.iinfo(dtype).max]
    return [2, -1, np.iinfo(dtype).min]


# (row, token): in a full row's first chunk, its last chunk, in a right-padded row's padding and its
# valid part, in an empty row, in a row with gaps (on a valid and on a masked token)
PLACES = [(0, 5), (0, T - 1), (1, 1500), (1, 999), (3, 0), (4, 2 * numba_scan.CHUNK + 1), (5, T - 150)]


@pytest.mark.parametrize("dtype", MASK_DTYPES[1:], ids=lambda d: np.dtype(d).name)
def test_a_mask_entry_other_than_0_1_is_reported(dtype):
    r, v, mask, lp = batch()
    for value in bad_values(dtype):
        for row, token in PLACES:
            m = mask.astype(dtype)
            m[row, token] = value
            shown = m[row, token].item()
            with pytest.raises(ValueError, match=rf"response_mask must hold only 0 and 1; row {row}, token "
                                                 rf"{token} holds {shown}$"):
                compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend="numba")


def test_the_first_bad_row_and_token_are_named():
    r, v, mask, lp = batch()
    m = mask.astype(np.int64)
    m[4, 3000] = 3
    m[4, 17] = 2  # the first of the row, in an earlier chunk
    padding = 2 * numba_scan.CHUNK + 100
    m[2, padding] = 5  # in the padding of an earlier row
    for backend in ("reference", "numba"):
        with pytest.raises(ValueError, match=rf"row 2, token {padding} holds 5; 1 more row\(s\) have one too"):
            compute_advantages(r, v, m, estimator="gae", backend=backend)
    m[2, padding] = 0
    with pytest.raises(ValueError, match=r"row 4, token 17 holds 2$"):
        compute_advantages(r, v, m, estimator="gae", backend="numba", mask_mode="zero")


@pytest.mark.parametrize("dtype", [">i4", ">f8", np.longdouble], ids=str)
def test_masks_of_other_byte_orders_and_widths(dtype):
    r, v, mask, lp = batch(4)
    ref = compute_advantages(r, v, mask, estimator="sae", logprobs=lp, backend="reference")
    m = mask.astype(dtype)
    same(compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend="numba"), ref)
    m[4, 10] = 2
    with pytest.raises(ValueError, match=r"row 4, token 10 holds 2"):
        compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend="numba")


@pytest.mark.parametrize("dtype", [d for d in MASK_DTYPES], ids=lambda d: np.dtype(d).name)
def test_the_kernel_reads_the_mask_in_place(dtype):
    """No conversion pass: the kernels get a view of the caller's mask memory, for every common dtype."""
    mask = (np.arange(10) % 3 > 0).astype(dtype)
    bits, keep, one = numba_scan.mask_bits(mask)
    assert np.shares_memory(bits, mask) and bits.dtype.itemsize == mask.dtype.itemsize
    on = (bits & keep) != 0
    assert_array_equal(on, mask != 0)
    assert (bits[on] == one).all()


@pytest.mark.parametrize("r_dtype, v_dtype, lp_dtype", [
    (np.float64, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.float32, np.float32, np.float64),
    (np.float32, np.float32, np.float16),
    (np.float64, np.float64, np.float32),
])
def test_mixed_float_dtypes(r_dtype, v_dtype, lp_dtype):
    """Each input is read in its own dtype; the results equal the reference on the same numbers."""
    r, v, mask, lp = batch(5)
    r, v, lp = r.astype(r_dtype), v.astype(v_dtype), lp.astype(lp_dtype)
    kw = dict(estimator="sae", logprobs=lp, threshold=0.3)
    ref = compute_advantages(r.astype(np.float64), v.astype(np.float64), mask, backend="reference",
                             **{**kw, "logprobs": lp.astype(np.float64)})
    out = compute_advantages(r, v, mask.astype(np.int64), backend="numba", **kw)
    expected = np.result_type(r_dtype, v_dtype)
    assert out.advantages.dtype == expected and out.returns.dtype == expected
    same(out, ref, expected)


def _spy_on_the_scan(monkeypatch) -> dict:
    """The flat columns the numba scan gets (`numba_scan.Plan.scan`, which the API's fast path and
    `numba_scan.run` both call), by name, once compute_advantages has run."""
    seen = {}
    real = numba_scan.Plan.scan

    def spy(self, rewards, values, mask, keep, one, score, *args, **kw):
        seen.update(rewards=rewards, values=values, mask=mask, score=score)
        return real(self, rewards, values, mask, keep, one, score, *args, **kw)

    monkeypatch.setattr(numba_scan.Plan, "scan", spy)
    return seen


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_precision_logprobs_from_torch(half, monkeypatch):
    """veRL's layout: int64 mask, float32 values and rewards, bfloat16 (or float16) log-probs. They
    reach the kernel as the tensor's own bits (no float32 copy), and decode to the same numbers."""
    torch = pytest.importorskip("torch")
    r, v, mask, lp = batch(6)
    tr, tv = torch.from_numpy(r).float(), torch.from_numpy(v).float()
    tl = torch.from_numpy(lp).to(getattr(torch, half))
    seen = _spy_on_the_scan(monkeypatch)
    ref = compute_advantages(tr.double().numpy(), tv.double().numpy(), mask, estimator="sae",
                             logprobs=tl.double().numpy(), backend="reference")
    out = compute_advantages(tr, tv, torch.from_numpy(mask).long(), estimator="sae", logprobs=tl, backend="numba")
    assert out.advantages.dtype == torch.float32
    same(type(ref)(*(x.numpy() for x in out)), ref, np.float32)
    assert seen["score"].dtype == (np.int16 if half == "bfloat16" else np.uint16)  # the bits `real` decodes
    assert np.shares_memory(seen["score"], tl.view(torch.int16).numpy())


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_a_bad_bfloat16_logprob_is_named_with_its_value(bad):
    torch = pytest.importorskip("torch")
    r, v, mask, lp = batch(6)
    tl = torch.from_numpy(lp).to(torch.bfloat16)
    tl[0, 1234] = bad
    with pytest.raises(ValueError, match=rf"logprobs has a non-finite value \({bad}\) at row 0, token 1234"):
        compute_advantages(torch.from_numpy(r).float(), torch.from_numpy(v).float(), torch.from_numpy(mask).long(),
                           estimator="sae", logprobs=tl, backend="numba")


def test_the_numba_kernel_gets_the_callers_arrays_not_copies(monkeypatch):
    """float64 rewards with float32 values and log-probs, and a float16 mask, reach the kernel as
    views of the caller's memory in their own dtypes: no conversion pass before the scan."""
    r, v, mask, lp = batch(7)
    r64, v32, lp32, m16 = r.astype(np.float64), v.astype(np.float32), lp.astype(np.float32), mask.astype(np.float16)
    seen = _spy_on_the_scan(monkeypatch)
    out = compute_advantages(r64, v32, m16, estimator="sae", logprobs=lp32, backend="numba")
    for name, given in (("rewards", r64), ("values", v32), ("mask", m16), ("score", lp32)):
        # the mask as unsigned integers of its width (`mask_bits`), the rest in their own dtypes
        assert seen[name].dtype == (np.uint16 if name == "mask" else given.dtype), name
        assert np.shares_memory(seen[name], given), name
    ref = compute_advantages(r64, v32.astype(np.float64), mask, estimator="sae", logprobs=lp32.astype(np.float64),
                             backend="reference")
    same(out, ref, np.float64)


def test_half_precision_bits_decode_exactly():
    """numba_compile.real on every float16 (uint16) and bfloat16 (int16) bit pattern: the number
    numpy's float16 and torch's bfloat16 hold, NaNs included (as NaNs)."""
    torch = pytest.importorskip("torch")
    import numba

    from sae_core.kernels.numba_compile import real

    @numba.njit
    def decode(bits, out):
        for i in range(bits.shape[0]):
            out[i] = real(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.shape[0])
    decode(bits, out)
    assert_array_equal(out, bits.view(np.float16).astype(np.float64))
    decode(bits.view(np.int16), out)
    assert_array_equal(out, torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).double().numpy())
