"""Shared SSM numerics against independent references (naive loops, dense matrices, float64)."""

import math

import numpy as np
import pytest
import torch

from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.fft_conv import fft_bidirectional_conv, fft_causal_conv
from h3_hf.ssm_init import DIAGONAL_INITS, diagonal_init, hippo_legs, hippo_n_eig
from h3_hf.ssm_kernels import DISCRETIZATIONS, diagonal_state, diagonal_step, initial_state_response


def naive_discrete(kernel: DiagonalSSMKernel):
    """dA, dB, C straight from the formulas in the spec, float64/complex128."""
    dt = torch.exp(kernel.log_dt.detach().double())[:, None]
    a = torch.complex(-torch.exp(kernel.inv_A_real.detach().double()), kernel.A_imag.detach().double())
    b = torch.view_as_complex(kernel.B.detach().double().contiguous())
    c = torch.view_as_complex(kernel.C.detach().double().contiguous())
    if kernel.discretization == "zoh":
        da = torch.exp(dt * a)
        db = (da - 1) / a * b
    else:
        da = (1 + dt * a / 2) / (1 - dt * a / 2)
        db = dt / (1 - dt * a / 2) * b
    return da, db, c


def naive_run(u, da, db, c, d=None, x0=None):
    """Explicit loop: x_t = dA x_{t-1} + dB u_t, y_t = 2 Re sum C x_t (+ D u_t). u (B, H, L)."""
    x = torch.zeros(u.shape[0], *da.shape, dtype=torch.complex128) if x0 is None else x0.clone()
    ys = []
    for t in range(u.shape[-1]):
        x = da * x + db * u[..., t, None]
        y = 2 * (c * x).sum(-1).real
        if d is not None:
            y = y + d * u[..., t]
        ys.append(y)
    return torch.stack(ys, -1), x


@pytest.mark.parametrize("init", DIAGONAL_INITS)
@pytest.mark.parametrize("disc", DISCRETIZATIONS)
def test_kernel_equals_impulse_response_of_recurrence(init, disc):
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(4, 16, init=init, discretization=disc, dt_min=1e-2, dt_max=0.5).double()
    length = 200
    k = kernel(length)[0]
    da, db, c = naive_discrete(kernel)
    impulse = torch.zeros(1, 4, length, dtype=torch.float64)
    impulse[..., 0] = 1
    ref, _ = naive_run(impulse, da, db, c[0])
    rel = (k - ref[0]).abs().max() / ref.abs().max()
    assert rel <= 1e-10


def test_chunked_kernel_equals_unchunked():
    torch.manual_seed(0)
    whole = DiagonalSSMKernel(8, 32, init="inv")
    chunked = DiagonalSSMKernel(8, 32, init="inv", kernel_chunk_size=37)
    chunked.load_state_dict(whole.state_dict())
    torch.testing.assert_close(chunked(1000), whole(1000), rtol=0, atol=1e-6)


def test_kernel_stays_float32_under_autocast_and_float64_when_asked():
    kernel = DiagonalSSMKernel(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernel(16).dtype == torch.float32
    assert kernel.double()(16).dtype == torch.float64


def test_fft_causal_conv_equals_direct_sum():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 50, dtype=torch.float64)
    k = torch.randn(3, 50, dtype=torch.float64)
    d = torch.randn(3, dtype=torch.float64)
    ref = torch.zeros_like(u)
    for t in range(50):
        for j in range(t + 1):
            ref[..., t] += k[:, j] * u[..., t - j]
    ref += d[:, None] * u
    torch.testing.assert_close(fft_causal_conv(u, k, d), ref, rtol=0, atol=1e-12)
    # short kernel (a FIR such as the shift SSM) is zero-padded
    short = k[:, :5]
    ref_short = sum(short[:, j, None] * torch.nn.functional.pad(u, (j, 0))[..., :50] for j in range(5))
    torch.testing.assert_close(fft_causal_conv(u, short), ref_short, rtol=0, atol=1e-12)


def test_fft_conv_keeps_input_dtype_and_computes_in_float32():
    u = torch.randn(1, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(2, 64)
    y = fft_causal_conv(u, k)
    assert y.dtype == torch.bfloat16
    ref = fft_causal_conv(u.float(), k)
    torch.testing.assert_close(y.float(), ref.bfloat16().float())


def test_bidirectional_conv_equals_two_sided_sum():
    torch.manual_seed(0)
    length = 40
    u = torch.randn(2, 3, length, dtype=torch.float64)
    kf = torch.randn(3, length, dtype=torch.float64)
    kb = torch.randn(3, length, dtype=torch.float64)
    ref = torch.zeros_like(u)
    for t in range(length):
        for j in range(length):
            if j <= t:
                ref[..., t] += kf[:, t - j] * u[..., j]
            else:
                ref[..., t] += kb[:, j - t - 1] * u[..., j]
    torch.testing.assert_close(fft_bidirectional_conv(u, kf, kb), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
def test_closed_form_state_and_initial_state_handover(disc):
    """prefill state = loop state; conv from a non-zero state = loop continued from it."""
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(3, 8, init="legs", discretization=disc, dt_min=0.05, dt_max=0.5).double()
    log_da, db, c = kernel.discrete()
    da = torch.exp(log_da)
    u1 = torch.randn(2, 3, 30, dtype=torch.float64)
    u2 = torch.randn(2, 3, 25, dtype=torch.float64)
    _, x_loop = naive_run(u1, da, db, c[0])
    x_closed = diagonal_state(u1, log_da, db, chunk_size=7)
    torch.testing.assert_close(x_closed, x_loop, rtol=0, atol=1e-11)
    # second segment: loop from x_loop vs convolution + initial-state response
    y_loop, x_end = naive_run(u2, da, db, c[0], x0=x_loop)
    k = kernel(25)[0]
    y_conv = fft_causal_conv(u2, k) + initial_state_response(x_closed, c[0], log_da, 25)
    torch.testing.assert_close(y_conv, y_loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(diagonal_state(u2, log_da, db, initial_state=x_closed), x_end, rtol=0, atol=1e-11)


def test_diagonal_step_matches_loop():
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(3, 8).double()
    log_da, db, c = kernel.discrete()
    u = torch.randn(2, 3, 10, dtype=torch.float64)
    ref, _ = naive_run(u, torch.exp(log_da), db, c[0])
    state = torch.zeros(2, 3, 4, dtype=torch.complex128)
    for t in range(10):
        state, y = diagonal_step(state, u[..., t], torch.exp(log_da), db, c[0])
        torch.testing.assert_close(y, ref[..., t], rtol=0, atol=1e-12)


def test_hippo_n_eigendecomposition_matches_dense_eigenvalues():
    n = 16
    a, b = hippo_legs(n)
    p = np.sqrt(np.arange(n) + 0.5)
    dense_normal = a.numpy() + np.outer(p, p)  # built independently of hippo_legs_normal
    lam, v = hippo_n_eig(n)
    ref = np.linalg.eigvals(dense_normal)
    ref = ref[np.argsort(ref.imag)]
    np.testing.assert_allclose(lam.numpy(), ref, atol=1e-9)
    recon = v @ torch.diag(lam) @ v.conj().T
    np.testing.assert_allclose(recon.real.numpy(), dense_normal, atol=1e-10)
    np.testing.assert_allclose(recon.imag.numpy(), 0, atol=1e-10)
    # the LegS matrix itself: lower triangular with -(n+1) on the diagonal
    assert a[2, 1] == -math.sqrt(5) * math.sqrt(3) and a[1, 2] == 0 and a[3, 3] == -4
    assert torch.allclose(b, torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1))


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
