"""ssm_init: HiPPO matrices, S4D's diagonal initialisations and S5's block HiPPO-N against dense definitions."""

import math

import numpy as np
import pytest
import torch

from h3_hf.ssm_init import diagonal_init, hippo_legs, hippo_n_blocks, hippo_n_eig


def dense_hippo(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS A and HiPPO-N = A + p p^T (n, n), float64, written from their definitions."""
    i = torch.arange(n, dtype=torch.float64)
    legs = -torch.sqrt(2 * i[:, None] + 1) * torch.sqrt(2 * i[None, :] + 1) * (i[:, None] > i[None, :])
    legs = legs - torch.diag(i + 1)
    p = torch.sqrt(i + 0.5)
    return legs, legs + p[:, None] * p[None, :]


def test_hippo_matrices_and_their_eigendecompositions_match_the_dense_definitions():
    """LegS itself; the eigendecomposition of its normal part (S4D's legs init); S5's J identical blocks of it."""
    n = 16
    legs, dense = dense_hippo(n)
    a, b = hippo_legs(n)
    # lower triangular with -(n+1) on the diagonal
    assert a[2, 1] == -math.sqrt(5) * math.sqrt(3) and a[1, 2] == 0 and a[3, 3] == -4
    torch.testing.assert_close(a, legs, rtol=0, atol=1e-12)
    assert torch.allclose(b, torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1))

    lam, v = hippo_n_eig(n)
    ref = np.linalg.eigvals(dense.numpy())
    ref = ref[np.argsort(ref.imag)]
    np.testing.assert_allclose(lam.numpy(), ref, atol=1e-9)
    recon = v @ torch.diag(lam) @ v.conj().T
    np.testing.assert_allclose(recon.real.numpy(), dense.numpy(), atol=1e-10)
    np.testing.assert_allclose(recon.imag.numpy(), 0, atol=1e-10)

    eig = torch.linalg.eigvals(dense)
    key = lambda z: sorted(zip(z.real.round(decimals=8).tolist(), z.imag.round(decimals=8).tolist()))  # noqa: E731
    blocks, v, vinv = hippo_n_blocks(2 * n, 2, conj_sym=False)
    assert torch.allclose(torch.tensor(key(blocks[:n])), torch.tensor(key(eig)), atol=1e-8)
    assert torch.allclose(blocks[:n], blocks[n:])  # J identical blocks
    assert torch.allclose(vinv @ v, torch.eye(2 * n, dtype=torch.complex128), atol=1e-10)
    half, _, _ = hippo_n_blocks(2 * n, 2, conj_sym=True)
    assert half.shape == (n,) and torch.allclose(torch.tensor(key(torch.cat([half[: n // 2], half[: n // 2].conj()]))),
                                                  torch.tensor(key(eig)), atol=1e-8)


def test_diagonal_inits_match_published_values():
    legs, _ = diagonal_init("legs", 16)
    inv, _ = diagonal_init("inv", 16)
    lin, _ = diagonal_init("lin", 16)
    np.testing.assert_allclose(legs.imag.numpy(), [80.97, 25.63, 13.83, 8.36, 5.09, 2.90, 1.37, 0.352], atol=6e-3)
    np.testing.assert_allclose(inv.imag.numpy(), [76.39, 22.07, 11.20, 6.55, 3.96, 2.32, 1.18, 0.340], atol=6e-3)
    np.testing.assert_allclose(lin.imag.numpy(), math.pi * np.arange(8))
    for a in (legs, inv, lin):
        np.testing.assert_allclose(a.real.numpy(), -0.5, atol=1e-12)


@pytest.mark.parametrize("bad", [dict(init="foo", state_size=8), dict(init="lin", state_size=7),
                                 dict(init="lin", state_size=0)])
def test_diagonal_init_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="init|state_size"):
        diagonal_init(**bad)
