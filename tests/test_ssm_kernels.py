"""ssm_kernels: closed-form states, recurrent steps and blocked Vandermonde products against float64 loops and sums."""

import pytest
import torch
from references import naive_run

from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.fft_conv import fft_causal_conv
from h3_hf.ssm_kernels import (
    DISCRETIZATIONS,
    block_powers,
    diagonal_kernel,
    diagonal_state,
    diagonal_step,
    initial_state_response,
    vandermonde_real,
    vandermonde_transpose,
)


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


def test_closed_form_states_pass_gradcheck():
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(3, 8).double()
    log_da, db, c = (t.detach().requires_grad_() for t in kernel.discrete())
    u = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 3, 4, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, a, b, x: diagonal_state(u, a, b, x, chunk_size=4), (u, log_da, db, x0))
    assert torch.autograd.gradcheck(lambda x, cc, a: initial_state_response(x, cc[0], a, 9), (x0, c, log_da))


# ---- blocked Vandermonde products ----

def naive_vandermonde(coeff, log_da, length, offset=0):
    """sum_n coeff[..., h, n] dA[h, n]^(offset + l), one lag at a time."""
    return torch.stack([(coeff * torch.exp(log_da * (offset + l))).sum(-1) for l in range(length)], dim=-1)


def random_log_da(h, n, dtype=torch.complex128):
    return torch.complex(-torch.rand(h, n, dtype=torch.float64) * 0.5 - 1e-3,
                         torch.randn(h, n, dtype=torch.float64) * 3).to(dtype)


@pytest.mark.parametrize("length", [1, 7, 64, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 1000])
@pytest.mark.parametrize("offset", [0, 3])
def test_blocked_vandermonde_equals_lag_by_lag_sum(length, chunk_size, offset):
    torch.manual_seed(length)
    log_da = random_log_da(3, 4)
    coeff = torch.randn(2, 3, 4, dtype=torch.complex128)
    got = vandermonde_real(coeff, log_da, length, offset=offset, chunk_size=chunk_size)
    assert got.shape == (2, 3, length) and got.dtype == torch.float64
    expected = naive_vandermonde(coeff, log_da, length, offset).real
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 7, 64, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 1000])
def test_blocked_vandermonde_transpose_equals_weighted_sum(length, chunk_size):
    torch.manual_seed(length)
    log_da = random_log_da(3, 4)
    u = torch.randn(2, 5, 3, length, dtype=torch.float64)
    lags = torch.arange(length - 1, -1, -1, dtype=torch.float64)
    expected = (u.to(torch.complex128).unsqueeze(-2) * torch.exp(log_da.unsqueeze(-1) * lags)).sum(-1)
    got = vandermonde_transpose(u, log_da, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    got_complex = vandermonde_transpose(u.to(torch.complex128), log_da, chunk_size=chunk_size)
    torch.testing.assert_close(got_complex, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length, chunk_size", [(1, None), (64, None), (100, 7)])
def test_kernel_and_state_from_one_set_of_powers_equal_their_references(length, chunk_size):
    """A prefill computes dA's block powers once for the kernel and the state; both still equal the plain sums."""
    torch.manual_seed(length)
    log_da = random_log_da(3, 4)
    db, c = torch.randn(3, 4, dtype=torch.complex128), torch.randn(3, 4, dtype=torch.complex128)
    u = torch.randn(2, 3, length, dtype=torch.float64)
    powers = block_powers(log_da, length, chunk_size=chunk_size)
    kernel = diagonal_kernel(c, db, log_da, length, chunk_size=chunk_size, powers=powers)
    torch.testing.assert_close(kernel, naive_vandermonde(2 * c * db, log_da, length).real, rtol=1e-10, atol=1e-10)
    lags = torch.arange(length - 1, -1, -1, dtype=torch.float64)
    expected_state = db * (u.to(torch.complex128).unsqueeze(-2) * torch.exp(log_da.unsqueeze(-1) * lags)).sum(-1)
    state = diagonal_state(u, log_da, db, chunk_size=chunk_size, powers=powers)
    torch.testing.assert_close(state, expected_state, rtol=1e-10, atol=1e-10)


def test_blocked_vandermonde_gradients_pass_gradcheck():
    torch.manual_seed(0)
    log_da = random_log_da(2, 3).requires_grad_()
    coeff = torch.randn(2, 3, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, a: vandermonde_real(c, a, 11, chunk_size=4), (coeff, log_da))
    u = torch.randn(2, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: vandermonde_transpose(x, a, chunk_size=3), (u, log_da))


def test_float32_kernel_at_16k_matches_float64():
    torch.manual_seed(0)
    log_da = random_log_da(4, 8) * 0.01
    coeff = torch.randn(4, 8, dtype=torch.complex128)
    exact = vandermonde_real(coeff, log_da, 16384)
    fast = vandermonde_real(coeff.to(torch.complex64), log_da.to(torch.complex64), 16384)
    assert fast.dtype == torch.float32
    assert (fast.double() - exact).abs().max() < 1e-3 * exact.abs().max()
