"""Initialisations of diagonal SSMs: HiPPO matrices, S4D's diagonal A and B, S5's block HiPPO-N, step sizes.

Matrices are built in float64 / complex128; callers cast them to the parameter dtype.
"""

import math

import torch

from .precision import parameter_dtype

DIAGONAL_INITS = ("inv", "lin", "legs")
S5_C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")


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
