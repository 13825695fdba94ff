"""Scan backends. Each module exposes `run(spec, rows, compute_dtype)`:

- `reference`: a plain float64 loop per row, the executable spec;
- `numba_scan`: the CPU kernel, parallel over rows, fused boundary detection and checks.
"""
