"""What the machine can do fast, for defaults that depend on it (the demo's precision), and the
bfloat16 autocast that training, sampling and the speed benchmark share."""

from __future__ import annotations

import torch


def native_bf16(device: str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when ``device`` multiplies bfloat16 natively, so bf16 autocast speeds a model up
    instead of adding casts: a CUDA GPU that supports bf16, or a CPU with AVX512-BF16 or
    AMX (read from ``/proc/cpuinfo``; False where that is unavailable)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def bf16_autocast(device: str = "cpu", enabled: bool = True) -> torch.autocast:
    """bfloat16 autocast on ``device``'s kind (a no-op context when not ``enabled``): the
    network runs in bf16, what is outside it (optimizer, solver state) stays float32."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
