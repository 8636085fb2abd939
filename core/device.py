"""Device is a setting, not a code path: `auto` picks CUDA, then MPS, then CPU; bf16 where it pays."""

from __future__ import annotations

import time

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def cuda_device_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES applies): a GPU worker's run limit."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; full precision on CPU, where autocast is slower."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def measure_peak_flops(device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of a square matmul in the training dtype: the denominator of MFU here, since
    a CPU has no published peak and a GPU's datasheet peak is rarely reached."""
    dtype = autocast_dtype(device) or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
