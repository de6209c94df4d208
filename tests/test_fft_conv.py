"""fft_conv: causal and two-sided FFT convolutions against direct sums, FFT sizes, dtypes and derivatives."""

import pytest
import torch

from h3_hf.fft_conv import fft_bidirectional_conv, fft_causal_conv, fft_length


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


@pytest.mark.parametrize("length,taps", [(1, 4), (37, 8), (97, 64), (1000, 3)])
def test_fft_conv_with_short_kernel_equals_direct_sum(length, taps):
    torch.manual_seed(length)
    u = torch.randn(2, 3, length, dtype=torch.float64)
    k = torch.randn(3, taps, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for j in range(min(taps, length)):
        expected[..., j:] += k[:, j:j + 1] * u[..., :length - j]
    torch.testing.assert_close(fft_causal_conv(u, k), expected, rtol=1e-9, atol=1e-9)


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


def test_fft_conv_keeps_input_dtype_and_computes_in_float32():
    u = torch.randn(1, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(2, 64)
    y = fft_causal_conv(u, k)
    assert y.dtype == torch.bfloat16
    ref = fft_causal_conv(u.float(), k)
    torch.testing.assert_close(y.float(), ref.bfloat16().float())


def is_5_smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def test_fft_length_is_the_smallest_5_smooth_multiple_of_16():
    for n in range(1, 3000):
        m = fft_length(n)
        assert m >= n and m % 16 == 0 and is_5_smooth(m)
        assert not any(is_5_smooth(k) for k in range(m - 16, n - 1, -16) if k > 0)


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
