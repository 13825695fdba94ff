"""How the numba kernels are compiled: cached on disk, announced when it happens.

numba compiles a kernel on its first call with each combination of argument types (about 5-15 s
for the scan on a laptop-class CPU) and, with `cache=True`, writes it to disk, so that later
processes load it in well under a second. Where it writes: `NUMBA_CACHE_DIR` when set, else the
package's own `__pycache__` when writable, else the user's cache directory (`~/.cache/numba`, or
`$XDG_CACHE_HOME/numba`): a read-only site-packages caches there. `jit` also covers the case where no
directory is writable at all, in which numba itself would refuse to import the module: the kernels
are then compiled in every process, and the notice says so.

The notice: one line on the `sae_core` logger at WARNING, "compiling kernels, first use only ...",
when numba first starts compiling one of these kernels in a process, i.e. on a cache miss (a cache
hit is silent). WARNING so that it shows without any logging set up (Python's last-resort handler
prints it to stderr) and in frameworks that log at INFO. Later compilations in the same process
(other dtypes) log the same line at INFO, and how long each took; compilation nested inside one
(the kernels a kernel calls) adds no line. `sae_core.kernels.warmup`
(and `sae warmup`) compiles ahead of time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, event
from numba.extending import intrinsic, overload

from ..arrays import BFLOAT16_BITS

log = logging.getLogger("sae_core")
OURS = ("sae_core.kernels.",)  # modules whose kernels the notice covers
uncached: list[str] = []  # kernels compiled without a disk cache (no writable directory)


def jit(**options: Any) -> Callable:
    """`numba.njit(cache=True, nogil=True, **options)`, or without the cache where numba finds no
    writable cache directory (numba would raise RuntimeError at import)."""
    def wrap(fn):
        try:
            return nb.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError as exc:
            if "cannot cache" not in str(exc):
                raise
            uncached.append(fn.__qualname__)
            return nb.njit(nogil=True, **options)(fn)

    return wrap


def cache_dir(kernel) -> str | None:
    """The directory numba caches `kernel` (a numba dispatcher) in, None when it is not cached."""
    locator = getattr(getattr(getattr(kernel, "_cache", None), "_impl", None), "locator", None)
    return locator.get_cache_path() if locator is not None else None


class CompileNotice(event.Listener):
    """Logs one line when numba starts compiling a kernel of sae_core on a cache miss, and the seconds
    it took; `compiled` counts those compilations in this process, `seconds` adds up their time."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = 0.0
        self.compiled = 0
        self.seconds = 0.0

    @staticmethod
    def _ours(ev) -> bool:
        fn = getattr(ev.data.get("dispatcher"), "py_func", None)
        return fn is not None and fn.__module__.startswith(OURS)

    def on_start(self, ev) -> None:  # numba holds its compiler lock: one compilation at a time
        if not self._ours(ev):
            return
        self.depth += 1
        if self.depth == 1:
            self.started = time.perf_counter()
            where = "no writable cache directory: every process compiles" if uncached else "cached for later processes"
            level = logging.WARNING if self.compiled == 0 else logging.INFO  # one line per process by default
            log.log(level, "compiling kernels, first use only (numba, %s; seconds per dtype combination, %s; "
                    "`sae warmup` compiles ahead)", ev.data["dispatcher"].py_func.__name__, where)

    def on_end(self, ev) -> None:
        if not self._ours(ev):
            return
        self.depth -= 1
        if self.depth == 0:
            took = time.perf_counter() - self.started
            self.compiled += 1
            self.seconds += took
            log.info("compiled kernels in %.1f s", took)


NOTICE = CompileNotice()
event.register("numba:compile", NOTICE)


# numba has no float16 or bfloat16 type: half-precision data reach the kernels as their bits, IEEE
# float16 as uint16 and bfloat16 as int16 (`half_bits` makes these views; nothing else reaches the
# kernels in those dtypes, since integer data is cast to float64 before), and `real` decodes them
# in registers, so the passes that read them still vectorise (a widening conversion per lane).


def half_bits(x: np.ndarray) -> np.ndarray:
    """The view of float data [N] that the kernels read: float16 as uint16 bits, bfloat16
    (`arrays.BFLOAT16_BITS`) as int16 bits, any other dtype as it is."""
    view = _HALF_VIEWS.get(x.dtype)
    return x if view is None else x.view(view)


_HALF_VIEWS = {np.dtype(np.float16): np.dtype(np.uint16), BFLOAT16_BITS: np.dtype(np.int16)}


@intrinsic
def _from_half_bits(typingctx, bits):  # pragma: no cover - compiled
    if bits not in (types.uint16, types.int16):
        return None
    brain = bits == types.int16

    def codegen(context, builder, signature, args):
        (x,) = args
        if brain:  # bfloat16: the high half of a float32
            f = builder.bitcast(builder.shl(builder.zext(x, ir.IntType(32)), ir.Constant(ir.IntType(32), 16)),
                                ir.FloatType())
        else:
            f = builder.bitcast(x, ir.HalfType())
        return builder.fpext(f, ir.DoubleType())

    return types.float64(bits), codegen


def real(x):  # pragma: no cover - replaced by the overload inside compiled code
    """float64 of one element: a float as it is, half-precision bits (uint16: float16, int16:
    bfloat16) decoded. Callable only from numba-compiled code."""
    raise NotImplementedError("real() is for numba-compiled code")


@overload(real)
def _real(x):  # pragma: no cover - compiled
    if x in (types.uint16, types.int16):
        return lambda x: _from_half_bits(x)
    return lambda x: np.float64(x)


def window(x, t, w):  # pragma: no cover - replaced by the overload inside compiled code
    """x[t:t + w] of a 1-D array, None for None (an optional input), chosen by x's type when compiled:
    the result is an array or None, never numba's Optional, whose checks at every element would
    stay in the kernels' loops (a `x[t:t + w] if x is not None else None` at the call took pass 1
    3-8% longer). Callable only from numba-compiled code."""
    raise NotImplementedError("window() is for numba-compiled code")


@overload(window)
def _window(x, t, w):  # pragma: no cover - compiled
    if isinstance(x, types.NoneType):
        return lambda x, t, w: None
    return lambda x, t, w: x[t:t + w]


def only_with(flag, x):  # pragma: no cover - replaced by the overload inside compiled code
    """x, or None when flag is None, chosen by flag's type when compiled (as `window`: never
    Optional). Callable only from numba-compiled code."""
    raise NotImplementedError("only_with() is for numba-compiled code")


@overload(only_with)
def _only_with(flag, x):  # pragma: no cover - compiled
    if isinstance(flag, types.NoneType):
        return lambda flag, x: None
    return lambda flag, x: x


@intrinsic
def prefetch(typingctx, arr, index):  # pragma: no cover - compiled
    """Inside compiled code: ask the CPU to fetch the cache line holding arr[index] (a 1-D array,
    any dtype; index an integer, not checked against the bounds: a prefetch never faults) into
    all cache levels, and go on without waiting (LLVM's llvm.prefetch: read, locality 3, data)."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]], wraparound=False)
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(pointer, byte), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen
