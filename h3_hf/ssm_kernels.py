"""Diagonal SSM numerics: discretisation, convolution kernels, closed-form states and the recurrent step.

Notation: B batch, H channels (or heads), N complex modes (``state_size // 2`` for a real SSM whose conjugate
modes are implied), L sequence length. A diagonal SSM runs in one of two equivalent modes:
    recurrent     x_t = dA * x_{t-1} + dB * u_t,      y_t = 2 Re(sum_n C x_t) + D u_t
    convolution   y = K * u + D u,  with K[h, l] = 2 Re(sum_n C dB dA^l)
The state is updated before the readout, so lag 0 of the kernel is C dB.

The Vandermonde products never form the (H, N, L) tensor of powers: they are blocked into two real matrix
products (memory O(H N sqrt L)). Callers run them with autocast off (see ``precision.py``).
"""

import functools
import math

import torch
import torch.nn.functional as F

from .precision import no_autocast

DISCRETIZATIONS = ("zoh", "bilinear")


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


def block_powers(log_da: torch.Tensor, length: int, *, offset: int = 0,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of dA^(offset + jC + i) that the blocked Vandermonde products over ``length`` positions read:
    dA^i for i < C (H, N, C) and dA^(offset + jC) for j < J (H, N, J), C positions per block (:func:`_block_size`).
    A prefill's kernel and state read the same ones (offset 0): computed once, passed to both as ``powers``."""
    block = _block_size(length, chunk_size)
    arange = functools.partial(torch.arange, device=log_da.device)
    return _powers(log_da, arange(block)), _powers(log_da, offset + block * arange(-(-length // block)))


def per_channel_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a[..., h] @ b[h] for every channel h: (..., H, M, K) @ (H, K, P) -> (..., H, M, P), as one batched product over
    H with the leading dims of ``a`` folded into its rows (broadcasting ``b`` over them instead would copy it for
    every leading index, and strided operands make the CPU product loop over H with a copy per channel)."""
    if a.dim() == 3:
        return torch.bmm(a.contiguous(), b.contiguous())
    lead = a.shape[:-3]
    rows = a.movedim(-3, 0).reshape(a.shape[-3], -1, a.shape[-1])  # (H, prod(lead) * M, K)
    out = torch.bmm(rows, b.contiguous())
    return out.reshape(a.shape[-3], *lead, a.shape[-2], b.shape[-1]).movedim(0, -3)


def vandermonde_real(coeff: torch.Tensor, log_da: torch.Tensor, length: int, *, offset: int = 0,
                     chunk_size: int | None = None, powers: tuple | None = None) -> torch.Tensor:
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
        powers: :func:`block_powers` of the same arguments (``offset`` included), if already computed.
    Returns:
        (..., H, length) real.
    """
    inner, outer = powers or block_powers(log_da, length, offset=offset, chunk_size=chunk_size)  # (H, N, C), (H, N, J)
    inner = torch.stack([inner.real, -inner.imag], dim=-2)  # (H, N, 2, C)
    left = torch.view_as_real(coeff.unsqueeze(-1) * outer).transpose(-3, -2)  # (..., H, J, N, 2)
    with no_autocast(log_da.device.type):  # a real matmul: autocast would run it in half precision
        product = per_channel_matmul(left.flatten(-2), inner.flatten(-3, -2))  # (..., H, J, 2N) @ (H, 2N, C)
    return product.flatten(-2)[..., :length]


def vandermonde_transpose(u: torch.Tensor, log_da: torch.Tensor, *, chunk_size: int | None = None,
                          powers: tuple | None = None) -> torch.Tensor:
    """sum_l u[..., h, l] * dA[h, n]^(L - 1 - l): the state reached from zero after the sequence u.

    Blocked like :func:`vandermonde_real` on the reversed sequence (m = L - 1 - l = j C + i); for real u the
    inner products are two real matrix products.

    Args:
        u: (..., H, L) real (or complex).
        log_da: (H, N) complex.
        powers: :func:`block_powers` (offset 0) over u's length, if already computed.
    Returns:
        (..., H, N) complex (still to be multiplied by dB).
    """
    length = u.shape[-1]
    inner, outer = powers or block_powers(log_da, length, chunk_size=chunk_size)
    block, blocks = inner.shape[-1], outer.shape[-1]
    rev = F.pad(u.flip(-1), (0, blocks * block - length))
    rev = rev.reshape(*u.shape[:-1], blocks, block)  # (..., H, J, C), rev[.., j, i] = u[L - 1 - jC - i]
    inner = inner.transpose(-1, -2)  # (H, C, N)
    with no_autocast(log_da.device.type):  # autocast would run the real matmuls in half precision
        if rev.is_complex():
            partial = per_channel_matmul(rev.to(inner.dtype), inner)
        else:  # real and imaginary parts in one real product: (..., H, J, C) @ (H, C, 2N)
            n = inner.shape[-1]
            product = per_channel_matmul(rev.to(inner.real.dtype), torch.cat([inner.real, inner.imag], dim=-1))
            partial = torch.complex(product[..., :n], product[..., n:])  # (..., H, J, N)
    return (partial * outer.transpose(-1, -2)).sum(-2)  # outer (H, J, N)


def diagonal_kernel(c: torch.Tensor, db: torch.Tensor, log_da: torch.Tensor, length: int,
                    *, chunk_size: int | None = None, powers: tuple | None = None) -> torch.Tensor:
    """Convolution kernel K[..., h, l] = 2 Re sum_n C dB dA^l of a diagonal SSM.

    Args:
        c: (..., H, N) complex output matrix (extra leading dims, e.g. directions, are kept).
        db: (H, N) complex discrete input matrix (B times the ``db_scale`` of the discretisation).
        log_da: (H, N) complex, from :func:`discretize_diagonal`.
        powers: :func:`block_powers` over ``length``, if already computed.
    Returns:
        (..., H, length) real.
    """
    return vandermonde_real(2 * c * db, log_da, length, chunk_size=chunk_size, powers=powers)


def diagonal_state(u: torch.Tensor, log_da: torch.Tensor, db: torch.Tensor, initial_state: torch.Tensor | None = None,
                   *, chunk_size: int | None = None, powers: tuple | None = None) -> torch.Tensor:
    """Closed-form state after running x_t = dA x_{t-1} + dB u_t over u (no loop over time).

    x_L = dA^L x_0 + dB sum_l dA^(L-1-l) u_l.

    Args:
        u: (..., H, L) real input sequence.
        log_da, db: (H, N) complex (``db`` = dB, the discrete input matrix).
        initial_state: optional (..., H, N) complex state before u.
        powers: :func:`block_powers` over u's length, if already computed.
    Returns:
        (..., H, N) complex.
    """
    state = db * vandermonde_transpose(u, log_da, chunk_size=chunk_size, powers=powers)
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


def shift_kernel(b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """FIR kernel of the shift SSM: K[d, i] = sum_j B[d, j] C[d, i + j] (C beyond N is 0), i < N.

    Args:
        b: (D, N) input vectors; c: (D, N) output vectors.
    Returns:
        (D, N) causal kernel, lag 0 first.
    """
    n = b.shape[-1]
    windows = F.pad(c, (0, n)).unfold(-1, n, 1)[:, :n]  # windows[d, i, j] = C[d, i + j]
    return (windows * b[:, None, :]).sum(-1)  # not einsum: a batched product over D loops over the channels on CPU
