"""ssm_scan: the parallel associative scan against the sequential loop, and its gradients."""

import pytest
import torch

from h3_hf.ssm_scan import associative_scan, sequential_scan


def test_associative_scan_matches_loop_for_odd_lengths_and_chunks():
    torch.manual_seed(0)
    for length in (1, 2, 3, 7, 64, 129):
        a = torch.randn(3, length, 4, dtype=torch.complex128) * 0.6
        b = torch.randn(3, length, 4, dtype=torch.complex128)
        ref = sequential_scan(a, b)
        for chunk in (None, 4, 50):
            assert (associative_scan(a, b, chunk_size=chunk) - ref).abs().max() <= 1e-12
            assert (associative_scan(a[:1, :1], b, chunk_size=chunk) - sequential_scan(a[:1, :1], b)).abs().max() \
                <= 1e-12
    with pytest.raises(ValueError, match="a must have shape"):
        associative_scan(torch.ones(1, 3, 4), torch.ones(1, 5, 4))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_associative_scan_passes_gradcheck(chunk_size):
    """Coefficients varying per position and one coefficient broadcast over batch and time; a chunk size that does
    not divide the length."""
    torch.manual_seed(0)
    b = torch.randn(2, 7, 3, dtype=torch.complex128, requires_grad=True)
    varying = (0.9 * torch.randn(2, 7, 3, dtype=torch.complex128)).requires_grad_()
    fixed = (0.9 * torch.randn(1, 1, 3, dtype=torch.complex128)).requires_grad_()
    for a in (varying, fixed):
        assert torch.autograd.gradcheck(lambda a, b: associative_scan(a, b, chunk_size=chunk_size), (a, b))
