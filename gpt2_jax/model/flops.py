"""MFU accounting, shared by `gpt2-jax bench train` and the training logs.

FLOPs per token come from model.flops_per_token (6*N + 12*L*T*d); the peak is the dense bf16
FLOP/s of the device kind, summed over the devices that run the step. No peak, no MFU (CPUs).
"""

from __future__ import annotations

from typing import Sequence

import jax

FORMULA = "6*N + 12*L*T*d, N = params without the position embedding (tied head once, unpadded vocab)"

# Dense bf16 FLOP/s per chip by device-kind substring, most specific first.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def device_peak_flops(device: jax.Device) -> float | None:
    """Assumed dense bf16 peak FLOP/s of one device (None for CPUs and unknown kinds)."""
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS:
        if name in kind:
            return peak
    return None


def total_peak_flops(devices: Sequence[jax.Device] | None = None) -> float | None:
    """Summed peak of devices (default: all devices of the run); None if any device's is unknown."""
    peaks = [device_peak_flops(d) for d in (devices if devices is not None else jax.devices())]
    return None if not peaks or None in peaks else float(sum(peaks))


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: achieved over peak FLOP/s (None without a peak)."""
    return flops_per_s / peak if peak else None
