"""Issue 8 (part): float64 gradchecks of every differentiable SSM building block, and no pickle loading."""

import ast
import os

import torch

from h3_hf.ssm import (
    DiagonalSSMKernel,
    ShiftSSMKernel,
    diagonal_state,
    fft_bidirectional_conv,
    fft_causal_conv,
    initial_state_response,
)

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
