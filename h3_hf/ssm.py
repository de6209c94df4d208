"""Shared state-space numerics for H3, S4D and S5.

Plain PyTorch, no transformers imports: this file is copied next to saved checkpoints for
``trust_remote_code`` and must stand alone.

Notation used throughout:
    B batch, H channels (or heads), N complex modes (``state_size // 2`` for a real SSM whose
    conjugate modes are implied), L sequence length.

A diagonal SSM is run in one of two equivalent modes:
    recurrent     x_t = dA * x_{t-1} + dB * u_t,      y_t = 2 Re(sum_n C x_t) + D u_t
    convolution   y = K * u + D u,  with K[h, l] = 2 Re(sum_n C dB dA^l)
The state is updated before the readout, so lag 0 of the kernel is C dB.

All SSM math runs in float32 / complex64 (float64 / complex128 when the inputs are float64),
also under autocast; results are cast back to the activation dtype by the callers.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

DIAGONAL_INITS = ("inv", "lin", "legs")
DISCRETIZATIONS = ("zoh", "bilinear")


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
    """Context manager that switches autocast off so SSM math keeps its float32 inputs."""
    return torch.autocast(device_type=device_type, enabled=False)


class Float32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 (float64 for float64 inputs) whatever the input, weight and autocast
    dtypes; returns the input's dtype.

    The gradients of its weight and bias are sums over every position: accumulated in bf16 they lose most of their
    value on long sequences (S5 classifier at L = 16k in bf16: gradient error 19% over all parameters, 0.4% with
    float32 norms; scripts/check_precision.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with no_autocast(x.device.type):
            dtype = torch.promote_types(x.dtype, torch.float32)
            weight = None if self.weight is None else self.weight.to(dtype)
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


# --------------------------------------------------------------------------------------------
# HiPPO matrices and diagonal initialisations (float64)
# --------------------------------------------------------------------------------------------


def hippo_legs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS transition matrix A (n, n) and input vector B (n,), float64.

    A[i, k] = -sqrt(2i+1) sqrt(2k+1) for i > k, -(i+1) for i = k, 0 for i < k; B[i] = sqrt(2i+1).
    """
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(1, n + 1, dtype=torch.float64))
    return a, q.clone()


def hippo_legs_normal(n: int) -> torch.Tensor:
    """The normal part S = A + p p^T of HiPPO-LegS, p[i] = sqrt(i + 1/2); (n, n) float64.

    S = -I/2 + K with K real skew-symmetric, so S is normal and unitarily diagonalisable.
    """
    a, _ = hippo_legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    return a + p[:, None] * p[None, :]


