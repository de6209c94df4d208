"""FFT convolutions: causal (training and prefill of every convolution-mode SSM) and two-sided (bidirectional S4D).

Real FFTs of a 5-smooth size >= L + Lk - 1 in float32 (float64 for float64 inputs) with autocast off; the result
has the input's dtype. The autograd function computes both gradients from the saved spectra.
"""

import torch

from .precision import compute_dtype, no_autocast


def fft_causal_conv(u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution y[l] = sum_{j<=l} K[j] u[l-j] (+ skip * u) along the last dim.

    Computed with real FFTs of a size >= L + Lk - 1 (no wrap-around, :func:`fft_length`) in float32, or
    float64 when an input is float64, with autocast off; the result has the dtype of ``u``.

    Args:
        u: (..., H, L) input.
        kernel: (..., H, Lk) kernel, broadcastable to ``u``; lags >= L are ignored, shorter kernels
            are zero-padded.
        skip: optional (H,) feed-through D.
    Returns:
        (..., H, L).
    """
    kernel = kernel[..., :u.shape[-1]]
    return _fft_conv(u, kernel, skip)


def fft_length(n: int) -> int:
    """FFT size for a convolution needing >= n points: the smallest 5-smooth (2^a 3^b 5^c) multiple of 16.

    Measured with torch's (pocketfft) real FFTs on CPU: odd-heavy sizes such as 1125 = 3^2 5^3 are 2x slower
    than nearby even ones, and sizes with a large prime factor 5x slower; 1152 for n = 1087 or 8640 for
    n = 8255 beat both the odd sizes and the next power of two (2048, 16384).
    """
    m = -(-max(n, 1) // 16)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return 16 * m
        m += 1


def _sum_to_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``x`` over the dims that broadcasting added to a tensor of ``shape`` (as ``sum_to_size``, without
    the copy ``sum`` makes over dims of size 1)."""
    extra = x.dim() - len(shape)
    dims = [i for i in range(extra) if x.shape[i] != 1]
    dims += [extra + i for i, size in enumerate(shape) if size == 1 and x.shape[extra + i] != 1]
    return (x.sum(dims, keepdim=True) if dims else x).reshape(shape)


class _CircularConvolution(torch.autograd.Function):
    """First L outputs of the size-n circular convolution of (..., L) u and (..., Lk) kernel (zero-padded).

    Autograd through rfft/irfft would run the backward of each real FFT as a full complex FFT of size n;
    here both gradients are circular correlations, computed from the saved spectra with one rfft of the
    output gradient and one irfft per input (forward + backward about 2x faster at L = 8k):
    grad_u = irfft(G conj(K))[:L], grad_kernel = irfft(G conj(U))[:Lk], summed over broadcast dims.
    With ``create_graph=True`` (gradients of gradients: Hessian-vector products, gradient penalties) the
    spectra are recomputed from the saved inputs with differentiable FFTs, so higher derivatives reach them.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, kernel: torch.Tensor, n: int) -> torch.Tensor:
        uf = torch.fft.rfft(u, n=n)
        kf = torch.fft.rfft(kernel, n=n)
        ctx.save_for_backward(u, kernel, uf, kf)
        ctx.n = n
        return torch.fft.irfft(uf * kf, n=n)[..., :u.shape[-1]]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, kernel, uf, kf = ctx.saved_tensors
        n = ctx.n
        if torch.is_grad_enabled():  # create_graph=True: the saved spectra are not connected to u and kernel
            uf, kf = torch.fft.rfft(u, n=n), torch.fft.rfft(kernel, n=n)
        gf = torch.fft.rfft(grad, n=n)
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(_sum_to_shape(gf * kf.conj(), uf.shape), n=n)[..., :u.shape[-1]]
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.fft.irfft(_sum_to_shape(gf * uf.conj(), kf.shape), n=n)[..., :kernel.shape[-1]]
        return grad_u, grad_kernel, None


# Kept out of torch.compile graphs: with torch 2.13 on CPU, inductor computes wrong kernel gradients when it traces
# this FFT convolution inside the H3 mixer, and it generates no code for complex operators anyway, so the graph
# break costs nothing.
@torch.compiler.disable
def _fft_conv(u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor | None, n: int | None = None
              ) -> torch.Tensor:
    """First L outputs of the circular convolution of size ``n`` (zero-padded u and kernel), plus skip * u.

    By default n = fft_length(L + Lk - 1), so nothing wraps around into the first L outputs (a
    linear convolution); a short kernel (the shift SSM's N taps) gives an FFT of ~L, not 2L.
    """
    length = u.shape[-1]
    dtype = compute_dtype(u, kernel)
    n = n or fft_length(length + kernel.shape[-1] - 1)
    if kernel.shape[-1] > n or length > n:
        raise ValueError(f"FFT size n={n} is shorter than the input ({length}) or the kernel ({kernel.shape[-1]})")
    with no_autocast(u.device.type):
        u_compute = u.to(dtype)
        y = _CircularConvolution.apply(u_compute, kernel.to(dtype), n)
        if skip is not None:
            y = y + skip.to(dtype).unsqueeze(-1) * u_compute
    return y.to(u.dtype)


def fft_bidirectional_conv(u: torch.Tensor, kernel_forward: torch.Tensor, kernel_backward: torch.Tensor,
                           skip: torch.Tensor | None = None) -> torch.Tensor:
    """Two-sided convolution: causal with ``kernel_forward`` plus anti-causal with ``kernel_backward``.

    y[l] = sum_{j<=l} Kf[l-j] u[j] + sum_{j>l} Kb[j-l-1] u[j] (+ skip * u). The present sample is
    seen only through Kf[0] (and the skip), as in the S4 code's single length-2L kernel.

    Args:
        u: (..., H, L); kernel_forward, kernel_backward: (H, L); skip: optional (H,).
    Returns:
        (..., H, L) with the dtype of ``u``.
    """
    length = u.shape[-1]
    pad = torch.zeros_like(kernel_forward[..., :length])
    # lag j in [0, L) forward, position 2L - 1 - j holds backward lag j (wraps to u[t + j + 1])
    two_sided = torch.cat([kernel_forward[..., :length], pad], dim=-1) + torch.cat(
        [pad, kernel_backward[..., :length].flip(-1)], dim=-1)
    return _fft_conv(u, two_sided, skip, n=2 * length)
