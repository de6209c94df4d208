"""DiagonalSSMKernel: its kernels against the float64 recurrence, chunking, gradients and long-lag accuracy."""

import copy

import pytest
import torch
from references import naive_discrete, naive_run

from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.ssm_init import DIAGONAL_INITS
from h3_hf.ssm_kernels import DISCRETIZATIONS


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


def test_kernel_passes_gradcheck_in_its_parameters():
    torch.manual_seed(0)
    for discretization in ("zoh", "bilinear"):
        kernel = DiagonalSSMKernel(3, 8, discretization=discretization, kernel_chunk_size=3).double()
        names = [n for n, _ in kernel.named_parameters()]

        def diag(*values, kernel=kernel, names=names):
            return torch.func.functional_call(kernel, dict(zip(names, values)), (11,))
        assert torch.autograd.gradcheck(diag, tuple(kernel.parameters()))


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["inv", "lin"])
def test_kernel_powers_stay_accurate_at_64k_lags(discretization, init):
    """dA^l = exp(l log dA) at l up to 65,535 in float32 (slow modes with dt = 1e-4 barely decay there) against
    the float64 kernel and against the sum over states written out at a few lags."""
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(8, 64, init=init, discretization=discretization, dt_min=1e-4, dt_max=1e-1)
    length = 1 << 16
    kernel64 = copy.deepcopy(kernel).double()
    fp32, fp64 = kernel(length)[0].double(), kernel64(length)[0]
    assert torch.isfinite(fp32).all()
    assert (fp32 - fp64).abs().max() <= 2e-4 * fp64.abs().max()
    log_da, db, c = kernel64.discrete()
    for lag in (0, 1, 4097, length - 1):
        direct = 2 * (c[0] * db * torch.exp(lag * log_da)).sum(-1).real
        torch.testing.assert_close(fp64[:, lag], direct, rtol=1e-9, atol=1e-12)


def test_kernel_is_finite_at_a_million_positions():
    kernel = DiagonalSSMKernel(2, 64, dt_min=1e-4, dt_max=1e-4)
    values = kernel(1 << 20)
    assert torch.isfinite(values).all() and values[..., -1].abs().max() > 0  # slow modes still alive