def hippo_n_eig(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of HiPPO-N (the normal part of HiPPO-LegS): S = V diag(Lambda) V^H.

    Returns Lambda (n,) complex128 sorted by ascending imaginary part (Re = -1/2 exactly) and the
    unitary V (n, n) complex128. Computed as eigh of the Hermitian matrix -i K, where K = S + I/2 is
    the skew part (passing -i S itself would break Hermitian symmetry on the diagonal).
    """
    s = hippo_legs_normal(n)
    skew = s + 0.5 * torch.eye(n, dtype=torch.float64)
    omega, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    lam = torch.complex(torch.full_like(omega, -0.5), omega)
    return lam, v


def diagonal_init(init: str, state_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal A and B for a real state of size ``state_size`` (N/2 complex modes kept).

    Returns A (N/2,) and B (N/2,), complex128, with Re A < 0 and Im A >= 0 (the conjugate half is
    implied by taking 2 Re of the output).
      lin:  A_n = -1/2 + i pi n                              (S4D-Lin, damped Fourier basis)
      inv:  A_n = -1/2 + i (N/pi) (N/(2n+1) - 1)             (S4D-Inv)
      legs: eigenvalues of HiPPO-N, B = V^H B_legs           (S4D-LegS / DSS), Im B clipped to +-2
    """
    if init not in DIAGONAL_INITS:
        raise ValueError(f"init must be one of {DIAGONAL_INITS}, got {init!r}")
    if state_size <= 0 or state_size % 2:
        raise ValueError(f"state_size must be a positive even integer, got {state_size}")
    half = state_size // 2
    n = torch.arange(half, dtype=torch.float64)
    ones = torch.ones(half, dtype=torch.complex128)
    if init == "lin":
        return torch.complex(torch.full_like(n, -0.5), math.pi * n), ones
    if init == "inv":
        imag = state_size / math.pi * (state_size / (2 * n + 1) - 1)
        return torch.complex(torch.full_like(n, -0.5), imag), ones
    lam, v = hippo_n_eig(state_size)
    _, b_legs = hippo_legs(state_size)
    b = v.conj().T @ b_legs.to(torch.complex128)
    # Keep the modes with negative imaginary part (most negative first) and conjugate them, which
    # leaves the real output unchanged and gives Im A >= 0 like the other inits.
    lam, b = lam[:half].conj().resolve_conj(), b[:half].conj().resolve_conj()
    b = torch.complex(b.real, b.imag.clamp(-2.0, 2.0))
    return lam, b


def log_dt_init(num_channels: int, dt_min: float, dt_max: float, shape_tail: tuple = ()) -> torch.Tensor:
    """log(dt) uniform in [log dt_min, log dt_max]; shape (num_channels, *shape_tail), float32."""
    u = torch.rand(num_channels, *shape_tail, dtype=parameter_dtype())
    return u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


# --------------------------------------------------------------------------------------------
# Discretisation and the Vandermonde products
# --------------------------------------------------------------------------------------------


def discretize_diagonal(a: torch.Tensor, dt: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretise a diagonal continuous SSM.

    Args:
        a: (..., N) complex continuous eigenvalues.
        dt: real step sizes broadcastable to ``a`` (e.g. (H, 1)).
        method: "zoh" or "bilinear".
    Returns:
        log_da (..., N): log of the discrete eigenvalue, so that dA^l = exp(l * log_da);
        db_scale (..., N): dB = db_scale * B.
    """
    dta = dt * a
    if method == "zoh":
        return dta, (torch.exp(dta) - 1) / a
    if method == "bilinear":
        denom = 1 - dta / 2
        return torch.log((1 + dta / 2) / denom), dt / denom
    raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {method!r}")


def _block_size(length: int, chunk_size: int | None) -> int:
    """Positions per block of the blocked Vandermonde products: ``chunk_size`` or ceil(sqrt(length))."""
    if chunk_size is not None and chunk_size > 0:
        return max(1, min(chunk_size, length))
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def _powers(log_da: torch.Tensor, lags: torch.Tensor) -> torch.Tensor:
    """dA^lag = exp(lag * log dA): (H, N) x (K,) -> (H, N, K), as |.| = exp(lag Re) and angle lag Im (complex exp
    is not vectorised on CPU: 3.5x slower)."""
    lags = lags.to(log_da.real.dtype)
    return torch.polar(torch.exp(log_da.real.unsqueeze(-1) * lags), log_da.imag.unsqueeze(-1) * lags)


def vandermonde_real(coeff: torch.Tensor, log_da: torch.Tensor, length: int, *, offset: int = 0,
                     chunk_size: int | None = None) -> torch.Tensor:
    """Re sum_n coeff[..., h, n] * dA[h, n]^(offset + l) for l in [0, length).

    Blocked so that the (H, N, L) power tensor is never formed: with l = j C + i (C positions per
    block, ceil(sqrt(L)) by default), dA^l = dA^(jC) dA^i, and the sum over n is a batched matrix
    product of left[h, j, n] = coeff dA^(offset + jC) and dA^i[h, n, i]. Only the real part is
    needed, Re(left dA^i) = Re(left) Re(dA^i) - Im(left) Im(dA^i), so it is one real product with
    inner dimension 2N (a quarter of the work of the complex product, in real BLAS). Memory
    O(H N sqrt L); every power is one exp (no error accumulates along l).

    Args:
        coeff: (..., H, N) complex.
        log_da: (H, N) complex.
        chunk_size: positions per block (default ceil(sqrt(length))).
    Returns:
        (..., H, length) real.
    """
    block = _block_size(length, chunk_size)
    blocks = -(-length // block)
    arange = functools.partial(torch.arange, device=log_da.device)
    inner = _powers(log_da, arange(block))
    inner = torch.stack([inner.real, -inner.imag], dim=-2)  # (H, N, 2, C)
    outer = _powers(log_da, offset + block * arange(blocks))  # (H, N, J)
    left = torch.view_as_real(coeff.unsqueeze(-1) * outer).transpose(-3, -2)  # (..., H, J, N, 2)
    with no_autocast(log_da.device.type):  # a real matmul: autocast would run it in half precision
        product = left.flatten(-2) @ inner.flatten(-3, -2)  # (..., H, J, 2N) @ (H, 2N, C)
    return product.flatten(-2)[..., :length]


def vandermonde_transpose(u: torch.Tensor, log_da: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """sum_l u[..., h, l] * dA[h, n]^(L - 1 - l): the state reached from zero after the sequence u.

    Blocked like :func:`vandermonde_real` on the reversed sequence (m = L - 1 - l = j C + i); for real u the
    inner products are two real matrix products.

    Args:
        u: (..., H, L) real (or complex).
        log_da: (H, N) complex.
    Returns:
        (..., H, N) complex (still to be multiplied by dB).
    """
    length = u.shape[-1]
    block = _block_size(length, chunk_size)
    blocks = -(-length // block)
    arange = functools.partial(torch.arange, device=log_da.device)
    rev = F.pad(u.flip(-1), (0, blocks * block - length))
    rev = rev.reshape(*u.shape[:-1], blocks, block)  # (..., H, J, C), rev[.., j, i] = u[L - 1 - jC - i]
    inner = _powers(log_da, arange(block)).transpose(-1, -2)  # (H, C, N)
    with no_autocast(log_da.device.type):  # autocast would run the real matmuls in half precision
        if rev.is_complex():
            partial = rev.to(inner.dtype) @ inner
        else:
            rev = rev.to(inner.real.dtype)
            partial = torch.complex(rev @ inner.real, rev @ inner.imag)  # (..., H, J, N)
    outer = _powers(log_da, block * arange(blocks)).transpose(-1, -2)  # (H, J, N)
    return (partial * outer).sum(-2)


def diagonal_kernel(c: torch.Tensor, db: torch.Tensor, log_da: torch.Tensor, length: int,
                    *, chunk_size: int | None = None) -> torch.Tensor:
    """Convolution kernel K[..., h, l] = 2 Re sum_n C dB dA^l of a diagonal SSM.

    Args:
        c: (..., H, N) complex output matrix (extra leading dims, e.g. directions, are kept).
        db: (H, N) complex discrete input matrix (B times the ``db_scale`` of the discretisation).
        log_da: (H, N) complex, from :func:`discretize_diagonal`.
    Returns:
        (..., H, length) real.
    """
    return vandermonde_real(2 * c * db, log_da, length, chunk_size=chunk_size)


def diagonal_state(u: torch.Tensor, log_da: torch.Tensor, db: torch.Tensor, initial_state: torch.Tensor | None = None,
                   *, chunk_size: int | None = None) -> torch.Tensor:
    """Closed-form state after running x_t = dA x_{t-1} + dB u_t over u (no loop over time).

    x_L = dA^L x_0 + dB sum_l dA^(L-1-l) u_l.

    Args:
        u: (..., H, L) real input sequence.
        log_da, db: (H, N) complex (``db`` = dB, the discrete input matrix).
        initial_state: optional (..., H, N) complex state before u.
    Returns:
        (..., H, N) complex.
    """
    state = db * vandermonde_transpose(u, log_da, chunk_size=chunk_size)
    if initial_state is not None:
        state = state + torch.exp(log_da * u.shape[-1]) * initial_state
    return state


def initial_state_response(initial_state: torch.Tensor, c: torch.Tensor, log_da: torch.Tensor, length: int,
                           *, chunk_size: int | None = None) -> torch.Tensor:
    """Output contribution of a non-zero initial state: 2 Re sum_n C dA^(l+1) x_0, l in [0, length).

    Args:
        initial_state: (..., H, N) complex; c: (H, N) complex; log_da: (H, N) complex.
    Returns:
        (..., H, length) real.
    """
    return vandermonde_real(2 * c * initial_state, log_da, length, offset=1, chunk_size=chunk_size)


def diagonal_step(state: torch.Tensor, u: torch.Tensor, da: torch.Tensor, db: torch.Tensor,
                  c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step of a diagonal SSM (no skip term).

    Args:
        state: (..., H, N) complex; u: (..., H) real; da, db, c: (H, N) complex.
    Returns:
        new state (..., H, N) complex and y = 2 Re sum_n C x (..., H) real.
    """
    state = da * state + db * u.unsqueeze(-1).to(state.dtype)
    return state, 2 * (c * state).sum(-1).real


# --------------------------------------------------------------------------------------------
# FFT convolutions
# --------------------------------------------------------------------------------------------


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


# Kept out of torch.compile graphs: inductor (torch 2.13, CPU) computed wrong gradients for the kernel when
# this FFT convolution was traced inside the H3 mixer (tests/test_fast_paths.py), and it generates no code
# for complex operators anyway, so the graph break costs nothing.
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


# --------------------------------------------------------------------------------------------
# The diagonal SSM kernel as a module (parameters of S4D and of H3's diagonal SSM)
# --------------------------------------------------------------------------------------------


class DiagonalSSMKernel(nn.Module):
    """Parameters and kernels of H independent diagonal SSMs of real state size ``state_size``.

    Parameters (names follow the official H3/S4 checkpoints):
        log_dt (H,); inv_A_real (H, N) with Re A = -exp(inv_A_real); A_imag (H, N);
        B (H, N, 2) and C (channels, H, N, 2) complex stored as (real, imag) pairs.
    ``channels`` > 1 gives several output matrices sharing A, B and dt (bidirectional S4D).
    """

    ssm_parameter_names = ("log_dt", "inv_A_real", "A_imag", "B")

    def __init__(self, num_channels: int, state_size: int, *, init: str = "inv", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, channels: int = 1, kernel_chunk_size: int | None = None):
        super().__init__()
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
        self.num_channels = num_channels
        self.state_size = state_size
        self.init = init
        self.discretization = discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.channels = channels
        self.kernel_chunk_size = kernel_chunk_size
        half = state_size // 2
        dtype = parameter_dtype()
        self.log_dt = nn.Parameter(torch.empty(num_channels, dtype=dtype))
        self.inv_A_real = nn.Parameter(torch.empty(num_channels, half, dtype=dtype))
        self.A_imag = nn.Parameter(torch.empty(num_channels, half, dtype=dtype))
        self.B = nn.Parameter(torch.empty(num_channels, half, 2, dtype=dtype))
        self.C = nn.Parameter(torch.empty(channels, num_channels, half, 2, dtype=dtype))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Freshly drawn initial values of every parameter (uses the global torch RNG)."""
        a, b = diagonal_init(self.init, self.state_size)
        h = self.num_channels
        c = torch.randn(self.channels, h, self.state_size // 2, dtype=torch.complex64)
        return {
            "log_dt": log_dt_init(h, self.dt_min, self.dt_max),
            "inv_A_real": torch.log(-a.real).float().expand(h, -1).clone(),
            "A_imag": a.imag.float().expand(h, -1).clone(),
            "B": torch.view_as_real(b.to(torch.complex64)).expand(h, -1, -1).clone(),
            "C": torch.view_as_real(c).clone(),
        }

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """dt (H, 1), A (H, N), B (H, N), C (channels, H, N) in float32+/complex64+."""
        dtype = compute_dtype(self.log_dt)
        dt = torch.exp(self.log_dt.to(dtype)).unsqueeze(-1)
        a = torch.complex(-torch.exp(self.inv_A_real.to(dtype)), self.A_imag.to(dtype))
        b = pairs_to_complex(self.B.to(dtype))
        c = pairs_to_complex(self.C.to(dtype))
        return dt, a, b, c

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log dA (H, N), dB (H, N) and C (channels, H, N), complex."""
        with no_autocast(self.log_dt.device.type):
            dt, a, b, c = self.continuous()
            log_da, db_scale = discretize_diagonal(a, dt, self.discretization)
            return log_da, b * db_scale, c

    def forward(self, length: int) -> torch.Tensor:
        """Convolution kernel (channels, H, length), float32 (float64 for float64 parameters)."""
        with no_autocast(self.log_dt.device.type):
            log_da, db, c = self.discrete()
            return diagonal_kernel(c, db, log_da, length, chunk_size=self.kernel_chunk_size)


# --------------------------------------------------------------------------------------------
# H3's shift SSM: A is the shift matrix, so the SSM is a learned causal FIR filter of N taps
# --------------------------------------------------------------------------------------------


def shift_kernel(b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """FIR kernel of the shift SSM: K[d, i] = sum_j B[d, j] C[d, i + j] (C beyond N is 0), i < N.

    Args:
        b: (D, N) input vectors; c: (D, N) output vectors.
    Returns:
        (D, N) causal kernel, lag 0 first.
    """
    n = b.shape[-1]
    windows = F.pad(c, (0, n)).unfold(-1, n, 1)[:, :n]  # windows[d, i, j] = C[d, i + j]
    return torch.einsum("dij,dj->di", windows, b)


class ShiftSSMKernel(nn.Module):
    """Parameters of H3's shift SSM on D channels with N taps (official names and shapes).

    B (D, N), initialised to e_0; C (1, D, N), initialised U(-1/sqrt(N), 1/sqrt(N)).
    The recurrent state is the window of the last N inputs, so the cache stores raw inputs.
    """

    ssm_parameter_names = ("B",)

    def __init__(self, num_channels: int, state_size: int):
        super().__init__()
        self.num_channels = num_channels
        self.state_size = state_size
        self.B = nn.Parameter(torch.empty(num_channels, state_size, dtype=parameter_dtype()))
        self.C = nn.Parameter(torch.empty(1, num_channels, state_size, dtype=parameter_dtype()))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        dtype = parameter_dtype()
        b = torch.zeros(self.num_channels, self.state_size, dtype=dtype)
        b[:, 0] = 1.0
        bound = 1 / math.sqrt(self.state_size)
        return {"B": b, "C": torch.empty(1, self.num_channels, self.state_size, dtype=dtype).uniform_(-bound, bound)}

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def forward(self) -> torch.Tensor:
        """FIR kernel (D, N) in float32 (float64 for float64 parameters)."""
        dtype = compute_dtype(self.B)
        with no_autocast(self.B.device.type):
            return shift_kernel(self.B.to(dtype), self.C[0].to(dtype))


# --------------------------------------------------------------------------------------------
# S5: one MIMO diagonal SSM, HiPPO-N blocks, time-domain associative scan
# --------------------------------------------------------------------------------------------

S5_C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")


def hippo_n_blocks(state_size: int, blocks: int, conj_sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block-diagonal HiPPO-N initialisation of S5.

    ``blocks`` HiPPO-N matrices of size P/J each are diagonalised; with ``conj_sym`` only one eigenvalue
    of each conjugate pair is kept (the ones with Im <= 0 come first from eigh; any half works).
    Returns Lambda (P_h,), V (P, P_h) and V_inv (P_h, P), complex128, with P_h = P/2 under conj_sym.
    """
    block = state_size // blocks
    lam, v = hippo_n_eig(block)
    if conj_sym:
        lam, v = lam[: block // 2], v[:, : block // 2]
    big_v = torch.block_diag(*([v] * blocks))
    big_vinv = torch.block_diag(*([v.conj().T] * blocks))
    return lam.repeat(blocks), big_v, big_vinv


def lecun_normal(shape: tuple, fan_in: int, dtype=torch.float64) -> torch.Tensor:
    """JAX's lecun_normal: truncated standard normal on [-2, 2] scaled to std sqrt(1/fan_in)."""
    t = torch.empty(shape, dtype=dtype)
    torch.nn.init.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0)
    return t * math.sqrt(1.0 / fan_in) / 0.87962566103423978


def associative_scan(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """All states of x_k = a_k x_{k-1} + b_k (x_{-1} = 0) with a log-depth parallel scan.

    The pairs (a, b) compose as (a_i, b_i) then (a_j, b_j) = (a_j a_i, a_j b_i + b_j); the scan pairs
    neighbours, recurses on the half-length sequence and fills in the other half (O(L) work,
    O(log L) depth). A time-invariant ``a`` (length 1 along the time axis) is never expanded: its
    pairs are just squares. With ``chunk_size`` the sequence is scanned chunk by chunk, carrying the
    last state (memory O(chunk)).

    Args:
        a: (batch or 1, L or 1, ...) transition, broadcastable to ``b``.
        b: (batch, L, ...) inputs.
    Returns:
        x (batch, L, ...).
    """
    length = b.shape[1]
    if a.dim() != b.dim() or a.shape[1] not in (1, length):
        raise ValueError(f"a must have shape (batch or 1, {length} or 1, ...) like b, got {tuple(a.shape)}")
    if chunk_size is None or chunk_size >= length:
        return _scan(a, b)
    out, carry = [], None
    for start in range(0, length, chunk_size):
        b_c = b[:, start:start + chunk_size]
        a_c = a if a.shape[1] == 1 else a[:, start:start + chunk_size]
        x = _scan(a_c, b_c)
        if carry is not None:  # add the carried state propagated through the chunk: prod a_1..a_k * carry
            powers = torch.cumprod(a_c.expand(-1, b_c.shape[1], *a_c.shape[2:]), dim=1)
            x = x + powers * carry.unsqueeze(1)
        carry = x[:, -1]
        out.append(x)
    return torch.cat(out, dim=1)


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    length = b.shape[1]
    if length == 1:
        return b
    half = length // 2
    b_even, b_odd = b[:, 0:2 * half:2], b[:, 1:2 * half:2]
    if a.shape[1] == 1:  # time-invariant: the pair (a, b_even)(a, b_odd) has transition a^2
        x_odd = _scan(a * a, torch.addcmul(b_odd, a, b_even))
        a_next = a
    else:
        a_even, a_odd = a[:, 0:2 * half:2], a[:, 1:2 * half:2]
        x_odd = _scan(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even))  # states at positions 1, 3, 5, ...
        a_next = a[:, 2::2]
    out = torch.empty_like(b)
    out[:, 0] = b[:, 0]
    out[:, 1::2] = x_odd
    out[:, 2::2] = torch.addcmul(b[:, 2::2], a_next, x_odd[:, :length - half - 1])  # x_2i = a_2i x_2i-1 + b_2i
    return out


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference loop for :func:`associative_scan` (same shapes)."""
    x = torch.zeros_like(b[:, 0])
    out = []
    for k in range(b.shape[1]):
        x = a[:, k if a.shape[1] > 1 else 0] * x + b[:, k]
        out.append(x)
    return torch.stack(out, dim=1)


def _as_scan_transition(da: torch.Tensor) -> torch.Tensor:
    """(P_h,) fixed-step or (batch, L, P_h) per-position Lambda_bar -> the (batch|1, L|1, P_h) scan layout."""
    return da.view(1, 1, -1) if da.dim() == 1 else da


class S5SSM(nn.Module):
    """One MIMO diagonal SSM of P states over H features, discretised per state (and per position).

    Parameters: Lambda_re, Lambda_im (P_h,); B (P_h, H, 2) = V^-1 B_init; C (H, directions * P_h, 2)
    = C_init V; D (H,); log_step (P_h,). Complex values are stored as (real, imag) pairs.
    x_k = Lambda_bar_k x_{k-1} + B_bar_k u_k; y_k = Re(C x_k) (x2 under conj_sym) + D u_k.
    """

    ssm_parameter_names = ("Lambda_re", "Lambda_im", "B", "log_step")

    def __init__(self, hidden_size: int, state_size: int, *, blocks: int = 1, conj_sym: bool = True,
                 clip_eigs: bool = False, discretization: str = "zoh", C_init: str = "trunc_standard_normal",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, step_rescale: float = 1.0, bidirectional: bool = False,
                 scan_chunk_size: int | None = None):
        super().__init__()
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
        if C_init not in S5_C_INITS:
            raise ValueError(f"C_init must be one of {S5_C_INITS}, got {C_init!r}")
        self.hidden_size, self.state_size, self.blocks = hidden_size, state_size, blocks
        self.conj_sym, self.clip_eigs, self.discretization = conj_sym, clip_eigs, discretization
        self.C_init, self.dt_min, self.dt_max = C_init, dt_min, dt_max
        self.step_rescale, self.bidirectional, self.scan_chunk_size = step_rescale, bidirectional, scan_chunk_size
        half = state_size // 2 if conj_sym else state_size
        directions = 2 if bidirectional else 1
        dtype = parameter_dtype()
        self.Lambda_re = nn.Parameter(torch.empty(half, dtype=dtype))
        self.Lambda_im = nn.Parameter(torch.empty(half, dtype=dtype))
        self.B = nn.Parameter(torch.empty(half, hidden_size, 2, dtype=dtype))
        self.C = nn.Parameter(torch.empty(hidden_size, directions * half, 2, dtype=dtype))
        self.D = nn.Parameter(torch.empty(hidden_size, dtype=dtype))
        self.log_step = nn.Parameter(torch.empty(half, dtype=dtype))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Freshly drawn initial values (global torch RNG)."""
        lam, v, vinv = hippo_n_blocks(self.state_size, self.blocks, self.conj_sym)
        h, p = self.hidden_size, self.state_size
        b = vinv @ lecun_normal((p, h), fan_in=h).to(torch.complex128)  # (P_h, H)
        cs = []
        for _ in range(2 if self.bidirectional else 1):
            if self.C_init == "complex_normal":
                c = torch.randn(h, lam.shape[0], dtype=torch.complex128)  # real and imag parts N(0, 1/2)
            else:
                c = lecun_normal((h, p), fan_in=p).to(torch.complex128)
                if self.C_init == "trunc_standard_normal":
                    c = c + 1j * lecun_normal((h, p), fan_in=p)
                c = c @ v
            cs.append(c)
        return {
            "Lambda_re": lam.real.float(), "Lambda_im": lam.imag.float(),
            "B": torch.view_as_real(b).float(), "C": torch.view_as_real(torch.cat(cs, dim=1)).float(),
            "D": torch.randn(h, dtype=parameter_dtype()),
            "log_step": log_dt_init(lam.shape[0], self.dt_min, self.dt_max),
        }

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def discrete(self, timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lambda_bar and the B_bar scale, (P_h,) or (batch, L, P_h) with ``timesteps`` (batch, L); and B (P_h, H)."""
        dtype = compute_dtype(self.log_step)
        re = self.Lambda_re.to(dtype)
        if self.clip_eigs:
            re = re.clamp(max=-1e-4)
        lam = torch.complex(re, self.Lambda_im.to(dtype))
        step = torch.exp(self.log_step.to(dtype)) * self.step_rescale
        if timesteps is not None:
            step = step * timesteps.to(dtype).unsqueeze(-1)
        log_da, b_scale = discretize_diagonal(lam, step, self.discretization)
        return torch.exp(log_da), b_scale, pairs_to_complex(self.B.to(dtype))

    def _readout(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("hp,...p->...h", c, x).real
        return 2 * y if self.conj_sym else y

    def forward(self, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """u (batch, L, H) real -> y (batch, L, H) in float32 (float64 for float64 parameters).

        timesteps: optional (batch, L) positive intervals t_k - t_{k-1}; position k is discretised with
        step * timesteps[:, k] (the backward direction of a bidirectional layer uses timesteps[:, k + 1]).
        """
        with no_autocast(u.device.type):
            dtype = compute_dtype(self.log_step)
            u = u.to(dtype)
            c = pairs_to_complex(self.C.to(dtype))
            half = self.Lambda_re.shape[0]
            da, b_scale, b = self.discrete(timesteps)
            bu = torch.einsum("ph,blh->blp", b, u.to(b.dtype))
            x = associative_scan(_as_scan_transition(da), b_scale * bu, chunk_size=self.scan_chunk_size)
            y = self._readout(c[:, :half], x)
            if self.bidirectional:
                if timesteps is not None:
                    ones = torch.ones_like(timesteps[:, :1])
                    da, b_scale, _ = self.discrete(torch.cat([timesteps[:, 1:], ones], dim=1))
                    da, b_scale = da.flip(1), b_scale.flip(1)
                x_back = associative_scan(_as_scan_transition(da), b_scale * bu.flip(1),
                                          chunk_size=self.scan_chunk_size).flip(1)
                y = y + self._readout(c[:, half:], x_back)
            return y + self.D.to(dtype) * u

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (batch, P_h) complex."""
        if self.bidirectional:
            raise ValueError("a bidirectional S5 layer sees the future and cannot run step by step")
        dtype = complex_dtype(compute_dtype(self.log_step))
        return torch.zeros(batch_size, self.Lambda_re.shape[0], dtype=dtype, device=self.log_step.device)

    def step(self, u: torch.Tensor, state: torch.Tensor, timestep: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: u (batch, H), state (batch, P_h), optional timestep (batch,) -> (y (batch, H), state)."""
        if self.bidirectional:
            raise ValueError("a bidirectional S5 layer sees the future and cannot run step by step")
        with no_autocast(u.device.type):
            dtype = compute_dtype(self.log_step)
            u = u.to(dtype)
            da, b_scale, b = self.discrete(None if timestep is None else timestep[:, None])
            if timestep is not None:
                da, b_scale = da[:, 0], b_scale[:, 0]
            state = da * state + b_scale * (u.to(b.dtype) @ b.T)
            c = pairs_to_complex(self.C.to(dtype))
            return self._readout(c, state) + self.D.to(dtype) * u, state
