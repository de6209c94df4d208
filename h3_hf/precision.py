"""Precision rules shared by every SSM computation.

SSM parameters are created in float32 (float64 when that is the default dtype), and kernels, FFTs, scans and
complex arithmetic run in float32 / complex64 (float64 / complex128 for float64 inputs) with autocast off; callers
cast results back to the activation dtype at the layer boundary.

Plain PyTorch: checkpoints carry this file with their code.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64/complex128, else float32 (never half precision)."""
    wide = any(t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.float64 if wide else torch.float32


def complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def pairs_to_complex(x: torch.Tensor) -> torch.Tensor:
    """(..., 2) real (real, imag) pairs -> complex (...), in freshly allocated memory.

    Not ``torch.view_as_complex``: a parameter that ``from_pretrained`` maps straight from a safetensors file is
    only 8-byte aligned, and a complex128 view of it (float64 models) crashes BLAS kernels (segmentation fault).
    """
    return torch.complex(x[..., 0], x[..., 1])


def parameter_dtype() -> torch.dtype:
    """dtype in which SSM parameters are created: float32, or float64 when that is the default dtype; never half
    precision, also when a model is built under an fp16/bf16 default (``from_config(config, dtype=...)``)."""
    return torch.promote_types(torch.get_default_dtype(), torch.float32)


def no_autocast(device_type: str):
    """Context manager that switches autocast off so SSM math keeps its float32 inputs (a no-op context when
    autocast is off already, which spares the decode steps the cost of entering and leaving one)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class Float32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 (float64 for float64 inputs) whatever the input, weight and autocast
    dtypes; returns the input's dtype.

    The gradients of its weight and bias are sums over every position: accumulated in bf16 they lose most of their
    value on long sequences (S5 classifier at L = 16k in bf16: gradient error 19% over all parameters, 0.4% with
    float32 norms; scripts/check_precision.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)
                and all(p is None or p.dtype == x.dtype for p in (self.weight, self.bias))):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)  # nothing to cast
        with no_autocast(x.device.type):
            dtype = torch.promote_types(x.dtype, torch.float32)
            weight = None if self.weight is None else self.weight.to(dtype)
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
