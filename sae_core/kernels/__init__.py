"""Scan backends. Each module exposes `run(spec, rows, compute_dtype)`:

- `reference`: a plain float64 loop per row, the executable spec;
- `numba_scan`: the CPU kernel, parallel over rows, fused boundary detection and checks;
- `torch_scan`: the scan as torch tensor ops on the tensors' device (CPU or CUDA);
- `triton_scan`: a Triton kernel for CUDA tensors (its interpreter runs it on CPU tensors in tests).
"""
