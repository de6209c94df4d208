"""Issue 8 (part): float64 gradchecks of every differentiable SSM building block, kernel powers at long lags,
no pickle loading."""

import ast
import copy
import os

import pytest
import torch

from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.fft_conv import fft_bidirectional_conv, fft_causal_conv
from h3_hf.modeling_h3 import ShiftSSMKernel
from h3_hf.modeling_s5 import S5SSM
from h3_hf.ssm_kernels import diagonal_kernel, diagonal_state, initial_state_response
from h3_hf.ssm_scan import associative_scan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fft_convolutions_pass_gradcheck():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    long_kernel = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    short_kernel = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_causal_conv, (u, long_kernel, skip))
    assert torch.autograd.gradcheck(fft_causal_conv, (u, short_kernel, skip))
    backward_kernel = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_bidirectional_conv, (u, long_kernel, backward_kernel, skip))
    # both operands broadcast (gradients summed back to each shape), kernel shorter and longer than the input
    u_broadcast = torch.randn(2, 1, 3, 6, dtype=torch.float64, requires_grad=True)
    for taps in (2, 6, 9):
        kernels = torch.randn(4, 3, taps, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(fft_causal_conv, (u_broadcast, kernels))


def test_fft_convolutions_have_second_derivatives():
    """Hessian-vector products and gradient penalties differentiate the convolution's backward pass."""
    torch.manual_seed(0)
    u = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(fft_causal_conv, (u, kernel, skip))
    assert torch.autograd.gradgradcheck(fft_causal_conv, (u, kernel[:, :2]))
    backward_kernel = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(fft_bidirectional_conv, (u, kernel, backward_kernel, skip))


def test_ssm_kernel_products_stay_float32_under_autocast():
    """The blocked kernel and state products are real matmuls, which CPU autocast would run in bfloat16."""
    torch.manual_seed(0)
    log_da, db, c = DiagonalSSMKernel(4, 16).discrete()
    u = torch.randn(2, 4, 100)
    expected_kernel = diagonal_kernel(c[0], db, log_da, 100)
    expected_state = diagonal_state(u, log_da, db)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = diagonal_kernel(c[0], db, log_da, 100)
        state = diagonal_state(u, log_da, db)
    assert kernel.dtype == torch.float32 and state.dtype == torch.complex64
    torch.testing.assert_close(kernel, expected_kernel, rtol=0, atol=0)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0)


def test_ssm_kernels_pass_gradcheck_in_their_parameters():
    torch.manual_seed(0)
    for discretization in ("zoh", "bilinear"):
        kernel = DiagonalSSMKernel(3, 8, discretization=discretization, kernel_chunk_size=3).double()
        params = tuple(kernel.parameters())

        def diag(*values, kernel=kernel):
            return torch.func.functional_call(kernel, dict(zip([n for n, _ in kernel.named_parameters()], values)),
                                              (11,))
        assert torch.autograd.gradcheck(diag, params)
    shift = ShiftSSMKernel(3, 5).double()
    names = [n for n, _ in shift.named_parameters()]
    assert torch.autograd.gradcheck(lambda *v: torch.func.functional_call(shift, dict(zip(names, v)), ()),
                                    tuple(shift.parameters()))


def test_closed_form_states_pass_gradcheck():
    torch.manual_seed(0)
    kernel = DiagonalSSMKernel(3, 8).double()
    log_da, db, c = (t.detach().requires_grad_() for t in kernel.discrete())
    u = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 3, 4, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, a, b, x: diagonal_state(u, a, b, x, chunk_size=4), (u, log_da, db, x0))
    assert torch.autograd.gradcheck(lambda x, cc, a: initial_state_response(x, cc[0], a, 9), (x0, c, log_da))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_associative_scan_passes_gradcheck(chunk_size):
    torch.manual_seed(0)
    b = torch.randn(2, 7, 3, dtype=torch.complex128, requires_grad=True)
    varying = (0.9 * torch.randn(2, 7, 3, dtype=torch.complex128)).requires_grad_()
    fixed = (0.9 * torch.randn(1, 1, 3, dtype=torch.complex128)).requires_grad_()
    for a in (varying, fixed):
        assert torch.autograd.gradcheck(lambda a, b: associative_scan(a, b, chunk_size=chunk_size), (a, b))


def test_s5_layer_passes_gradcheck_in_its_parameters_and_timesteps():
    torch.manual_seed(0)
    layer = S5SSM(3, 4, blocks=2, scan_chunk_size=3).double()
    names = [n for n, _ in layer.named_parameters()]
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    steps = (torch.rand(2, 7, dtype=torch.float64) + 0.5).requires_grad_()

    def run(steps, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,), {"timesteps": steps})
    assert torch.autograd.gradcheck(run, (steps, *layer.parameters()))


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


def python_files():
    for folder in ("h3_hf", "scripts", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(base, f) for f in files if f.endswith(".py"))


def test_nothing_unpickles_untrusted_files():
    """torch.load only with weights_only=True; no pickle / dill / joblib loading anywhere in the package,
    the scripts or the tests."""
    offenders = []
    for path in python_files():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                if owner == "torch" and node.func.attr == "load":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    if not safe:
                        offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if owner in ("pickle", "dill", "joblib", "cloudpickle") and node.func.attr in ("load", "loads"):
                    offenders.append(f"{path}:{node.lineno} {owner}.{node.func.attr}")
    assert not offenders, offenders
    assert any("convert_h3_original_checkpoint.py" in p for p in python_files())  # the converter was scanned
