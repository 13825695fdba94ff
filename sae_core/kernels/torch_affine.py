"""The reverse affine scan S_t = e_t + f_t * S_{t+1} on torch tensors, for `torch_scan`.

`reverse_affine_scan` composes pairs (f, e) within blocks, scans the blocks' totals the same way
(recursively), then adds each block's incoming state in one fix-up: no Python loop over T. On the
CPU the blocks are BLOCK consecutive tokens, stepped through token by token for all blocks at once,
one op per step on a strided view (`_blocked_scan`), and a column of at most SEQUENTIAL_MAX tokens (the
totals' last level) is one Python loop in float64 (`_sequential_scan`), where a dozen tensor ops
would cost more. On a GPU it is a log-depth doubling inside chunks of CHUNK tokens
(`_doubling_scan`). Both only multiply and add, and multiplying by 0 propagates an inf or NaN as
the tensor ops do (inf * 0 is NaN). Their rounding is accounted for in `torch_scan`'s docstring.
"""

from __future__ import annotations

import torch

CHUNK = 128  # tokens per doubling block (off the CPU): 7 doubling steps, then a scan over N / 128 chunk totals
BLOCK = 8  # tokens per block of the CPU scan: 7 steps of two ops on N / 8 tokens, then a scan over N / 8 totals
SEQUENTIAL_MAX = 128  # a CPU scan this short (the totals' last level) runs as a Python loop: `_sequential_scan`


def reverse_affine_scan(f: torch.Tensor, e: torch.Tensor, chunk: int = CHUNK, empty=None) -> torch.Tensor:
    """S [N] with S_t = e_t + f_t * S_{t+1} and S_N = 0, for 1-D f and e of length N, of one dtype
    (both consumed: they serve as work space). empty(): an uninitialised [N] tensor like f, for two
    more of work space (the doubling's; the CPU's scan needs none).

    On the CPU the blocked scan (`_blocked_scan`); on other devices the doubling (`_doubling_scan`,
    in chunks of `chunk` tokens), whose few wide ops suit a GPU."""
    if f.shape[0] == 0:
        return e.clone()
    if f.device.type == "cpu":
        return _blocked_scan(f, e)
    return _doubling_scan(f, e, chunk, empty)


def _blocked_scan(f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """`reverse_affine_scan` on the CPU, by blocks of BLOCK consecutive tokens scanned token by
    token, all blocks at once. Seen as [M, BLOCK] (M = N // BLOCK blocks), step j is one op on
    column j, a strided view: (f, e)[:, j] <- (f[:, j] f[:, j+1], e[:, j] + f[:, j] e[:, j+1]) for
    j = BLOCK - 2 down to 0, after which [k, j] holds the composition of the maps from token
    k * BLOCK + j to its block's end. Column 0 holds the blocks' totals, scanned the same way
    (recursively, down to SEQUENTIAL_MAX); each block then adds its incoming state times its
    products of f in one contiguous op. 2 (BLOCK - 1) ops of M elements and one of N, in place: no
    transposes and no work space (docs/performance.md). When N is not a multiple of BLOCK the last
    N mod BLOCK tokens go first, through the loop, and hand their state to the blocks.
    f and e: [N], one dtype, both consumed; the result is written into e and returned."""
    n = f.shape[0]
    if n <= SEQUENTIAL_MAX:
        return _sequential_scan(f, e)
    c = BLOCK
    m = n // c
    h = m * c  # the tokens in whole blocks
    if h < n:  # the tail: at most BLOCK - 1 tokens, and the state arriving at the blocks' last token
        e[h:] = _sequential_scan(f[h:], e[h:])
        e[h - 1:h].addcmul_(f[h - 1:h], e[h:h + 1])
    F, E = f[:h].view(m, c), e[:h].view(m, c)
    fs, es = F.unbind(1), E.unbind(1)  # the columns as views, in one call rather than one per use
    for j in range(c - 2, -1, -1):
        es[j].addcmul_(fs[j], es[j + 1])
        fs[j].mul_(fs[j + 1])
    if m > 1:
        totals = _blocked_scan(fs[0].contiguous(), es[0].contiguous())  # S at each block's start
        E[:-1].addcmul_(F[:-1], totals[1:, None])  # the last block's state arrived with the tail
    return e


def _doubling_scan(f: torch.Tensor, e: torch.Tensor, chunk: int = CHUNK, empty=None) -> torch.Tensor:
    """`reverse_affine_scan` by doubling inside chunks (off the CPU; on the CPU only in tests). After
    the step with distance d, (f_t, e_t) hold the composition of the 2d maps from t on (within the
    chunk), so log2(chunk) steps give each position's state up to its chunk's end. The chunks'
    totals are scanned the same way (recursively), and each chunk adds its incoming state times its
    products of f. f and e: [N], one dtype, consumed.
    """
    n = f.shape[0]
    m = -(-n // chunk)
    pad = m * chunk - n
    if pad:
        f, e = _identity_after(f, e, pad)
    F, E = f.view(m, chunk), e.view(m, chunk)
    if empty is None or pad:
        F2, E2 = torch.empty_like(F), torch.empty_like(E)
    else:
        F2, E2 = empty().view(m, chunk), empty().view(m, chunk)
    d = 1
    while d < chunk:
        # (f, e)_t <- (f_t f_{t+d}, e_t + f_t e_{t+d}); the last d positions of a chunk are done
        torch.addcmul(E[:, :-d], F[:, :-d], E[:, d:], out=E2[:, :-d])
        torch.mul(F[:, :-d], F[:, d:], out=F2[:, :-d])
        # the last d positions (complete since the previous step) are copied, but only those that
        # E2, F2 (the state two steps ago, complete in the last d // 2) do not hold already
        done = chunk - d // 2 if d > 1 else chunk
        E2[:, -d:done] = E[:, -d:done]
        F2[:, -d:done] = F[:, -d:done]
        F, F2, E, E2 = F2, F, E2, E
        d *= 2
    if m > 1:
        totals = _doubling_scan(F[:, 0].contiguous(), E[:, 0].contiguous(), chunk)  # S at each chunk start
        incoming = torch.cat([totals[1:], totals.new_zeros(1)])
        E.addcmul_(F, incoming[:, None])
    return E.reshape(-1)[:n]


def _identity_after(f: torch.Tensor, e: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f and e [N] with `pad` identity steps (f = 1, e = 0) after the end: new [N + pad] tensors."""
    return torch.cat([f, f.new_ones(pad)]), torch.cat([e, e.new_zeros(pad)])


def _sequential_scan(f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """`reverse_affine_scan` of a short CPU column as a Python loop over Python floats (float64),
    rounded to e's dtype once at the end: the chunk totals' last level (at most SEQUENTIAL_MAX),
    where a dozen tensor ops of ~8 us each cost more than the loop (docs/performance.md). An inf or
    NaN propagates as in the tensor ops (inf * 0 is NaN)."""
    fs, es = f.tolist(), e.tolist()
    out = [0.0] * len(es)
    s = 0.0
    for t in range(len(es) - 1, -1, -1):
        s = es[t] + fs[t] * s
        out[t] = s
    return torch.tensor(out, dtype=e.dtype)
