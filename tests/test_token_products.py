"""One-token products split across threads equal ``F.linear`` in float64, whatever the thread count and shape."""

import pytest
import torch
import torch.nn.functional as F
from references import token_weight_matrix

from h3_hf.token_products import token_product, token_weight


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("out_features, in_features", [(12, 5), (7, 5), (5, 12), (6, 6), (4, 9)])
@pytest.mark.parametrize("batch, with_bias", [(1, True), (3, False), (2, True)])
@pytest.mark.parametrize("transpose", [False, True])
def test_token_product_equals_linear(threads, out_features, in_features, batch, with_bias, transpose):
    generator = torch.Generator().manual_seed(out_features * 100 + in_features)
    weight = torch.randn(out_features, in_features, dtype=torch.float64, generator=generator)
    bias = torch.randn(out_features, dtype=torch.float64, generator=generator) if with_bias else None
    x = torch.randn(batch, in_features, dtype=torch.float64, generator=generator)
    sliced = token_weight(weight, bias, transpose=transpose)
    # W's rows: the most parts (at most one per thread) that divide the rows; W^T's columns: one part per thread
    row_parts = max(p for p in range(1, threads + 1) if out_features % p == 0)
    assert sliced.weight.shape[0] == (threads if transpose else row_parts)
    assert sliced.transposed == transpose
    torch.testing.assert_close(token_weight_matrix(sliced), weight, rtol=0, atol=0)
    out = token_product(x, sliced)
    assert out.shape == (batch, out_features) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_row_slices_are_views_of_the_weight_and_column_slices_copies(threads):
    """Slices of W's rows read the weight in place (no memory added); slices of W^T's columns are a copy."""
    weight = torch.randn(6, 4)
    assert token_weight(weight).weight.data_ptr() == weight.data_ptr()
    assert token_weight(weight, transpose=True).weight.untyped_storage().data_ptr() != weight.data_ptr()
